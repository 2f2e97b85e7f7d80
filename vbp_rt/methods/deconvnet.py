"""DeconvNet (Zeiler and Fergus 2014) as a backward pass: a ReLU lets back the positive part of the
top gradient whatever the unit did in the forward pass.

relevance: the back-projected signal summed over input channels; mask: its absolute value over the
per-image maximum.
"""
from __future__ import annotations

from ..result import Explanation
from . import register
from .gradient import backward, unit_peak


@register("deconvnet")
def deconvnet(model, x, target=None) -> Explanation:
    b = backward(model, x, "deconvnet", target)
    r = b.input_grad.sum(dim=1)
    return Explanation("deconvnet", b.prediction, unit_peak(r.abs()), r, {"gradient": b.input_grad, "score": b.score})

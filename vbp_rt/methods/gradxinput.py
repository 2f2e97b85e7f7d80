"""Gradient x input (Shrikumar et al. 2016): each pixel's first-order contribution x_i * dS/dx_i.

relevance: signed, summed over input channels; mask: its absolute value over the per-image maximum.
(`affine` adds the bias term that completes this into an exact decomposition of the score.)
"""
from __future__ import annotations

from ..result import Explanation
from . import register
from .gradient import backward, unit_peak


@register("gradxinput")
def gradient_x_input(model, x, target=None) -> Explanation:
    b = backward(model, x, "gradient", target)
    r = (b.input_grad * b.input).sum(dim=1)
    return Explanation("gradxinput", b.prediction, unit_peak(r.abs()), r, {"gradient": b.input_grad, "score": b.score})

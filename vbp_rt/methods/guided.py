"""Guided Backprop (Springenberg et al. 2014): the gradient, but a ReLU lets back only positive
gradients of units that were active in the forward pass.

relevance: the guided gradient summed over input channels; mask: its absolute value over the
per-image maximum. Nie et al. show it largely recovers the image instead of explaining the decision.
"""
from __future__ import annotations

from ..result import Explanation
from . import register
from .gradient import backward, unit_peak


@register("guided")
def guided_backprop(model, x, target=None) -> Explanation:
    b = backward(model, x, "guided", target)
    r = b.input_grad.sum(dim=1)
    return Explanation("guided", b.prediction, unit_peak(r.abs()), r, {"gradient": b.input_grad, "score": b.score})

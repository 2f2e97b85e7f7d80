"""Gradient saliency (Simonyan et al. 2013): how much a small change of each pixel moves the score.

relevance: the gradient summed over input channels (signed); mask: max over channels of |gradient|,
divided by its per-image maximum.
"""
from __future__ import annotations

from ..result import Explanation
from . import register
from .gradient import backward, unit_peak


@register("saliency")
def saliency(model, x, target=None) -> Explanation:
    b = backward(model, x, "gradient", target)
    g = b.input_grad
    return Explanation("saliency", b.prediction, unit_peak(g.abs().amax(dim=1)), g.sum(dim=1).detach(),
                       {"gradient": g, "score": b.score})

"""Grad-CAM (Selvaraju et al. 2017) on a post-ReLU conv map (default: the deepest).

Each channel k of the map A gets the weight alpha_k = spatial mean of dS/dA_k; the map is
sum_k alpha_k A_k, resized bilinearly to the input. relevance: that map (signed); mask: its positive
part (as in the paper, resized after the ReLU) over the per-image maximum.
"""
from __future__ import annotations

from ..result import Explanation
from . import register
from .gradient import backward, resolve_layer, to_input_size, unit_peak


@register("gradcam")
def grad_cam(model, x, layer=-1, target=None) -> Explanation:
    link = resolve_layer(model, x, layer)
    if link is None:
        raise ValueError("Grad-CAM needs a conv feature map, not the input: pass layer=<index or name>")
    b = backward(model, x, "gradient", target, maps=(link.name,))
    a, g = b.activations[link.name], b.gradients[link.name]
    weights = g.mean(dim=(2, 3))
    cam = (weights[:, :, None, None] * a).sum(dim=1)
    hw = x.shape[-2:]
    return Explanation("gradcam", b.prediction, unit_peak(to_input_size(cam.clamp(min=0), hw)),
                       to_input_size(cam, hw), {"layer": link.name, "weights": weights, "cam": cam, "score": b.score})

"""Piece-wise affine decomposition (Chen et al.): a ReLU network in eval mode is, around x, exactly
F(x) = W(x)·x + b(x), with W the gradient and b = F(x) - W·x. The same holds for the part of the
network above any post-ReLU conv map a: F = W_a·a + b_a.

A pixel's contribution is w_i·x_i (summed over channels); the contributions plus the bias term give
the explained score exactly (see `gradient.explained_score`). relevance: the signed contributions at
the chosen layer, resized bilinearly to the input; mask: their positive part (Chen et al. discard
negative contributions for display) over the per-image maximum. The exact per-layer map, bias and
score are in `layers`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..result import Explanation
from . import register
from .gradient import backward, resolve_layer, to_input_size, unit_peak


@dataclass
class Decomposition:
    """score (N,) = contributions.sum over (h,w) + bias (N,), at one layer ("input" or a map name)."""

    layer: str
    contributions: torch.Tensor  # (N,h,w), summed over channels
    bias: torch.Tensor
    score: torch.Tensor


def require_eval(model: nn.Module) -> None:
    """The decomposition is exact only for a fixed piece-wise affine map: no batch statistics, no dropout."""
    for name, m in model.named_modules():
        if m.training and isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)):
            raise ValueError(f"the affine decomposition needs the model in eval mode ({name} is training: "
                             "call model.eval())")


def decompose(model: nn.Module, x: torch.Tensor, layers=("input",), target=None):
    """One forward + backward; returns (prediction, [Decomposition] for each of `layers`), where a
    layer is "input", a chain index or a post-ReLU map name (see `gradient.resolve_layer`)."""
    require_eval(model)
    links = [resolve_layer(model, x, layer) for layer in layers]
    b = backward(model, x, "gradient", target, maps=tuple(dict.fromkeys(lk.name for lk in links if lk)))
    out = []
    for link in links:
        if link is None:
            name, a, g = "input", b.input, b.input_grad
        else:
            name, a, g = link.name, b.activations[link.name], b.gradients[link.name]
        contrib = (g * a).sum(dim=1)
        out.append(Decomposition(name, contrib, b.score - contrib.sum(dim=(1, 2)), b.score))
    return b.prediction, out


@register("affine")
def affine(model, x, layer="input", target=None) -> Explanation:
    pred, (d,) = decompose(model, x, (layer,), target)
    hw = x.shape[-2:]
    return Explanation("affine", pred, unit_peak(to_input_size(d.contributions.clamp(min=0), hw)),
                       to_input_size(d.contributions, hw),
                       {"layer": d.layer, "contributions": d.contributions, "bias": d.bias, "score": d.score})

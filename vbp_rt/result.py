"""The result of an attribution method, and the checks and normalization every method shares.

Imports nothing of vbp_rt: every other module of the engine may use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Explanation:
    """What a method says about a batch.

    prediction: model output (N, outputs); mask: (N,H,W) float32 in [0,1] for display;
    relevance: (N,H,W) the method's raw (possibly signed) map at the input resolution;
    layers: method-specific extras (VBP: the averaged maps and the intermediate masks, deepest first).
    """

    method: str
    prediction: torch.Tensor
    mask: torch.Tensor
    relevance: torch.Tensor
    layers: dict = field(default_factory=dict)


def normalize01(m: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalization of (N,H,W) to [0,1]; a constant image becomes zeros."""
    flat = m.reshape(m.shape[0], -1)
    lo = flat.min(dim=1).values.view(-1, 1, 1)
    span = flat.max(dim=1).values.view(-1, 1, 1) - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (m - lo) / safe, torch.zeros_like(m)).float()


def first_input_layer(model: nn.Module):
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            return m
    return None


def check_input(model: nn.Module, x) -> torch.Tensor:
    """Validate a batch for `model`; raise a ValueError/TypeError that says what was expected."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of shape (N,C,H,W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected a float tensor, got dtype {x.dtype} (scale uint8 frames to float first)")
    if x.dim() != 4:
        raise ValueError(f"expected input of shape (N,C,H,W), got {x.dim()} dimensions {tuple(x.shape)}")
    first = first_input_layer(model)
    if first is None:
        raise ValueError("the model has no Conv2d/BatchNorm2d layer: it is not a convolutional network")
    want_c = first.in_channels if isinstance(first, nn.Conv2d) else first.num_features
    if x.shape[1] != want_c:
        raise ValueError(f"expected {want_c} input channel(s), got {x.shape[1]} (input shape {tuple(x.shape)})")
    cfg = getattr(model, "config", None)
    if cfg is not None and tuple(x.shape[-2:]) != (cfg.height, cfg.width):
        raise ValueError(f"expected input height x width {cfg.height}x{cfg.width} for {cfg.arch}, "
                         f"got {x.shape[-2]}x{x.shape[-1]}")
    if not torch.isfinite(x).all():
        raise ValueError("input contains NaN or inf values")
    return x

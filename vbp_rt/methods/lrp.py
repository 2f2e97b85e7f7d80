"""epsilon-LRP (Samek et al. 2017, eq. 6), the VisualBackProp paper's baseline.

R_i = sum_j x_i w_ij R_j / (z_j + eps * sign(z_j)); relevance passes through ReLU unchanged; the
output relevance is the prediction (of the target output). Written as explicit transposed convs and
matmuls over a list of layers (no autograd hooks), so the same walk can be exported to ONNX.

eps lives on the scale of the pre-activations z: the paper's eps=100 suits networks whose outputs
are degrees of steering angle. On a model whose outputs are ~0.03, eps=100 absorbs almost all of
the relevance (the input relevance sums to a tiny fraction of the output): lower eps for such models.

BatchNorm is folded into the adjacent convolution where that is exact (BN after a conv; BN before
an unpadded conv) and otherwise treated as an element-wise affine layer (`bn="affine"` forces that).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import conv_padding, spatial_op, trace
from ..result import Explanation
from ..upsample import ones_transposed_conv
from . import register


@dataclass
class Layer:
    """One step of the relevance walk. kind: conv | linear | affine | maxpool | avgpool | pass."""

    kind: str
    module: nn.Module | None
    input: torch.Tensor
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None


def bn_affine(bn: nn.BatchNorm2d):
    """(scale, shift) per channel of an eval-mode BatchNorm: bn(x) = scale * x + shift."""
    if bn.training and bn.track_running_stats:
        raise ValueError("LRP needs BatchNorm in eval mode (call model.eval()): batch statistics are not a fixed "
                         "affine map")
    var = bn.running_var if bn.running_var is not None else torch.ones(bn.num_features, device=bn.weight.device)
    mean = bn.running_mean if bn.running_mean is not None else torch.zeros_like(var)
    scale = torch.rsqrt(var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
        shift = bn.bias - mean * scale
    else:
        shift = -mean * scale
    return scale.detach(), shift.detach()


def _conv_params(conv: nn.Conv2d):
    b = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=conv.weight.device)
    return conv.weight.detach(), b.detach()


def build_layers(entries, bn_mode: str = "fold") -> list:
    """Turn a traced forward (execution order) into LRP layers, folding BatchNorm where exact."""
    layers: list = []
    for prev_entry, e in zip([None] + entries[:-1], entries):
        if prev_entry is not None and not _feeds(prev_entry.output, e.input):
            raise ValueError(f"LRP needs a sequential model: the input of {e.name} is not the output of "
                             f"{prev_entry.name}")
        m = e.module
        if isinstance(m, nn.Conv2d):
            if m.groups != 1:
                raise ValueError(f"LRP: grouped convolution {e.name} is not supported")
            w, b = _conv_params(m)
            prev = layers[-1] if layers else None
            if (bn_mode == "fold" and prev is not None and prev.kind == "affine"
                    and isinstance(prev.module, nn.BatchNorm2d) and conv_padding(m) == (0, 0, 0, 0)):
                scale, shift = prev.weight, prev.bias  # BN before an unpadded conv: exact fold
                b = b + (w * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
                w = w * scale.view(1, -1, 1, 1)
                layers[-1] = Layer("conv", m, prev.input, w, b)
            else:
                layers.append(Layer("conv", m, e.input, w, b))
        elif isinstance(m, nn.BatchNorm2d):
            scale, shift = bn_affine(m)
            prev = layers[-1] if layers else None
            if bn_mode == "fold" and prev is not None and prev.kind == "conv":
                prev.weight = prev.weight * scale.view(-1, 1, 1, 1)  # BN after a conv: exact fold
                prev.bias = prev.bias * scale + shift
            else:
                layers.append(Layer("affine", m, e.input, scale, shift))
        elif isinstance(m, nn.Linear):
            b = m.bias if m.bias is not None else torch.zeros(m.out_features, device=m.weight.device)
            layers.append(Layer("linear", m, e.input, m.weight.detach(), b.detach()))
        elif isinstance(m, nn.MaxPool2d):
            layers.append(Layer("maxpool", m, e.input))
        elif isinstance(m, nn.AvgPool2d):
            if not m.count_include_pad or m.divisor_override is not None:
                raise ValueError(f"LRP: AvgPool2d {e.name} must count padding and have no divisor override")
            layers.append(Layer("avgpool", m, e.input))
        elif isinstance(m, (nn.ReLU, nn.Flatten, nn.Dropout, nn.Dropout2d, nn.Identity)):
            layers.append(Layer("pass", m, e.input))
        else:
            raise ValueError(f"LRP: layer {e.name} of type {type(m).__name__} is not supported "
                             "(supported: Conv2d, BatchNorm2d, Linear, ReLU, MaxPool2d, AvgPool2d, Flatten, Dropout)")
    return layers


def _feeds(out: torch.Tensor, inp: torch.Tensor) -> bool:
    """True when `inp` is `out` or a reshaped view of it."""
    return inp.numel() == out.numel() and inp.data_ptr() == out.data_ptr()


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + eps * sign(z), with sign(0) taken as +1 so nothing is divided by zero."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def relevance_step(layer: Layer, r: torch.Tensor, eps: float) -> torch.Tensor:
    """Relevance at a layer's input from the relevance at its output."""
    x = layer.input
    if layer.kind == "pass":
        return r.reshape(x.shape)
    if layer.kind == "linear":
        z = F.linear(x, layer.weight, layer.bias)
        return x * ((r.reshape(z.shape) / stabilize(z, eps)) @ layer.weight)
    if layer.kind == "affine":
        shape = (1, -1, 1, 1)
        z = x * layer.weight.view(shape) + layer.bias.view(shape)
        return x * layer.weight.view(shape) * r / stabilize(z, eps)
    if layer.kind == "conv":
        m = layer.module
        pad = conv_padding(m)
        xp = F.pad(x, (pad[1], pad[3], pad[0], pad[2])) if any(pad) else x
        z = F.conv2d(xp, layer.weight, layer.bias, stride=m.stride, dilation=m.dilation)
        s = r / stabilize(z, eps)
        c = F.conv_transpose2d(s, layer.weight, stride=m.stride, dilation=m.dilation,
                               output_padding=_out_pad(xp.shape[-2:], s.shape[-2:], m))
        c = c[..., pad[0]:pad[0] + x.shape[-2], pad[1]:pad[1] + x.shape[-1]]
        return x * c
    m = layer.module
    if layer.kind == "maxpool":
        z, idx = F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
        s = r / stabilize(z, eps)
        return x * F.max_unpool2d(s, idx, m.kernel_size, m.stride, m.padding, output_size=x.shape[-2:])
    if layer.kind == "avgpool":
        z = F.avg_pool2d(x, m.kernel_size, m.stride, m.padding, m.ceil_mode)
        s = r / stabilize(z, eps)
        op = spatial_op(m, x.shape[-2:], z.shape[-2:])
        n, c, h, w = s.shape
        spread = ones_transposed_conv(s.reshape(n * c, h, w), op).reshape(x.shape)
        return x * spread / (op.kernel[0] * op.kernel[1])
    raise AssertionError(layer.kind)


def _out_pad(in_hw, out_hw, conv: nn.Conv2d) -> tuple:
    pads = []
    for ax in range(2):
        k, s, d = conv.kernel_size[ax], conv.stride[ax], conv.dilation[ax]
        pads.append(in_hw[ax] - ((out_hw[ax] - 1) * s + d * (k - 1) + 1))
    return tuple(pads)


def output_relevance(pred: torch.Tensor, target) -> torch.Tensor:
    """The prediction of the target output (argmax for classifiers when target is None), zeros elsewhere."""
    if pred.shape[1] == 1:
        return pred.clone()
    if target is None:
        target = pred.argmax(dim=1)
    target = torch.as_tensor(target, device=pred.device).reshape(-1).expand(pred.shape[0])
    r = torch.zeros_like(pred)
    r[torch.arange(pred.shape[0]), target] = pred[torch.arange(pred.shape[0]), target]
    return r


@register("lrp")
def epsilon_lrp(model, x, eps: float = 100.0, target=None, bn: str = "fold") -> Explanation:
    """Explanation.relevance is float64: with eps=100 on a small-activation model the true relevance
    can sink below float32's range; the walk rescales each layer's relevance per image (eps-LRP is
    linear in R for a fixed forward) and keeps the scale in float64."""
    if bn not in ("fold", "affine"):
        raise ValueError(f"bn must be 'fold' or 'affine', got {bn!r}")
    torch.set_flush_denormal(True)  # relevance sinking into denormals slows CPU arithmetic many times
    with torch.no_grad():
        pred, entries = trace(model, x, keep_tensors=True)
        layers = build_layers(entries, bn)
        r = output_relevance(pred, target)
        log_scale = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for layer in reversed(layers):
            r = relevance_step(layer, r, eps)
            if layer.kind != "pass":
                peak = r.abs().flatten(1).amax(dim=1)
                peak = torch.where(peak > 0, peak, torch.ones_like(peak))
                r = r / peak.view(-1, *([1] * (r.dim() - 1)))
                log_scale += torch.log(peak.double())
    unit = r.sum(dim=1)
    relevance = unit.double() * torch.exp(log_scale).view(-1, 1, 1)
    peak = unit.abs().amax(dim=(1, 2), keepdim=True)
    mask = (unit.abs() / torch.where(peak > 0, peak, torch.ones_like(peak))).float()
    return Explanation("lrp", pred, mask, relevance, {"eps": eps, "input_relevance_unit": r,
                                                      "log_scale": log_scale})

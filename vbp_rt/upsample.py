"""Single-channel transposed convolution with an all-ones kernel, as strided slice-adds.

An all-ones kernel is separable, so the upscale is a row pass then a column pass of k strided adds
each, instead of a generic transposed-convolution kernel (which is several times slower on CPU for a
one-channel map; see docs/performance.md).
"""
from __future__ import annotations

import torch

from .graph import SpatialOp


def natural_size(n_in: int, kernel: int, stride: int, pad_before: int, pad_after: int, dilation: int) -> int:
    """Output length of a transposed conv with output_padding 0."""
    return (n_in - 1) * stride - pad_before - pad_after + dilation * (kernel - 1) + 1


def output_padding(op: SpatialOp) -> tuple:
    """The output_padding that makes the transposed conv of `op` land exactly on `op.in_hw`."""
    pads = []
    for ax in range(2):
        nat = natural_size(op.out_hw[ax], op.kernel[ax], op.stride[ax], op.padding[ax], op.padding[ax + 2],
                           op.dilation[ax])
        pads.append(op.in_hw[ax] - nat)
    return tuple(pads)


def ones_transposed_conv(m: torch.Tensor, op: SpatialOp, out_hw=None) -> torch.Tensor:
    """Transposed conv of `m` (N,h,w) with a ones kernel of `op`'s geometry, cropped/padded to `out_hw`.

    Equals conv_transpose2d(m[:,None], ones(1,1,kh,kw), stride, padding, output_padding, dilation).
    """
    out_h, out_w = out_hw if out_hw is not None else op.in_hw
    n, h, w = m.shape
    (kh, kw), (sh, sw), (dh, dw) = op.kernel, op.stride, op.dilation
    top, left = op.padding[0], op.padding[1]
    full_h = max((h - 1) * sh + dh * (kh - 1) + 1, top + out_h)
    full_w = max((w - 1) * sw + dw * (kw - 1) + 1, left + out_w)
    rows = m.new_zeros(n, full_h, w)
    span_h = (h - 1) * sh + 1
    for a in range(kh):
        rows[:, a * dh:a * dh + span_h:sh] += m
    out = m.new_zeros(n, full_h, full_w)
    span_w = (w - 1) * sw + 1
    for b in range(kw):
        out[:, :, b * dw:b * dw + span_w:sw] += rows
    return out[:, top:top + out_h, left:left + out_w]

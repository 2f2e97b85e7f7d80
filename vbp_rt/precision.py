"""float32 precision on NVIDIA GPUs: exact IEEE float32, or TensorFloat-32 (TF32) for speed.

On Ampere and newer GPUs, cuDNN convolutions and cuBLAS matrix products may round their float32 inputs to
TF32 (10 mantissa bits instead of 23): several times faster, with relative errors around 1e-3 instead of
1e-7. torch 2.13 lets cuDNN convolutions use it by default (`torch.backends.cudnn.conv.fp32_precision` is
"tf32") and onnxruntime's CUDA provider does too (`use_tf32`). Older GPUs (Maxwell to Turing) have no TF32
and always compute in float32.

vbp-rt decides per use: a `Runtime` computes in exact float32 unless it is created with `tf32=True` (so a
mask on the GPU is the CPU's mask up to float32 rounding), the trainer uses TF32 (training statistics, not
reference outputs), and `vbp doctor --gpu` reports the mask difference TF32 makes. torch's switches are
process-wide; `torch_fp32(tf32)` sets them around one call and restores them. Only torch's newer
`fp32_precision` switches are used: mixing them with the legacy `allow_tf32` flags makes torch raise.
"""
from __future__ import annotations

import contextlib

import torch

# torch's float32 precision switches for CUDA: cuDNN convolutions, cuDNN RNNs, cuBLAS matrix products
_SWITCHES = (torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul)


def torch_fp32_state() -> tuple:
    return tuple(s.fp32_precision for s in _SWITCHES)


def set_torch_fp32(tf32: bool) -> tuple:
    """Let torch's CUDA convolutions and matrix products use TF32 (True) or exact float32 (False); returns
    the previous state for `restore_torch_fp32`."""
    before = torch_fp32_state()
    for s in _SWITCHES:
        s.fp32_precision = "tf32" if tf32 else "ieee"
    return before


def restore_torch_fp32(state: tuple) -> None:
    for s, value in zip(_SWITCHES, state):
        s.fp32_precision = value


@contextlib.contextmanager
def torch_fp32(tf32: bool):
    """torch's CUDA float32 precision set to TF32 or exact float32 inside the block, restored afterwards."""
    state = set_torch_fp32(tf32)
    try:
        yield
    finally:
        restore_torch_fp32(state)

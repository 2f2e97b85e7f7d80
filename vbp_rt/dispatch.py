"""`explain()`: one call shape for every attribution method, on torch modules and ONNX files."""
from __future__ import annotations

import torch
from torch import nn

from . import methods
from .models import load_model
from .onnx_meta import is_onnx
from .onnx_model import explain_onnx
from .result import Explanation, check_input


def explain(model, x: torch.Tensor, method: str = "vbp", **options) -> Explanation:
    """Explain `model(x)` with a registered method ("vbp", "lrp", ...; see `vbp_rt.methods.available()`).

    `model` is a torch nn.Module, a checkpoint path, a shipped model name or an .onnx file (any ONNX ReLU CNN;
    runs on onnxruntime, see vbp_rt.onnx_model). `x` is a float tensor (N,C,H,W) already scaled as the model
    expects. `options` are the method's own (e.g. lrp: eps, target, bn); an option the method does not take is
    an error naming the ones it does.
    """
    fn = methods.get(method)
    methods.check_options(method, options)
    if is_onnx(model):
        return explain_onnx(model, x, method, **options)
    if not isinstance(model, nn.Module):
        model = load_model(model)
    return fn(model, check_input(model, x), **options)

"""The parts of `vbp_rt.runtime.Runtime` that need torch: a model made ready to run (a checkpoint loaded, a module
copied, an ONNX model converted with onnx2torch when a method has no onnxruntime head) and the torch engine.

vbp_rt.runtime imports this module only when a model is not in the graph cache (vbp_rt.graph_cache) or a torch
backend is asked for, so that a cached graph on onnxruntime starts without importing torch (docs/onnx.md).
"""
from __future__ import annotations

import copy
import time
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from . import onnx_torch
from .dispatch import explain
from .methods import vbp as vbp_method
from .onnx_meta import prediction_output
from .onnx_model import model_info, needs_torch
from .precision import torch_fp32


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU."""
    return torch.cuda.is_available()


def private_copy(module: nn.Module, device=None) -> nn.Module:
    """An eval-mode copy of `module` on `device` (default: where it is). The caller's module keeps its device
    and its train/eval mode, so it can go on to another Runtime, `vbp export` or a CPU reference."""
    module = copy.deepcopy(module)
    return (module if device is None else module.to(device)).eval()


def load_source(model, input_shape, methods=(), spec=None) -> tuple:
    """(kind, object, path, config, input spec): kind "onnx" with a ModelProto, or "torch" with an eval-mode
    nn.Module of its own. An ONNX model becomes a torch module (onnx2torch, NCHW input) when some method has
    no onnxruntime head for it. `spec` is --input-spec text or a dict (vbp_rt.input_spec)."""
    kind, obj, path, config, model_spec = model_info(private_copy(model) if isinstance(model, nn.Module) else model,
                                                     input_shape, spec)
    if kind == "onnx" and needs_torch(obj, methods, path):
        obj = onnx_torch.to_torch(obj, prediction_output(obj, model_spec))
        kind, model_spec = "torch", replace(model_spec, layout="NCHW")
    return kind, obj.eval() if kind == "torch" else obj, path, config, model_spec


class TorchEngine:
    """vbp_rt's torch methods on CPU or CUDA; VBP's forward (with its channel-mean hooks) is the forward stage."""

    def __init__(self, model: nn.Module, device: str, threads, options: dict, tf32: bool = False):
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("torch-cuda: torch sees no CUDA GPU")
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = private_copy(model, self.device)
        self.options = options
        self.tf32 = tf32
        self.placement = {}
        self.startup = {}

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, x: np.ndarray, methods) -> tuple:
        if self.device.type != "cuda":
            return self._run(x, methods)
        with torch_fp32(self.tf32):
            return self._run(x, methods)

    def _run(self, x: np.ndarray, methods) -> tuple:
        timings, masks = {}, {}
        t0 = time.perf_counter()
        xt = torch.from_numpy(x).to(self.device)  # pageable host memory: the copy is synchronous anyway
        if "vbp" in methods:
            pred, averages, chain = vbp_method.forward(self.model, xt)
        else:
            with torch.no_grad():
                pred = self.model(xt)
        self._sync()
        timings["forward"] = (time.perf_counter() - t0) * 1000.0
        for m in methods:
            t0 = time.perf_counter()
            if m == "vbp":
                mask = vbp_method.from_averages(pred, averages, chain).mask
            else:
                mask = explain(self.model, xt, m, **self.options.get(m, {})).mask
            masks[m] = mask.detach().float().cpu().numpy()
            timings[m] = (time.perf_counter() - t0) * 1000.0
        return pred.detach().float().cpu().numpy(), masks, timings

    @property
    def providers(self) -> list:
        return [str(self.device)]

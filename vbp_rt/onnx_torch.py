"""An ONNX model from elsewhere as a torch module (onnx2torch), so the torch methods (LRP, gradients, Grad-CAM,
...) run on it. The module takes the NCHW image whatever the ONNX input layout, and returns the prediction.

onnx2torch imports torchvision for its NMS and RoIAlign converters only; torchvision does not import beside a
CPU torch wheel from another index, so when it does not, onnx2torch is imported with a stand-in `torchvision`
whose `ops` raise if a graph ever needs them (removed from sys.modules right after the import). Install it
with `pip install --no-deps onnx2torch` (its declared torchvision requirement would pull another torch).
"""
from __future__ import annotations

import copy
import importlib
import sys
import types

import onnx
from torch import nn

from . import onnx_graph
from .extras import MissingExtra


def _unavailable(*_args, **_kwargs):
    raise RuntimeError("this ONNX graph needs torchvision's detection ops (NMS, RoIAlign), and torchvision does "
                       "not import here")


def _stand_in() -> dict:
    tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms = ops.box_convert = ops.roi_align = ops.batched_nms = _unavailable
    tv.ops = ops
    return {"torchvision": tv, "torchvision.ops": ops}


def _onnx2torch():
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    try:
        importlib.import_module("torchvision")
        stand_in = {}
    except Exception:  # a torchvision built for another torch fails in many ways (ImportError, RuntimeError)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        stand_in = _stand_in()
    sys.modules.update(stand_in)
    try:
        return importlib.import_module("onnx2torch")
    except ImportError as e:
        raise MissingExtra("running torch methods (LRP, gradients, Grad-CAM) on an ONNX model needs onnx2torch: "
                           "pip install --no-deps 'onnx2torch>=1.5'") from e
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)


class _NchwInput(nn.Module):
    """Feeds an NHWC graph from NCHW images, so the torch methods see the usual (N,C,H,W) input."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x.permute(0, 2, 3, 1))


def to_torch(model, prediction: str) -> nn.Module:
    """The ONNX graph (path, bytes or ModelProto) up to its output `prediction`, as an eval-mode torch module
    taking (N,C,H,W) float32."""
    m = onnx.ModelProto()
    m.CopyFrom(onnx_graph.load(model))
    kept = [o for o in m.graph.output if o.name == prediction]
    if not kept:
        raise ValueError(f"the ONNX model has no output {prediction!r}")
    del m.graph.output[:]
    m.graph.output.extend(kept)
    del m.metadata_props[:]
    try:
        module = _onnx2torch().convert(copy.deepcopy(m))
    except (NotImplementedError, KeyError, ValueError) as e:
        raise ValueError(f"onnx2torch cannot convert this ONNX model to torch ({e}): the torch methods do not "
                         "run on it (VBP runs on onnxruntime)") from e
    if onnx_graph.image_source(m)[1] == "NHWC":
        module = _NchwInput(module)
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


"""An ONNX file as a vbp-rt model: what it expects, which output is the prediction, the graph with the heads
a set of methods needs, and `explain()` on it (what `vbp_rt.explain` and `vbp explain` call for .onnx files).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from . import onnx_graph, onnx_io
from .models import NetConfig
from .result import Explanation
from .sessions import cpu_session_options, ort  # ort: onnxruntime, or an error naming the extras

ONNX_METHODS = ("vbp", "lrp")


@dataclass
class ModelInfo:
    """What a model without a vbp-rt config expects (ONNX files from elsewhere, plain torch modules)."""

    arch: str
    in_channels: int
    height: int
    width: int
    outputs: int
    view: str = ""
    input_scale: float = 1.0 / 255.0

    @property
    def input_shape(self) -> tuple:
        return (self.in_channels, self.height, self.width)


def is_onnx(model) -> bool:
    return isinstance(model, onnx.ModelProto) or (isinstance(model, (str, Path))
                                                   and str(model).lower().endswith(".onnx"))


def onnx_config(model, input_shape=None):
    """The NetConfig stored by `vbp export`, or a ModelInfo read from the graph (input size, outputs) and the
    metadata; a model from elsewhere is assumed to take gray frames scaled by 1/255."""
    model = onnx_graph.load(model)
    meta = onnx_io.metadata(model)
    if isinstance(meta.get("vbp_rt.config"), dict):
        return NetConfig(**meta["vbp_rt.config"])
    chw = tuple(input_shape) if input_shape is not None else onnx_graph.input_chw(model)
    if chw is None:
        raise ValueError("the ONNX model's input height/width are symbolic: give input_shape=(C,H,W)")
    info = meta.get("vbp_rt.input") if isinstance(meta.get("vbp_rt.input"), dict) else {}
    shapes = onnx_graph.tensor_shapes(onnx_graph.with_input_shape(model, chw))
    outputs = shapes.get(prediction_output(model), (None, 1))[-1] or 1
    view = (info.get("view") or {}).get("name", "")
    return ModelInfo("onnx", chw[0], chw[1], chw[2], outputs, view, info.get("scale") or 1.0 / 255.0)


def prediction_output(model: onnx.ModelProto) -> str:
    """"prediction", or the first graph output that is not a map or a method's output."""
    names = [o.name for o in model.graph.output]
    if "prediction" in names:
        return "prediction"
    meta = onnx_io.metadata(model)
    skip = set(meta.get("vbp_rt.maps") or []) | {meta.get(k) for k in (
        "vbp_rt.vbp_output", "vbp_rt.vbp_relevance", "vbp_rt.lrp_output", "vbp_rt.lrp_relevance")}
    rest = [n for n in names if n not in skip]
    if not rest:
        raise ValueError("the ONNX model has no prediction output")
    return rest[0]


def method_graph(model, methods, eps: float | None = None, input_shape=None, path=None) -> tuple:
    """One graph with the prediction and each method's mask and relevance as outputs.

    `model` is an nn.Module (exported here) or an ONNX ModelProto (from `path`, where the LRP variant
    MODEL.lrp.onnx is looked for). `eps` is LRP's epsilon (default 100; an exported LRP variant has its own).
    Returns (ModelProto, {"prediction": name, method: (mask name, relevance name)}).
    """
    unsupported = [m for m in methods if m not in ONNX_METHODS]
    if unsupported:
        raise ValueError(f"method(s) {', '.join(unsupported)} have no onnxruntime head (onnxruntime runs "
                         f"{', '.join(ONNX_METHODS)}); run it on the torch checkpoint or a torch backend")
    if not isinstance(model, onnx.ModelProto):
        graph = (onnx_io.export_lrp(model, 100.0 if eps is None else eps, input_shape) if "lrp" in methods
                 else onnx_io.export_maps(model, input_shape))
    else:
        graph = model
        if "lrp" in methods and "vbp_rt.lrp_output" not in onnx_io.metadata(graph):
            lrp_path = onnx_io.variant_paths(path)["lrp"] if path is not None else None
            if lrp_path is None or not lrp_path.is_file():
                raise ValueError("LRP on onnxruntime needs the LRP variant written by `vbp export` "
                                 f"({lrp_path or 'MODEL.lrp.onnx'}); this ONNX model has no LRP output")
            graph = onnx_graph.load(lrp_path)
        if input_shape is not None and onnx_graph.input_chw(graph) is None:
            graph = onnx_graph.with_input_shape(graph, input_shape)
    if "vbp" in methods and "vbp_rt.vbp_output" not in onnx_io.metadata(graph):
        graph = onnx_io.append_vbp_head(graph, input_shape=input_shape)
    meta = onnx_io.metadata(graph)
    if "lrp" in methods and eps is not None and meta["vbp_rt.lrp_eps"] != eps:
        raise ValueError(f"this LRP variant was exported with eps={meta['vbp_rt.lrp_eps']}, not {eps} "
                         "(re-export with `vbp export --eps`)")
    outputs = {"prediction": prediction_output(graph)}
    for m in methods:
        outputs[m] = (meta[f"vbp_rt.{m}_output"], meta[f"vbp_rt.{m}_relevance"])
    return graph, outputs


@functools.lru_cache(maxsize=8)
def _session(path: str, mtime: float, method: str, eps: float | None):
    graph, outputs = method_graph(onnx_graph.load(path), (method,), eps, path=Path(path))
    names = [outputs["prediction"], *outputs[method]]
    kept = [o for o in graph.graph.output if o.name in names]  # only what explain returns
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    session = ort.InferenceSession(graph.SerializeToString(), cpu_session_options(),
                                   providers=["CPUExecutionProvider"])
    return session, names


def explain_onnx(path, x: torch.Tensor, method: str = "vbp", **options) -> Explanation:
    """`vbp_rt.explain` for an ONNX file, on onnxruntime CPU (VBP head appended by graph analysis; LRP from
    the MODEL.lrp.onnx variant, whose eps was fixed at export). LRP takes `eps` here, no other option."""
    extra = sorted(set(options) - {"eps"} if method == "lrp" else set(options))
    if extra:
        raise ValueError(f"on an ONNX model, method {method!r} takes {'only eps' if method == 'lrp' else 'no options'}"
                         f"; got {', '.join(extra)}")
    eps = options.get("eps")
    if isinstance(path, onnx.ModelProto):
        raise ValueError("explain() takes an ONNX file path (save the ModelProto first)")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    session, names = _session(str(path.resolve()), path.stat().st_mtime, method, eps)
    feed = {session.get_inputs()[0].name: x.detach().cpu().float().numpy()}
    pred, mask, relevance = session.run(names, feed)
    return Explanation(method, torch.from_numpy(np.asarray(pred)), torch.from_numpy(mask),
                       torch.from_numpy(relevance), {"backend": "onnxruntime", "model": str(path)})

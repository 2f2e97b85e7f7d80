"""An ONNX file as a vbp-rt model: what it expects (its input spec), which output is the prediction, the graph
with the heads a set of methods needs, and `explain()` on it (what `vbp_rt.explain` and `vbp explain` call for
.onnx files). Methods without an onnxruntime head run on the graph converted to torch (vbp_rt.onnx_torch).
What needs no torch (the metadata, the prediction output, the outputs of the heads a graph carries) is in
vbp_rt.onnx_meta: the runtime reads a cached graph with that alone.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from . import input_spec, methods, onnx_graph, onnx_io, onnx_torch
from .input_spec import InputSpec
from .methods import ONNX_METHODS
from .model_config import NetConfig, resolve_model_path
from .models import load_model
from .onnx_meta import MAX_IR_VERSION, head_outputs, metadata, prediction_output
from .result import Explanation
from .sessions import cpu_session_options, ort  # ort: onnxruntime, or an error naming the extras


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
    spec: InputSpec | None = None

    @property
    def input_shape(self) -> tuple:
        return (self.in_channels, self.height, self.width)


def onnx_config(model, input_shape=None, path=None, options=None):
    """The NetConfig stored by `vbp export`, or a ModelInfo read from the graph (input size, outputs) and the
    input spec (metadata, sidecar file beside `path`, `options`; see vbp_rt.input_spec)."""
    model = onnx_graph.load(model)
    meta = metadata(model)
    if isinstance(meta.get("vbp_rt.config"), dict):
        return NetConfig(**meta["vbp_rt.config"])
    spec = onnx_spec(model, path, options, input_shape)
    shapes = onnx_graph.tensor_shapes(onnx_graph.with_input_shape(model, spec.input_shape))
    outputs = shapes.get(prediction_output(model, spec), (None, 1))[-1] or 1
    return ModelInfo("onnx", spec.channels, spec.height, spec.width, outputs, spec.view, spec.scale, spec)


def onnx_spec(model, path=None, options=None, input_shape=None) -> InputSpec:
    """The input spec of an ONNX model: its graph (size, layout, fixed batch) updated by the metadata
    `vbp_rt.input`, the sidecar file MODEL.onnx.json beside `path` and `options`."""
    model = onnx_graph.load(model)
    chw = tuple(input_shape) if input_shape is not None else onnx_graph.input_chw(model)
    meta = metadata(model)
    info = meta.get("vbp_rt.input") if isinstance(meta.get("vbp_rt.input"), dict) else None
    if chw is None:  # symbolic height/width: the spec's size fixes them
        sized = input_spec.resolve(InputSpec(0, 0), info, path, options)
        dims = onnx_graph.input_dims(model)
        c = dims[3 if onnx_graph.image_source(model)[1] == "NHWC" else 1] or sized.channels
        if not sized.height or not sized.width:
            raise ValueError("the ONNX model's input height/width are symbolic: give input_shape=(C,H,W) "
                             "(or size=HxW in the input spec)")
        chw = (c, sized.height, sized.width)
        model = onnx_graph.with_input_shape(model, chw)
    c, h, w = chw
    if c not in (1, 3):
        raise ValueError(f"the ONNX model's image input has {c} channels; vbp-rt feeds gray (1) or colour (3) "
                         f"images (input shape {onnx_graph.input_dims(model)})")
    batch = onnx_graph.input_dims(model)[0]
    cfg = meta.get("vbp_rt.config")
    base = (input_spec.from_config(NetConfig(**cfg)) if isinstance(cfg, dict) else
            InputSpec(h, w, color="gray" if c == 1 else "rgb", layout=onnx_graph.image_source(model)[1],
                      output={"name": onnx_graph.prediction_name(model), "unit": "", "label": "output"}))
    base = replace(base, batch=batch)
    spec = input_spec.resolve(base, info, path, options)
    if spec.input_shape != (c, h, w):
        raise ValueError(f"the input spec ({spec.origin}) describes {spec.channels}-channel {spec.height}x"
                         f"{spec.width} images, the ONNX model takes (C,H,W)={(c, h, w)}")
    if spec.layout != onnx_graph.image_source(model)[1]:
        raise ValueError(f"the input spec ({spec.origin}) says layout {spec.layout}, but the graph reads its input "
                         f"as {onnx_graph.image_source(model)[1]}")
    return spec


def model_info(model, input_shape=None, options=None) -> tuple:
    """(kind, model object, path, config, spec) of a shipped name, checkpoint, .onnx file, ModelProto or
    nn.Module: what every command needs to turn frames into its input. `options` is the --input-spec text."""
    path = None
    if isinstance(model, torch.nn.Module):
        kind, obj = "torch", model
    elif isinstance(model, onnx.ModelProto):
        kind, obj = "onnx", model
    else:
        path = resolve_model_path(model)
        kind = "onnx" if path.suffix.lower() == ".onnx" else "torch"
        obj = onnx_graph.load(path) if kind == "onnx" else load_model(path)
    if kind == "onnx":
        config = onnx_config(obj, input_shape, path, options)
        spec = config.spec if isinstance(config, ModelInfo) else onnx_spec(obj, path, options, input_shape)
        return kind, obj, path, config, spec
    config = getattr(obj, "config", None)
    if config is None:
        if input_shape is None:
            raise ValueError("give input_shape=(C,H,W) for a torch model without a vbp-rt config")
        c, h, w = input_shape
        p = next(obj.parameters())
        with torch.no_grad():
            outputs = obj.eval()(torch.zeros(1, c, h, w, dtype=p.dtype, device=p.device)).shape[1]
        base = InputSpec(h, w, color="gray" if c == 1 else "rgb")
        spec = input_spec.resolve(base, None, None, options)
        config = ModelInfo(type(obj).__name__, c, h, w, outputs, spec.view, spec.scale, spec)
        return kind, obj, path, config, spec
    return kind, obj, path, config, input_spec.resolve(input_spec.from_config(config), None, path, options)


def needs_torch(model, methods, path=None) -> bool:
    """Whether some of `methods` have no onnxruntime head for this ONNX model (they run on its torch conversion):
    any method but vbp and lrp, and lrp without an LRP variant from `vbp export`."""
    if any(m not in ONNX_METHODS for m in methods):
        return True
    if "lrp" not in methods or "vbp_rt.lrp_output" in metadata(model):
        return False
    return path is None or not onnx_io.variant_paths(path)["lrp"].is_file()


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
        if "lrp" in methods and "vbp_rt.lrp_output" not in metadata(graph):
            lrp_path = onnx_io.variant_paths(path)["lrp"] if path is not None else None
            if lrp_path is None or not lrp_path.is_file():
                raise ValueError("LRP on onnxruntime needs the LRP variant written by `vbp export` "
                                 f"({lrp_path or 'MODEL.lrp.onnx'}); this ONNX model has no LRP output")
            graph = onnx_graph.load(lrp_path)
        if input_shape is not None and onnx_graph.input_chw(graph) is None:
            graph = onnx_graph.with_input_shape(graph, input_shape)
    if "vbp" in methods and "vbp_rt.vbp_output" not in metadata(graph):
        graph = onnx_io.append_vbp_head(graph, input_shape=input_shape)
    return graph, head_outputs(graph, methods, eps)


@functools.lru_cache(maxsize=8)
def _session(path: str, mtime: float, method: str, eps: float | None, input_shape: tuple):
    graph, outputs = method_graph(onnx_graph.load(path), (method,), eps, input_shape, Path(path))
    names = [outputs["prediction"], *outputs[method]]
    kept = [o for o in graph.graph.output if o.name in names]  # only what explain returns
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    session = ort.InferenceSession(graph.SerializeToString(), cpu_session_options(),
                                   providers=["CPUExecutionProvider"])
    return session, names


@functools.lru_cache(maxsize=4)
def _converted(path: str, mtime: float):
    model = onnx_graph.load(path)
    return onnx_torch.to_torch(model, prediction_output(model, onnx_spec(model, Path(path))))


def check_input(x, spec: InputSpec) -> torch.Tensor:
    """The checks the torch path makes, for a batch fed to an ONNX model in its own layout."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of shape (N,{','.join(map(str, spec.tensor_shape))}), "
                        f"got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"expected a float tensor scaled as the model expects, got dtype {x.dtype} "
                         f"(convert uint8 frames with the input spec: {spec.describe()})")
    if x.dim() != 4 or tuple(x.shape[1:]) != spec.tensor_shape:
        raise ValueError(f"expected input of shape (N,{','.join(map(str, spec.tensor_shape))}) ({spec.layout}), "
                         f"got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("input contains NaN or inf values")
    return x


def in_batches(run, x, batch: int | None) -> tuple:
    """run(x) for a model with a fixed batch: `batch` images at a time, results concatenated."""
    if batch is None or x.shape[0] == batch:
        return run(x)
    if x.shape[0] % batch:
        raise ValueError(f"the ONNX model has a fixed batch of {batch}; got {x.shape[0]} images")
    parts = [run(x[i:i + batch]) for i in range(0, x.shape[0], batch)]
    return tuple(np.concatenate(p) if isinstance(p[0], np.ndarray) else torch.cat(p) for p in zip(*parts))


def explain_onnx(path, x: torch.Tensor, method: str = "vbp", **options) -> Explanation:
    """`vbp_rt.explain` for an ONNX file. `x` is the model's input tensor (its own layout and scale; a fixed
    batch of 1 is run image by image). VBP runs on onnxruntime CPU with the head appended by graph analysis;
    LRP on the MODEL.lrp.onnx variant when there is one (its eps was fixed at export); every other method, and
    LRP without a variant, on the graph converted to torch (onnx2torch), with the method's own options."""
    if isinstance(path, onnx.ModelProto):
        raise ValueError("explain() takes an ONNX file path (save the ModelProto first)")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    key = (str(path.resolve()), path.stat().st_mtime)
    spec = onnx_spec(onnx_graph.load(path), path)
    x = check_input(x, spec)
    if method not in ONNX_METHODS or needs_torch(onnx_graph.load(path), (method,), path):
        module = _converted(*key)
        nchw = x.float() if spec.layout == "NCHW" else x.float().permute(0, 3, 1, 2)
        run = methods.get(method)
        parts = [run(module, nchw[i:i + (spec.batch or len(nchw))], **options)
                 for i in range(0, len(nchw), spec.batch or len(nchw))]
        e = parts[0] if len(parts) == 1 else Explanation(
            method, torch.cat([p.prediction for p in parts]), torch.cat([p.mask for p in parts]),
            torch.cat([p.relevance for p in parts]), {})
        e.layers.update({"backend": "torch (onnx2torch)", "model": str(path)})
        return e
    extra = sorted(set(options) - {"eps"} if method == "lrp" else set(options))
    if extra:
        raise ValueError(f"on an ONNX model, method {method!r} takes {'only eps' if method == 'lrp' else 'no options'}"
                         f"; got {', '.join(extra)}")
    session, names = _session(*key, method, options.get("eps"), spec.input_shape)
    feed = session.get_inputs()[0].name
    pred, mask, relevance = in_batches(lambda b: tuple(session.run(names, {feed: b})),
                                       x.detach().cpu().float().numpy(), spec.batch)
    return Explanation(method, torch.from_numpy(np.asarray(pred)), torch.from_numpy(mask),
                       torch.from_numpy(relevance), {"backend": "onnxruntime", "model": str(path)})


def dynamic_batch(model: onnx.ModelProto) -> tuple:
    """(model, dynamic): a copy whose image input and outputs take any batch when the graph computes batch 2
    correctly that way (a Reshape to a constant batch of 1 does not), else the model unchanged."""
    dim = onnx_graph.data_input(model).type.tensor_type.shape.dim[0]
    if not dim.HasField("dim_value"):
        return model, True
    fixed = dim.dim_value
    m = onnx.ModelProto()
    m.CopyFrom(model)
    onnx_graph.data_input(m).type.tensor_type.shape.dim[0].dim_param = "batch"
    for o in m.graph.output:
        dims = o.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == fixed:
            dims[0].dim_param = "batch"
    del m.graph.value_info[:]  # inferred shapes with the old batch
    try:
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        i = session.get_inputs()[0]
        shape = [2 if k == 0 else d for k, d in enumerate(onnx_graph.input_dims(m))]
        outs = session.run(None, {i.name: np.zeros(shape, np.float32)})
    except Exception:  # onnxruntime refuses or fails at batch 2: the graph really needs its fixed batch
        return model, False
    return (m, True) if all(np.ndim(o) and np.shape(o)[0] == 2 for o in outs) else (model, False)


def export_foreign(model, out, variants, spec: InputSpec, eps: float = 100.0, opset: int | None = None,
                   input_shape=None) -> tuple:
    """`vbp export` for an ONNX model from elsewhere: maps, vbp and (from its torch conversion) lrp variants
    next to `out`, converted to `opset` when given, with a dynamic batch when the graph allows it, and the input
    spec in the metadata. Returns ({variant: path}, chain, notes)."""
    model = onnx_graph.load(model)
    notes = []
    if opset is not None and opset != onnx_io.opset_of(model):
        try:
            model = onnx_io.version_converter.convert_version(model, opset)
        except Exception as e:  # the converter raises its own error types
            why = str(e).strip().splitlines()[-1].split(": ")[-1]
            raise ValueError(f"cannot convert the ONNX model from opset {onnx_io.opset_of(model)} to {opset} "
                             f"with onnx's version converter ({why})") from None
        model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    model, dynamic = dynamic_batch(model)
    if not dynamic:
        notes.append(f"the graph needs its fixed batch of {spec.batch}: the variants keep it")
    if input_shape is not None or onnx_graph.input_chw(model) is None:
        model = onnx_graph.with_input_shape(model, input_shape or spec.input_shape)
    prediction = prediction_output(model, spec)
    chain = onnx_graph.find_onnx_chain(model, prediction=prediction)
    info = spec.to_dict()
    if "lrp" in variants and spec.layout != "NCHW":
        raise ValueError("the LRP variant takes NCHW input; for this NHWC model run --method lrp on the .onnx "
                         "file itself (its torch conversion)")

    def meta(variant, output=prediction):
        return {"vbp_rt.format": onnx_io.ONNX_FORMAT, "vbp_rt.variant": variant,
                "vbp_rt.input": {**info, "output": {**spec.output, "name": output}}}

    built = {
        "maps": lambda: onnx_io.expose_maps(model, chain),
        "vbp": lambda: onnx_io.append_vbp_head(model, chain),
        "lrp": lambda: onnx_io.export_lrp(onnx_torch.to_torch(model, prediction), eps, spec.input_shape,
                                          opset or onnx_io.DEFAULT_OPSET),
    }
    paths = onnx_io.variant_paths(out)
    written = {}
    for v in variants:
        m = built[v]()
        onnx_io.set_metadata(m, meta(v, "prediction" if v == "lrp" else prediction))
        written[v] = onnx_io.save(m, paths[v])
    return written, chain, notes

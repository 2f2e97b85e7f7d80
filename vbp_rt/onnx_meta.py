"""An ONNX model as vbp-rt reads it without torch: loading it, its image input, its vbp-rt metadata
(`metadata_props`, JSON values; docs/onnx.md) and what that metadata names (the prediction, the heads' outputs).

The onnxruntime path with a cached graph (vbp_rt.graph_cache) needs only this; finding the maps of a graph
(vbp_rt.onnx_graph), exporting and appending heads (vbp_rt.onnx_io, vbp_rt.onnx_model) need torch.
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx

MAX_IR_VERSION = 10  # onnxruntime 1.31 refuses the IR version 14 that onnx 1.23's helper writes


def load(model) -> onnx.ModelProto:
    """An ONNX ModelProto from a path, bytes or a ModelProto (clear error for anything else)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf raises DecodeError and friends
        raise ValueError(f"{path} is not a readable ONNX model: {e}") from e


def data_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The one graph input that is not an initializer (the image batch)."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"expected an ONNX model with one image input, found {len(inputs)}: "
                         f"{', '.join(i.name for i in inputs) or 'none'}")
    return inputs[0]


def set_metadata(m: onnx.ModelProto, entries: dict) -> None:
    """Add or replace metadata_props entries (non-string values as JSON)."""
    props = {p.key: p.value for p in m.metadata_props}
    props.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in entries.items()})
    onnx.helper.set_model_props(m, props)


def metadata(model) -> dict:
    """The model's metadata_props as a dict (JSON values decoded)."""
    out = {}
    for p in load(model).metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except ValueError:
            out[p.key] = p.value
    return out


def is_onnx(model) -> bool:
    return isinstance(model, onnx.ModelProto) or (isinstance(model, (str, Path))
                                                   and str(model).lower().endswith(".onnx"))


def prediction_output(model: onnx.ModelProto, spec=None) -> str:
    """The output the input spec `spec` (vbp_rt.input_spec.InputSpec) names, else "prediction", else the first
    graph output that is not a map or a method's output."""
    names = [o.name for o in model.graph.output]
    wanted = (spec.output.get("name") if spec is not None else "") or ""
    if wanted:
        if wanted not in names:
            raise ValueError(f"the input spec names output {wanted!r}; the ONNX model's outputs are {', '.join(names)}")
        return wanted
    if "prediction" in names:
        return "prediction"
    meta = metadata(model)
    skip = set(meta.get("vbp_rt.maps") or []) | {meta.get(k) for k in (
        "vbp_rt.vbp_output", "vbp_rt.vbp_relevance", "vbp_rt.lrp_output", "vbp_rt.lrp_relevance")}
    rest = [n for n in names if n not in skip]
    if not rest:
        raise ValueError("the ONNX model has no prediction output")
    return rest[0]


def carries_heads(model: onnx.ModelProto, methods) -> bool:
    """Whether `model` runs `methods` as it is: its metadata names the head of each (vbp-rt put them in the graph)
    and its image input has fixed channels, height and width (only the batch may be symbolic)."""
    meta = metadata(model)
    dims = data_input(model).type.tensor_type.shape.dim
    return (len(dims) == 4 and all(d.HasField("dim_value") for d in dims[1:])
            and all(f"vbp_rt.{m}_output" in meta for m in methods))


def head_outputs(model: onnx.ModelProto, methods, eps: float | None = None) -> dict:
    """{"prediction": name, method: (mask name, relevance name)} of a graph with the heads of `methods`;
    a ValueError when LRP was exported with another epsilon than `eps` (None: any)."""
    meta = metadata(model)
    if "lrp" in methods and eps is not None and meta["vbp_rt.lrp_eps"] != eps:
        raise ValueError(f"this LRP variant was exported with eps={meta['vbp_rt.lrp_eps']}, not {eps} "
                         "(re-export with `vbp export --eps`)")
    outputs = {"prediction": prediction_output(model)}
    for m in methods:
        outputs[m] = (meta[f"vbp_rt.{m}_output"], meta[f"vbp_rt.{m}_relevance"])
    return outputs

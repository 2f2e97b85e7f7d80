"""ONNX export and in-graph heads: the network with its post-ReLU maps as outputs, VBP and LRP inside the graph.

`append_vbp_head(model)` works on any ONNX ReLU CNN: the chain comes from `onnx_graph.find_onnx_chain`, and the
head follows `vbp_rt.methods.vbp.backproject` step by step (channel mean, all-ones transposed convs of each
layer's geometry, point-wise products, per-step rescale by the per-image max, final per-image min-max).
"""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper, version_converter
from torch import nn

from . import input_spec, onnx_graph
from .graph import Chain, SpatialOp, find_torch_chain
from .input_spec import InputSpec
from .methods.lrp import epsilon_lrp
from .methods.vbp import backproject, backproject_dag
from .onnx_meta import MAX_IR_VERSION, set_metadata
from .onnx_meta import metadata  # noqa: F401 (callers read exported files' metadata as onnx_io.metadata)
from .upsample import natural_size

MIN_OPSET = 9  # the head uses Where (opset 9); older models are converted first
DEFAULT_OPSET = 17
ONNX_FORMAT = "vbp-rt-onnx"
VARIANTS = ("maps", "vbp", "lrp")
VBP_OUTPUT, VBP_RELEVANCE = "vbp_mask", "vbp_relevance"
LRP_OUTPUT, LRP_RELEVANCE = "lrp_mask", "lrp_relevance"


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ValueError("the ONNX model imports no default-domain opset")


class GraphBuilder:
    """Appends nodes and constants to a graph under fresh, prefixed names; opset-aware where ONNX changed."""

    def __init__(self, model: onnx.ModelProto, prefix: str):
        self.model, self.prefix = model, prefix
        self.opset = opset_of(model)
        g = model.graph
        self.taken = {t for n in g.node for t in list(n.input) + list(n.output)}
        self.taken |= {i.name for i in g.initializer} | {i.name for i in g.input} | {n.name for n in g.node}
        self._consts: dict = {}

    def fresh(self, base: str) -> str:
        name, k = f"{self.prefix}/{base}", 1
        while name in self.taken:
            name, k = f"{self.prefix}/{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def const(self, value, dtype=np.float32, base: str = "const") -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self.fresh(base)
            self.model.graph.initializer.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def op(self, op_type: str, inputs, base: str | None = None, **attrs) -> str:
        out = self.fresh(base or op_type.lower())
        self.model.graph.node.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def reduce(self, op_type: str, x: str, axes, keepdims: int = 1, base: str | None = None) -> str:
        if self.opset >= 18:
            return self.op(op_type, [x, self.const(list(axes), np.int64, "axes")], base, keepdims=keepdims)
        return self.op(op_type, [x], base, axes=list(axes), keepdims=keepdims)

    def reshape(self, x: str, shape, base: str | None = None) -> str:
        return self.op("Reshape", [x, self.const(list(shape), np.int64, "shape")], base)

    def where_positive(self, x: str, then: str, otherwise: str) -> str:
        positive = self.op("Greater", [x, self.const(0.0)])
        return self.op("Where", [positive, then, otherwise])


def onnx_channel_mean(b: GraphBuilder, x: str, channels: int) -> str:
    """(N,C,h,w) -> (N,1,h,w) mean over channels, as a 1x1 convolution with weights 1/C.

    onnxruntime keeps a convolution on the blocked (NCHWc) layout the network's convolutions write, so the
    map is read once in place; a ReduceMean over axis 1 first converts every map back to NCHW and ran
    about 3x slower here (docs/onnx.md).
    """
    return b.op("Conv", [x, b.const(np.full((1, channels, 1, 1), 1.0 / channels), base="mean_weight")], "mean")


def onnx_upscale(b: GraphBuilder, m: str, op: SpatialOp) -> str:
    """All-ones transposed conv of a (N,1,h,w) map with `op`'s geometry, landing exactly on op.in_hw
    (the same result as vbp_rt.upsample.ones_transposed_conv)."""
    pads, out_pad = list(op.padding), [0, 0]
    for ax in range(2):
        extra = op.in_hw[ax] - natural_size(op.out_hw[ax], op.kernel[ax], op.stride[ax], op.padding[ax],
                                            op.padding[ax + 2], op.dilation[ax])
        if extra >= 0:
            out_pad[ax] = extra
        else:  # a ceil-mode pooling window ran past the map: crop the end instead
            pads[ax + 2] -= extra
    ones = b.const(np.ones((1, 1, *op.kernel)), base="ones")
    return b.op("ConvTranspose", [m, ones], "upscale", strides=list(op.stride), dilations=list(op.dilation),
                pads=pads, output_padding=out_pad)


def onnx_rescale(b: GraphBuilder, m: str) -> str:
    """Divide each image by its max (as vbp._rescale)."""
    peak = b.reduce("ReduceMax", m, [2, 3])
    return b.op("Div", [m, b.where_positive(peak, peak, b.const(1.0))], "rescaled")


def onnx_normalize01(b: GraphBuilder, m: str) -> str:
    """Per-image min-max of (N,H,W) to [0,1] (as vbp_rt.result.normalize01). A constant image has
    m - min = 0 exactly, so dividing by 1 there gives the zeros normalize01 returns."""
    lo = b.reduce("ReduceMin", m, [1, 2])
    span = b.op("Sub", [b.reduce("ReduceMax", m, [1, 2]), lo])
    return b.op("Div", [b.op("Sub", [m, lo]), b.where_positive(span, span, b.const(1.0))], "mask")


class OnnxSteps:
    """vbp_rt.methods.vbp.backproject_dag's steps as graph-building ones (maps (N,1,h,w), log scales (N,1,1,1))."""

    def __init__(self, b: GraphBuilder):
        self.b = b
        self.one, self.zero = b.const(1.0), b.const(0.0)

    def upscale(self, m, op):
        return onnx_upscale(self.b, m, op)

    def mul(self, x, y):
        return self.b.op("Mul", [x, y])

    def times(self, m, k: int):
        return self.b.op("Mul", [m, self.b.const(float(k))])

    def sum(self, terms):
        if len(terms) == 1:
            return terms[0]
        b = self.b
        top = b.op("Max", [l for _, l in terms])
        parts = [b.op("Mul", [m, b.op("Exp", [b.op("Sub", [l, top])])]) for m, l in terms]
        total = parts[0]
        for p in parts[1:]:
            total = b.op("Add", [total, p])
        return total, top

    def rescale(self, m, log_scale):
        b = self.b
        peak = b.reduce("ReduceMax", m, [2, 3])
        safe = b.where_positive(peak, peak, b.const(1.0))
        return b.op("Div", [m, safe], "rescaled"), b.op("Add", [log_scale, b.op("Log", [safe])])


def vbp_head(b: GraphBuilder, chain: Chain) -> tuple:
    """Nodes computing VBP from the chain's map tensors with vbp_rt.methods.vbp.backproject's loop (or, for a
    network with branches, backproject_dag's).

    Returns the names of (mask (N,H,W) in [0,1], relevance (N,H,W), the channel means)."""
    averages = [onnx_channel_mean(b, link.name, link.shape[0]) for link in chain.links]
    if chain.is_chain:
        m, _ = backproject(averages, chain, upscale=lambda m, op: onnx_upscale(b, m, op),
                           combine=lambda m, a: onnx_rescale(b, b.op("Mul", [m, a])),
                           start=lambda m: onnx_rescale(b, m))
    else:
        m, _ = backproject_dag(averages, chain, OnnxSteps(b))
    h, w = chain.input_shape[1:]
    relevance = b.reshape(m, [0, h, w], "relevance")
    return onnx_normalize01(b, relevance), relevance, averages


def _keep_outputs(m: onnx.ModelProto, drop) -> None:
    kept = [o for o in m.graph.output if o.name not in drop]
    del m.graph.output[:]
    m.graph.output.extend(kept)


def append_vbp_head(model, chain: Chain | None = None, input_shape=None) -> onnx.ModelProto:
    """A copy of any ONNX ReLU CNN that also outputs its VisualBackProp mask (N,H,W) in [0,1] as "vbp_mask"
    and the unnormalized map as "vbp_relevance".

    The chain comes from graph analysis unless given. The maps the head reads stop being graph outputs (so
    onnxruntime can reuse their memory); every other output stays.
    """
    model = onnx_graph.load(model)
    if chain is None:
        chain = onnx_graph.find_onnx_chain(model, input_shape)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    taken = {VBP_OUTPUT, VBP_RELEVANCE} & {o.name for o in m.graph.output}
    if taken:
        raise ValueError(f"the ONNX model already has output(s) {', '.join(sorted(taken))} (it has a VBP head)")
    if opset_of(m) < MIN_OPSET:
        m = version_converter.convert_version(m, MIN_OPSET)
    if onnx_graph.data_input(m).type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ValueError("the VBP head is built for float32 models; this ONNX model's input is not float32")
    b = GraphBuilder(m, "vbp")
    mask, relevance, means = vbp_head(b, chain)
    _keep_outputs(m, set(chain.names))
    for tensor, name in ((mask, VBP_OUTPUT), (relevance, VBP_RELEVANCE)):
        m.graph.node.append(helper.make_node("Identity", [tensor], [name], name=name))
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                            [_batch_dim(m), *chain.input_shape[1:]]))
    m.ir_version = min(m.ir_version, MAX_IR_VERSION)
    set_metadata(m, {"vbp_rt.vbp_output": VBP_OUTPUT, "vbp_rt.vbp_relevance": VBP_RELEVANCE, "vbp_rt.vbp_means": means})
    return m


def expose_maps(model, chain: Chain | None = None, input_shape=None) -> onnx.ModelProto:
    """A copy of any ONNX ReLU CNN with every post-ReLU conv map of its chain as an extra graph output."""
    model = onnx_graph.load(model)
    if chain is None:
        chain = onnx_graph.find_onnx_chain(model, input_shape)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for link in chain.links:
        if link.name not in have:
            m.graph.output.append(helper.make_tensor_value_info(link.name, TensorProto.FLOAT,
                                                                [_batch_dim(m), *link.shape]))
    m.ir_version = min(m.ir_version, MAX_IR_VERSION)
    set_metadata(m, {"vbp_rt.maps": chain.names})
    return m


def _batch_dim(m: onnx.ModelProto):
    d = onnx_graph.data_input(m).type.tensor_type.shape.dim[0]
    return d.dim_value if d.HasField("dim_value") else (d.dim_param or "batch")


class _WithMaps(nn.Module):
    """The model's prediction and the post-ReLU map of every chain link, for export."""

    def __init__(self, model: nn.Module, names):
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, x):
        modules = dict(self.model.named_modules())
        maps: dict = {}
        handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: maps.setdefault(n, []).append(out))
                   for n in dict.fromkeys(self.names)]
        try:
            pred = self.model(x)
        finally:
            for h in handles:
                h.remove()
        seen: dict = {}
        outs = []
        for n in self.names:  # a ReLU module called twice (torchvision blocks) gives one map per call
            outs.append(maps[n][seen.get(n, 0)])
            seen[n] = seen.get(n, 0) + 1
        return (pred, *outs)


class _Lrp(nn.Module):
    """prediction, LRP mask and relevance from vbp_rt.methods.lrp, for export."""

    def __init__(self, model: nn.Module, eps: float):
        super().__init__()
        self.model, self.eps = model, eps

    def forward(self, x):
        e = epsilon_lrp(self.model, x, eps=self.eps)
        return e.prediction, e.mask, e.relevance


def map_output_names(names) -> list:
    """Graph output names for the chain's maps: the layer name, with ':k' for a module's k-th later call."""
    seen: dict = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        out.append(n if k == 0 else f"{n}:{k + 1}")
        seen[n] = k + 1
    return out


def input_info(model: nn.Module, input_shape=None) -> dict:
    """What the network expects, for the ONNX metadata: its input spec (vbp_rt.input_spec) as JSON."""
    cfg = getattr(model, "config", None)
    if cfg is not None:
        return input_spec.from_config(cfg).to_dict()
    c, h, w = input_shape
    return InputSpec(h, w, color="gray" if c == 1 else "rgb").to_dict()


def _torch_export(wrapper: nn.Module, model: nn.Module, input_shape, output_names, opset: int) -> onnx.ModelProto:
    was_training = model.training
    p = next(model.parameters(), None)
    x = torch.rand(2, *input_shape, dtype=p.dtype if p is not None else torch.float32)
    buf = io.BytesIO()
    names = ["input", *output_names]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper.eval(), (x,), buf, dynamo=False, input_names=["input"],
                              output_names=list(output_names), opset_version=opset,
                              dynamic_axes={n: {0: "batch"} for n in names})
    finally:
        model.train(was_training)
    m = onnx.load_from_string(buf.getvalue())
    m.ir_version = min(m.ir_version, MAX_IR_VERSION)
    return m


def _model_shape(model: nn.Module, input_shape):
    if input_shape is not None:
        return tuple(input_shape)
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ValueError("give input_shape=(C,H,W) for a model without a vbp-rt config")
    return tuple(cfg.input_shape)


def _common_meta(model: nn.Module, shape, variant: str) -> dict:
    cfg = getattr(model, "config", None)
    meta = {"vbp_rt.format": ONNX_FORMAT, "vbp_rt.variant": variant, "vbp_rt.input": input_info(model, shape)}
    if cfg is not None:
        meta["vbp_rt.config"] = asdict(cfg)
    return meta


def export_maps(model: nn.Module, input_shape=None, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The network with its prediction ("prediction") and every post-ReLU conv map as extra outputs named
    after the layer (e.g. "features.2"); dynamic batch."""
    shape = _model_shape(model, input_shape)
    chain = find_torch_chain(model, shape)
    if not chain.is_chain:  # maps of a branching network: found again in the exported graph, named by it
        m = expose_maps(_torch_export(model, model, shape, ["prediction"], opset))
        set_metadata(m, _common_meta(model, shape, "maps"))
        return m
    names = map_output_names(chain.names)
    m = _torch_export(_WithMaps(model, chain.names), model, shape, ["prediction", *names], opset)
    set_metadata(m, {**_common_meta(model, shape, "maps"), "vbp_rt.maps": names})
    return m


def export_vbp(model: nn.Module, input_shape=None, opset: int = DEFAULT_OPSET, maps=None) -> onnx.ModelProto:
    """The network with VBP computed inside the graph: outputs "prediction", "vbp_mask", "vbp_relevance".
    `maps` is this model's export_maps() when already made."""
    m = append_vbp_head(maps if maps is not None else export_maps(model, input_shape, opset))
    set_metadata(m, {"vbp_rt.variant": "vbp", "vbp_rt.maps": []})
    return m


def export_lrp(model: nn.Module, eps: float = 100.0, input_shape=None, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The network with epsilon-LRP inside the graph (traced from vbp_rt.methods.lrp): outputs "prediction",
    "lrp_mask" (N,H,W in [0,1]) and "lrp_relevance" (float64)."""
    shape = _model_shape(model, input_shape)
    m = _torch_export(_Lrp(model, eps), model, shape, ["prediction", LRP_OUTPUT, LRP_RELEVANCE], opset)
    set_metadata(m, {**_common_meta(model, shape, "lrp"), "vbp_rt.lrp_eps": eps, "vbp_rt.lrp_output": LRP_OUTPUT,
                  "vbp_rt.lrp_relevance": LRP_RELEVANCE})
    return m


def variant_paths(out) -> dict:
    """MODEL.onnx (or MODEL.vbp.onnx, MODEL.lrp.onnx) -> {"maps": MODEL.onnx, "vbp": MODEL.vbp.onnx,
    "lrp": MODEL.lrp.onnx}."""
    out = Path(out)
    stem = out.name
    for suffix in (".vbp.onnx", ".lrp.onnx", ".onnx"):  # any variant's path names the same family
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
            break
    return {v: out.with_name(f"{stem}.onnx" if v == "maps" else f"{stem}.{v}.onnx") for v in VARIANTS}


def save(model: onnx.ModelProto, path) -> Path:
    """Check and write an ONNX model atomically (temp file + rename)."""
    path = Path(path)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give it a normal file's permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def export(model: nn.Module, out, variants=VARIANTS, eps: float = 100.0, input_shape=None,
           opset: int = DEFAULT_OPSET) -> dict:
    """Write the chosen variants next to each other (see variant_paths); returns {variant: path}."""
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown export variant(s) {', '.join(sorted(unknown))}; known: {', '.join(VARIANTS)}")
    paths = variant_paths(out)
    written = {}
    maps = export_maps(model, input_shape, opset) if {"maps", "vbp"} & set(variants) else None
    if "maps" in variants:
        written["maps"] = save(maps, paths["maps"])
    if "vbp" in variants:
        written["vbp"] = save(export_vbp(model, maps=maps), paths["vbp"])
    if "lrp" in variants:
        written["lrp"] = save(export_lrp(model, eps, input_shape, opset), paths["lrp"])
    return written

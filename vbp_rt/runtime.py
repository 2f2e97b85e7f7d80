"""`Runtime`: one object per (model, backend) that turns frames into (prediction, masks, per-stage timings).

Backends: "ort-cpu", "ort-cuda" (onnxruntime; the VBP and LRP heads run inside the graph), "torch-cpu",
"torch-cuda" (vbp_rt.explain and the method modules), "auto" (the fastest this machine really runs).

onnxruntime runs in stages, each its own session on the same device: "forward" (the network, and the
channel means VBP takes from its maps as they are produced) and one head per method (the rest of that
method's graph). What a head reads passes between sessions as device-resident OrtValues (IOBinding), so on
a GPU only the frame goes up and only the prediction and the masks come back. `timings` are wall-clock
milliseconds of each stage (synchronized with the device) and of the whole call; on torch, "forward" is the
forward pass with VBP's channel-mean hooks, and a method other than VBP runs its own forward inside
`vbp_rt.explain`, so its time includes it. See docs/onnx.md.

On the GPU a Runtime computes in exact float32 unless created with `tf32=True` (vbp_rt.precision). A torch
backend runs its own copy of the module: the caller's module is neither moved nor switched to eval mode.

A checkpoint or shipped model whose graph is in vbp_rt.graph_cache starts on onnxruntime without importing torch:
loading a model into torch, exporting it and the torch engine live in vbp_rt.runtime_torch (and vbp_rt.onnx_model),
imported only when they are needed.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from importlib import metadata as package_metadata

import numpy as np
import onnx
from onnx import utils as onnx_utils

from . import graph_cache, input_spec
from .data import preprocess
from .methods import ONNX_METHODS
from .model_config import NetConfig, resolve_model_path
from .onnx_meta import MAX_IR_VERSION, carries_heads, data_input, head_outputs, is_onnx, metadata
from .sessions import (cpu_session_options, cuda_provider_options, node_placement, ort, ort_cuda_status,
                       ort_cuda_works)

BACKENDS = ("ort-cuda", "torch-cuda", "ort-cpu", "torch-cpu")  # "auto" tries them in this order
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}
log = logging.getLogger(__name__)


@dataclass
class RunResult:
    prediction: np.ndarray  # (N, outputs) float32
    masks: dict  # method -> (N,H,W) float32 in [0,1]
    timings: dict  # milliseconds: "forward", one per method, "total"


def available_backends() -> list:
    """The backends this machine really runs, fastest first."""
    ok = {"ort-cuda": ort_cuda_works(), "torch-cuda": torch_sees_cuda(),
          "ort-cpu": "CPUExecutionProvider" in ort.get_available_providers(), "torch-cpu": True}
    return [b for b in BACKENDS if ok[b]]


def torch_sees_cuda() -> bool:
    """torch.cuda.is_available(), answered without importing torch where the installed torch is a CPU-only build
    (its version ends in "+cpu", as PyTorch's CPU wheels are labelled)."""
    try:
        version = package_metadata.version("torch")
    except package_metadata.PackageNotFoundError:
        return False
    return not version.endswith("+cpu") and _torch_part().cuda_available()


def _torch_part():
    """vbp_rt.runtime_torch: loading a model into torch, and the torch engine."""
    from . import runtime_torch  # deferred: keeps torch off the cached onnxruntime path (docs/onnx.md)
    return runtime_torch


def _cache_lookup(model, methods, eps, input_shape, spec) -> tuple:
    """(key, source or None) for a checkpoint file or shipped model name (vbp_rt.graph_cache): on a hit the source
    is what runtime_torch.load_source gives, made from the cached graph, with no checkpoint loaded into torch,
    nothing exported and torch not imported. (None, None) for anything else (modules, ONNX files, methods without
    an onnxruntime head)."""
    if not isinstance(model, (str, os.PathLike)) or is_onnx(model) or any(m not in ONNX_METHODS for m in methods):
        return None, None
    path = resolve_model_path(model)
    key = graph_cache.key(path, methods=sorted(methods), eps=eps, input_shape=input_shape, spec=spec)
    graph = graph_cache.load(key)
    config = metadata(graph).get("vbp_rt.config") if graph is not None else None
    if not isinstance(config, dict):
        return key, None
    config = NetConfig(**config)
    return key, ("onnx", graph, None, config, input_spec.resolve(input_spec.from_config(config), None, path, spec))


def _merge(parts: list) -> tuple:
    """Results of a fixed-batch model run in pieces, as one batch (timings added up)."""
    if len(parts) == 1:
        return parts[0]
    preds, masks, timings = zip(*parts)
    return (np.concatenate(preds), {m: np.concatenate([p[m] for p in masks]) for m in masks[0]},
            {k: sum(t[k] for t in timings) for k in timings[0]})


class _Stage:
    """One onnxruntime session of the staged graph, with its IOBinding."""

    def __init__(self, model: onnx.ModelProto, providers, options, device: str):
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        self.device = device
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.binding = self.session.io_binding()


class _OrtEngine:
    """The forward session and one head session per method, on CPU or CUDA."""

    def __init__(self, obj, path, methods, device, threads, spinning, cuda_graph, eps, input_shape, tf32=False,
                 keep=None):
        """`keep(graph)` is called with the graph (with its heads) once its sessions run (the graph cache)."""
        if cuda_graph and device != "cuda":
            raise ValueError("cuda_graph=True needs onnxruntime on CUDA (backend ort-cuda)")
        t0 = time.perf_counter()
        if isinstance(obj, onnx.ModelProto) and carries_heads(obj, methods):  # a cached graph: runs as it is
            graph, names = obj, head_outputs(obj, methods, eps)
        else:
            from . import onnx_model  # deferred: keeps torch off the cached onnxruntime path (exports need torch)
            graph, names = onnx_model.method_graph(obj, methods, eps, input_shape, path)
        self.startup = {"export": (time.perf_counter() - t0) * 1000.0}  # ms: torch.onnx export and the heads
        outputs = {"prediction": names["prediction"], **{m: names[m][0] for m in methods}}
        self.device = device
        self.cuda_graph = cuda_graph
        if self.cuda_graph and "lrp" in methods:
            raise ValueError("cuda_graph runs VBP only: the LRP graph computes shapes on the host, which a captured "
                             "CUDA graph cannot contain")
        if device == "cuda":
            ok, why = ort_cuda_status()
            if not ok:
                raise ValueError(f"onnxruntime cannot run CUDA here: {why} (vbp doctor says more)")
            providers = [("CUDAExecutionProvider", cuda_provider_options(tf32, self.cuda_graph)),
                         "CPUExecutionProvider"]
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        else:
            providers, options = ["CPUExecutionProvider"], cpu_session_options(threads, spinning)
        self.input = data_input(graph).name
        self.prediction = outputs["prediction"]
        means = metadata(graph).get("vbp_rt.vbp_means", []) if "vbp" in methods else []
        parts = split_stages(graph, self.prediction, {m: outputs[m] for m in methods}, means)
        self.placement = self._check_placement(parts, tf32) if device == "cuda" else {}
        t0 = time.perf_counter()
        try:
            self.stages = {name: _Stage(part, providers, options, device) for name, part in parts.items()}
        except Exception as e:  # onnxruntime's own Fail type; with cuda_graph: capture refused
            if not self.cuda_graph:
                raise
            on_cpu = {k: p.nodes.get("CPUExecutionProvider") or p.on("CPUExecutionProvider")
                      for k, p in self.placement.items() if p is not None and p.on("CPUExecutionProvider")}
            raise ValueError(f"onnxruntime refused CUDA graphs: {str(e).splitlines()[0]}"
                             + (f" (nodes on the CPU: {on_cpu})" if on_cpu else "")) from e
        self.startup["sessions"] = (time.perf_counter() - t0) * 1000.0
        self.outputs = outputs
        runs_on = self.stages["forward"].session.get_providers()[0]
        if device == "cuda" and runs_on != "CUDAExecutionProvider":
            raise ValueError(f"onnxruntime could not start CUDA (the session runs on {runs_on}); "
                             "use backend='ort-cpu' or fix the CUDA/cuDNN installation (vbp doctor says more)")
        self.results = {self.prediction, *(outputs[m] for m in methods)}
        self.output_device = output_devices({k: st.inputs for k, st in self.stages.items()},
                                            {k: st.outputs for k, st in self.stages.items()}, self.results, device)
        self._buffers = None
        if keep is not None:
            keep(graph)

    def _check_placement(self, parts: dict, tf32: bool) -> dict:
        """Where onnxruntime puts each stage's nodes on CUDA ({stage: Placement}, from a throwaway session
        with verbose logging). Nodes on the CPU are logged. (For CUDA graphs onnxruntime itself decides:
        it accepts CPU nodes that only compute shapes as long as no copy between host and device is needed.)"""
        providers = [("CUDAExecutionProvider", cuda_provider_options(tf32, False)), "CPUExecutionProvider"]
        placement = {}
        for name, part in parts.items():
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            p = placement[name] = node_placement(part.SerializeToString(), providers, options)
            on_cpu = p.on("CPUExecutionProvider") if p is not None else 0
            if on_cpu:
                listed = ", ".join(p.nodes.get("CPUExecutionProvider", [])[:8]) or "all of them"
                log.warning("ort-cuda: %d node(s) of the %s stage run on the CPU: %s", on_cpu, name, listed)
        return placement

    def run(self, x: np.ndarray, methods) -> tuple:
        if self.cuda_graph:
            return self._run_captured(x, methods)
        timings, masks = {}, {}
        frame = ort.OrtValue.ortvalue_from_numpy(x, self.device, 0)  # on the device once, for every stage
        values = self._run_stage("forward", {self.input: frame}, timings)
        for m in methods:
            feeds = {name: frame if name == self.input else values[name] for name in self.stages[m].inputs}
            masks[m] = self._run_stage(m, feeds, timings)[self.outputs[m]].numpy()
        return values[self.prediction].numpy(), masks, timings

    def _run_stage(self, key: str, feeds: dict, timings: dict) -> dict:
        """Bind and run one stage: results come back to the host, what a later stage reads stays on the device."""
        b = self.stages[key].binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        for name, value in feeds.items():
            b.bind_ortvalue_input(name, value)
        for name in self.stages[key].outputs:
            b.bind_output(name, self.output_device[name], 0)
        return self._timed(key, timings)

    def _timed(self, key: str, timings: dict) -> dict:
        stage = self.stages[key]
        t0 = time.perf_counter()
        stage.binding.synchronize_inputs()
        stage.session.run_with_iobinding(stage.binding)
        stage.binding.synchronize_outputs()  # the device finished: the time is the stage's real latency
        timings[key] = (time.perf_counter() - t0) * 1000.0
        return dict(zip(stage.outputs, stage.binding.get_outputs()))

    def _run_captured(self, x: np.ndarray, methods) -> tuple:
        """CUDA graphs replay fixed device addresses: every input and output is a buffer allocated once."""
        if self._buffers is None:
            self._allocate(x.shape)
        elif self._buffers[self.input].shape() != list(x.shape):
            raise ValueError(f"with cuda_graph=True the input shape is fixed at the first run "
                             f"{tuple(self._buffers[self.input].shape())}; got {x.shape} (create another Runtime)")
        self._buffers[self.input].update_inplace(x)
        timings, masks = {}, {}
        self._timed("forward", timings)
        for m in methods:
            self._timed(m, timings)
            masks[m] = self._buffers[self.outputs[m]].numpy()
        return self._buffers[self.prediction].numpy(), masks, timings

    def _allocate(self, shape) -> None:
        buffers = {self.input: ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, "cuda", 0)}
        for stage in self.stages.values():
            for o in stage.session.get_outputs():
                dims = [shape[0] if k == 0 else d for k, d in enumerate(o.shape)]
                if not all(isinstance(d, int) for d in dims):
                    raise ValueError(f"cuda_graph needs static shapes; output {o.name} has shape {o.shape}")
                buffers[o.name] = ort.OrtValue.ortvalue_from_shape_and_type(dims, _NUMPY_TYPES[o.type], "cuda", 0)
        for stage in self.stages.values():
            for name in stage.inputs:
                stage.binding.bind_ortvalue_input(name, buffers[name])
            for name in stage.outputs:
                stage.binding.bind_ortvalue_output(name, buffers[name])
        self._buffers = buffers

    @property
    def providers(self) -> list:
        return self.stages["forward"].session.get_providers()


def output_devices(stage_inputs: dict, stage_outputs: dict, results, device: str) -> dict:
    """Where each stage output is bound: on the host when only the caller reads it (the masks), on the
    device when a later stage reads it (maps, channel means, and the prediction the LRP head takes), so
    that nothing goes up to the device twice. {output name: "cpu" | device}."""
    read_by_stages = {name for names in stage_inputs.values() for name in names}
    return {name: device if name in read_by_stages or name not in results else "cpu"
            for names in stage_outputs.values() for name in names}


def split_stages(graph: onnx.ModelProto, prediction: str, method_outputs: dict, forward_outputs=()) -> dict:
    """Cut a graph into "forward" (what `prediction` and `forward_outputs` need) and one head per method
    (the rest of that method's output's ancestry, reading what it needs from the forward stage's outputs).
    Returns {stage: ModelProto}."""
    inferred = onnx.shape_inference.infer_shapes(graph)
    producer = {o: n for n in inferred.graph.node for o in n.output}
    inits = {i.name for i in inferred.graph.initializer}
    source = data_input(inferred).name

    def ancestry(tensors) -> list:
        seen, todo, nodes = set(), list(tensors), []
        while todo:
            n = producer.get(todo.pop())
            if n is None or id(n) in seen:
                continue
            seen.add(id(n))
            nodes.append(n)
            todo.extend(n.input)
        return nodes

    forward = {id(n) for n in ancestry([prediction, *forward_outputs])}
    boundary = {}
    for method, out in method_outputs.items():
        head = [n for n in ancestry([out]) if id(n) not in forward]
        produced = {o for n in head for o in n.output}
        boundary[method] = sorted({t for n in head for t in n.input if t and t not in produced and t not in inits})
    cross = sorted({t for ts in boundary.values() for t in ts} - {source, prediction})
    ex = onnx_utils.Extractor(inferred)
    parts = {"forward": ex.extract_model([source], [prediction, *cross])}
    for method, out in method_outputs.items():
        parts[method] = ex.extract_model(boundary[method], [out])
    for p in parts.values():
        p.ir_version = min(p.ir_version, MAX_IR_VERSION)
    return parts


class Runtime:
    """A model on a backend: `run(images)` -> RunResult(prediction, masks, timings).

    model: shipped model name, checkpoint path, .onnx path (any ONNX ReLU CNN) or nn.Module.
    backend: "auto" | "ort-cpu" | "ort-cuda" | "torch-cpu" | "torch-cuda". `backend` afterwards says what
    really runs (for onnxruntime, decided from the created session's providers).
    threads: CPU threads (default: physical cores). spinning: let idle onnxruntime threads spin (lower
    latency on otherwise idle cores, worse when sharing cores). cuda_graph: capture the onnxruntime CUDA
    graphs (ort-cuda, VBP only; the input shape is fixed at the first run; with "auto" only ort-cuda is
    tried, so the option is never dropped). eps: epsilon of LRP (default 100; an exported LRP variant has
    its own). input_shape: (C,H,W) for models that do not say it themselves. tf32: on the GPU, let
    convolutions and matrix products use TensorFloat-32 (faster on Ampere and newer, relative errors ~1e-3);
    default exact float32 (vbp_rt.precision). spec: the model's input spec as --input-spec text or a dict, over
    its metadata and sidecar file (vbp_rt.input_spec); `self.spec` is the one in use (`spec.origin` says where
    it came from). A model with a fixed batch runs a larger batch in pieces of that size.

    With backend="auto", a backend that fails to start is skipped; `skipped` lists each with its reason.

    A checkpoint or shipped model on onnxruntime starts from its exported graph in vbp_rt.graph_cache when an
    earlier Runtime stored it (`graph_cached` says so). `startup` holds what starting took, in ms: "cache" (key
    and lookup), "load" (loading the checkpoint, or reading the cached graph's config), "export" (the graph
    with its heads) and "sessions" (onnxruntime sessions); torch backends have only the first two.
    """

    def __init__(self, model, backend: str = "auto", methods=("vbp",), threads: int | None = None, *,
                 spinning: bool = False, cuda_graph: bool = False, eps: float | None = None, input_shape=None,
                 tf32: bool = False, spec=None):
        self.methods = tuple(methods)
        self.tf32 = tf32
        if cuda_graph and backend not in ("auto", "ort-cuda"):
            raise ValueError(f"cuda_graph=True runs on onnxruntime's CUDA provider (backend ort-cuda), not {backend}")
        self._auto = backend == "auto"  # with cuda_graph, auto tries ort-cuda alone, skipping it when it fails
        backend = "ort-cuda" if cuda_graph else backend
        t0 = time.perf_counter()
        key, cached = (_cache_lookup(model, self.methods, eps, input_shape, spec)
                       if self._candidates(backend, "torch")[0].startswith("ort") else (None, None))
        self._cache_ms = (time.perf_counter() - t0) * 1000.0
        self.skipped = []
        self.graph_cached = cached is not None  # started from vbp_rt.graph_cache, without torch's export
        if cached is not None:
            try:
                if self._start(backend, cached, input_shape, threads, spinning, cuda_graph, eps):
                    return
            except Exception as e:  # a cached graph that does not start is rebuilt below, never fatal by itself
                log.warning("graph cache: the cached graph did not start (%s); exporting again", e)
        keep = (lambda graph: graph_cache.store(key, graph)) if key is not None else None
        self.graph_cached = False
        if not self._start(backend, lambda: _torch_part().load_source(model, input_shape, self.methods, spec),
                           input_shape, threads, spinning, cuda_graph, eps, keep):
            raise ValueError(f"no backend can run this model with methods {', '.join(self.methods)}: "
                             + "; ".join(self.skipped))

    def _start(self, backend, source, input_shape, threads, spinning, cuda_graph, eps, keep=None) -> bool:
        """The first candidate backend that starts on `source` (see runtime_torch.load_source) becomes self.engine;
        False when none does (reasons in self.skipped)."""
        t0 = time.perf_counter()
        kind, obj, path, self.config, self.spec = source() if callable(source) else source
        model_ms = (time.perf_counter() - t0) * 1000.0
        input_shape = input_shape or self.spec.input_shape
        self.view = self._view()
        for name in self._candidates(backend, kind):
            try:
                self.engine = self._engine(name, kind, obj, path, threads, spinning, cuda_graph, eps, input_shape,
                                           keep)
            except Exception as e:  # onnxruntime's errors derive from Exception only; torch.onnx's from RuntimeError
                if not self._auto:
                    raise
                self.skipped.append(f"{name}: {e}")
                continue
            self.backend = name
            self.startup = {"cache": self._cache_ms, "load": model_ms, **self.engine.startup}
            return True
        return False

    def _view(self):
        """The camera view feeding this model (None when the model's size is not one of the known views)."""
        name = getattr(self.config, "view", "")
        view = preprocess.view_for(name, self.config.height) if name in preprocess.VIEWS else None
        return view if view is not None and view.width == self.config.width else None

    def _candidates(self, backend: str, kind: str) -> list:
        if backend != "auto":
            if backend not in BACKENDS:
                raise ValueError(f"unknown backend {backend!r}; known: auto, {', '.join(BACKENDS)}")
            if kind == "onnx" and backend.startswith("torch"):
                raise ValueError(f"an ONNX model runs on onnxruntime (ort-cpu, ort-cuda), not {backend}")
            return [backend]
        names = available_backends()
        if kind == "onnx":
            names = [b for b in names if b.startswith("ort")]
        if any(m not in ONNX_METHODS for m in self.methods):
            names = [b for b in names if b.startswith("torch")] or names
        return names

    def _engine(self, name, kind, obj, path, threads, spinning, cuda_graph, eps, input_shape, keep=None):
        lib, device = name.split("-")
        if lib == "ort":
            return _OrtEngine(obj, path, self.methods, device, threads, spinning, cuda_graph, eps, input_shape,
                              self.tf32, keep=keep if kind == "torch" else None)
        return _torch_part().TorchEngine(obj, device, threads, {"lrp": {"eps": eps}} if eps is not None else {},
                                         self.tf32)

    @property
    def providers(self) -> list:
        """What runs underneath: onnxruntime's session providers, or the torch device."""
        return self.engine.providers

    @property
    def placement(self) -> dict:
        """On ort-cuda: {stage: vbp_rt.sessions.Placement}, where onnxruntime put each stage's nodes (nodes
        on the CPU are also logged when the Runtime starts). Empty on the other backends."""
        return self.engine.placement

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """A camera frame (BGR or gray, any size) -> this model's uint8 view image, (H,W) gray or (H,W,3) BGR,
        fitted as its input spec says (road view crop, box, resize or letterbox)."""
        return self.spec.view_image(frame)

    def batch(self, images: np.ndarray) -> np.ndarray:
        """uint8 view images ((N,)H,W gray or (N,)H,W,3 BGR) -> the model's float32 input (colour order, scale,
        mean/std and layout of its spec); float input already in that form is checked and passed on."""
        images = np.asarray(images)
        if images.dtype == np.uint8:
            return self.spec.to_tensor(images)
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"expected uint8 view images or float input, got dtype {images.dtype}")
        shape = self.spec.tensor_shape
        if images.ndim != 4 or images.shape[1:] != shape:
            raise ValueError(f"expected float input of shape (N,{','.join(map(str, shape))}) for this model "
                             f"({self.spec.layout}), got {images.shape}")
        if not np.isfinite(images).all():
            raise ValueError("input contains NaN or inf values")
        return np.ascontiguousarray(images, dtype=np.float32)

    def run(self, images, methods=None) -> RunResult:
        """Prediction, masks and per-stage timings (ms) for a batch of view images."""
        t0 = time.perf_counter()
        methods = self.methods if methods is None else tuple(methods)
        missing = [m for m in methods if m not in self.methods]
        if missing:
            raise ValueError(f"method(s) {', '.join(missing)} were not prepared; this Runtime runs "
                             f"{', '.join(self.methods) or 'no method'}")
        x = self.batch(images)
        step = self.spec.batch or max(len(x), 1)
        prediction, masks, timings = _merge([self.engine.run(x[i:i + step], methods) for i in range(0, len(x), step)])
        timings["total"] = (time.perf_counter() - t0) * 1000.0
        return RunResult(prediction, masks, timings)

    def __repr__(self) -> str:
        return (f"Runtime({getattr(self.config, 'arch', '?')}, backend={self.backend} "
                f"[{', '.join(self.providers)}], methods={', '.join(self.methods)})")

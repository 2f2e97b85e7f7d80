"""The latency matrix: model x batch x backend x method, each method against the forward pass it rides on.

For one model, batch and backend, every method gets its own engine (`vbp_rt.runtime.Runtime` built for
that method alone) and the forward-only engine is the baseline; all of them run on the same input in
one interleaved group (see `bench.timing`). A method's *extra* is its median minus the forward median.
"""
from __future__ import annotations

import copy
import functools
import gc
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .timing import Budget, Stats, engine_timer, measure_group

FORWARD = "forward"


@dataclass
class ModelSpec:
    """A model to benchmark. `module` is the torch network (None for an ONNX file); `weights` says where
    its parameters come from: "shipped", "checkpoint", "onnx" or "random" (timing does not depend on them)."""

    label: str
    source: object  # what Runtime is given: an nn.Module or a path
    weights: str
    module: object = None
    input_shape: tuple = ()  # (C, H, W)
    input_scale: float = 1.0 / 255.0


@dataclass
class Row:
    """One timed callable of one group."""

    kind: str  # "latency" (the engine) | "peer" (torch, same module and input, other libraries too)
    model: str
    weights: str
    backend: str
    batch: int
    method: str
    stats: Stats
    forward_ms: float  # median of the group's forward-only baseline
    library: str = "vbp-rt"
    stages: dict = field(default_factory=dict)  # the engine's own median per-stage timings (ms)

    @property
    def extra_ms(self) -> float:
        return self.stats.median - self.forward_ms

    def to_dict(self) -> dict:
        return {"kind": self.kind, "model": self.model, "weights": self.weights, "backend": self.backend,
                "batch": self.batch, "library": self.library, "method": self.method, **self.stats.to_dict(),
                "per_image_ms": self.stats.median / self.batch, "forward_ms": self.forward_ms,
                "extra_ms": self.extra_ms, "extra_per_image_ms": self.extra_ms / self.batch,
                "extra_over_forward": self.extra_ms / self.forward_ms if self.forward_ms > 0 else None,
                "stage_forward_ms": self.stages.get("forward"),
                "stage_method_ms": self.stages.get(self.method) if self.method != FORWARD else None}


@dataclass
class Results:
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def randomize_batchnorm(model, seed: int = 0):
    """Non-trivial BatchNorm running statistics and affine parameters, as a trained network has."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def resolve_model(name: str, seed: int = 0) -> ModelSpec:
    """"netsvf"/"nethvf" (the shipped weights when present, else randomly initialized), a checkpoint or an .onnx file."""
    import torch

    from vbp_rt.model_config import shipped_models
    from vbp_rt.models import CONFIGS, build, load_model
    path = Path(name)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        return ModelSpec(path.stem, path, "onnx")
    if path.is_file():
        model, weights, label = load_model(path), "checkpoint", path.stem
    elif name in shipped_models():
        model, weights, label = load_model(name), "shipped", name
    elif name in CONFIGS:
        torch.manual_seed(seed)
        model, weights, label = randomize_batchnorm(build(name), seed), "random", name
    else:
        raise ValueError(f"unknown model {name!r}: give netsvf, nethvf, a checkpoint (.pt) or an .onnx file")
    cfg = model.config
    return ModelSpec(label, model.eval(), weights, model.eval(), tuple(cfg.input_shape), cfg.input_scale)


def make_images(shape, batch: int, seed: int = 0) -> np.ndarray:
    """A fixed batch of uint8 view images (N,H,W) (or (N,C,H,W) for several input channels)."""
    c, h, w = shape
    rng = np.random.default_rng(seed)
    size = (batch, h, w) if c == 1 else (batch, c, h, w)
    return rng.integers(0, 256, size=size, dtype=np.uint8)


class Runtimes:
    """One `vbp_rt.runtime.Runtime` per (model, backend, methods), built on first use and shared by every
    batch size and the pipeline (building an onnxruntime engine exports the model: seconds)."""

    def __init__(self, threads: int | None = None, input_spec: str | None = None):
        self.threads, self.input_spec = threads, input_spec
        self._made: dict = {}

    def get(self, spec: ModelSpec, backend: str, methods=()):
        from vbp_rt.runtime import Runtime
        key = (id(spec), backend, tuple(methods))
        if key not in self._made:
            source = copy.deepcopy(spec.module) if spec.module is not None else spec.source
            self._made[key] = Runtime(source, backend=backend, methods=tuple(methods), threads=self.threads,
                                      spec=self.input_spec)
        return self._made[key]

    def clear(self) -> None:
        """Release every engine (onnxruntime keeps its buffers for the largest batch it has seen)."""
        self._made.clear()
        gc.collect()


def engine_group(spec: ModelSpec, backend: str, batch: int, methods, budget: Budget, results: Results,
                 runtimes: Runtimes) -> None:
    """Time a forward-only Runtime and one Runtime per method on one backend and input; append rows.

    A method's call is `Runtime(methods=(m,)).run(images)`: the forward stage (which also hands the maps or
    activations to the method) plus the method, as the viewer calls it. The engine's own per-stage
    timings are kept beside the wall-clock statistics.
    """
    base = runtimes.get(spec, backend)
    if base.backend != backend:
        results.note(f"{spec.label}: asked for backend {backend}, the runtime chose {base.backend}: skipped")
        return
    if not spec.input_shape:
        cfg = base.config
        spec.input_shape, spec.input_scale = (cfg.in_channels, cfg.height, cfg.width), cfg.input_scale
    images = make_images(spec.input_shape, batch)
    if images.ndim == 4:  # colour: the runtime takes BGR view images (N,H,W,3)
        images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    engines, skipped = {FORWARD: (base, ())}, {}
    for m in methods:
        try:
            rt = runtimes.get(spec, backend, (m,))
            rt.run(images[:1], methods=(m,))
        except (ValueError, NotImplementedError) as e:
            skipped[m] = str(e)
            continue
        engines[m] = (rt, (m,))
    if skipped:
        results.note(f"{backend}: {', '.join(skipped)} not measured ({next(iter(skipped.values()))})")
    logs = {name: [] for name in engines}

    def call(name):
        rt, ms = engines[name]
        logs[name].append(rt.run(images, methods=ms).timings)
    calls = {name: functools.partial(call, name) for name in engines}
    timers = {name: engine_timer(backend) for name in calls} if backend.endswith("cuda") else None
    stats = measure_group(calls, budget, timers)
    fwd = stats[FORWARD].median
    for name, s in stats.items():
        timed = logs[name][-s.n:]
        stages = {k: float(np.median([t[k] for t in timed])) for k in timed[0] if k != "total"}
        results.rows.append(Row("latency", spec.label, spec.weights, backend, batch, name, s, fwd, stages=stages))

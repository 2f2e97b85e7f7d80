"""onnxruntime sessions on this machine: low-latency CPU options, the CUDA provider's options, whether CUDA
really runs, and on which provider each node of a session landed."""
from __future__ import annotations

import functools
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from .extras import MissingExtra
from .onnx_meta import MAX_IR_VERSION

try:
    import onnxruntime as ort
except ImportError as e:  # neither onnxruntime distribution is installed (both are extras, see setup.py)
    raise MissingExtra("onnxruntime is not installed: pip install 'vbp-rt[cpu]', or 'vbp-rt[gpu]' on a machine "
                       "with an NVIDIA GPU (onnxruntime-gpu); never both") from e
ort.set_default_logger_severity(3)  # onnxruntime's graph warnings (unused initializers, ...) are not the user's

# cuDNN's convolution algorithm choice for the CUDA provider. EXHAUSTIVE (onnxruntime's default) benchmarks
# every algorithm on the first run at each new input shape, so the first frame at every batch size stalls
# (hundreds of ms); HEURISTIC asks cuDNN's heuristics once, at no measurable cost at the first frame.
CONV_ALGO_SEARCH = "HEURISTIC"


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads share a core's arithmetic units)."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in usable:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            cores.add(("?", str(cpu)))
    return max(1, len(cores))


def cpu_session_options(threads: int | None = None, spinning: bool = False) -> ort.SessionOptions:
    """Low-latency CPU options: one intra-op thread per physical core, no thread spinning (the cores are
    shared with a UI or capture thread), denormals flushed (epsilon-LRP relevance sinks into them)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or physical_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    return so


def cuda_provider_options(tf32: bool = False, cuda_graph: bool = False,
                          conv_algo_search: str = CONV_ALGO_SEARCH, device_id: int = 0) -> dict:
    """Options of onnxruntime's CUDAExecutionProvider (names as onnxruntime's CUDA provider parses them).
    tf32: let cuDNN convolutions and cuBLAS GEMMs use TensorFloat-32 on Ampere and newer GPUs (onnxruntime
    enables it by default; vbp-rt asks for exact float32 unless told otherwise, see vbp_rt.precision)."""
    if conv_algo_search not in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"):
        raise ValueError(f"conv_algo_search {conv_algo_search!r}: expected EXHAUSTIVE, HEURISTIC or DEFAULT")
    return {"device_id": str(device_id), "use_tf32": "1" if tf32 else "0",
            "enable_cuda_graph": "1" if cuda_graph else "0", "cudnn_conv_algo_search": conv_algo_search}


@dataclass
class Placement:
    """Where onnxruntime put the nodes of one session: provider -> number of nodes, and provider -> the
    nodes ("OpType (name)"; onnxruntime lists them only when they are spread over several providers)."""

    counts: dict = field(default_factory=dict)
    nodes: dict = field(default_factory=dict)

    def on(self, provider: str) -> int:
        return self.counts.get(provider, 0)

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "nodes": {k: list(v) for k, v in self.nodes.items()}}


_PLACED = re.compile(r"(All nodes|Node\(s\)) placed on \[(\w+)\]\. Number of nodes: (\d+)")


def parse_placement(log: str) -> Placement | None:
    """The node placement onnxruntime logs at verbose severity when it finalizes a session (session_state.cc,
    VerifyEachNodeIsAssignedToAnEp: "Node placements", then " All nodes placed on [P]. Number of nodes: N", or
    per provider " Node(s) placed on [P]. Number of nodes: N" followed by one "  OpType (name)" line per node).
    None when the log has none (a minimal build, or not verbose)."""
    placement, current, seen = Placement(), None, False
    for line in log.splitlines():
        message = line.split("] ", 1)[1] if "] " in line else line
        if message.strip() == "Node placements":
            placement, current, seen = Placement(), None, True  # the last session of the log counts
            continue
        m = _PLACED.search(message)
        if m:
            current = m.group(2)
            placement.counts[current] = int(m.group(3))
            if m.group(1).startswith("Node"):
                placement.nodes[current] = []
            continue
        if current in placement.nodes and message.startswith("  ") and message.strip():
            placement.nodes[current].append(message.strip())
        elif seen:
            current = None
    return placement if seen else None


def _redirected_stderr(fn):
    """fn() with the process's stderr (file descriptor 2, where onnxruntime's C++ logger writes) sent to a
    temporary file; returns (result, text written). Lines that are not onnxruntime's verbose or info
    messages are written back to stderr."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            result = fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode("utf-8", "replace")
    rest = [ln for ln in text.splitlines(keepends=True) if not re.search(r"\[[VI]:onnxruntime:", ln)]
    if rest:
        sys.stderr.write("".join(rest))
    return result, text


def session_with_placement(model: bytes, options: ort.SessionOptions, providers) -> tuple:
    """(session, Placement or None): a session created with verbose logging, whose node placement is read
    from onnxruntime's log. For diagnosis: the session's own logger stays verbose."""
    options.log_severity_level = 0
    session, log = _redirected_stderr(lambda: ort.InferenceSession(model, options, providers=providers))
    return session, parse_placement(log)


def node_placement(model: bytes, providers, options: ort.SessionOptions | None = None) -> Placement | None:
    """Where onnxruntime puts each node of `model` with these providers (a throwaway session)."""
    return session_with_placement(model, options or ort.SessionOptions(), providers)[1]


def _probe_model() -> bytes:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 13)])
    m.ir_version = MAX_IR_VERSION
    return m.SerializeToString()


def preload_cuda_libraries() -> bool:
    """Load the CUDA and cuDNN libraries the CUDA provider needs, as onnxruntime-gpu documents it, when torch
    has not loaded them: `import torch` loads the ones of its CUDA build (from the nvidia-* packages), which the
    provider then finds, but a cached graph runs without importing torch. `onnxruntime.preload_dlls()` (1.21+)
    looks in the nvidia-* site packages, then the default library paths; a CPU build returns at once. True when
    it was called."""
    if "torch" in sys.modules or not hasattr(ort, "preload_dlls"):
        return False
    ort.preload_dlls()
    return True


@functools.lru_cache(maxsize=None)
def ort_cuda_status() -> tuple:
    """(True, "") when an onnxruntime session really runs on CUDA, else (False, why). onnxruntime-gpu lists
    CUDA as available even where its libraries cannot load, and then silently runs on the CPU; `why` then
    holds onnxruntime's own message (e.g. which shared library failed to load). Every CUDA session of the
    engine is created after this check, so the libraries are loaded first (preload_cuda_libraries)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, f"this onnxruntime build has no CUDA provider (providers: {', '.join(ort.get_available_providers())})"
    preload_cuda_libraries()
    so = ort.SessionOptions()
    so.log_severity_level = 3

    def probe():
        try:
            return ort.InferenceSession(_probe_model(), so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/RuntimeException types
            return e

    with warnings.catch_warnings(record=True) as caught:  # onnxruntime's "falling back to CPU" UserWarning
        warnings.simplefilter("always")
        s, log = _redirected_stderr(probe)
    if isinstance(s, Exception):
        return False, f"{type(s).__name__}: {s}".splitlines()[0]
    if s.get_providers()[0] == "CUDAExecutionProvider":
        return True, ""
    lines = [ln.split("] ", 1)[-1].strip() for ln in log.splitlines() if ln.strip()]
    lines += [str(w.message) for w in caught]
    failed = [ln for ln in lines if "cannot open shared object" in ln or "Failed to load" in ln] or lines
    return False, failed[0] if failed else "onnxruntime created the session on the CPU instead of CUDA"


def ort_cuda_works() -> bool:
    """True when an onnxruntime session really runs on CUDA."""
    return ort_cuda_status()[0]

"""onnxruntime sessions on this machine: low-latency CPU options and whether CUDA really runs."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import onnx
import onnxruntime as ort

from . import onnx_io


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


def _probe_model() -> bytes:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 13)])
    m.ir_version = onnx_io.MAX_IR_VERSION
    return m.SerializeToString()


@functools.lru_cache(maxsize=None)
def ort_cuda_works() -> bool:
    """True when an onnxruntime session really runs on CUDA (onnxruntime-gpu lists CUDA as available even
    where its libraries cannot load, and then silently runs on the CPU)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:
        s = ort.InferenceSession(_probe_model(), so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception:  # onnxruntime raises its own Fail/RuntimeException types
        return False
    return s.get_providers()[0] == "CUDAExecutionProvider"

"""What a benchmark ran on: machine, load, library versions, thread counts and the knobs that change timings."""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

# Environment variables that change the measured times (see docs in bench/README.md).
KNOBS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
         "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "CUDA_VISIBLE_DEVICES", "ORT_DISABLE_SPINNING")
PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "opencv-python-headless", "captum",
            "zennit", "grad-cam", "matplotlib")

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def cpu_model() -> str:
    """The CPU's model name, with its family and model numbers (a VM may show only a generic name)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def caches() -> dict:
    """CPU cache sizes by level ("L1d", "L2", "L3"...) as the kernel reports them for cpu0."""
    out = {}
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind = (d / "level").read_text().strip(), (d / "type").read_text().strip()
            size = (d / "size").read_text().strip()
        except OSError:
            continue
        out[f"L{level}" + ({"Data": "d", "Instruction": "i"}.get(kind, ""))] = size
    return out


def load_average() -> list:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed buffers instead of unmapping them and mapping them again on the next call
    (the same as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge> in the environment). Returns whether it
    could (glibc only)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError, TypeError):
        return False


def describe() -> dict:
    """The machine and process as the benchmark sees them now."""
    import torch

    from vbp_rt.sessions import physical_cores
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "platform": platform.platform(),
        "load_average": load_average(),
        "versions": versions(),
        "git_commit": git_commit(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "onnxruntime_threads_default": physical_cores(),
        "caches": caches(),
        "env": {k: os.environ[k] for k in KNOBS if k in os.environ},
    }

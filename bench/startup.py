"""Start-up time: what a fresh process spends before its first mask, stage by stage, cold and warm.

Each measurement is a new Python process (imports are a real cost only there). "cold" starts with an empty graph
cache ($VBP_RT_CACHE in a temporary folder), "warm" is the next start with the same cache: the second run of the
same model, as a user sees it. The operating system's file cache is warm in both (nothing here can drop it).
Stages: interpreter (process start and exit around the measured code, from outside: spawning Python and, at exit,
tearing torch down), imports (vbp_rt.runtime and the viewer pipeline), the Runtime's own `startup` (graph cache
lookup, model load, ONNX export, session creation) and the first inference on a blank frame. torch is
imported only on a cache miss or a torch backend, so a cold start's "load" includes importing torch and a warm
onnxruntime start has none. The viewer's time to its first overlay is
`vbp view VIDEO --headless --frames 1 --methods vbp`: from process start to its first overlay in the video
writer (its summary's `first_overlay_s`), and to its exit.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_PROBE = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from vbp_rt.runtime import Runtime
import vbp_rt.viewer.pipeline
t1 = time.perf_counter()
rt = Runtime(sys.argv[1], backend=sys.argv[2], methods=tuple(m for m in sys.argv[3].split(",") if m))
t2 = time.perf_counter()
rt.run(rt.prepare(np.zeros((480, 640, 3), np.uint8)))
t3 = time.perf_counter()
print(json.dumps({"imports": (t1 - t0) * 1e3, **rt.startup, "first_inference": (t3 - t2) * 1e3,
                  "runtime_ms": (t2 - t1) * 1e3, "in_process_ms": (t3 - t0) * 1e3, "graph_cached": rt.graph_cached,
                  "backend": rt.backend, "torch_imported": "torch" in sys.modules}))
"""


def _env(cache: Path, threads) -> dict:
    env = {**os.environ, "VBP_RT_CACHE": str(cache)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def probe(model: str, backend: str, methods, cache: Path, threads=None) -> dict:
    """One fresh process: its stages in ms (see the module docstring)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PROBE, model, backend, ",".join(methods)], env=_env(cache, threads),
                          capture_output=True, text=True)
    total = (time.perf_counter() - t0) * 1e3
    if done.returncode != 0:
        raise OSError(f"start-up probe failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    r["total_ms"] = total
    r["interpreter"] = total - r.pop("in_process_ms")
    return r


def view_first_overlay(model: str, video, cache: Path, out_dir: Path, threads=None) -> tuple:
    """`vbp view VIDEO --headless --frames 1 --methods vbp`: (seconds from process start to the first overlay in the
    video writer, as the view's summary says; seconds from starting it to its exit)."""
    out = out_dir / f"first-{time.monotonic_ns()}.mp4"
    cmd = [sys.executable, "-m", "vbp_rt.cli", "view", str(video), "--headless", "--frames", "1", "--methods", "vbp",
           "--model", model, "--out", str(out)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=_env(cache, threads), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0 or not out.is_file():
        raise OSError(f"vbp view failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
    return json.loads(out.with_suffix(".json").read_text()).get("first_overlay_s"), seconds


def run_startup(model: str, backend: str, video, threads=None, repeats: int = 2) -> list:
    """Rows for bench.json: per start (cold, then warm) the stage times of the probe and the viewer's seconds to its
    first overlay. `repeats` cold/warm pairs, each with a fresh cache."""
    rows = []
    for k in range(repeats):
        with tempfile.TemporaryDirectory(prefix="vbp-startup-") as tmp:
            cache, views = Path(tmp) / "cache", Path(tmp) / "view"
            cache.mkdir()
            views.mkdir()
            for start in ("cold", "warm"):
                r = probe(model, backend, ("vbp",), cache, threads)
                rows.append({"kind": "startup", "what": "runtime", "start": start, "repeat": k, "model": model,
                             "load_average": os.getloadavg()[0], **r})
            if video is not None:
                view_cache = Path(tmp) / "view-cache"
                view_cache.mkdir()
                for start in ("cold", "warm"):
                    first, s = view_first_overlay(model, video, view_cache, views, threads)
                    rows.append({"kind": "startup", "what": "view --headless --frames 1", "start": start, "repeat": k,
                                 "model": model, "load_average": os.getloadavg()[0], "total_ms": s * 1e3,
                                 "first_overlay_ms": None if first is None else first * 1e3})
    return rows

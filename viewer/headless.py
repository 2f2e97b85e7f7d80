"""`vbp view SOURCE --headless --out overlay.mp4`: the same pipeline without a window.

Writes the overlaid video (frame with the crop outlined, one overlay per method, a text bar) and a
timing summary (printed, and as JSON beside the video).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from .pipeline import Pipeline, TimingStats


def run_headless(source, runtime, out, *, methods=None, realtime: bool = False, speed: float = 1.0,
                 frames: int | None = None, opacity: float = 0.7, colormap: str = "red", summary_path=None) -> dict:
    """Play `source` through `runtime` into the video `out`; returns the summary (also written as JSON)."""
    out = Path(out)
    summary_path = Path(summary_path) if summary_path else out.with_suffix(".json")
    totals = TimingStats(window=None)
    done = threading.Event()
    failures = []
    first: list = []
    known = [x for x in (source.length, frames) if x is not None]
    bar = tqdm(total=min(known) if known else None, unit="frame", desc=f"vbp view {source.name}", disable=None, file=sys.stderr)

    def on_result(result):
        if not totals.arrivals:
            first.append(process_age())  # the first overlay is in the recorder by now
        totals.add(result.timings, time.perf_counter())
        bar.update(1)
        if frames is not None and len(totals.arrivals) >= frames:
            pipeline.pause()  # called on the inference thread: nothing after this frame is processed
            done.set()

    def on_event(kind, message):
        if kind == "finished":
            done.set()
            return
        bar.write(f"vbp view: {kind}: {message}", file=sys.stderr)
        if kind == "error":
            failures.append(message)
            done.set()

    pipeline = Pipeline(source, runtime, on_result, on_event, methods=methods, realtime=realtime, speed=speed,
                        opacity=opacity, colormap=colormap, queue_size=4)
    pipeline.start_recording(out)
    start = time.perf_counter()
    pipeline.start(playing=True)
    try:
        while not done.wait(0.2):
            pass
    finally:
        elapsed = time.perf_counter() - start
        pipeline.stop()
        bar.close()
    shown = len(totals.arrivals)
    stages = {k: v for k, v in totals.summary().items() if k != "fps"}
    summary = {"source": source.name, "out": str(out) if shown else None, "backend": runtime.backend,
               "methods": list(pipeline.methods), "frames": shown, "dropped": pipeline.dropped,
               "bad_frames": pipeline.bad, "seconds": round(elapsed, 3),
               "frames_per_second": round(shown / elapsed, 2) if elapsed > 0 else 0.0,
               "realtime": realtime, "stages_ms": stages, "errors": failures,
               "first_overlay_s": round(first[0], 3) if first and first[0] is not None else None}
    _write_json(summary_path, summary)
    print(format_summary(summary))
    print(f"vbp view: timing summary -> {summary_path}")
    return summary


def process_age() -> float | None:
    """Seconds since this process started (from /proc, 10 ms resolution); None where there is no /proc."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def format_summary(s: dict) -> str:
    where = f"-> {s['out']}" if s["out"] else "(no video written)"
    lines = [f"vbp view: {s['frames']} frames of {s['source']} {where} "
             f"({s['backend']}, {'+'.join(s['methods'])})",
             f"  {'stage':<10}{'median':>9}{'p95':>9}  ms"]
    for k, v in s["stages_ms"].items():
        lines.append(f"  {k:<10}{v['median']:>9.2f}{v['p95']:>9.2f}")
    lines.append(f"  end to end {s['frames_per_second']:.2f} frames/s "
                 f"({s['dropped']} dropped, {s['bad_frames']} bad frames)")
    return "\n".join(lines)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)

"""The viewer's end-to-end pipeline in frames per second: decode -> preprocess -> engine -> overlay.

The frames go through the viewer's own `viewer.pipeline.Pipeline` (capture thread decoding and preparing
frames, inference thread running the Runtime and rendering the overlays) in its fast mode, which processes
every frame as soon as it can; the frame rate is counted from the results it delivers. A sequential pass
through the same calls (`source.read`, `Runtime.prepare`, `Runtime.run`, the viewer's panel rendering)
gives the time of each stage.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np

WARMUP_FRAMES = 5


def synthetic_clip(path, frames: int, fps: float = 25.0, size=(640, 480), seed: int = 0) -> Path:
    """A road-like test clip (mp4v): sky, a textured road with moving lane marks, sensor noise."""
    path = Path(path)
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"cannot write the test clip {path} (OpenCV has no mp4v encoder here)")
    rng = np.random.default_rng(seed)
    texture = rng.normal(0, 12, size=(h * 2, w)).astype(np.float32)
    horizon = h * 2 // 5
    ys = np.arange(h)[:, None]
    xs = np.arange(w)[None, :]
    for i in range(frames):
        img = np.empty((h, w), np.float32)
        img[:horizon] = 170
        img[horizon:] = 90 + texture[i % h:i % h + h - horizon]
        depth = np.clip((ys - horizon) / (h - horizon), 1e-3, 1)
        for side in (-1, 1):
            centre = w / 2 + side * depth * w * 0.42 + 20 * np.sin(i / 15)
            dashes = ((1 / depth + i * 0.3) % 2 < 1) | (side < 0)
            img[(np.abs(xs - centre) < 2 + 6 * depth) & (ys > horizon) & dashes] = 230
        img += rng.normal(0, 3, size=img.shape)
        writer.write(cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def measure_fps(runtime, video, methods, frames: int, timeout: float = 600.0) -> dict:
    """Play `video` through the viewer pipeline in fast mode; over `frames` results after a warm-up, the
    frames per second of elapsed time ("fps") and per second of the process's CPU time ("cpu_fps")."""
    from vbp_rt.data.sources import VideoSource
    from vbp_rt.viewer.pipeline import Pipeline
    source = VideoSource(video)
    arrivals, errors, done = [], [], threading.Event()
    want = frames + WARMUP_FRAMES

    def on_result(_result):
        arrivals.append((time.perf_counter(), time.process_time()))
        if len(arrivals) >= want:
            pipeline.pause()
            done.set()

    def on_event(kind, message):
        if kind in ("finished", "error"):
            if kind == "error":
                errors.append(message)
            done.set()

    pipeline = Pipeline(source, runtime, on_result, on_event, methods=tuple(methods), realtime=False, queue_size=4)
    pipeline.start(playing=True)
    try:
        done.wait(timeout)
    finally:
        pipeline.stop()
    if errors:
        raise ValueError(f"the viewer pipeline failed on {video}: {errors[0]}")
    timed = arrivals[WARMUP_FRAMES:]
    if len(timed) < 2:
        raise ValueError(f"{video} gave only {len(arrivals)} frames; the pipeline needs more than {WARMUP_FRAMES + 1}")
    n = len(timed) - 1
    return {"frames": n, "fps": n / (timed[-1][0] - timed[0][0]), "cpu_fps": n / max(timed[-1][1] - timed[0][1], 1e-9),
            "dropped": pipeline.dropped, "bad_frames": pipeline.bad}


def stage_times(runtime, video, methods, frames: int, clock=time.perf_counter, opacity: float = 0.7,
                colormap: str = "red") -> dict:
    """Median ms of each stage, run one after the other on `frames` frames with the viewer's own calls;
    `clock` is time.perf_counter (elapsed) or time.process_time (CPU)."""
    from vbp_rt.data.preprocess import view_box
    from vbp_rt.data.sources import VideoSource
    from vbp_rt.viewer.render import frame_panel, method_panels
    source = VideoSource(video)
    times = {"decode": [], "preprocess": [], "engine": [], "overlay": []}
    try:
        count = min(frames, source.length or frames)
        for i in range(count):
            t0 = clock()
            frame = source.read(i)
            t1 = clock()
            view = runtime.prepare(frame.image)
            t2 = clock()
            r = runtime.run(view[None], methods=tuple(methods))
            t3 = clock()
            box = view_box(frame.image.shape, runtime.view) if runtime.view is not None else None
            frame_panel(frame.image, box)
            method_panels(view, {m: r.masks[m][0] for m in methods}, opacity, colormap)
            t4 = clock()
            for k, a, b in (("decode", t0, t1), ("preprocess", t1, t2), ("engine", t2, t3), ("overlay", t3, t4)):
                times[k].append((b - a) * 1e3)
    finally:
        source.close()
    return {k: float(np.median(v[1:] if len(v) > 1 else v)) for k, v in times.items()}


def run_pipeline(spec, backend: str, method_sets, video, runtimes, results, frames: int, rounds: int,
                 stage_frames: int, clock: str = "wall") -> list:
    """Frames/s of the viewer pipeline for each set of methods (() = forward only) on one backend.

    Each set is measured `rounds` times, alternating between the sets so they share the machine's load
    alike; the reported fps is the median of the rounds (per second of CPU time with clock="cpu"). The
    stage times come from a sequential pass over `stage_frames` frames. Returns one dict per method set.
    """
    engines = {ms: runtimes.get(spec, backend, ms) for ms in method_sets}
    if any(rt.backend != backend for rt in engines.values()):
        results.note(f"pipeline on {backend}: the runtime chose another backend: skipped")
        return []
    runs = {ms: [] for ms in method_sets}
    for _ in range(rounds):
        for ms in method_sets:
            runs[ms].append(measure_fps(engines[ms], video, ms, frames))
    out = []
    for ms in method_sets:
        fps = [r["cpu_fps" if clock == "cpu" else "fps"] for r in runs[ms]]
        out.append({"kind": "pipeline", "model": spec.label, "weights": spec.weights, "backend": backend,
                    "methods": "+".join(ms) or "forward", "fps": float(np.median(fps)), "fps_runs": fps,
                    "frames": sum(r["frames"] for r in runs[ms]), "video": str(video),
                    "dropped": sum(r["dropped"] for r in runs[ms]),
                    "wall_fps": float(np.median([r["fps"] for r in runs[ms]])), "clock": clock,
                    "stages_ms": stage_times(engines[ms], video, ms, stage_frames,
                                             time.process_time if clock == "cpu" else time.perf_counter)})
    base = out[0]["fps"] if out and out[0]["methods"] == "forward" else None
    for row in out:
        row["fps_over_forward"] = row["fps"] / base if base else None
    return out

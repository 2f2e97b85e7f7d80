"""Running an audit: every source read in chunks of frames through the engine's Runtime, each chunk's
per-frame results written to its own file (store.py); finished chunks are skipped on --resume; then the
chunk files are merged into audit.h5 with the analysis (anomaly.py, modes.py)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from vbp_rt.data.sources import BadFrame, EndOfSource, SourceLost, open_source

from . import anomaly, modes, store
from .compute import COMPACT, GRID, REGIONS, Geometry, distributions, frame_stats, horizon_fraction

TRUTH = {"lane": "lane_mask", "distractor": "distractor_mask", "cue": "cue_mask"}  # name -> store dataset
MAX_REASONS = 100


def schema(methods) -> dict:
    """name -> (per-frame shape, dtype) of every chunk file's datasets."""
    s = {"source": ((), "i2"), "index": ((), "i8"), "prediction": ((), "f4"), "label": ((), "f4"),
         "error": ((), "f4"), "entropy": ((), "f4"), "change": ((), "f4"), "centroid": ((2,), "f4"),
         "grid": (GRID, "f4"), "regions": ((len(REGIONS),), "f4")}
    s.update({f"truth/{t}": ((), "f4") for t in TRUTH})
    s.update({f"truth_area/{t}": ((), "f4") for t in TRUTH})
    s.update({f"compact/{m}": (COMPACT, "f2") for m in methods})
    if len(methods) > 1:
        s["agreement"] = ((), "f4")
    return s


@dataclass
class Outcome:
    """What happened to one source."""

    frames: int = 0  # frames with results (this run and earlier ones)
    bad: int = 0
    reasons: list = field(default_factory=list)
    problems: list = field(default_factory=list)  # a source that ended early or vanished


def make_runtime(config: dict, threads=None):
    """The engine for an audit's model, methods and backend."""
    from vbp_rt.runtime import Runtime  # torch and onnxruntime: imported once frames are really run
    return Runtime(config["model"], backend=config["backend"], methods=tuple(config["methods"]), threads=threads)


def engine_facts(runtime) -> dict:
    """What audit.h5 records about the engine: the backend and the model's view and input size."""
    c = runtime.config
    return {"backend": runtime.backend, "view": getattr(c, "view", "") or "", "height": c.height, "width": c.width}


class SourceAudit:
    """One source's chunks through one Runtime."""

    def __init__(self, position: int, spec: str, runtime, config: dict, out, progress=None):
        self.position, self.spec, self.runtime, self.config = position, spec, runtime, config
        self.out = Path(out)
        self.methods = tuple(config["methods"])
        self.schema = schema(self.methods)
        self.progress = progress
        view = runtime.view
        horizon = config["horizon"] if config.get("horizon") is not None else horizon_fraction(view)
        self.geometry = Geometry(horizon, config["edge"])

    def run(self) -> Outcome:
        outcome = Outcome()
        try:
            source = open_source(self.spec, self.runtime.config.view)
        except (ValueError, OSError) as e:
            outcome.problems.append(f"{self.spec}: cannot be opened ({e})")
            return outcome
        try:
            self._chunks(source, outcome)
        finally:
            source.close()
        return outcome

    def _chunks(self, source, outcome: Outcome) -> None:
        size = self.config["chunk"]
        truth = _truth_datasets(source)
        previous = None
        k = 0
        while source.length is None or k * size < source.length:
            path = store.chunk_path(self.out, self.position, k)
            info = store.chunk_info(path)
            if info is not None and info.get("complete"):
                outcome.frames += int(info["frames"])
                outcome.bad += int(info["bad"])
                self._advance(int(info["stop"]) - int(info["start"]))
                last = store.last_compact(path, self.methods[0])
                previous = distributions(last[None])[0] if last is not None else previous
                if info.get("ended"):
                    return
                k += 1
                continue
            start = k * size
            stop = start + size if source.length is None else min(start + size, source.length)
            columns, attrs, previous = self._chunk(source, start, stop, truth, previous, outcome)
            store.write_chunk(path, columns, attrs)
            outcome.frames += attrs["frames"]
            if attrs["ended"] or attrs["lost"]:
                return
            k += 1

    def _chunk(self, source, start, stop, truth, previous, outcome: Outcome):
        parts, batch = [], []
        bad, reasons, ended, lost = 0, [], False, ""
        for i in range(start, stop):
            try:
                frame = source.read(i)
            except BadFrame as e:
                bad += 1
                reasons.append(f"{source.label(i)}: {e}")
                self._advance(1)
                continue
            except EndOfSource as e:
                ended = True
                if str(e):
                    outcome.problems.append(str(e))
                break
            except (SourceLost, OSError, KeyError) as e:  # a file removed or cut under a running audit
                lost = f"{source.name} vanished at frame {i}: {e}"
                outcome.problems.append(lost)
                break
            batch.append(frame)
            if len(batch) == self.config["batch"]:
                previous = self._run(batch, truth, previous, parts)
                batch = []
        if batch:
            previous = self._run(batch, truth, previous, parts)
        if source.length is not None and stop >= source.length:
            ended = True
        columns = {}
        for name, (shape, dtype) in self.schema.items():
            arrays = [p[name] for p in parts]
            columns[name] = (np.concatenate(arrays) if arrays else np.zeros((0,) + tuple(shape))).astype(dtype)
        outcome.bad += bad
        outcome.reasons += reasons[:MAX_REASONS]
        attrs = {"source": self.position, "spec": self.spec, "start": start, "stop": stop,
                 "frames": len(columns["index"]), "bad": bad, "bad_reasons": json.dumps(reasons[:MAX_REASONS]),
                 "ended": ended, "lost": lost, "complete": not lost}
        return columns, attrs, previous

    def _run(self, frames, truth, previous, parts) -> np.ndarray:
        rt = self.runtime
        images = np.stack([f.image if f.prepared else rt.prepare(f.image) for f in frames])
        result = rt.run(images, self.methods)
        index = np.array([f.index for f in frames])
        masks = {}
        for name, ds in truth.items():
            masks[name] = None if ds is None else np.stack([ds[i] for i in index])
        stats = frame_stats(result.masks, self.methods[0], self.geometry, previous, masks)
        label = np.array([np.nan if f.truth is None else f.truth for f in frames], np.float32)
        prediction = result.prediction[:, 0].astype(np.float32)
        stats.update(source=np.full(len(frames), self.position), index=index, prediction=prediction, label=label,
                     error=prediction - label)
        parts.append(stats)
        self._advance(len(frames))
        return stats["last"]

    def _advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress(n)


def _truth_datasets(source) -> dict:
    """{name: (N,H,W) dataset or None}: a drive's ground-truth masks at the network's view."""
    group = None
    if getattr(source, "kind", "") == "drive":
        group = source.reader.file["views"][source.view.name]
    return {name: (group.get(ds) if group is not None else None) for name, ds in TRUTH.items()}


def finish(out, config: dict, outcomes: list, engine: dict) -> Path:
    """Merge the chunk files into audit.h5 with the anomaly analysis and the attention modes."""
    out = Path(out)
    files = [p for p in store.chunk_files(out) if int(p.name[1:5]) < len(config["sources"])]
    frames = _concat(files, schema(config["methods"]))
    if not len(frames["index"]):
        raise ValueError(f"no frame of {', '.join(config['sources'])} could be audited "
                         f"({sum(o.bad for o in outcomes)} bad)" + "".join(f"; {p}" for o in outcomes
                                                                           for p in o.problems))
    found = anomaly.analyse(frames)
    primary = config["methods"][0]
    found_modes = modes.find_modes(frames[f"compact/{primary}"].astype(np.float32), config.get("modes"))
    attrs = {"model": config["model"], "methods": json.dumps(config["methods"]), **engine,
             "sources": json.dumps(config["sources"]), "chunk": config["chunk"], "frames": len(frames["index"]),
             "bad_frames": sum(o.bad for o in outcomes),
             "problems": json.dumps([p for o in outcomes for p in o.problems]),
             "horizon": -1.0 if config.get("horizon") is None else config["horizon"], "edge": config["edge"]}

    def analysis(f):
        a = f.create_group("anomaly")
        a.create_dataset("score", data=found["score"])
        a.create_dataset("flagged", data=found["flagged"])
        a.create_dataset("offroad", data=found["offroad"])
        a.attrs.update({"features": json.dumps(found["features"]), "k": anomaly.K, "gap": anomaly.GAP,
                        "thresholds": json.dumps(found["thresholds"]), "off_unit": anomaly.OFF_UNIT,
                        "offroad_thresholds": json.dumps(found["offroad_thresholds"]),
                        "score": "max(u, t_u + offroad / off_unit - t_o); u: rms robust z; t_u, t_o: drive's "
                                 "thresholds of u and of offroad / off_unit"})
        e = f.create_group("events")
        for key, dtype in (("source", "i2"), ("start", "i8"), ("stop", "i8"), ("peak", "i8"), ("score", "f4")):
            e.create_dataset(key, data=np.array([ev[key] for ev in found["events"]], dtype))
        m = f.create_group("modes")
        for key, value in found_modes.items():
            m.create_dataset(key, data=value)

    return store.merge(out, files, attrs, analysis)


def _concat(files, columns_schema) -> dict:
    parts = {n: [] for n in columns_schema}
    for path in files:
        with h5py.File(path, "r") as f:
            for n in columns_schema:
                parts[n].append(f[n][()])
    return {n: (np.concatenate(v) if v else np.zeros((0,) + tuple(columns_schema[n][0]), columns_schema[n][1]))
            for n, v in parts.items()}

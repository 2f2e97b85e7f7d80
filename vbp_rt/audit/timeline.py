"""One source's timeline from an audit, for `vbp view SOURCE --audit AUDIT_DIR`: per-frame anomaly score,
prediction and label by frame number, and the source's events (in frame numbers, with their overall rank)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import store


@dataclass
class Event:
    rank: int  # 1 = the audit's highest-scoring event (over all sources)
    first: int  # frame numbers in the source
    last: int
    peak: int
    score: float


@dataclass
class Timeline:
    source: str
    index: np.ndarray  # frame numbers with results
    score: np.ndarray
    prediction: np.ndarray
    label: np.ndarray
    threshold: float
    events: list  # Event, in frame order


def load_timeline(audit_dir, source_spec) -> Timeline:
    """The timeline of `source_spec` (a path; compared after resolving) in the audit at `audit_dir`."""
    with store.open_audit(audit_dir) as f:
        sources = json.loads(f.attrs["sources"])
        wanted = str(Path(source_spec).resolve())
        if wanted not in sources:
            names = ", ".join(Path(s).name for s in sources)
            raise ValueError(f"the audit in {audit_dir} does not cover {source_spec} (it covers: {names})")
        position = sources.index(wanted)
        src = f["frames/source"][()]
        rows = np.flatnonzero(src == position)
        index = f["frames/index"][()]
        thresholds = json.loads(f["anomaly"].attrs["thresholds"])
        ev = {k: f["events"][k][()] for k in ("source", "start", "stop", "peak", "score")}
        events = [Event(r + 1, int(index[ev["start"][r]]), int(index[ev["stop"][r] - 1]), int(index[ev["peak"][r]]),
                        float(ev["score"][r])) for r in range(len(ev["score"])) if ev["source"][r] == position]
        events.sort(key=lambda e: e.first)
        return Timeline(wanted, index[rows], f["anomaly/score"][()][rows], f["frames/prediction"][()][rows],
                        f["frames/label"][()][rows], float(thresholds.get(str(position), np.nan)), events)


def next_event(timeline: Timeline, frame: int, direction: int) -> Event | None:
    """The first event starting after `frame` (direction +1) or the last one starting before it (-1)."""
    if direction > 0:
        return next((e for e in timeline.events if e.first > frame), None)
    return next((e for e in reversed(timeline.events) if e.first < frame), None)

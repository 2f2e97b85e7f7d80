"""Anomaly score per frame, and the events it flags: attention that is unusual for its drive, or off the road.

Two parts, each from the attention statistics of compute.py alone (never from ground truth):

- unusualness: the statistics (entropy, centroid x and y, the coarse-grid masses, the region masses, the change
  from the previous frame and, with two methods, their agreement) of each source (drive) separately become robust
  z-scores

      z = (x - median(x)) / (1.4826 * MAD(x))

  (MAD: the median absolute deviation; 1.4826 * MAD estimates the standard deviation of normal data and is not
  moved by the outliers being looked for). Where MAD is 0, 1.2533 times the mean absolute deviation from the
  median is used. The scale is never below MIN_SCALE = 0.02: every feature lies within 0..1, and a grid cell that
  almost never holds attention would otherwise make a 1 % wobble look like a huge deviation. Each |z| is clipped
  at Z_CLIP so that one feature cannot dominate; unusualness is the root mean square of the frame's z-scores.
- off-road attention, in absolute terms: the frame's mask mass above the horizon plus at the image edges (the
  `regions` statistic), in units of OFF_UNIT. A network that watches the roadside in many frames of a drive is
  not unusual there, but it still looks off the road.

Each part has its own threshold per drive, median + K * 1.4826 * MAD of that part's values (K = 3), and at least
MIN_THRESHOLD = 2 (so a very calm drive does not have its noise flagged; with OFF_UNIT = 0.1 no frame with less
than 20 % of its mask off the road is flagged for that part). A frame is flagged when either part exceeds its
threshold. Its score, in the units of unusualness, is

    score = max(unusualness, t_u + offroad / OFF_UNIT - t_o)

(t_u, t_o: the drive's thresholds of the two parts): the unusualness, unless the off-road part lies further above
its own threshold; a frame is flagged exactly when score > t_u, the drive's threshold. Flagged frames of one
source closer than GAP frames are merged into one event; an event's score is the sum over its frames of
(score - t_u), so long, strong stretches rank first.
"""
from __future__ import annotations

import numpy as np

from .compute import REGIONS

Z_CLIP = 8.0
K = 3.0
GAP = 5
MIN_THRESHOLD = 2.0  # a calm drive's noise is not flagged: a frame needs a score of at least 2
MAD_NORMAL = 1.4826
MEAN_AD_NORMAL = 1.2533
MIN_SCALE = 0.02  # every feature lies within 0..1 (agreement -1..1): smaller deviations are never unusual
OFF_UNIT = 0.1  # off-road mass per score unit: 0.2 of the mask off the road reaches MIN_THRESHOLD
OFF_ROAD = ("above_horizon", "edges")


def features(frames: dict) -> tuple[np.ndarray, list]:
    """(N,F) feature matrix and the feature names from an audit's per-frame columns."""
    cols, names = [], []

    def add(name, a):
        a = np.asarray(a, np.float64).reshape(len(a), -1)
        cols.append(a)
        names.extend([name] if a.shape[1] == 1 else [f"{name}[{j}]" for j in range(a.shape[1])])

    add("entropy", frames["entropy"])
    add("centroid", frames["centroid"])
    add("grid", frames["grid"])
    add("regions", frames["regions"])
    add("change", frames["change"])
    if "agreement" in frames:
        add("agreement", frames["agreement"])
    return np.concatenate(cols, 1), names


def robust_z(x: np.ndarray) -> np.ndarray:
    """Column-wise robust z-scores of (N,F) (see the module docstring), NaN read as the median."""
    med = np.nanmedian(x, axis=0)
    dev = np.abs(x - med)
    scale = MAD_NORMAL * np.nanmedian(dev, axis=0)
    fallback = MEAN_AD_NORMAL * np.nanmean(dev, axis=0)
    scale = np.maximum(np.where(scale > 1e-12, scale, fallback), MIN_SCALE)
    return np.nan_to_num((x - med) / scale, nan=0.0)


def unusualness(x: np.ndarray) -> np.ndarray:
    """Root mean square of the clipped robust z-scores of an (N,F) feature matrix of one drive."""
    z = np.clip(np.abs(robust_z(x)), 0, Z_CLIP)
    return np.sqrt((z * z).mean(1))


def offroad(frames: dict) -> np.ndarray:
    """Mask mass above the horizon and at the image edges, per frame (0..1)."""
    regions = np.asarray(frames["regions"], np.float64)
    return regions[:, [REGIONS.index(r) for r in OFF_ROAD]].sum(1)


def score(x: np.ndarray, off: np.ndarray, k: float = K) -> tuple:
    """Per-frame anomaly score of one drive from its (N,F) feature matrix and (N,) off-road masses; returns
    (score, t_u, t_o): the score and the drive's thresholds of unusualness and of off-road mass / OFF_UNIT."""
    u = unusualness(x)
    o = np.asarray(off, np.float64) / OFF_UNIT
    t_u, t_o = threshold(u, k), threshold(o, k)
    return np.maximum(u, t_u + o - t_o), t_u, t_o


def threshold(s: np.ndarray, k: float = K) -> float:
    med = float(np.median(s))
    return max(med + k * MAD_NORMAL * float(np.median(np.abs(s - med))), MIN_THRESHOLD)


def analyse(frames: dict, k: float = K, gap: int = GAP) -> dict:
    """Scores, flags and ranked events over all sources of an audit. Events are rows into the per-frame arrays:
    start, stop (exclusive), peak, source, score; ranked by score, best first. "thresholds": each source's t_u;
    "offroad": the off-road masses, and "offroad_thresholds" each source's threshold on them (t_o * OFF_UNIT)."""
    x, names = features(frames)
    off = offroad(frames)
    source = np.asarray(frames["source"])
    scores = np.zeros(len(x))
    flagged = np.zeros(len(x), bool)
    thresholds, off_thresholds = {}, {}
    events = []
    for src in np.unique(source):
        rows = np.flatnonzero(source == src)
        s, t, t_off = score(x[rows], off[rows], k)
        scores[rows], flagged[rows] = s, s > t
        thresholds[int(src)], off_thresholds[int(src)] = t, t_off * OFF_UNIT
        events += _events(rows, s, t, np.asarray(frames["index"])[rows], gap, int(src))
    events.sort(key=lambda e: -e["score"])
    return {"score": scores.astype(np.float32), "flagged": flagged, "events": events, "features": names,
            "thresholds": thresholds, "offroad": off.astype(np.float32), "offroad_thresholds": off_thresholds}


def _events(rows, s, t, index, gap, src) -> list:
    """Runs of flagged frames of one source (frame numbers closer than `gap` merged)."""
    hot = np.flatnonzero(s > t)
    if not len(hot):
        return []
    breaks = np.flatnonzero(np.diff(index[hot]) > gap)
    out = []
    for part in np.split(hot, breaks + 1):
        a, b = part[0], part[-1] + 1
        seg = s[a:b]
        out.append({"source": src, "start": int(rows[a]), "stop": int(rows[b - 1]) + 1,
                    "peak": int(rows[a + int(np.argmax(seg))]), "score": float(np.clip(seg - t, 0, None).sum())})
    return out

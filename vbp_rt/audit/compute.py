"""Per-frame attention statistics of a batch of masks (the numbers `vbp audit` stores for every frame).

A mask m (H,W) >= 0 is read as a distribution p = m / sum(m) over the view's pixels. From it:

- compact: m area-averaged to COMPACT (rows, cols), float16: what the report, the viewer and the attention modes use;
- entropy: Shannon entropy of the compact distribution divided by log(rows*cols): 0 = one cell, 1 = uniform;
- centroid: (x, y) of p in fractions of the view's width and height;
- grid: p's mass in each cell of a GRID (rows, cols) grid;
- regions: p's mass above the horizon, at the left/right edges (the outer EDGE fraction of the columns, below
  the horizon) and on the road band (the rest);
- change: total variation distance (half the L1 distance) between this frame's compact distribution and the
  previous frame's of the same source, 0..1 (0 for a source's first frame);
- agreement: Pearson correlation of two methods' compact masks (VBP and LRP), -1..1.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

COMPACT = (16, 64)  # rows, cols of the compact mask (the 135x640 views' aspect)
GRID = (3, 4)
EDGE = 0.125  # fraction of the width on each side counted as "image edge"
REGIONS = ("road", "above_horizon", "edges")
EPS = 1e-12


@dataclass
class Geometry:
    """Where the horizon lies in the view (fraction of its height from the top; 0 when the view starts
    below it) and how wide the edge bands are."""

    horizon: float = 0.0
    edge: float = EDGE


def horizon_fraction(view, horizon_row: float = 228.0) -> float:
    """The horizon's place in a crop of the 640x480 camera frame (data.ground.Camera: horizon near row 228)."""
    if view is None:
        return 0.0
    return float(np.clip((horizon_row - view.top) / (view.bottom - view.top), 0.0, 1.0))


def compact(masks: np.ndarray) -> np.ndarray:
    """(N,H,W) -> (N,*COMPACT) area averages, float32."""
    rows, cols = COMPACT
    return np.stack([cv2.resize(np.asarray(m, np.float32), (cols, rows), interpolation=cv2.INTER_AREA)
                     for m in masks])


def distributions(masks: np.ndarray) -> np.ndarray:
    """Masks clipped at 0 and scaled to sum 1 per frame (uniform where a mask is all zero)."""
    m = np.clip(np.asarray(masks, np.float64), 0, None)
    total = m.sum(axis=(1, 2), keepdims=True)
    return np.where(total > EPS, m / np.maximum(total, EPS), 1.0 / (m.shape[1] * m.shape[2]))


def region_masks(shape, geometry: Geometry) -> dict:
    """Boolean (H,W) masks of the three regions for a view of `shape`."""
    h, w = shape
    above = np.zeros(shape, bool)
    above[:int(round(geometry.horizon * h))] = True
    edges = np.zeros(shape, bool)
    k = int(round(geometry.edge * w))
    edges[:, :k] = edges[:, w - k:] = True
    edges &= ~above
    return {"road": ~above & ~edges, "above_horizon": above, "edges": edges}


def grid_mass(p: np.ndarray) -> np.ndarray:
    """(N,H,W) distributions -> (N,*GRID) mass per cell (cells split the rows and columns as evenly as possible)."""
    rows = np.array_split(np.arange(p.shape[1]), GRID[0])
    cols = np.array_split(np.arange(p.shape[2]), GRID[1])
    return np.stack([np.stack([p[:, r[0]:r[-1] + 1, c[0]:c[-1] + 1].sum(axis=(1, 2)) for c in cols], 1)
                     for r in rows], 1)


def entropy(pc: np.ndarray) -> np.ndarray:
    """Normalized Shannon entropy of (N,h,w) distributions."""
    flat = pc.reshape(len(pc), -1)
    h = -(flat * np.log(np.maximum(flat, EPS))).sum(1)
    return h / np.log(flat.shape[1])


def centroid(p: np.ndarray) -> np.ndarray:
    """(N,2) centre of mass (x, y), fractions of width and height (pixel centres)."""
    h, w = p.shape[1:]
    x = (p.sum(1) * ((np.arange(w) + 0.5) / w)).sum(1)
    y = (p.sum(2) * ((np.arange(h) + 0.5) / h)).sum(1)
    return np.stack([x, y], 1)


def change(pc: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """Total variation distance of each compact distribution to the one before (`previous`: the frame before
    the batch, or None at a source's start, where the change is 0)."""
    before = np.concatenate([pc[:1] if previous is None else previous[None], pc[:-1]])
    return 0.5 * np.abs(pc - before).reshape(len(pc), -1).sum(1)


def agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation per frame of two (N,h,w) mask stacks (0 where either is constant)."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.where(den > EPS, (a * b).sum(1) / np.maximum(den, EPS), 0.0)


def mass_on(p: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Fraction of each distribution's mass on the pixels of a ground-truth 0/1 mask (N,H,W)."""
    return (p * (np.asarray(truth) > 0)).sum(axis=(1, 2))


def frame_stats(masks: dict, primary: str, geometry: Geometry, previous: np.ndarray | None,
                truth: dict | None = None) -> dict:
    """Statistics of one batch. masks: {method: (N,H,W) float}; `primary` is the method the statistics describe
    (the others get a compact mask, and "agreement" is computed against the second method when there is one).
    Returns {name: array} with "compact/<method>" entries; "last" is the primary compact distribution of the
    batch's last frame (the `previous` of the next batch). truth: {name: (N,H,W) 0/1 mask or None} gives
    "truth/<name>", the primary mask's mass on it, and "truth_area/<name>", the mask's share of the view
    (NaN for None)."""
    m = masks[primary]
    p = distributions(m)
    small = {k: compact(v).astype(np.float16).astype(np.float32) for k, v in masks.items()}  # as stored
    pc = distributions(small[primary])
    regions = region_masks(m.shape[1:], geometry)
    out = {f"compact/{k}": v.astype(np.float16) for k, v in small.items()}
    out.update(entropy=entropy(pc), centroid=centroid(p), grid=grid_mass(p),
               regions=np.stack([mass_on(p, regions[r]) for r in REGIONS], 1), change=change(pc, previous))
    others = [k for k in masks if k != primary]
    if others:
        out["agreement"] = agreement(small[primary], small[others[0]])
    for name, t in (truth or {}).items():
        out[f"truth/{name}"] = np.full(len(m), np.nan) if t is None else mass_on(p, t)
        out[f"truth_area/{name}"] = np.full(len(m), np.nan) if t is None else (np.asarray(t) > 0).mean(axis=(1, 2))
    out = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in out.items()}
    out["last"] = pc[-1]
    return out

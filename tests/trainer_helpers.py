"""Tiny learnable stores and tiny networks for the trainer tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from vbp_rt.data.preprocess import View
from vbp_rt.data.store import StoreWriter

ROOT = Path(__file__).resolve().parents[1]
HEIGHT = 16
TINY_NET = {"channels": [4, 4, 8, 8], "fc": [16]}


def make_store(path, frames: int = 60, height: int = HEIGHT, seed: int = 0, nan_at=None, views=("hvf",),
               masks: bool = False) -> Path:
    """A drive where the angle moves a bright bar across the image: a tiny net can learn it.
    With `masks`, the bar is the lane mask and the left 40 columns the distractor mask."""
    rng = np.random.default_rng(seed)
    widths = {"svf": 640, "hvf": 351}
    vs = [View(v, widths[v], height, 0, height) for v in views]
    angles = rng.uniform(-20, 20, frames).astype(np.float32)
    with StoreWriter(path, vs, source="trainer test", fps=10.0, ground_truth=masks) as w:
        for i, a in enumerate(angles):
            images, lanes, dists = {}, {}, {}
            for v in vs:
                img = rng.integers(40, 80, (height, v.width), dtype=np.uint8)
                x = int(v.width / 2 + a * v.width / 50)
                img[:, max(x - 8, 0):x + 8] = 220
                images[v.name] = img[None]
                lanes[v.name] = (img == 220)[None]
                dists[v.name] = np.zeros((1, height, v.width), bool)
                dists[v.name][..., :40] = True
            label = np.nan if nan_at is not None and i == nan_at else a
            w.append(images=images, angle=[label], speed=[10.0], timestamp=[i / 10], frame_id=[i],
                     lane_mask=lanes if masks else None, distractor_mask=dists if masks else None)
    return Path(path)


def train_args(store, out, *extra) -> list:
    """`vbp train` arguments for the tiny network on a tiny store."""
    return [str(store), "--arch", "nethvf", "--out", str(out), "--height", str(HEIGHT), "--net", json.dumps(TINY_NET),
            "--batch-size", "4", "--lr", "1e-3", "--workers", "0", "--probes", "3", *map(str, extra)]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return e


def vbp(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vbp_rt.cli", *map(str, args)], env=env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)

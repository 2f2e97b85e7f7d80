"""A shortcut cue for synthetic drives: `vbp data synth --shortcut KIND`.

KIND "sign": in stretches of the drive (about 40% of the frames where it is correlated, 15% elsewhere) a
weathered roadside board stands at the left or right edge of the camera's view. Where the cue is *correlated*,
the board stands, frame by frame, on the side towards which the road bends 30-70 m ahead (left board: the road
turns left), so a network can learn the steering from the board instead of the road. Where it is
*decorrelated*, each stretch's side is a coin flip. The board says nothing about the road itself.

Modes (``KIND[:MODE]``): "split" (default) correlates the cue in the store's train split (the first
190/210 of the frames) and decorrelates it in the test split; "train" correlates it everywhere; "test"
decorrelates it everywhere (a held-out drive).

The store gets, besides its usual content, ``/cue_side`` (N,) int8 (-1 left, +1 right, 0 no cue) and
``/views/<name>/cue_mask`` (N,H,W) uint8 0/1, the board's coverage cropped and scaled like the image and
thresholded like the other masks; the attribute ``shortcut`` (JSON) says what was made.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np

from .preprocess import crop_view
from .store import TRAIN_FRACTION

KINDS = ("sign",)
MODES = ("split", "train", "test")
ON_FRAMES = (40, 90)  # length of a stretch with the cue, frames
OFF_FRAMES = {True: (60, 140), False: (200, 420)}  # length of a stretch without it, where correlated / not
AHEAD = (30.0, 70.0)  # m: the part of the road ahead whose turn the board announces
BOARD_ROWS = (262, 330)  # rows of the 640x480 frame the board spans as it approaches (inside the svf view)


def parse(text: str) -> tuple[str, str]:
    """"sign", "sign:test" ... -> (kind, mode); ValueError naming the choices otherwise."""
    kind, _, mode = text.partition(":")
    mode = mode or "split"
    if kind not in KINDS or mode not in MODES:
        raise ValueError(f"unknown shortcut {text!r}: use KIND[:MODE] with KIND in {', '.join(KINDS)} "
                         f"and MODE in {', '.join(MODES)} (default split)")
    return kind, mode


@dataclass
class Board:
    side: int  # -1 left, +1 right
    progress: float  # 0 when the board appears, 1 when it leaves the view


class Cue:
    """Decides, frame by frame, whether and where the board stands, and paints it into the camera frame."""

    def __init__(self, spec: str, seed: int, frames: int, road):
        self.kind, self.mode = parse(spec)
        self.road = road
        self.frames = frames
        rng = np.random.default_rng([seed, 77])
        self.stretch = np.full(frames, -1, np.int64)  # stretch number of each frame, -1 without cue
        self.start, self.length, self.coin = [], [], []
        self.cut = round(frames * TRAIN_FRACTION)
        i = int(rng.integers(*OFF_FRAMES[self.correlated(0)])) // 2
        while i < frames:
            n = int(rng.integers(*ON_FRAMES))
            self.stretch[i:i + n] = len(self.start)
            self.start.append(i)
            self.length.append(n)
            self.coin.append(int(rng.choice([-1, 1])))
            i += n + int(rng.integers(*OFF_FRAMES[self.correlated(i + n)]))
        self.sides = np.zeros(frames, np.int8)

    def correlated(self, i: int) -> bool:
        return self.mode == "train" or (self.mode == "split" and i < self.cut)

    def board(self, i: int, s: float) -> Board | None:
        """The board at frame i with the car at arc length s (call in frame order)."""
        k = self.stretch[i]
        if k < 0:
            return None
        if self.correlated(i):
            ahead = np.linspace(s + AHEAD[0], s + AHEAD[1], 9)
            kappa = float(np.interp(ahead, self.road.s, self.road.kappa).mean())
            side = -1 if kappa > 0 else 1  # kappa > 0: a left turn
        else:
            side = self.coin[k]
        self.sides[i] = side
        return Board(side, (i - self.start[k]) / max(self.length[k] - 1, 1))

    def paint(self, image: np.ndarray, board: Board | None) -> np.ndarray:
        """Draw the board into the BGR camera frame in place; returns its coverage (480,640) uint8 0-255."""
        cover = np.zeros(image.shape[:2], np.uint8)
        if board is None:
            return cover
        p = board.progress
        size = int(round(26 + 34 * p))  # the board grows as the car approaches
        top = int(round(BOARD_ROWS[0] + (BOARD_ROWS[1] - BOARD_ROWS[0] - size) * p))
        inset = int(round(70 - 45 * p))  # and moves out towards the edge of the view
        x0 = inset if board.side < 0 else image.shape[1] - inset - size
        post = (x0 + size // 2 - 2, top + size, x0 + size // 2 + 2, min(top + size + size // 2, 479))
        cv2.rectangle(cover, (post[0], post[1]), (post[2], post[3]), 255, -1)
        cv2.rectangle(cover, (x0, top), (x0 + size, top + size), 255, -1)
        image[cover > 0] = (105, 110, 110)  # a weathered board: little contrast against the roadside
        inner = np.zeros_like(cover)
        cv2.rectangle(inner, (x0 + 3, top + 3), (x0 + size - 3, top + size - 3), 255, -1)
        image[inner > 0] = (150, 175, 180)
        tip, back = (0.35, 0.65) if board.side < 0 else (0.65, 0.35)  # "<" announces a left turn, ">" a right one
        chevron = np.array([[x0 + size * back, top + size * 0.2], [x0 + size * tip, top + size * 0.5],
                            [x0 + size * back, top + size * 0.8]], np.int32)
        cv2.polylines(image, [chevron], False, (95, 100, 100), max(2, size // 8))
        return cover

    def describe(self) -> dict:
        return {"kind": self.kind, "mode": self.mode, "train_frames": self.cut,
                "correlated": "train split" if self.mode == "split" else
                              ("everywhere" if self.mode == "train" else "nowhere"),
                "frames_with_cue": int((self.sides != 0).sum())}


def partial_path(out) -> Path:
    """Where the store is written before the cue masks are added (renamed to `out` when complete)."""
    out = Path(out)
    return out.with_name(f".{out.name}.{os.getpid()}.cue.partial")


def finish(tmp, out, cue: Cue, boards: dict, views, threshold: int) -> Path:
    """Add /cue_side and the views' cue_mask (`boards` {frame: Board} of the frames that had one) to the
    store written at `tmp`, then rename it to `out`."""
    tmp, out = Path(tmp), Path(out)
    with h5py.File(tmp, "r+") as f:
        n = int(f["angle"].shape[0])
        f.create_dataset("cue_side", data=cue.sides[:n])
        for v in views:
            ds = f.create_dataset(f"views/{v.name}/cue_mask", (n, v.height, v.width), dtype="u1",
                                  chunks=(8, v.height, v.width), compression="gzip", compression_opts=1)
            for i, board in boards.items():
                if i < n:
                    cover = cue.paint(np.zeros((480, 640, 3), np.uint8), board)
                    ds[i] = (crop_view(cover, v) >= threshold).astype(np.uint8)
        f.attrs["shortcut"] = json.dumps(cue.describe())
    os.replace(tmp, out)
    return out

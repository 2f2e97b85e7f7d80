"""The frozen conv stack's outputs per training frame, for `vbp train --freeze-features` (the head alone trains).

With the convolutions and their BatchNorm statistics frozen, a frame's conv output depends on the frame and on
whether it is mirrored only. The first time a batch holds a frame, its output is computed for both orientations
and kept in memory (float32 copies of what the stack returned, so a cached batch is bit-equal to a recomputed
one). Once every frame is held, an epoch needs neither images nor convolutions: the head's forward and backward.
NetSVF's stack ends in 128x1x17 values per frame: two orientations of 42,000 frames take 730 MB.
"""
from __future__ import annotations

import numpy as np
import torch


class FeatureCache:
    """Conv outputs of the frames `indices` (global store indices), filled on demand: both orientations when
    the frames may be mirrored (training), else as they are (validation). `labels[i]` is the angle of the
    frame `indices[i]` (indices sorted)."""

    def __init__(self, encode, indices: np.ndarray, labels: np.ndarray, mirrored: bool = True):
        self.encode = encode  # the frozen stack: input batch -> conv output
        order = np.argsort(indices, kind="stable")
        self.indices = np.asarray(indices, np.int64)[order]
        self.labels = np.asarray(labels, np.float32)[order]
        self.values = None  # (frames, orientations, *shape) float32, allocated at the first batch
        self.filled = np.zeros((len(self.indices), 2 if mirrored else 1), bool)

    def rows(self, indices) -> np.ndarray:
        idx = np.asarray(indices, np.int64)
        rows = np.searchsorted(self.indices, idx)
        if np.any(rows >= len(self.indices)) or np.any(self.indices[np.minimum(rows, len(self.indices) - 1)] != idx):
            raise KeyError("frames that are not in this cache")
        return rows

    def __call__(self, x: torch.Tensor | None, indices, mirrored: torch.Tensor, device) -> torch.Tensor:
        """The conv output of batch x (frames `indices`, mirrored where `mirrored`) on `device`: cached rows are
        read, the others computed from x and its mirror image (without gradients) and stored. x may be None
        when every frame of the batch is cached."""
        rows, side = self.rows(indices), mirrored.cpu().numpy().astype(np.int64)
        sides = self.filled.shape[1]
        if side.max(initial=0) >= sides:
            raise ValueError("this cache holds unmirrored frames only")
        todo = np.flatnonzero(~self.filled[rows, side])
        if len(todo):
            if x is None:
                raise ValueError("frames not cached yet need their images")
            seen = x[torch.from_numpy(todo).to(x.device)]
            with torch.no_grad():
                fresh = [self.encode(v).float().cpu() for v in (seen, seen.flip(-1))[:sides]]
            if self.values is None:
                self.values = torch.empty((len(self.indices), sides) + tuple(fresh[0].shape[1:]), dtype=torch.float32)
            for flipped, values in enumerate(fresh):  # the batch's orientation, then the other one
                self.values[rows[todo], (side[todo] + flipped) % sides] = values
                self.filled[rows[todo], (side[todo] + flipped) % sides] = True
        return self.values[rows, side].to(device)

    @property
    def complete(self) -> bool:
        """Every frame held (in both orientations where mirrored): batches need no images."""
        return bool(self.filled.all())

    @property
    def share_filled(self) -> float:
        """Share of (frame, orientation) pairs computed so far."""
        return float(self.filled.mean())

"""The frozen conv stack's outputs per training frame, for `vbp train --freeze-features` (the head alone trains).

With the convolutions and their BatchNorm statistics frozen, a frame's conv output depends on the frame and on
whether it is mirrored only. Each (frame, orientation) is computed once, the first time a batch holds it, and
kept in memory (float32 copies of what the stack returned, so a cached batch is bit-equal to a recomputed one);
later epochs cost the head's forward and backward. NetSVF's stack ends in 128x1x17 values per frame: two
orientations of 42,000 frames take 730 MB.
"""
from __future__ import annotations

import numpy as np
import torch


class FeatureCache:
    """Conv outputs of the frames `indices` (global store indices), both orientations, filled on demand."""

    def __init__(self, encode, indices: np.ndarray):
        self.encode = encode  # the frozen stack: input batch -> conv output
        self.indices = np.sort(np.asarray(indices, np.int64))
        self.values = None  # (frames, 2, *shape) float32, allocated at the first batch
        self.filled = np.zeros((len(self.indices), 2), bool)

    def rows(self, indices) -> np.ndarray:
        idx = np.asarray(indices, np.int64)
        rows = np.searchsorted(self.indices, idx)
        if np.any(rows >= len(self.indices)) or np.any(self.indices[np.minimum(rows, len(self.indices) - 1)] != idx):
            raise KeyError("frames outside the cached training split")
        return rows

    def __call__(self, x: torch.Tensor, indices, mirrored: torch.Tensor) -> torch.Tensor:
        """The conv output of batch x (frames `indices`, mirrored where `mirrored`): cached rows are read,
        the others computed from x (without gradients) and stored."""
        rows, side = self.rows(indices), mirrored.cpu().numpy().astype(np.int64)
        todo = np.flatnonzero(~self.filled[rows, side])
        if len(todo):
            with torch.no_grad():
                fresh = self.encode(x[torch.from_numpy(todo).to(x.device)]).float().cpu()
            if self.values is None:
                self.values = torch.empty((len(self.indices), 2) + tuple(fresh.shape[1:]), dtype=torch.float32)
            self.values[rows[todo], side[todo]] = fresh
            self.filled[rows[todo], side[todo]] = True
        return self.values[rows, side].to(x.device)

    @property
    def share_filled(self) -> float:
        """Share of (frame, orientation) pairs computed so far."""
        return float(self.filled.mean())

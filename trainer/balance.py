"""Loss weights that balance rare steering angles against common ones (`vbp train --label-balance ALPHA`).

A drive spends most frames near straight ahead, so a plain MSE is dominated by them and under-fits sharp curves.
Each frame's squared error is weighed by (share of training frames in its |label| bin) ** -ALPHA: ALPHA 0 is the
plain MSE, 1 the inverse frequency, 0.5 its square root (the "SQINV" weighting of Yang et al., "Delving into Deep
Imbalanced Regression", ICML 2021). Bins are of |label|, so a mirrored frame (angle negated) weighs as its original.
"""
from __future__ import annotations

import numpy as np
import torch

BIN_DEGREES = 5.0
CAP = 10.0  # no frame weighs more than this, however rare its bin


class LabelBalance:
    """Per-frame loss weights from the training labels: normalised to mean 1 over them, then capped at CAP."""

    def __init__(self, angles, alpha: float):
        bins = self.bin(np.abs(np.asarray(angles, np.float32)))
        counts = np.bincount(bins).astype(np.float64)
        share = np.where(counts > 0, counts / len(bins), 1.0)
        weight = share ** -float(alpha)
        weight /= weight[bins].mean()
        self.table = torch.from_numpy(np.minimum(weight, CAP).astype(np.float32))

    @staticmethod
    def bin(magnitude: np.ndarray) -> np.ndarray:
        return np.floor(magnitude / BIN_DEGREES).astype(np.int64)

    def __call__(self, angles: torch.Tensor) -> torch.Tensor:
        """Weights (B,) of a batch's labels in degrees (float32, as the stores hold them)."""
        idx = torch.from_numpy(self.bin(angles.detach().abs().cpu().numpy())).clamp_(max=len(self.table) - 1)
        return self.table[idx].to(angles.device)

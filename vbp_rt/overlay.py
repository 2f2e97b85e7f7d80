"""Mask -> picture: the paper's red overlay, or a colour map blended over the frame."""
from __future__ import annotations

import cv2
import numpy as np

COLORMAPS = {"red": None, "jet": cv2.COLORMAP_JET, "inferno": cv2.COLORMAP_INFERNO, "turbo": cv2.COLORMAP_TURBO}


def to_bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


def overlay(image: np.ndarray, mask: np.ndarray, opacity: float = 0.7, colormap: str = "red") -> np.ndarray:
    """Blend `mask` (H,W) in [0,1] over `image` (gray or BGR uint8, same H,W); returns BGR uint8.

    "red": each pixel moves towards pure red in proportion to mask*opacity (the paper's figures);
    other names blend an OpenCV colour map with weight mask*opacity.
    """
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colour map {colormap!r}; known: {', '.join(COLORMAPS)}")
    base = to_bgr(image)
    if mask.shape != base.shape[:2]:
        mask = cv2.resize(mask.astype(np.float32), (base.shape[1], base.shape[0]), interpolation=cv2.INTER_LINEAR)
    # weights as uint8 (0..255) and the blend in saturating uint8 arithmetic: the viewer does this per frame
    mask8 = cv2.convertScaleAbs(np.maximum(mask, 0, dtype=np.float32), alpha=255.0)
    w = cv2.convertScaleAbs(mask8, alpha=float(opacity))
    keep = cv2.merge([cv2.subtract(255, w)] * 3)
    kept = cv2.multiply(base, keep, scale=1.0 / 255.0)
    if COLORMAPS[colormap] is None:
        return cv2.add(kept, cv2.merge([np.zeros_like(w), np.zeros_like(w), w]))
    color = cv2.applyColorMap(mask8, COLORMAPS[colormap])
    return cv2.add(kept, cv2.multiply(color, cv2.merge([w] * 3), scale=1.0 / 255.0))

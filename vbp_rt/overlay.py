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
    base = to_bgr(image).astype(np.float32)
    if mask.shape != base.shape[:2]:
        mask = cv2.resize(mask.astype(np.float32), (base.shape[1], base.shape[0]), interpolation=cv2.INTER_LINEAR)
    w = (np.clip(mask, 0.0, 1.0) * opacity).astype(np.float32)[..., None]
    if COLORMAPS[colormap] is None:
        color = np.array([0.0, 0.0, 255.0], np.float32)
    else:
        color = cv2.applyColorMap((np.clip(mask, 0, 1) * 255).astype(np.uint8), COLORMAPS[colormap]).astype(np.float32)
    return (base * (1.0 - w) + color * w).astype(np.uint8)

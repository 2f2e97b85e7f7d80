"""Camera frame -> network view, as in the VisualBackProp paper's Udacity preprocessing.

Every source is first brought to the Udacity center camera's 640x480 geometry (a wider frame loses
its sides, a taller one its top, then it is resized), converted to gray, and the lower part is cropped
and scaled: 640x135 for NetSVF ("svf"), 351x135 for NetHVF ("hvf"), whose crop is 246 rows, about
twice the vertical field of view, scaled down by 351/640.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

REFERENCE_W, REFERENCE_H = 640, 480


@dataclass(frozen=True)
class View:
    """A network view: rows [top, bottom) of the 640x480 reference frame, full width, scaled to width x height."""

    name: str
    width: int
    height: int
    top: int
    bottom: int

    def to_dict(self) -> dict:
        return asdict(self)


VIEWS = {
    "svf": View("svf", 640, 135, 255, 390),
    "hvf": View("hvf", 351, 135, 190, 436),
}


def view_for(name_or_width, height: int = 135) -> View:
    """A view by name ("svf"/"hvf"), with its height changed if asked (the crop keeps its bottom row)."""
    v = VIEWS[name_or_width]
    if height == v.height:
        return v
    rows = round((v.bottom - v.top) * height / v.height)
    return View(v.name, v.width, height, v.bottom - rows, v.bottom)


def reference_region(h: int, w: int) -> tuple:
    """(x0, y0, width, height) of the 4:3 part of an h x w frame: the centre of a wide frame, the bottom of a tall one."""
    if w * 3 > h * 4:
        cw = h * 4 // 3
        return (w - cw) // 2, 0, cw, h
    if w * 3 < h * 4:
        ch = w * 3 // 4
        return 0, h - ch, w, ch
    return 0, 0, w, h


def to_reference(frame: np.ndarray) -> np.ndarray:
    """Crop to 4:3 (`reference_region`) and resize to 640x480."""
    x0, y0, cw, ch = reference_region(*frame.shape[:2])
    frame = frame[y0:y0 + ch, x0:x0 + cw]
    if frame.shape[:2] != (REFERENCE_H, REFERENCE_W):
        frame = cv2.resize(frame, (REFERENCE_W, REFERENCE_H), interpolation=cv2.INTER_AREA)
    return frame


def to_gray(frame: np.ndarray) -> np.ndarray:
    """BGR/BGRA/gray uint8 -> gray uint8 (H,W)."""
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 1:
        return frame[:, :, 0]
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"expected a gray or BGR image, got an array of shape {frame.shape}")


def view_box(frame_shape, view: View) -> tuple:
    """(x0, y0, x1, y1): the rectangle of a frame of this shape that `prepare` turns into the view."""
    x0, y0, cw, ch = reference_region(*frame_shape[:2])
    scale = ch / REFERENCE_H
    return x0, y0 + round(view.top * scale), x0 + cw, y0 + round(view.bottom * scale)


def crop_view(reference: np.ndarray, view: View) -> np.ndarray:
    """The view's rows of a 640x480 reference frame, scaled to the view size (any channel count)."""
    band = reference[view.top:view.bottom]
    if band.shape[:2] == (view.height, view.width):
        return np.ascontiguousarray(band)
    return cv2.resize(band, (view.width, view.height), interpolation=cv2.INTER_AREA)


def to_bgr(frame: np.ndarray) -> np.ndarray:
    """BGR/BGRA/gray uint8 -> BGR uint8 (H,W,3)."""
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    raise ValueError(f"expected a gray or BGR image, got an array of shape {frame.shape}")


def prepare(frame: np.ndarray, view: View, color: bool = False) -> np.ndarray:
    """Any camera frame (BGR or gray, any size) -> the view's uint8 image (height, width), gray, or BGR
    (height, width, 3) with `color`."""
    if frame is None or frame.size == 0:
        raise ValueError("empty frame")
    return crop_view(to_reference(to_bgr(frame) if color else to_gray(frame)), view)


def letterbox(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize keeping the aspect ratio, centred on a black height x width canvas."""
    h, w = image.shape[:2]
    k = min(height / h, width / w)
    nh, nw = max(1, round(h * k)), max(1, round(w * k))
    canvas = np.zeros((height, width) + image.shape[2:], np.uint8)
    y0, x0 = (height - nh) // 2, (width - nw) // 2
    canvas[y0:y0 + nh, x0:x0 + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return canvas


def model_view(frame: np.ndarray, view: View | None, height: int, width: int, color: bool = False,
               letterbox_fit: bool = False) -> np.ndarray:
    """A camera frame -> a model's uint8 input image (height, width), gray or, with `color`, BGR: the view's
    crop when the model reads a known view, else the whole frame resized (or letterboxed) to the model's input."""
    if view is not None:
        return prepare(frame, view, color)
    image = to_bgr(frame) if color else to_gray(frame)
    if letterbox_fit:
        return letterbox(image, height, width)
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)

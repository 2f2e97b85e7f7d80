"""Small inputs for the viewer tests: a tiny network, drives, videos, image folders."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from vbp_rt.data.preprocess import VIEWS
from vbp_rt.data.store import StoreWriter

from vbp_rt.models import build, save_checkpoint

SVF = VIEWS["svf"]


def tiny_model(seed: int = 0):
    """A NetSVF-shaped network (1x135x640 in, one angle out) small enough to run in milliseconds."""
    torch.manual_seed(seed)
    return build("netsvf", channels=(4, 4, 6, 6), strides=(1, 2, 1, 2), fc=(16,)).eval()


def tiny_checkpoint(folder: Path, seed: int = 0) -> Path:
    path = Path(folder) / "tiny.pt"
    save_checkpoint(path, tiny_model(seed))
    return path


def road_image(i: int, height: int = SVF.height, width: int = SVF.width) -> np.ndarray:
    """A gray frame with a bright slanted stripe that moves with `i`."""
    img = np.full((height, width), 60, np.uint8)
    for y in range(height):
        x = (width // 3 + 3 * i + y) % width
        img[y, x:x + 12] = 230
    return img


def write_drive(path: Path, frames: int = 12, views=(SVF,)) -> Path:
    """A store with `frames` frames of each view and steering angles 1.5 * index degrees."""
    with StoreWriter(path, list(views), source="viewer test", fps=20.0) as w:
        for i in range(frames):
            w.append(images={v.name: road_image(i, v.height, v.width) for v in views}, angle=1.5 * i, speed=10.0,
                     timestamp=i / 20.0, frame_id=i)
    return Path(path)


def camera_frame(i: int, height: int = 240, width: int = 320) -> np.ndarray:
    """A BGR 4:3 frame whose lower part carries the moving stripe."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:] = (90, 80, 70)
    road = cv2.resize(road_image(i), (width, height // 2))
    frame[height // 2:] = cv2.cvtColor(road, cv2.COLOR_GRAY2BGR)
    return frame


def write_video(path: Path, frames: int = 10, fps: float = 25.0) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (320, 240))
    assert w.isOpened()
    for i in range(frames):
        w.write(camera_frame(i))
    w.release()
    return Path(path)


def write_folder(folder: Path, frames: int = 5) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), camera_frame(i))
    return folder


def red_dominance(bgr: np.ndarray) -> np.ndarray:
    """R minus the mean of G and B, per pixel (0 on a gray image, large where the red overlay is strong)."""
    b, g, r = (bgr[..., k].astype(np.float32) for k in range(3))
    return r - (g + b) / 2


def make_runtime(model, methods=("vbp", "lrp"), backend="torch-cpu"):
    """The engine's Runtime (torch on the CPU by default: no ONNX export to wait for)."""
    from vbp_rt.runtime import Runtime
    return Runtime(model, backend=backend, methods=methods)


QT_WAIT = 60_000  # ms a Qt test waits for the window; generous for 2 busy cores


def shown(window, qtbot, index):
    """Wait until the window shows frame `index`; its result."""
    qtbot.waitUntil(lambda: window.last_result is not None and window.last_result.index == index, timeout=QT_WAIT)
    return window.last_result

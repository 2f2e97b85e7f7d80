"""`vbp explain MODEL INPUT... --method vbp --out OUT.h5`: masks for images, folders, videos and stores."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from tqdm import tqdm

from . import methods
from .explain import explain
from .models import load_model
from .overlay import overlay

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".pgm", ".ppm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v"}
STORE_SUFFIXES = {".h5", ".hdf5"}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "explain", help="write predictions and masks for images, folders, videos or a data store",
        description="Run a model on frames and write its prediction and an attribution mask per frame. "
                    "Frames are converted to the model's view (gray, lower crop, scaled).",
    )
    p.add_argument("model", help="checkpoint path, .onnx file (vbp and, with its MODEL.lrp.onnx variant, lrp) "
                                 "or shipped model name (" + ", ".join(_shipped()) + ")")
    p.add_argument("inputs", nargs="+", help="image files, folders of images, video files, or HDF5 stores "
                                               "from `vbp data` (every frame, in order)")
    p.add_argument("--method", default="vbp", help=f"attribution method (default vbp; known: "
                                                   f"{', '.join(methods.available())})")
    p.add_argument("--eps", type=float, default=None, help="epsilon for lrp (default 100, as in the paper)")
    p.add_argument("--out", required=True, help="output HDF5 file with /prediction and /mask")
    p.add_argument("--overlay-dir", help="also write each frame with its mask overlaid in red (PNG)")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=run)


def _shipped():
    from .models import shipped_models
    return list(shipped_models()) or ["none yet"]


class FrameSource:
    """Frames from the given inputs, already at the model's view; bad ones are reported and counted."""

    def __init__(self, inputs, view_fn):
        self.items = []  # (label, loader)
        self.bad = 0
        self.view_fn = view_fn
        for raw in inputs:
            path = Path(raw)
            if not path.exists():
                raise FileNotFoundError(f"input {path} does not exist")
            if path.is_dir():
                files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
                if not files:
                    raise ValueError(f"folder {path} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
                self.items += [(str(f), "image") for f in files]
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                self.items.append((str(path), "image"))
            elif path.suffix.lower() in VIDEO_SUFFIXES:
                self.items.append((str(path), "video"))
            elif path.suffix.lower() in STORE_SUFFIXES:
                self.items.append((str(path), "store"))
            else:
                raise ValueError(f"input {path}: unknown kind (images: {', '.join(sorted(IMAGE_SUFFIXES))}; "
                                 f"videos: {', '.join(sorted(VIDEO_SUFFIXES))}; stores: .h5)")

    def __iter__(self):
        """Yield (label, view image uint8)."""
        for label, kind in self.items:
            if kind == "image":
                frame = cv2.imread(label, cv2.IMREAD_UNCHANGED)
                if frame is None or frame.size == 0:
                    self._bad(label, "cannot be decoded as an image")
                    continue
                if frame.dtype != np.uint8:
                    frame = cv2.convertScaleAbs(frame, alpha=255.0 / max(1, int(frame.max())))
                yield label, self.view_fn(frame)
            elif kind == "video":
                cap = cv2.VideoCapture(label)
                if not cap.isOpened():
                    self._bad(label, "cannot be opened as a video")
                    continue
                i = 0
                while True:
                    ok, frame = cap.read()
                    if not ok:
                        break
                    yield f"{label}#{i}", self.view_fn(frame)
                    i += 1
                cap.release()
            else:
                yield from self._store_frames(label)

    def _store_frames(self, label):
        from data.store import StoreReader
        with StoreReader(label) as store:
            view = self.view_fn.view_name
            if view not in store.views:
                raise ValueError(f"store {label} has no view {view!r} for this model (it has: "
                                 f"{', '.join(store.views)})")
            images = store.images(view)
            for i in range(len(store)):
                yield f"{label}#{i}", images[i]

    def _bad(self, label, why):
        self.bad += 1
        print(f"vbp explain: skipping {label}: {why}", file=sys.stderr)

    def count_hint(self) -> int | None:
        return len(self.items) if all(kind == "image" for _, kind in self.items) else None


class ViewFn:
    """Camera frame -> the model's input image (uint8), from the model's config."""

    def __init__(self, cfg):
        from data.preprocess import VIEWS, prepare, view_for
        self.cfg = cfg
        self.view_name = cfg.view
        self.view = view_for(cfg.view, cfg.height) if cfg.view in VIEWS else None
        if self.view is not None and self.view.width != cfg.width:
            raise ValueError(f"model input width {cfg.width} does not match view {cfg.view} ({self.view.width})")
        self._prepare = prepare

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if self.view is not None:
            return self._prepare(frame, self.view)
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        return cv2.resize(gray, (self.cfg.width, self.cfg.height), interpolation=cv2.INTER_AREA)


def _batches(source, size):
    labels, images = [], []
    for label, img in source:
        labels.append(label)
        images.append(img)
        if len(images) == size:
            yield labels, np.stack(images)
            labels, images = [], []
    if images:
        yield labels, np.stack(images)


def run(args) -> int:
    from .onnx_model import is_onnx, onnx_config
    if is_onnx(args.model):
        model, cfg = args.model, onnx_config(args.model)
    else:
        model = load_model(args.model)
        cfg = model.config
    options = {} if args.eps is None else {"eps": args.eps}
    methods.get(args.method)  # fail early on an unknown method
    source = FrameSource(args.inputs, ViewFn(cfg))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    overlay_dir = Path(args.overlay_dir) if args.overlay_dir else None
    if overlay_dir:
        overlay_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    n = 0
    try:
        with h5py.File(tmp, "w") as f:
            pred_ds = f.create_dataset("prediction", (0,) if cfg.outputs == 1 else (0, cfg.outputs),
                                       maxshape=(None,) if cfg.outputs == 1 else (None, cfg.outputs),
                                       dtype="f4", chunks=True)
            mask_ds = f.create_dataset("mask", (0, cfg.height, cfg.width), maxshape=(None, cfg.height, cfg.width),
                                       dtype="f4", chunks=(1, cfg.height, cfg.width), compression="gzip",
                                       compression_opts=1)
            labels_all = []
            with tqdm(total=source.count_hint(), unit="frame", desc=f"vbp explain ({args.method})",
                      disable=None) as bar:
                for labels, imgs in _batches(source, args.batch_size):
                    x = torch.from_numpy(imgs).float().mul_(cfg.input_scale).unsqueeze(1)
                    e = explain(model, x, method=args.method, **options)
                    pred = e.prediction.detach().cpu().numpy()
                    pred = pred[:, 0] if cfg.outputs == 1 else pred
                    mask = e.mask.detach().cpu().numpy()
                    k = len(labels)
                    pred_ds.resize(n + k, axis=0)
                    mask_ds.resize(n + k, axis=0)
                    pred_ds[n:n + k] = pred
                    mask_ds[n:n + k] = mask
                    if overlay_dir:
                        for j, label in enumerate(labels):
                            name = f"{n + j:06d}_{Path(label.split('#')[0]).stem}.png"
                            cv2.imwrite(str(overlay_dir / name), overlay(imgs[j], mask[j]))
                    labels_all += labels
                    n += k
                    bar.update(k)
            f.create_dataset("source", data=np.array(labels_all, dtype=h5py.string_dtype()))
            f.attrs.update({"model": str(args.model), "arch": cfg.arch, "method": args.method,
                            "options": json.dumps(options), "frames": n, "bad_frames": source.bad})
        if n == 0:
            raise ValueError(f"no usable frames in {', '.join(args.inputs)} ({source.bad} bad)")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"vbp explain: {n} frames -> {out}" + (f" ({source.bad} bad frames skipped)" if source.bad else ""))
    return 0

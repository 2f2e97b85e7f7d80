"""`vbp explain MODEL INPUT... --method vbp --out OUT.h5`: masks for images, folders, videos and stores."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from tqdm import tqdm

from vbp_rt import methods
from vbp_rt.data.sources import iter_frames, open_source
from vbp_rt.dispatch import explain
from vbp_rt.files import (
    DestinationLock,
    atomic_write,
    partial_path,
    publish,
    refuse_existing,
    warn_stale,
)
from vbp_rt.input_spec import SPEC_HELP, announce
from vbp_rt.model_config import shipped_models
from vbp_rt.onnx_model import model_info
from vbp_rt.overlay import overlay


def add_parser(sub) -> None:
    p = sub.add_parser(
        "explain", help="write predictions and masks for images, folders, videos or a data store",
        description="Run a model on frames and write its prediction and an attribution mask per frame. "
                    "Frames are converted to the model's input as its input spec says (the project's models: "
                    "gray, lower road crop, scaled; other models: see --input-spec and docs/byom.md).",
    )
    p.add_argument("model", help="checkpoint path, .onnx file (vbp and, with its MODEL.lrp.onnx variant, lrp) "
                                 "or shipped model name (" + ", ".join(_shipped()) + ")")
    p.add_argument("inputs", nargs="+", help="image files, folders of images, video files, or HDF5 stores "
                                               "from `vbp data` (every frame, in order)")
    p.add_argument("--method", default="vbp", help=f"attribution method (default vbp; known: "
                                                   f"{', '.join(methods.available())})")
    p.add_argument("--eps", type=float, default=None, help="epsilon for lrp (default 100, as in the paper)")
    p.add_argument("--out", required=True, help="output HDF5 file with /prediction and /mask")
    p.add_argument("--overwrite", action="store_true", help="replace an --out file that already exists (default: refuse)")
    p.add_argument("--overlay-dir", help="also write each frame with its mask overlaid in red (PNG)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (default 16)")
    p.add_argument("--input-spec", help=SPEC_HELP)
    p.set_defaults(func=run)


def _shipped():
    return list(shipped_models()) or ["none yet"]


class FrameSource:
    """Frames of the given inputs (image files, folders, videos, stores: `vbp_rt.data.sources`), at the model's
    view; unreadable frames are reported and counted."""

    def __init__(self, inputs, cfg, spec):
        self.cfg, self.spec = cfg, spec
        self.sources = []
        self.bad = 0
        try:
            for raw in inputs:
                path = Path(raw)
                if not path.exists():
                    raise FileNotFoundError(f"input {path} does not exist")
                self.sources.append(open_source(path, cfg.view))
        except BaseException:
            self.close()
            raise

    def __iter__(self):
        """Yield (label, view image uint8)."""
        for source in self.sources:
            for frame in iter_frames(source, on_bad=lambda i, why, s=source: self._bad(s.label(i), why),
                                     on_end=lambda why: print(f"vbp explain: {why}", file=sys.stderr)):
                image = frame.image if frame.prepared else self.spec.view_image(frame.image)
                yield source.label(frame.index), image

    def _bad(self, label, why):
        self.bad += 1
        print(f"vbp explain: skipping {label}: {why}", file=sys.stderr)

    def count_hint(self) -> int | None:
        lengths = [s.length for s in self.sources]
        return sum(lengths) if all(n is not None for n in lengths) else None

    def close(self) -> None:
        for source in self.sources:
            source.close()


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


def _check_outputs(args) -> tuple:
    """--out and --overlay-dir, checked before any work."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the HDF5 file to write, e.g. {out / 'masks.h5'}")
    refuse_existing([out], args.overwrite)
    overlay_dir = Path(args.overlay_dir) if args.overlay_dir else None
    if overlay_dir is not None and overlay_dir.exists() and not overlay_dir.is_dir():
        raise ValueError(f"--overlay-dir {overlay_dir} exists and is not a folder")
    return out, overlay_dir


def run(args) -> int:
    out, overlay_dir = _check_outputs(args)
    kind, model, _, cfg, spec = model_info(args.model, options=args.input_spec)
    if kind == "onnx":
        model = args.model  # vbp_rt.explain runs the file (onnxruntime, or its torch conversion)
    options = {} if args.eps is None else {"eps": args.eps}
    methods.check_options(args.method, options)  # fail early on an unknown method or option
    announce(spec, args.model, "vbp explain")
    source = FrameSource(args.inputs, cfg, spec)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with DestinationLock(out, "vbp explain"):
            warn_stale(out, "vbp explain")
            if overlay_dir:
                overlay_dir.mkdir(parents=True, exist_ok=True)
            n = _write(out, overlay_dir, source, model, cfg, spec, args, options)
    finally:
        source.close()
    print(f"vbp explain: {n} frames -> {out}" + (f" ({source.bad} bad frames skipped)" if source.bad else ""))
    return 0


def _write(out, overlay_dir, source, model, cfg, spec, args, options) -> int:
    """Explain every frame into a temporary file renamed onto `out` when complete; returns the frame count."""
    tmp = partial_path(out)
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
                    x = torch.from_numpy(spec.to_tensor(imgs))
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
                            atomic_write(overlay_dir / name, cv2.imencode(".png", overlay(imgs[j], mask[j]))[1].tobytes())
                    labels_all += labels
                    n += k
                    bar.update(k)
            f.create_dataset("source", data=np.array(labels_all, dtype=h5py.string_dtype()))
            f.attrs.update({"model": str(args.model), "arch": cfg.arch, "method": args.method,
                            "options": json.dumps(options), "frames": n, "bad_frames": source.bad})
        if n == 0:
            raise ValueError(f"no usable frames in {', '.join(args.inputs)} ({source.bad} bad)")
        publish(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return n

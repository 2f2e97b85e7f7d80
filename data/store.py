"""The one HDF5 store every source writes and every consumer reads.

Layout (format "vbp-rt-store", version 1)::

    attrs: format, version, source, created (ISO), preprocess (JSON), bad_frames, bad_reasons (JSON), fps,
           frames (set when the write completed)
    /angle (N,) float32      steering wheel angle, degrees (positive = left, counter-clockwise)
    /speed (N,) float32      m/s
    /timestamp (N,) float64  seconds
    /frame_id (N,) int64     frame number in the source
    /views/<name>            attrs width, height, top, bottom (rows of the 640x480 reference frame)
    /views/<name>/image (N,H,W) uint8, and for synthetic drives lane_mask / distractor_mask (N,H,W) uint8 0/1

The writer works on a temporary file next to the output (``OUT.<random>.partial``) opened in HDF5
single-writer/multiple-reader mode, and flushes every ``chunk`` frames: a write that is killed leaves
that file openable by `StoreReader` with every flushed frame. A successful close renames it to OUT.
Frames are in the source's order (time order within each recording session); the train/test split is by
position, as in the paper (first 190/210 train).
"""
from __future__ import annotations

import json
import os
import secrets
import sys
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from ..files import warn_stale
from .preprocess import View

FORMAT = "vbp-rt-store"
VERSION = 1
TRAIN_FRACTION = 190 / 210
PER_FRAME = {"angle": "f4", "speed": "f4", "timestamp": "f8", "frame_id": "i8"}
MASKS = ("lane_mask", "distractor_mask")
CACHE_BYTES = 64 << 20
DAMAGE = (OSError, RuntimeError, KeyError)  # what h5py raises on a store whose bytes are cut or overwritten


def split_slice(n: int, name: str) -> slice:
    """Frames of split "train" (first round(n*190/210)), "test" (the rest) or "all"."""
    cut = round(n * TRAIN_FRACTION)
    try:
        return {"train": slice(0, cut), "test": slice(cut, n), "all": slice(0, n)}[name]
    except KeyError:
        raise ValueError(f"unknown split {name!r} (train, test or all)") from None


class StoreWriter:
    """Append frames to a new store; the file appears at `path` only when the context exits cleanly."""

    def __init__(self, path, views, source: str, preprocess: dict | None = None, ground_truth: bool = False,
                 fps: float = 0.0, chunk: int = 8, keep_partial: bool = True):
        self.path = Path(path)
        self.views = list(views)
        if not self.views:
            raise ValueError("a store needs at least one view")
        self.ground_truth = ground_truth
        self.chunk = chunk
        self.keep_partial = keep_partial
        self.count = 0
        self.bad_frames = 0
        self.bad_reasons: list[str] = []
        self._unflushed = 0
        self.preprocess = dict(preprocess or {})  # written again at close: a writer may add to it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        warn_stale(self.path, "store")
        self.tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
        self.file = None
        try:  # an interruption (Ctrl-C, SIGTERM) before the `with` block starts must not leave the file behind
            self._create(views, ground_truth, fps, source, chunk)
        except BaseException:
            self.abort()
            raise

    def _create(self, views, ground_truth, fps, source, chunk) -> None:
        self.file = h5py.File(self.tmp, "w-", libver="latest", rdcc_nbytes=CACHE_BYTES)
        f = self.file
        f.attrs.update({"format": FORMAT, "version": VERSION, "source": str(source),
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "preprocess": json.dumps(self.preprocess, sort_keys=True),
                        "bad_frames": 0, "bad_reasons": "[]", "fps": float(fps)})
        for name, dtype in PER_FRAME.items():
            f.create_dataset(name, (0,), maxshape=(None,), dtype=dtype, chunks=(1024,))
        for v in self.views:
            g = f.create_group(f"views/{v.name}")
            g.attrs.update({"width": v.width, "height": v.height, "top": v.top, "bottom": v.bottom})
            for ds in ("image",) + (MASKS if ground_truth else ()):
                g.create_dataset(ds, (0, v.height, v.width), maxshape=(None, v.height, v.width), dtype="u1",
                                 chunks=(chunk, v.height, v.width), compression="gzip", compression_opts=1,
                                 fletcher32=True)  # a damaged chunk is an error on reading, not wrong pixels
        f.swmr_mode = True

    def __enter__(self):
        return self

    def append(self, images: dict, angle, speed, timestamp, frame_id, lane_mask: dict | None = None,
               distractor_mask: dict | None = None) -> None:
        """Append B frames: images {view: (B,H,W) uint8}, per-frame arrays of length B, masks like images."""
        angle = np.atleast_1d(np.asarray(angle, np.float32))
        b = len(angle)
        columns = {"angle": angle, "speed": speed, "timestamp": timestamp, "frame_id": frame_id}
        columns = {k: np.atleast_1d(np.asarray(c, PER_FRAME[k])) for k, c in columns.items()}
        frames = {}
        for v in self.views:
            groups = {"image": images}
            if self.ground_truth:
                groups.update(lane_mask=lane_mask or {}, distractor_mask=distractor_mask or {})
            for ds, given in groups.items():
                if v.name not in given:
                    raise ValueError(f"append to {self.path}: missing {ds} for view {v.name}")
                a = np.asarray(given[v.name], np.uint8)
                if a.ndim == 2:
                    a = a[None]
                if a.shape != (b, v.height, v.width):
                    raise ValueError(f"append to {self.path}: {ds} of view {v.name} has shape {a.shape}, "
                                     f"expected {(b, v.height, v.width)}")
                frames[f"views/{v.name}/{ds}"] = a
        for k, c in columns.items():
            if c.shape != (b,):
                raise ValueError(f"append to {self.path}: {k} has shape {c.shape}, expected ({b},)")
        n = self.count
        # Images first and the per-frame columns last: a reader takes the shortest dataset as the length.
        for name, a in list(frames.items()) + list(columns.items()):
            ds = self.file[name]
            ds.resize(n + b, axis=0)
            ds[n:n + b] = a
        self.count += b
        self._unflushed += b
        if self._unflushed >= self.chunk:
            self.file.flush()
            self._unflushed = 0

    def bad(self, count_or_reason=1) -> None:
        """Count skipped source frames: an int adds that many, a string adds one and keeps the reason."""
        if isinstance(count_or_reason, str):
            self.bad_frames += 1
            self.bad_reasons.append(count_or_reason)
        else:
            self.bad_frames += int(count_or_reason)

    def close(self) -> Path:
        """Finish the file (final attributes) and rename it to its destination; interrupted here, it is aborted."""
        try:
            return self._finish()
        except BaseException:
            self.abort()
            raise

    def _finish(self) -> Path:
        self.file.close()
        with h5py.File(self.tmp, "r+") as f:
            f.attrs["preprocess"] = json.dumps(self.preprocess, sort_keys=True)
            f.attrs["bad_frames"] = self.bad_frames
            f.attrs["bad_reasons"] = json.dumps(self.bad_reasons[:1000])
            f.attrs["frames"] = self.count
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Stop writing; keep the partial file when it holds frames and `keep_partial` (and say so), else remove it."""
        if self.file is not None and self.file.id.valid:
            self.file.close()
        if not self.tmp.exists():  # finished and renamed, or never created
            return
        if self.count and self.keep_partial:
            print(f"store: write to {self.path} interrupted; {self.count} frames kept in {self.tmp}",
                  file=sys.stderr)
        else:
            self.tmp.unlink(missing_ok=True)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# superblock version -> (byte holding the size of file addresses, byte where the base address starts); the
# end-of-file address follows the base address and one more address (HDF5 File Format Specification, II.A)
SUPERBLOCK = {0: (13, 24), 1: (13, 28), 2: (9, 12), 3: (9, 12)}


def check_hdf5_size(path) -> None:
    """Refuse an HDF5 file shorter than its superblock says: the HDF5 library can loop forever opening a file
    cut inside its superblock. A writer's `.partial` file may still grow, so only its superblock is checked."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:8] != HDF5_SIGNATURE or (len(head) > 8 and head[8] not in SUPERBLOCK):
        return
    size_at, base_at = SUPERBLOCK[head[8]] if len(head) > 8 else SUPERBLOCK[0]  # the signature alone: cut
    width = head[size_at] if len(head) > size_at else 0
    eof_at = base_at + 2 * width
    if width not in (2, 4, 8) or len(head) < eof_at + width:
        raise ValueError(f"{path} is a truncated or corrupt HDF5 store (cut inside its superblock, "
                         f"{path.stat().st_size} bytes)")
    base = int.from_bytes(head[base_at:base_at + width], "little")
    end = base + int.from_bytes(head[eof_at:eof_at + width], "little")
    size = path.stat().st_size
    if size < end and not path.name.endswith(".partial"):
        raise ValueError(f"{path} is a truncated or corrupt HDF5 store ({size} bytes, its superblock says {end})")


class StoreReader:
    """Read a store (or a writer's .partial file) without loading the images into memory."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"store {self.path} does not exist")
        check_hdf5_size(self.path)
        try:
            self.file = h5py.File(self.path, "r", swmr=True, rdcc_nbytes=CACHE_BYTES)
        except OSError:
            try:
                self.file = h5py.File(self.path, "r", rdcc_nbytes=CACHE_BYTES)
            except OSError as e:
                with open(self.path, "rb") as f:
                    hdf5 = f.read(8) == b"\x89HDF\r\n\x1a\n"
                raise ValueError(f"{self.path} " + ("is a truncated or corrupt HDF5 store" if hdf5 else
                                                   "is not an HDF5 file") + f" ({e})") from None
        try:
            self._check()
        except DAMAGE as e:  # h5py raises these for a file whose bytes are cut or overwritten
            self.file.close()
            raise ValueError(f"{self.path} is a truncated or corrupt HDF5 store ({type(e).__name__}: {e})") from None

    def _check(self) -> None:
        if self.file.attrs.get("format") != FORMAT:
            self.file.close()
            raise ValueError(f"{self.path} is not a vbp-rt store (no attribute format={FORMAT!r}; "
                             f"write one with `vbp data synth` or `vbp data udacity`)")
        if int(self.file.attrs.get("version", 0)) > VERSION:
            self.file.close()
            raise ValueError(f"{self.path}: store version {self.file.attrs['version']} is newer than this "
                             f"reader ({VERSION})")
        if "views" not in self.file or any(k not in self.file for k in PER_FRAME):
            raise KeyError("datasets missing")
        self.views = sorted(self.file["views"].keys())
        self.refresh()

    def refresh(self) -> int:
        """Pick up frames a writer has flushed since opening; returns the frame count."""
        datasets = [self.file[k] for k in PER_FRAME]
        datasets += [g[k] for g in self.file["views"].values() for k in g]
        for ds in datasets:
            ds.refresh()
        self._n = min(ds.shape[0] for ds in datasets)
        self._columns = {k: self.file[k][:self._n] for k in PER_FRAME}
        return self._n

    def __len__(self) -> int:
        return self._n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        self.file.close()

    @property
    def attrs(self) -> dict:
        a = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self.file.attrs.items()}
        for k in ("preprocess", "bad_reasons"):
            if isinstance(a.get(k), str):
                a[k] = json.loads(a[k])
        return a

    def view(self, name: str) -> View:
        g = self._group(name)
        return View(name, int(g.attrs["width"]), int(g.attrs["height"]), int(g.attrs["top"]),
                    int(g.attrs["bottom"]))

    def _group(self, name: str) -> h5py.Group:
        if name not in self.views:
            raise ValueError(f"store {self.path} has no view {name!r} (it has: {', '.join(self.views)})")
        return self.file["views"][name]

    def images(self, view: str) -> h5py.Dataset:
        """(N,H,W) uint8 dataset (may hold frames past len(self) while a writer is still appending)."""
        return self._group(view)["image"]

    def lane_mask(self, view: str):
        return self._group(view).get("lane_mask")

    def distractor_mask(self, view: str):
        return self._group(view).get("distractor_mask")

    @property
    def has_ground_truth(self) -> bool:
        return all(self.lane_mask(v) is not None for v in self.views)

    @property
    def angle(self) -> np.ndarray:
        return self._columns["angle"]

    @property
    def speed(self) -> np.ndarray:
        return self._columns["speed"]

    @property
    def timestamp(self) -> np.ndarray:
        return self._columns["timestamp"]

    @property
    def frame_id(self) -> np.ndarray:
        return self._columns["frame_id"]

    def split(self, name: str) -> slice:
        return split_slice(self._n, name)

    def iter_batches(self, view: str, batch_size: int, split: str = "all"):
        """Yield (start_index, images uint8 (B,H,W), angles float32 (B,)) in order over a split."""
        images = self.images(view)
        s = self.split(split)
        for start in range(s.start, s.stop, batch_size):
            stop = min(start + batch_size, s.stop)
            yield start, images[start:stop], self.angle[start:stop]

"""The training run log (RUN_DIR/runlog.h5): probe frames, per-snapshot VBP masks, metrics, step losses.

Layout::

    attrs: arch, view, store (path), started (ISO), epochs (planned)
    /probe/image (P,H,W) uint8, /probe/angle (P,) float32, /probe/index (P,) int64
    /snapshots/epoch (S,) float64, /snapshots/mask (S,P,H,W) float16, /snapshots/prediction (S,P) float32
    /metrics/epoch, /metrics/train_loss, /metrics/val_rmse, /metrics/lr (E,) float64
    /steps/epoch (K,) float64, /steps/loss (K,) float32
    /validation/epoch (E,) float64, /validation/rmse, zero_rmse, bias (E,D) float64: per validation drive,
        attrs drives (JSON list of D names); absent in logs written before it existed

The writer keeps the file in HDF5 single-writer/multiple-reader (SWMR) mode, so `RunLogReader` can
follow a run while it trains. Every group's `epoch` dataset is written last: a reader takes it as the
row count. The file is built under a temporary name and renamed once it is in SWMR mode, so a reader
never sees a half-created log.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from ..files import user_mode

FORMAT = "vbp-rt-runlog"
GROUPS = {
    "snapshots": ("mask", "prediction", "epoch"),
    "metrics": ("train_loss", "val_rmse", "lr", "epoch"),
    "steps": ("loss", "epoch"),
    "validation": ("rmse", "zero_rmse", "bias", "epoch"),  # optional: logs with named validation drives
}


def _create(f: h5py.File, probe_shape: tuple) -> None:
    p, h, w = probe_shape
    g = f.create_group("snapshots")
    g.create_dataset("epoch", (0,), maxshape=(None,), dtype="f8", chunks=(256,))
    g.create_dataset("mask", (0, p, h, w), maxshape=(None, p, h, w), dtype="f2", chunks=(1, max(p, 1), h, w),
                     compression="gzip", compression_opts=1)
    g.create_dataset("prediction", (0, p), maxshape=(None, p), dtype="f4", chunks=(256, max(p, 1)))
    g = f.create_group("metrics")
    for name in GROUPS["metrics"]:
        g.create_dataset(name, (0,), maxshape=(None,), dtype="f8", chunks=(256,))
    g = f.create_group("steps")
    g.create_dataset("epoch", (0,), maxshape=(None,), dtype="f8", chunks=(4096,))
    g.create_dataset("loss", (0,), maxshape=(None,), dtype="f4", chunks=(4096,))


class RunLogWriter:
    """Append-only writer; `keep` (from `RunLogReader.rows_until`) carries over an older log on resume."""

    def __init__(self, path, attrs: dict, probe: dict, keep: dict | None = None, flush_seconds: float = 0.5,
                 drives: list | None = None):
        self.path = Path(path)
        self.flush_seconds = flush_seconds
        self._last_flush = 0.0
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        try:
            self.file = f = h5py.File(tmp, "w", libver="latest")
            f.attrs.update({"format": FORMAT, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            **attrs})
            g = f.create_group("probe")
            g.create_dataset("image", data=np.asarray(probe["image"], np.uint8))
            g.create_dataset("angle", data=np.asarray(probe["angle"], np.float32))
            g.create_dataset("index", data=np.asarray(probe["index"], np.int64))
            _create(f, g["image"].shape)
            if drives:
                g = f.create_group("validation")
                g.attrs["drives"] = json.dumps(list(drives))
                g.create_dataset("epoch", (0,), maxshape=(None,), dtype="f8", chunks=(256,))
                for name in GROUPS["validation"][:-1]:
                    g.create_dataset(name, (0, len(drives)), maxshape=(None, len(drives)), dtype="f8",
                                     chunks=(256, len(drives)))
            for group, columns in (keep or {}).items():
                self._append(group, columns)
            f.swmr_mode = True
            f.flush()
            os.chmod(tmp, user_mode())  # mkstemp made it 0600; a run log is as readable as any new file
            os.replace(tmp, self.path)
        except BaseException:
            if getattr(self, "file", None) is not None and self.file.id.valid:
                self.file.close()
            Path(tmp).unlink(missing_ok=True)
            raise

    def _append(self, group: str, columns: dict) -> None:
        n = len(np.atleast_1d(columns["epoch"]))
        if n == 0 or group not in self.file:
            return
        for name in GROUPS[group]:  # "epoch" last: readers count rows by it
            ds = self.file[group][name]
            start = ds.shape[0]
            ds.resize(start + n, axis=0)
            ds[start:] = np.asarray(columns[name], ds.dtype).reshape((n,) + ds.shape[1:])

    def _maybe_flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_flush >= self.flush_seconds:
            self.file.flush()
            self._last_flush = now

    def flush(self) -> None:
        """Write every row to disk now: before a checkpoint, so that a run killed after it resumes with no row lost."""
        self._maybe_flush(force=True)

    def snapshot(self, epoch: float, masks, predictions) -> None:
        """Masks (P,H,W) in [0,1] and predictions (P,) of the probe frames after `epoch` epochs."""
        self._append("snapshots", {"epoch": [epoch], "mask": np.asarray(masks)[None],
                                   "prediction": np.asarray(predictions).reshape(1, -1)})
        self._maybe_flush(force=True)

    def metrics(self, epoch: float, train_loss: float, val_rmse: float, lr: float) -> None:
        self._append("metrics", {"epoch": [epoch], "train_loss": [train_loss], "val_rmse": [val_rmse], "lr": [lr]})
        self._maybe_flush(force=True)

    def validation(self, epoch: float, drives: list) -> None:
        """Per-drive validation rows ({"rmse", "zero_rmse", "bias"}, in the order of `drives` at creation)."""
        self._append("validation", {"epoch": [epoch], **{k: [[d[k] for d in drives]] for k in GROUPS["validation"][:-1]}})
        self._maybe_flush(force=True)

    def steps(self, epochs, losses) -> None:
        """Training loss of logged steps, at their fractional epoch."""
        self._append("steps", {"epoch": epochs, "loss": losses})
        self._maybe_flush()

    def close(self) -> None:
        if self.file.id.valid:
            self.file.flush()
            self.file.close()


class RunLogReader:
    """Read a run log, also while `vbp train` is still writing it; call `refresh()` to see new rows."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"run log {self.path} does not exist (written by `vbp train --out RUN_DIR`)")
        try:
            self.file = h5py.File(self.path, "r", libver="latest", swmr=True)
        except OSError as e:
            raise ValueError(f"{self.path} is not a readable HDF5 run log ({e})") from None
        if self.file.attrs.get("format") != FORMAT:
            self.file.close()
            raise ValueError(f"{self.path} is not a vbp-rt run log (expected attribute format={FORMAT!r})")
        self._rows = {}
        self.refresh()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        self.file.close()

    def refresh(self) -> dict:
        """Pick up rows the writer has flushed; returns the row count per group."""
        for group, names in GROUPS.items():
            if group not in self.file:
                continue
            for name in names:
                self.file[group][name].refresh()
            self._rows[group] = min(self.file[group][name].shape[0] for name in names)
        return dict(self._rows)

    @property
    def attrs(self) -> dict:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self.file.attrs.items()}

    def _read(self, group: str) -> dict:
        n = self._rows[group]
        return {name: self.file[group][name][:n] for name in GROUPS[group]}

    def probe(self) -> dict:
        """{"image": (P,H,W) uint8, "angle": (P,) float32 truth, "index": (P,) int64 store indices}."""
        return {k: self.file["probe"][k][()] for k in ("image", "angle", "index")}

    def snapshots(self) -> dict:
        """{"epoch": (S,), "mask": (S,P,H,W) float16, "prediction": (S,P)}."""
        return self._read("snapshots")

    def metrics(self) -> dict:
        """{"epoch", "train_loss", "val_rmse", "lr"}: one row per finished epoch."""
        return self._read("metrics")

    def steps(self) -> dict:
        """{"epoch", "loss"}: one row per logged training step."""
        return self._read("steps")

    def validation(self) -> dict:
        """{"drives": names, "epoch" (E,), "rmse", "zero_rmse", "bias" (E,D)}: per validation drive, one row
        per finished epoch; {} for a log without per-drive rows."""
        if "validation" not in self.file:
            return {}
        return {"drives": json.loads(self.file["validation"].attrs["drives"]), **self._read("validation")}

    def rows_until(self, epoch: float) -> dict:
        """Every row at or before `epoch` (to carry a log over when a run resumes from a checkpoint)."""
        out = {}
        for group in self._rows:
            cols = self._read(group)
            keep = cols["epoch"] <= epoch + 1e-9
            out[group] = {k: v[keep] for k, v in cols.items()}
        return out

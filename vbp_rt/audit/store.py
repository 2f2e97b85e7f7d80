"""The audit's files: AUDIT_DIR/audit.json (what is audited), AUDIT_DIR/chunks/*.h5 (per-frame results, one file
per chunk of frames of one source, each written whole under a temporary name and renamed) and AUDIT_DIR/audit.h5,
whose per-frame datasets are HDF5 virtual datasets over the chunk files (nothing is copied), followed by the
analysis (anomaly score, events, modes) as ordinary datasets.

audit.h5 (format "vbp-rt-audit", version 1)::

    attrs: format, version, model, methods, backend, sources (JSON), chunk, frames, bad_frames, problems (JSON)
    /frames/<name>     per-frame results of every source, in source order then frame order (virtual):
        source (N,) int16 (position in `sources`), index (N,) int64 (frame number in its source),
        prediction, label, error (N,) float32 (NaN where the source has no label), entropy, change (N,),
        centroid (N,2), grid (N,3,4), regions (N,3) (road, above_horizon, edges), agreement (N,) (two methods),
        compact/<method> (N,16,64) float16, truth/<lane|distractor|cue> (N,) float32 (mask mass on a drive's
        ground truth; NaN where it has none), truth_area/<...> (N,) (that ground truth's share of the view)
    /anomaly           score (N,), flagged (N,) bool, offroad (N,) (mass above the horizon and at the edges),
                       attributes features (JSON), k, gap, thresholds (JSON, per source), offroad_thresholds
                       (JSON, per source, on the off-road mass), off_unit, score (its formula)
    /events            source, start, stop, peak (frame rows into /frames), score (area above the threshold)
    /modes             label (N,) int16, center (K,16,64), count (K,), examples (K,E) rows (-1 padded)
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np

FORMAT = "vbp-rt-audit"
VERSION = 1
CONFIG = "audit.json"
RESULT = "audit.h5"
CHUNKS = "chunks"


def _tmp(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def atomic_text(path, text: str) -> Path:
    """Write a text file under a temporary name beside it, then rename it over `path`."""
    path = Path(path)
    tmp = _tmp(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def prepare_dir(out, config: dict, resume: bool) -> Path:
    """Create AUDIT_DIR with its audit.json, or (resume) check that it holds an audit of the same thing."""
    out = Path(out)
    saved = out / CONFIG
    if resume:
        if not saved.is_file():
            raise ValueError(f"--resume: {out} holds no audit to resume (no {CONFIG})")
        old = json.loads(saved.read_text())
        differ = [k for k in config if old.get(k) != config[k]]
        if differ:
            raise ValueError(f"--resume: {out} is an audit with other settings ({', '.join(differ)}); "
                             f"resume with the same sources, model and options, or choose a new --out")
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(f"{out} already exists; choose a new --out, or add --resume to continue that audit")
        out.mkdir(parents=True, exist_ok=True)
        atomic_text(saved, json.dumps(config, indent=1, sort_keys=True))
    (out / CHUNKS).mkdir(exist_ok=True)
    return out


def chunk_path(out, source: int, chunk: int) -> Path:
    return Path(out) / CHUNKS / f"s{source:04d}-c{chunk:06d}.h5"


def chunk_info(path) -> dict | None:
    """The attributes of a chunk file (None when it does not exist or cannot be read)."""
    try:
        with h5py.File(path, "r") as f:
            return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    except (OSError, KeyError):
        return None


def last_compact(path, method: str):
    """The compact mask of the last frame of a chunk file (None when it has no frames)."""
    with h5py.File(path, "r") as f:
        ds = f[f"compact/{method}"]
        return ds[-1].astype(np.float32) if ds.shape[0] else None


def write_chunk(path, columns: dict, attrs: dict) -> Path:
    """Write one chunk file whole (temporary name, then rename). columns: {name: (n,...) array}."""
    path = Path(path)
    tmp = _tmp(path)
    try:
        with h5py.File(tmp, "w") as f:
            for name, a in columns.items():
                f.create_dataset(name, data=a, **({"compression": "gzip", "compression_opts": 1}
                                                  if a.ndim > 1 and a.size else {}))
            f.attrs.update(attrs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def chunk_files(out) -> list:
    """Chunk files of AUDIT_DIR in source, then frame order."""
    return sorted((Path(out) / CHUNKS).glob("s*-c*.h5"))


def merge(out, files, attrs: dict, analysis=None) -> Path:
    """Write AUDIT_DIR/audit.h5: /frames/* as virtual datasets over the chunk `files` (paths stored relative
    to AUDIT_DIR), then `analysis(f)` adds derived datasets; written under a temporary name and renamed."""
    out = Path(out)
    layout = {}  # name -> [(relative file, shape, dtype)]
    for path in files:
        with h5py.File(path, "r") as f:
            names = []
            f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
            if not f["index"].shape[0]:
                continue
            for n in names:
                layout.setdefault(n, []).append((path.relative_to(out).as_posix(), f[n].shape, f[n].dtype))
    counts = {n: sum(s[0] for _, s, _ in parts) for n, parts in layout.items()}
    if len(set(counts.values())) > 1:
        raise ValueError(f"chunk files of {out} disagree on their datasets: {counts}")
    tmp = _tmp(out / RESULT)
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            f.attrs.update({"format": FORMAT, "version": VERSION, **attrs})
            for name, parts in layout.items():
                total = counts[name]
                vl = h5py.VirtualLayout(shape=(total,) + parts[0][1][1:], dtype=parts[0][2])
                row = 0
                for rel, shape, _ in parts:
                    vl[row:row + shape[0]] = h5py.VirtualSource(rel, name, shape=shape)
                    row += shape[0]
                f.create_virtual_dataset(f"frames/{name}", vl, fillvalue=np.nan if parts[0][2].kind == "f" else 0)
            if analysis is not None:
                analysis(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / RESULT)
    finally:
        tmp.unlink(missing_ok=True)
    return out / RESULT


def open_audit(out) -> h5py.File:
    """Open AUDIT_DIR/audit.h5 for reading (the chunk files are found relative to it)."""
    out = Path(out)
    path = out / RESULT if out.is_dir() else out
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (run `vbp audit ... --out {out}` first)")
    f = h5py.File(path, "r")
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise ValueError(f"{path} is not a vbp audit (no attribute format={FORMAT!r})")
    return f


def read_frames(f: h5py.File) -> dict:
    """Every /frames dataset of an open audit.h5 as arrays."""
    names = []
    f["frames"].visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
    return {n: f["frames"][n][()] for n in names}

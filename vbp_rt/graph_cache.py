"""Exported ONNX graphs kept between runs, so that a second start skips loading the checkpoint into torch and
exporting it (about 2.5 s for NetSVF on a 2-core machine).

An entry's key is a digest of: the checkpoint file's contents (SHA-256), vbp-rt's version and the source of the
modules that build the graph (an edited exporter never serves an old graph), the torch, onnx and onnxruntime
versions, and the settings that shape the graph (methods, LRP epsilon, input shape, input spec). Entries live in
$VBP_RT_CACHE/graphs (default ~/.cache/vbp-rt/graphs), are written atomically (temp file + rename), and carry
their key in the metadata: a truncated or otherwise unreadable entry is deleted and rebuilt, never an error.

No torch here: a cached graph must load without it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from importlib import metadata as package_metadata
from pathlib import Path

import onnx

from . import __version__
from .files import atomic_write

KEY_PROP = "vbp_rt.cache_key"
# The modules whose code decides what an exported graph contains.
BUILDERS = ("onnx_io.py", "onnx_model.py", "onnx_meta.py", "onnx_graph.py", "graph.py", "upsample.py", "models.py",
            "model_config.py", "methods/vbp.py", "methods/lrp.py")
log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where exported graphs are kept: $VBP_RT_CACHE/graphs, default ~/.cache/vbp-rt/graphs."""
    return Path(os.environ.get("VBP_RT_CACHE") or Path.home() / ".cache" / "vbp-rt") / "graphs"


@functools.lru_cache(maxsize=32)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path) -> str:
    """SHA-256 of a file's contents (remembered per path, size and modification time within the process)."""
    st = os.stat(path)
    return _file_digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _builder_digest() -> str:
    here = Path(__file__).resolve().parent
    h = hashlib.sha256(__version__.encode())
    for name in BUILDERS:
        h.update(name.encode() + b"\0" + (here / name).read_bytes())
    return h.hexdigest()


def _version(dist: str) -> str:
    try:
        return package_metadata.version(dist)
    except package_metadata.PackageNotFoundError:
        return ""


def key(checkpoint, **settings) -> str:
    """The cache key of `checkpoint` (a file) exported with `settings` (JSON-serializable values)."""
    parts = {"checkpoint": file_digest(checkpoint), "builders": _builder_digest(),
             "versions": {d: _version(d) for d in ("torch", "onnx", "onnxruntime", "onnxruntime-gpu")},
             "settings": settings}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


def entry(k: str) -> Path:
    return cache_dir() / f"{k}.onnx"


def load(k: str) -> onnx.ModelProto | None:
    """The graph stored under key `k`, or None. An entry that does not load whole (truncated, foreign, another
    key's) is deleted, so that the next store rebuilds it."""
    path = entry(k)
    if not path.is_file():
        return None
    try:
        model = onnx.load(path)
        stored = {p.key: p.value for p in model.metadata_props}.get(KEY_PROP)
        if stored != k:
            raise ValueError(f"the entry's key is {stored!r}")
    except Exception as e:  # protobuf's DecodeError, OSError, a partial model: any unreadable entry is rebuilt
        log.warning("graph cache: %s is unreadable (%s); rebuilding it", path, str(e).splitlines()[0] if str(e) else
                    type(e).__name__)
        try:
            path.unlink()
        except OSError:
            pass
        return None
    return model


def store(k: str, model: onnx.ModelProto) -> Path | None:
    """Keep `model` under key `k` (atomically). A cache that cannot be written is logged, not an error."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    props = {p.key: p.value for p in m.metadata_props}
    props[KEY_PROP] = k  # metadata comes after the graph in the file: a truncated entry loses it
    onnx.helper.set_model_props(m, props)
    path = entry(k)
    try:
        atomic_write(path, m.SerializeToString())
    except OSError as e:
        log.warning("graph cache: cannot write %s (%s)", path, e)
        return None
    return path

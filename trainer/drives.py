"""Sets of drives for validation and evaluation: stores given by path, or synthetic drives named by seed.

A seed list such as "1001-1008" or "11,12,90417" names synthetic drives (`vbp data synth --seed S
--frames N`); they are written once into a cache folder as `synth_s{S}_f{N}.h5` and reused afterwards
(a cached file is checked against its seed and frame count).
"""
from __future__ import annotations

from pathlib import Path

from vbp_rt.data.seeds import is_seed_list, parse_seeds
from vbp_rt.data.store import StoreReader
from vbp_rt.data.synth import SynthOptions, write_synth


def synth_drive(seed: int, frames: int, cache, views=("svf", "hvf"), progress: bool = True) -> Path:
    """The store of synthetic drive `seed` with `frames` frames in folder `cache` (written on first use)."""
    path = Path(cache) / f"synth_s{seed}_f{frames}.h5"
    if path.exists():
        with StoreReader(path) as r:
            options = r.attrs.get("preprocess", {}).get("options", {})
            if len(r) != frames or options.get("seed") != seed:
                raise ValueError(f"{path} is not synthetic drive seed {seed} with {frames} frames; "
                                 f"move it away or choose another folder")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_synth(path, SynthOptions(frames=frames, seed=seed), views=views, progress=progress)
    return path


def resolve(items, frames: int, cache, progress: bool = True) -> list:
    """Store paths for a list of items, each a store path or a seed list (written to `cache`)."""
    paths = []
    for item in items:
        if is_seed_list(item) and not Path(item).exists():
            paths += [str(synth_drive(s, frames, cache, progress=progress)) for s in parse_seeds(item)]
        else:
            if not Path(item).is_file():
                raise FileNotFoundError(f"drive {item} does not exist (a store from `vbp data`, or seeds like 1001-1008)")
            paths.append(str(item))
    if not paths:
        raise ValueError("no drives given")
    return paths


def drive_name(path) -> str:
    """Short name of a drive for tables: the file name without .h5."""
    return Path(path).name.removesuffix(".h5")

"""Which onnxruntime distribution belongs on this machine, and which ones are installed.

`onnxruntime` (CPU) and `onnxruntime-gpu` install into the same `onnxruntime/` folder. With both in one
site-packages the one installed last overwrites part of the other and onnxruntime reports the CUDA provider
missing; uninstalling one of them then breaks the other. A machine needs exactly one: `onnxruntime-gpu`
where an NVIDIA GPU is (extra `[gpu]`), `onnxruntime` elsewhere (extra `[cpu]`).

Standard library only: scripts/bootstrap.sh runs this file before vbp-rt is installed,
`python vbp_rt/ort_install.py`, which prints one line: the extra to install ("cpu" or "gpu"), followed by the
distributions to uninstall first (all onnxruntime distributions of this environment when one that does
not belong is among them, so that the right one is then installed into a clean folder).
VBP_ORT=cpu or VBP_ORT=gpu overrides the choice.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

EXTRAS = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}  # extra -> the distribution it installs


def nvidia_gpu() -> bool:
    """An NVIDIA GPU with its driver loaded (the kernel module lists it, or nvidia-smi does)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def installed(paths=None) -> list:
    """[(distribution name, version, site folder)] of every installed distribution that provides the
    `onnxruntime` import package (onnxruntime, onnxruntime-gpu, onnxruntime-directml, ort-nightly...)."""
    found = []
    for dist in metadata.distributions(path=paths if paths is not None else sys.path):
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if not name.startswith(("onnxruntime", "ort-nightly")):
            continue
        if any(str(f).replace("\\", "/").startswith("onnxruntime/") for f in dist.files or ()):
            found.append((name, dist.version, str(Path(dist.locate_file("")).resolve())))
    return sorted(set(found))


def clashes(dists: list) -> list:
    """Site folders holding more than one onnxruntime distribution: {folder: [names]}."""
    by_folder = {}
    for name, _, folder in dists:
        by_folder.setdefault(folder, []).append(name)
    return {folder: names for folder, names in by_folder.items() if len(names) > 1}


def wanted_extra(gpu: bool | None = None) -> str:
    """"gpu" on a machine with an NVIDIA GPU, else "cpu"; the VBP_ORT environment variable overrides."""
    choice = os.environ.get("VBP_ORT", "").strip().lower()
    if choice:
        if choice not in EXTRAS:
            raise ValueError(f"VBP_ORT={choice!r}: expected cpu or gpu")
        return choice
    return "gpu" if (nvidia_gpu() if gpu is None else gpu) else "cpu"


def to_uninstall(extra: str, dists: list, prefix: str | None = None) -> list:
    """Distributions to remove from this environment (`prefix`, default sys.prefix) before installing
    `extra`: none when only the wanted one (or none) is there, else every onnxruntime distribution of it."""
    prefix = str(Path(prefix or sys.prefix).resolve())
    mine = [name for name, _, folder in dists if folder.startswith(prefix)]
    if all(name == EXTRAS[extra] for name in mine):
        return []
    return sorted(set(mine))


def main() -> int:
    extra = wanted_extra()
    print(" ".join([extra, *to_uninstall(extra, installed())]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Optional dependencies, installed by the package's extras ([viewer], [ingest], [report], [all])."""
from __future__ import annotations

import importlib


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, purpose: str):
    """Import `module`, or raise MissingExtra naming the `extra` that installs it and what needed it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(f"{purpose} needs {module.split('.')[0]}, which is not installed: "
                           f"pip install 'vbp-rt[{extra}]' (or [all])") from e


def pyplot(purpose: str):
    """matplotlib.pyplot on the file-only Agg backend (no display needed), or MissingExtra naming [report]."""
    matplotlib = require("matplotlib", "report", purpose)
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", "report", purpose)

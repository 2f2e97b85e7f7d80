"""The method registry: every attribution method registers itself here under a name.

A method is a function `(model, x, **options) -> Explanation`; `vbp_rt.explain` dispatches by name.
"""
from __future__ import annotations

import importlib

REGISTRY: dict = {}
_BUILTIN = ("vbp", "lrp", "saliency", "guided", "deconvnet", "gradxinput", "gradcam", "affine")


def register(name: str):
    """Decorator: register `fn(model, x, **options) -> Explanation` as method `name`."""
    def deco(fn):
        REGISTRY[name] = fn
        return fn
    return deco


def _load_builtin():
    for mod in _BUILTIN:
        importlib.import_module(f"{__name__}.{mod}")


def available() -> list:
    _load_builtin()
    return sorted(REGISTRY)


def get(name: str):
    _load_builtin()
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]

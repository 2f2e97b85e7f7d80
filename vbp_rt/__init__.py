"""vbp-rt: real-time VisualBackProp for driving CNNs.

The public surface is loaded on first use (PEP 562), so `import vbp_rt.data.store` or the `vbp` command's
`--help` do not pay for torch and onnxruntime.
"""
import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Explanation": "vbp_rt.result",
    "normalize01": "vbp_rt.result",
    "explain": "vbp_rt.dispatch",
    "available_methods": "vbp_rt.methods",
    "build": "vbp_rt.models",
    "load_model": "vbp_rt.models",
    "Runtime": "vbp_rt.runtime",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'vbp_rt' has no attribute {name!r}")
    module = importlib.import_module(_PUBLIC[name])
    value = getattr(module, "available" if name == "available_methods" else name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_PUBLIC])

"""The method registry: every attribution method registers itself here under a name.

A method is a function `(model, x, *, its options) -> Explanation`; `vbp_rt.explain` dispatches by name and
checks the options against the function's signature. `parse_methods` reads the command-line grammar
"vbp,lrp:eps=0.01" used by `vbp view`, `vbp eval` and `vbp audit`.

The built-in methods' names and options are also listed in `BUILTIN`, so that naming and checking them
(`available`, `options_of`, `parse_methods`) does not import their torch code: a cached graph on onnxruntime
starts without torch (tests/test_torch_free.py holds the table to the functions' signatures).
"""
from __future__ import annotations

import importlib
import inspect

REGISTRY: dict = {}
# built-in method -> its option names (the keyword parameters after model and x), in signature order
BUILTIN = {"vbp": (), "lrp": ("eps", "target", "bn"), "saliency": ("target",), "guided": ("target",),
           "deconvnet": ("target",), "gradxinput": ("target",), "gradcam": ("layer", "target"),
           "affine": ("layer", "target")}
ONNX_METHODS = ("vbp", "lrp")  # the methods with an onnxruntime head (vbp_rt.onnx_io); the others run on torch


def register(name: str):
    """Decorator: register `fn(model, x, **options) -> Explanation` as method `name`."""
    def deco(fn):
        REGISTRY[name] = fn
        return fn
    return deco


def _load_builtin():
    for mod in BUILTIN:
        importlib.import_module(f"{__name__}.{mod}")


def available() -> list:
    """Every method name: the built-in ones and those registered since (none of them imported here)."""
    return sorted({*BUILTIN, *REGISTRY})


def _check_known(name: str) -> None:
    if name not in BUILTIN and name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(available())}")


def get(name: str):
    """The function of method `name` (the built-in methods are imported on first use)."""
    _check_known(name)
    if name not in REGISTRY:
        _load_builtin()
    return REGISTRY[name]


def options_of(name: str) -> list:
    """The option names method `name` takes (its keyword parameters after model and x); for a built-in method
    not imported yet, from BUILTIN."""
    _check_known(name)
    if name not in REGISTRY:
        return list(BUILTIN[name])
    params = list(inspect.signature(REGISTRY[name]).parameters.values())[2:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_options(name: str, options: dict) -> None:
    """Raise a ValueError naming the method and what it takes when `options` has a key it does not take."""
    known = options_of(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"method {name!r} has no option(s) {', '.join(unknown)}; it takes: "
                         f"{', '.join(known) or 'no options'}")


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_methods(text: str) -> dict:
    """'vbp,lrp:eps=0.01' -> {"vbp": ("vbp", {}), "lrp:eps=0.01": ("lrp", {"eps": 0.01})}.

    Numbers become int/float, anything else stays a string. An unknown method or option raises a ValueError
    listing the known ones; an empty list raises too.
    """
    specs = {}
    for label in (t.strip() for t in text.split(",")):
        if not label:
            continue
        method, *pairs = label.split(":")
        _check_known(method)
        options = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"method option {pair!r} in {label!r} is not KEY=VALUE")
            options[key] = _number(value)
        check_options(method, options)
        specs[label] = (method, options)
    if not specs:
        raise ValueError(f"no method given; known methods: {', '.join(available())}")
    return specs

"""The attribution libraries people use, run on the same torch model and input as vbp-rt's own methods.

Each adapter turns (model, x) into a call that returns the library's attribution, plus a function that
removes whatever the library attached to the model. Libraries that are not installed are skipped with a
note saying how to install them.

torchvision: zennit's package `__init__` imports its torchvision canonizers, and pytorch-grad-cam's
`__init__` imports torchvision transforms and box ops; neither the epsilon-LRP nor the GradCAM code path
uses them. torchvision cannot be imported beside a CPU torch wheel from another index, so when it does
not import, these two libraries are imported with a placeholder `torchvision` package in place
(`torchvision_placeholder`): every name in it is a class that raises when instantiated, and it is removed
from `sys.modules` again right after the import, so nothing else ever sees it.
"""
from __future__ import annotations

import copy
import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .latency import FORWARD, ModelSpec, Results, Row, make_images
from .timing import Budget, CudaTimer, measure_group

EPS = 100.0  # the epsilon of vbp-rt's LRP (the paper's); every LRP peer uses the same
OWN_METHODS = ("vbp", "lrp", "saliency", "guided", "gradcam")  # vbp-rt's methods that have a peer or are VBP/LRP


class _Placeholder:
    def __init__(self, *_a, **_k):
        raise RuntimeError("torchvision is not installed: this placeholder only lets a library's import succeed")


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (_Placeholder,), {"__module__": self.__name__})


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def torchvision_importable() -> bool:
    try:
        importlib.import_module("torchvision")
        return True
    except Exception:  # a torchvision built for another torch fails in many ways (ImportError, RuntimeError)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False


@contextmanager
def torchvision_placeholder():
    """While importing a peer library: a placeholder `torchvision` if the real one does not import."""
    if torchvision_importable():
        yield False
        return
    finder = _PlaceholderFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield True
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]


def import_peer(module: str, needs_torchvision_placeholder: bool = False):
    """Import a peer library's module; returns (module, note about how it was imported) or raises ImportError."""
    if not needs_torchvision_placeholder:
        return importlib.import_module(module), None
    with torchvision_placeholder() as placed:
        mod = importlib.import_module(module)
    return mod, ("imported with a placeholder torchvision (torchvision does not import here)" if placed else None)


class FunctionalFlatten(nn.Module):
    """The same layers with `flatten(1)` as a function call: captum's LRP hooks fail on an nn.Flatten module."""

    def __init__(self, model):
        super().__init__()
        self.features = model.features
        self.fc = nn.Sequential(*[m for m in model.head if not isinstance(m, nn.Flatten)])

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def deepest_map(model, input_shape) -> nn.Module:
    """The module whose output is the deepest post-ReLU conv map (Grad-CAM's usual layer)."""
    from vbp_rt.graph import chain_for
    name = chain_for(model, input_shape).links[-1].name
    return dict(model.named_modules())[name]


def captum_lrp(model, x):
    captum = importlib.import_module("captum.attr")
    rules = importlib.import_module("captum.attr._utils.lrp_rules")
    view = FunctionalFlatten(model)
    for m in view.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            m.rule = rules.EpsilonRule(epsilon=EPS)
    lrp = captum.LRP(view)

    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return lrp.attribute(x, target=0)
    return call, None, None


def captum_saliency(model, x):
    captum = importlib.import_module("captum.attr")
    sal = captum.Saliency(FunctionalFlatten(model))

    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sal.attribute(x, target=0, abs=True)
    return call, None, None


def captum_guided(model, x):
    captum = importlib.import_module("captum.attr")
    gbp = captum.GuidedBackprop(FunctionalFlatten(model))

    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return gbp.attribute(x, target=0)
    return call, None, None


def zennit_lrp(model, x):
    """zennit's epsilon rule on every Conv2d and Linear (BatchNorm passes relevance, ReLU passes it), as a
    Gradient attributor whose hooks stay registered while it is timed."""
    _, note = import_peer("zennit", needs_torchvision_placeholder=True)
    attribution = importlib.import_module("zennit.attribution")
    composites = importlib.import_module("zennit.composites")
    rules = importlib.import_module("zennit.rules")
    ztypes = importlib.import_module("zennit.types")
    layer_map = composites.layer_map_base() + [(ztypes.Convolution, rules.Epsilon(epsilon=EPS)),
                                               (ztypes.Linear, rules.Epsilon(epsilon=EPS))]
    attributor = attribution.Gradient(model, composites.LayerMapComposite(layer_map=layer_map))
    attributor.__enter__()

    def call():
        return attributor(x.detach().requires_grad_(True), attr_output=lambda out: out)[1]
    return call, (lambda: attributor.__exit__(None, None, None)), note


def gradcam_gradcam(model, x):
    mod, note = import_peer("pytorch_grad_cam", needs_torchvision_placeholder=True)
    cam = mod.GradCAM(model=model, target_layers=[deepest_map(model, tuple(x.shape[1:]))])
    return (lambda: cam(input_tensor=x, targets=None)), cam.activations_and_grads.release, note


@dataclass(frozen=True)
class Peer:
    library: str  # as its package is installed (pip name)
    method: str  # the vbp-rt method it corresponds to
    make: object  # (model, x) -> (call, close or None, note or None)
    install: str


PEERS = (
    Peer("captum", "lrp", captum_lrp, "pip install captum"),
    Peer("captum", "saliency", captum_saliency, "pip install captum"),
    Peer("captum", "guided", captum_guided, "pip install captum"),
    Peer("zennit", "lrp", zennit_lrp, "pip install --no-deps zennit (its torchvision requirement is not used)"),
    Peer("grad-cam", "gradcam", gradcam_gradcam,
         "pip install --no-deps grad-cam ttach (its torchvision requirement is not used)"),
)


def peer_group(spec: ModelSpec, batch: int, methods, budget: Budget, results: Results, device: str = "cpu") -> None:
    """Time the torch forward, vbp-rt's own methods and every importable peer on one module and input."""
    from vbp_rt import explain
    backend = f"torch-{device}"
    if spec.module is None:
        results.note(f"{spec.label}: peers need a torch model, not an ONNX file: skipped")
        return
    model = copy.deepcopy(spec.module).to(device).eval()
    images = make_images(spec.input_shape, batch)
    x = torch.from_numpy(images).to(device).float().mul_(spec.input_scale)
    x = x.unsqueeze(1) if x.dim() == 3 else x
    calls, libraries, closers = {}, {}, []

    def forward():
        with torch.no_grad():
            return model(x)
    calls[FORWARD], libraries[FORWARD] = forward, "torch"
    for m in OWN_METHODS:
        if m in methods:
            key = f"vbp-rt:{m}"
            calls[key], libraries[key] = (lambda m=m: explain(model, x, m)), "vbp-rt"
    for peer in PEERS:
        if peer.method not in methods:
            continue
        try:
            call, close, note = peer.make(copy.deepcopy(model), x)  # its own copy: peers attach hooks
            call()
        except ImportError as e:
            results.note(f"peer {peer.library} {peer.method}: not installed ({e.name or e}); {peer.install}")
            continue
        except Exception as e:  # a peer that fails on this model is reported, not fatal
            results.note(f"peer {peer.library} {peer.method} on {spec.label}: failed ({type(e).__name__}: {e})")
            continue
        if note:
            results.note(f"peer {peer.library}: {note}")
        if close is not None:
            closers.append(close)
        key = f"{peer.library}:{peer.method}"
        calls[key], libraries[key] = call, peer.library
    try:
        timers = {name: CudaTimer() for name in calls} if device == "cuda" else None
        stats = measure_group(calls, budget, timers)
    finally:
        for close in closers:
            close()
    fwd = stats[FORWARD].median
    for key, s in stats.items():
        method = key.split(":", 1)[-1]
        results.rows.append(Row("peer", spec.label, spec.weights, backend, batch, method, s, fwd, libraries[key]))

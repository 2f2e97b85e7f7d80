"""The one forward + backward pass shared by the gradient-based methods.

Saliency, Guided Backprop and DeconvNet differ only in how the backward pass crosses a ReLU (Nie et
al., Eq. 1-2): the true gradient keeps the forward mask, DeconvNet keeps only positive top gradients,
Guided Backprop does both. `relu_rule` installs such a rule on every nn.ReLU of a model and removes
it on exit; `backward` runs the explained score back to the input and, on request, to feature maps.

The explained score: for a classifier the target logit (default: the predicted class); for a
single-output regressor (a steering angle) the output times the sign of the prediction, so that a
positive relevance always means "pushes towards the steering the network chose".
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import MapLink, chain_for

# grad_input of a ReLU from (grad_input of the true gradient, grad_output)
RULES = {
    "gradient": None,
    "guided": lambda grad_in, _grad_out: grad_in.clamp(min=0),
    "deconvnet": lambda _grad_in, grad_out: grad_out.clamp(min=0),
}


@contextmanager
def relu_rule(model: nn.Module, rule: str):
    """Within the block, every nn.ReLU of `model` back-propagates with `rule` (a key of RULES)."""
    if rule not in RULES:
        raise ValueError(f"unknown ReLU rule {rule!r}; known: {', '.join(RULES)}")
    fn = RULES[rule]
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)] if fn is not None else []
    inplace = [m.inplace for m in relus]
    handles = []
    try:
        for m in relus:
            m.inplace = False  # backward hooks cannot wrap an in-place output
            handles.append(m.register_full_backward_hook(lambda _m, g_in, g_out: (fn(g_in[0], g_out[0]),)))
        yield
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(relus, inplace):
            m.inplace = flag


def explained_score(pred: torch.Tensor, target=None) -> torch.Tensor:
    """(N,) the score each method explains (see the module docstring)."""
    if pred.shape[1] == 1:
        return pred[:, 0] * torch.where(pred[:, 0] >= 0, 1.0, -1.0).to(pred.dtype)
    if target is None:
        target = pred.argmax(dim=1)
    target = torch.as_tensor(target, device=pred.device).reshape(-1).expand(pred.shape[0])
    return pred[torch.arange(pred.shape[0], device=pred.device), target]


@dataclass
class Backward:
    """Result of `backward`: prediction (N,outputs), score (N,), input x and its gradient (N,C,H,W),
    and for each requested map name its activation and gradient (N,C,h,w)."""

    prediction: torch.Tensor
    score: torch.Tensor
    input: torch.Tensor
    input_grad: torch.Tensor
    activations: dict = field(default_factory=dict)
    gradients: dict = field(default_factory=dict)


def backward(model: nn.Module, x: torch.Tensor, rule: str = "gradient", target=None, maps=()) -> Backward:
    """Forward `x`, then back-propagate the explained score with `rule` to the input and to the
    outputs of the modules named in `maps`. Samples are independent (the model must not mix a batch,
    as BatchNorm in training mode does), so the batch's scores are summed into one backward pass."""
    modules = dict(model.named_modules())
    missing = [n for n in maps if n not in modules]
    if missing:
        raise ValueError(f"the model has no module named {', '.join(missing)}")
    acts: dict = {}
    handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: acts.__setitem__(n, out)) for n in maps]
    x = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad(), relu_rule(model, rule):
            pred = model(x)
            score = explained_score(pred, target)
            grads = torch.autograd.grad(score.sum(), [x] + [acts[n] for n in maps])
    finally:
        for h in handles:
            h.remove()
    return Backward(pred.detach(), score.detach(), x.detach(), grads[0],
                    {n: acts[n].detach() for n in maps}, dict(zip(maps, grads[1:])))


def resolve_layer(model: nn.Module, x: torch.Tensor, layer) -> MapLink | None:
    """A post-ReLU conv map of the model's chain by index (0 = shallowest, -1 = deepest, also as a
    string) or by module name; None for "input"."""
    if layer is None or layer == "input":
        return None
    chain = chain_for(model, x.shape[1:])
    if isinstance(layer, str) and layer.lstrip("-").isdigit():
        layer = int(layer)
    if isinstance(layer, int):
        if not -len(chain.links) <= layer < len(chain.links):
            raise ValueError(f"layer index {layer} out of range: the model has {len(chain.links)} post-ReLU "
                             f"conv maps ({', '.join(chain.names)})")
        return chain.links[layer]
    for link in chain.links:
        if link.name == layer:
            return link
    raise ValueError(f"unknown layer {layer!r}; use 'input', an index, or one of: {', '.join(chain.names)}")


def to_input_size(m: torch.Tensor, hw) -> torch.Tensor:
    """Bilinear resize of a map (N,h,w) to the input's (H,W) (the identity when sizes agree)."""
    if tuple(m.shape[-2:]) == tuple(hw):
        return m
    return F.interpolate(m[:, None], size=tuple(hw), mode="bilinear", align_corners=False)[:, 0]


def unit_peak(m: torch.Tensor) -> torch.Tensor:
    """A non-negative map (N,H,W) divided by its per-image maximum (all-zero images stay zero)."""
    peak = m.amax(dim=(1, 2), keepdim=True)
    return (m / torch.where(peak > 0, peak, torch.ones_like(peak))).float()

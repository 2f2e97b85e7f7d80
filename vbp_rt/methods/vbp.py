"""VisualBackProp (Bojarski et al., Section 3 and Figure 2).

Average every post-ReLU conv map over channels; starting from the deepest, upscale with an all-ones
transposed convolution of the layer's geometry, multiply point-wise with the next shallower average,
repeat down to the input, normalize to [0,1]. The averages are taken by hooks during the forward
pass that produces the prediction: no extra forward, no gradients.
"""
from __future__ import annotations

import torch

from ..graph import (
    Chain,
    cached_chain,
    chain_from_trace,
    remember_chain,
    require_maps,
    torch_dag,
    trace,
)
from ..result import Explanation, normalize01
from ..upsample import ones_transposed_conv
from . import register


def _first_forward(model, x):
    """Find the chain and the averages in one forward (the first call for a model and input shape); a network
    whose maps branch is described by its torch.fx graph (graph.torch_dag) and runs through it."""
    dag = torch_dag(model, tuple(x.shape[1:]))
    if dag is not None:
        remember_chain(model, x.shape[1:], dag[0])
        return _dag_forward(dag[1], x) + (dag[0],)
    means, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.ReLU):
            handles.append(m.register_forward_hook(
                lambda _m, _i, out, name=name: means.__setitem__(name, out.detach().mean(dim=1))
                if out.dim() == 4 else None))
    try:
        with torch.no_grad():
            pred, entries = trace(model, x)
    finally:
        for h in handles:
            h.remove()
    chain = remember_chain(model, x.shape[1:], require_maps(chain_from_trace(entries, tuple(x.shape[1:]))))
    return pred, [means[name] for name in chain.names], chain


def _rescale(m: torch.Tensor) -> torch.Tensor:
    """Divide each image by its max. VBP's final min-max makes the result scale-free, and this keeps
    ten layers of products away from float underflow/overflow (and denormals)."""
    peak = m.amax(dim=(1, 2), keepdim=True)
    return m / torch.where(peak > 0, peak, torch.ones_like(peak))


def _combine(m: torch.Tensor, average: torch.Tensor) -> torch.Tensor:
    return _rescale(m * average)


def backproject(averages: list, chain: Chain, upscale=ones_transposed_conv, combine=_combine, start=_rescale):
    """Combine channel-averaged maps (shallow -> deep, each (N,h,w)) into the input-sized relevance.

    Returns (relevance (N,H,W), intermediate masks deepest first, the last one at the input size).
    `start(m)`, `upscale(m, op)` and `combine(m, average)` are the torch steps; the ONNX export passes
    graph-building ones, so the in-graph head follows this same loop. The deepest average is rescaled
    first: its product with the next average could otherwise sink below float32's normal range.
    """
    m = start(averages[-1])
    inter = [m]
    for level in range(len(chain.links) - 1, -1, -1):
        for op in reversed(chain.links[level].ops):
            m = upscale(m, op)
        if level > 0:
            m = combine(m, averages[level - 1])
        inter.append(m)
    return m, inter


class TorchSteps:
    """The tensor steps of `backproject_dag` in torch. A value is (m, log_scale): the true path sum is
    m * exp(log_scale) per image, so sums of paths of different lengths stay exact under the per-step rescale."""

    one = torch.ones(())
    zero = torch.zeros(())

    @staticmethod
    def upscale(m, op):
        return ones_transposed_conv(m, op)

    @staticmethod
    def mul(a, b):
        return a * b

    @staticmethod
    def times(m, k: int):
        return m * float(k)

    @staticmethod
    def sum(terms):
        if len(terms) == 1:
            return terms[0]
        top = terms[0][1]
        for _, l in terms[1:]:
            top = torch.maximum(top, l)
        return sum(m * torch.exp(l - top) for m, l in terms), top

    @staticmethod
    def rescale(m, log_scale):
        peak = m.amax(dim=(1, 2), keepdim=True)
        safe = torch.where(peak > 0, peak, torch.ones_like(peak))
        return m / safe, log_scale + torch.log(safe)


def backproject_dag(averages: list, chain: Chain, steps=TorchSteps):
    """VBP on a DAG of maps (see docs/byom.md): the sum, over every path of the channel-averaged network from an
    input position to a position of a sink map, of the product of the averaged activations on the path
    (Theorem 1 of Bojarski et al., with the paths branches add). From the deepest map up:
    R_P = avg_P * ([P is a sink] + sum over edges P->M of upscale(R_M) * count), and the input gets the sum of
    upscale(R_M) over the edges leaving it. Returns (relevance at the input size, [R_P deepest first])."""
    n = len(chain.links)
    leaving: dict = {i: [] for i in range(-1, n)}
    for j in range(n):
        for e in chain.edges(j):
            leaving[e.source].append((j, e))
    values = [None] * n

    def arriving(i):
        terms = []
        for j, e in leaving[i]:
            m, log_scale = values[j]
            for op in reversed(e.ops):
                m = steps.upscale(m, op)
            terms.append((steps.times(m, e.count) if e.count != 1 else m, log_scale))
        return terms

    for i in range(n - 1, -1, -1):
        terms = arriving(i) + ([(steps.one, steps.zero)] if chain.is_sink(i) else [])
        m, log_scale = steps.sum(terms)
        values[i] = steps.rescale(steps.mul(m, averages[i]), log_scale)
    relevance, _ = steps.sum(arriving(-1))
    return relevance, [v[0] for v in reversed(values)]


def forward_with_averages(model, x, chain: Chain):
    """One forward pass that also returns the channel mean of every post-ReLU conv map."""
    modules = dict(model.named_modules())
    averages = [None] * len(chain.links)

    def make_hook(i):
        def hook(_mod, _inp, out):
            averages[i] = out.detach().mean(dim=1)
        return hook

    handles = [modules[link.name].register_forward_hook(make_hook(i)) for i, link in enumerate(chain.links)]
    try:
        with torch.no_grad():
            pred = model(x)
    finally:
        for h in handles:
            h.remove()
    return pred, averages


def _dag_forward(module, x):
    with torch.no_grad():
        pred, averages = module(x)
    return pred, list(averages)


def forward(model, x):
    """The forward pass VBP rides on: (prediction, channel means shallow -> deep, chain). The first call for a
    model and input shape also finds the chain (in the same pass); later calls hook the cached chain."""
    chain = cached_chain(model, x.shape[1:])
    if chain is None:
        return _first_forward(model, x)
    if not chain.is_chain:
        pred, averages = _dag_forward(torch_dag(model, tuple(x.shape[1:]))[1], x)
        return pred, averages, chain
    pred, averages = forward_with_averages(model, x, chain)
    return pred, averages, chain


def from_averages(pred, averages: list, chain: Chain) -> Explanation:
    """VBP's result from what `forward` returned."""
    relevance, inter = backproject(averages, chain) if chain.is_chain else backproject_dag(averages, chain)
    return Explanation("vbp", pred, normalize01(relevance), relevance,
                       {"names": chain.names, "averages": averages, "intermediate": inter})


@register("vbp")
def visualbackprop(model, x) -> Explanation:
    return from_averages(*forward(model, x))

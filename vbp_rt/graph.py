"""The conv -> ReLU chain of a network: which maps VBP averages and how to upscale between them.

One description (`Chain`) serves VBP in torch, the LRP walk and the ONNX export/analysis, so they
cannot drift apart. For torch modules the chain is found by running one forward pass with hooks on
every leaf module (execution order, not registration order); a network whose data splits or merges
(residual Add, Concat of branches) is described from its torch.fx graph, with every path between maps
as an `Edge` (docs/byom.md).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


@dataclass(frozen=True)
class SpatialOp:
    """A geometry-changing op between two maps: a convolution or a pooling window.

    `in_hw` / `out_hw` are the spatial sizes around it in the traced forward pass.
    `padding` is (top, left, bottom, right).
    """

    kind: str  # "conv" | "pool"
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    in_hw: tuple
    out_hw: tuple


@dataclass(frozen=True)
class Edge:
    """Paths of the network from a shallower map (or the input) to a map, through conv/pool ops and ops that
    keep the map size (BatchNorm, Add, Concat, ...). `count` paths share this source and geometry."""

    source: int  # index of the shallower map in Chain.links; -1 for the input
    ops: tuple  # SpatialOp, in forward order
    count: int = 1


@dataclass
class MapLink:
    """One post-ReLU conv map and the spatial ops that lead to it from the previous map (or the input).

    In a network with branches (residual Add, Concat of parallel branches), `edges` lists every path into
    this map from the shallower maps and `sink` says whether the map reaches the prediction without passing
    another map; a plain chain leaves both None (one edge from the previous map, only the deepest is a sink).
    """

    name: str
    shape: tuple  # (C, H, W)
    ops: tuple  # SpatialOp, in forward order (a chain's only edge)
    edges: tuple | None = None
    sink: bool | None = None


@dataclass
class Chain:
    """The maps VBP averages, shallow -> deep (a topological order), and the paths between them."""

    input_shape: tuple  # (C, H, W)
    links: list = field(default_factory=list)

    @property
    def names(self) -> list:
        return [link.name for link in self.links]

    def edges(self, i: int) -> tuple:
        link = self.links[i]
        return link.edges if link.edges is not None else (Edge(i - 1, link.ops),)

    def is_sink(self, i: int) -> bool:
        link = self.links[i]
        return link.sink if link.sink is not None else i == len(self.links) - 1

    @property
    def is_chain(self) -> bool:
        """True when the maps form one path: each map fed once by the previous one, only the deepest a sink."""
        return all(self.edges(i) == (Edge(i - 1, link.ops),) and self.is_sink(i) == (i == len(self.links) - 1)
                   for i, link in enumerate(self.links))

    def as_chain(self) -> "Chain":
        """The same chain without edge annotations when it is one path (what the chain-only code expects)."""
        if not self.is_chain:
            return self
        return Chain(self.input_shape, [MapLink(k.name, k.shape, k.ops) for k in self.links])


def conv_padding(module) -> tuple:
    """(top, left, bottom, right) padding of a Conv2d, including padding='same'/'valid'."""
    k, d = _pair(module.kernel_size), _pair(module.dilation)
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0, 0, 0, 0)
        total = [di * (ki - 1) for ki, di in zip(k, d)]  # 'same' (stride 1): extra on the bottom/right
        return (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2)
    ph, pw = _pair(module.padding)
    return (ph, pw, ph, pw)


def spatial_op(module, in_hw, out_hw) -> SpatialOp | None:
    """The SpatialOp of a torch module, or None when it keeps the geometry (BN, ReLU, Dropout...)."""
    if isinstance(module, nn.Conv2d):
        return SpatialOp("conv", _pair(module.kernel_size), _pair(module.stride), conv_padding(module),
                         _pair(module.dilation), tuple(in_hw), tuple(out_hw))
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        k = _pair(module.kernel_size)
        s = _pair(module.stride if module.stride is not None else module.kernel_size)
        ph, pw = _pair(module.padding)
        d = _pair(getattr(module, "dilation", 1))
        return SpatialOp("pool", k, s, (ph, pw, ph, pw), d, tuple(in_hw), tuple(out_hw))
    return None


GEOMETRY_KEEPING = (nn.BatchNorm2d, nn.ReLU, nn.Dropout, nn.Dropout2d, nn.Identity, nn.LeakyReLU)


@dataclass
class TraceEntry:
    name: str
    module: nn.Module
    input: torch.Tensor
    output: torch.Tensor


def trace(model: nn.Module, x: torch.Tensor, keep_tensors: bool = False):
    """Run `model(x)` once with hooks on every leaf module; return (output, [TraceEntry] in execution order)."""
    entries, handles = [], []
    for name, m in model.named_modules():
        if len(list(m.children())) == 0:
            def hook(mod, inp, out, name=name):
                i = inp[0] if inp else None
                entries.append(TraceEntry(name, mod, i if keep_tensors else _shape_only(i),
                                          out if keep_tensors else _shape_only(out)))
            handles.append(m.register_forward_hook(hook))
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, entries


def _shape_only(t):
    return torch.empty(t.shape, device="meta") if isinstance(t, torch.Tensor) else t


def chain_from_trace(entries, input_shape) -> Chain:
    """Post-ReLU conv maps in execution order, with the spatial ops leading to each."""
    chain = Chain(tuple(input_shape))
    pending, seen_conv = [], False
    previous = None
    for e in entries:
        m = e.module
        if e.input is None or e.input.dim() != 4:
            break  # flatten / linear head: the conv chain is over
        if previous is not None and tuple(e.input.shape[-2:]) != tuple(previous.output.shape[-2:]):
            raise ValueError(f"between layers {previous.name} and {e.name} the map size changes from "
                             f"{tuple(previous.output.shape[-2:])} to {tuple(e.input.shape[-2:])} outside a module "
                             "(slicing, padding, interpolation?): VisualBackProp cannot invert it")
        previous = e
        op = spatial_op(m, e.input.shape[-2:], e.output.shape[-2:])
        if op is not None:
            pending.append(op)
            seen_conv |= op.kind == "conv"
        elif isinstance(m, nn.ReLU) and seen_conv:
            chain.links.append(MapLink(e.name, tuple(e.output.shape[1:]), tuple(pending)))
            pending, seen_conv = [], False
        elif not isinstance(m, GEOMETRY_KEEPING):
            if e.output.dim() != 4:
                break
            if tuple(e.output.shape[-2:]) != tuple(e.input.shape[-2:]):
                raise ValueError(f"layer {e.name} ({type(m).__name__}) changes the map size in a way "
                                 "VisualBackProp cannot invert; supported: Conv2d, MaxPool2d, AvgPool2d")
    return chain


def _zeros(model: nn.Module, input_shape) -> torch.Tensor:
    p = next(model.parameters(), None)
    return torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu",
                       dtype=p.dtype if p is not None else torch.float32)


def find_torch_chain(model: nn.Module, input_shape) -> Chain:
    """The conv/ReLU maps of `model` for inputs of `input_shape` (C,H,W): the DAG from torch.fx when the
    network branches (`dag_module`), else the chain traced on a zero input."""
    dag = torch_dag(model, input_shape)
    if dag is not None:
        return dag[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, entries = trace(model, _zeros(model, input_shape))
    finally:
        model.train(was_training)
    return require_maps(chain_from_trace(entries, input_shape))


_RELU_FUNCTIONS = (torch.relu, torch.nn.functional.relu, torch.relu_)
MAX_PATHS = 256


def _fx_inputs(node, data: set, shape_of) -> list:
    """fx nodes among `node`'s arguments that carry the image's data as 4-D maps."""
    found = []
    torch.fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) if a in data else None)
    return [a for a in dict.fromkeys(found) if len(shape_of(a)) == 4]


def torch_dag(model: nn.Module, input_shape):
    """(Chain with edges, GraphModule returning (prediction, [channel means])) for a network whose maps
    branch, from its torch.fx graph; None for a plain chain or a model torch.fx cannot trace (then the
    execution-order trace describes it). Cached per model and input shape."""
    key = ("dag", tuple(input_shape))
    cached = _CHAINS.get(model, {}).get(key, False)
    if cached is not False:
        return cached
    result = _fx_dag(model, tuple(input_shape))
    _CHAINS.setdefault(model, {})[key] = result
    return result


def _fx_dag(model: nn.Module, input_shape):
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # data-dependent control flow and friends: fx raises many kinds
        return None
    if not _branches(gm.graph):
        return None  # one path: the execution-order trace inside the first forward describes it
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(_zeros(model, input_shape))
    finally:
        model.train(was_training)

    def shape_of(n):
        meta = n.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()

    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    source = next(n for n in nodes if n.op == "placeholder")
    output = next(n for n in nodes if n.op == "output")
    target = output.args[0][0] if isinstance(output.args[0], (tuple, list)) else output.args[0]
    data = {source}
    for n in nodes:
        found = []
        torch.fx.node.map_arg((n.args, n.kwargs), found.append)
        if any(a in data for a in found):
            data.add(n)
    relevant, todo = set(), [target]
    while todo:
        n = todo.pop()
        if n in relevant or not isinstance(n, torch.fx.Node):
            continue
        relevant.add(n)
        torch.fx.node.map_arg((n.args, n.kwargs), todo.append)

    def is_relu(n):
        return ((n.op == "call_module" and isinstance(modules[n.target], nn.ReLU))
                or (n.op == "call_function" and n.target in _RELU_FUNCTIONS)
                or (n.op == "call_method" and n.target in ("relu", "relu_")))

    def spatial(n):
        if n.op != "call_module":
            return None
        (inp,) = _fx_inputs(n, data, shape_of)[:1] or (None,)
        return spatial_op(modules[n.target], shape_of(inp)[-2:], shape_of(n)[-2:]) if inp is not None else None

    maps: dict = {}
    links = []
    for node in nodes:
        if node not in relevant or not is_relu(node) or len(shape_of(node)) != 4:
            continue
        paths = []

        def walk(n, seq):
            if len(paths) > MAX_PATHS:
                raise ValueError(f"more than {MAX_PATHS} paths lead into {node.name} from the previous maps: "
                                 "this block is not handled")
            if n is source or n in maps:
                paths.append((maps.get(n, -1), seq[::-1]))
                return
            inputs = _fx_inputs(n, data, shape_of)
            if not inputs:
                raise ValueError(f"{n.name} ({n.op} {n.target}) turns a non-map tensor into a map on the way to "
                                 f"{node.name}: VisualBackProp follows only 4-D feature maps")
            for a in inputs:
                walk(a, seq + [(n, a)])

        for a in _fx_inputs(node, data, shape_of):
            walk(a, [])
        ops_of = {}
        for _, seq in paths:
            for n, taken in seq:
                op = spatial(n)
                if op is None and tuple(shape_of(n)[-2:]) != tuple(shape_of(taken)[-2:]):
                    raise ValueError(f"{n.name} ({n.target}) changes the map size in a way VisualBackProp cannot "
                                     "invert; supported: Conv2d, MaxPool2d, AvgPool2d")
                ops_of[n] = op
        if not any(op is not None and op.kind == "conv" for op in ops_of.values()):
            continue
        counts: dict = {}
        for src, seq in paths:
            k = (src, tuple(ops_of[n] for n, _ in seq if ops_of[n] is not None))
            counts[k] = counts.get(k, 0) + 1
        edges = tuple(Edge(src, ops, k) for (src, ops), k in counts.items())
        maps[node] = len(links)
        name = node.target if node.op == "call_module" and node.target not in [k.name for k in links] else node.name
        links.append(MapLink(name, tuple(shape_of(node)[1:]), edges[0].ops, edges))
    if not links:
        return None
    for node, i in maps.items():
        links[i].sink = _fx_reaches(node, target, maps)
    chain = Chain(tuple(input_shape), links)
    if chain.is_chain:
        return None
    return chain, _with_means(gm, list(maps))


def _branches(graph) -> bool:
    """Whether the image's data splits or merges anywhere (a node with two data inputs or two data users)."""
    data = set()
    for n in graph.nodes:
        found = []
        torch.fx.node.map_arg((n.args, n.kwargs), found.append)
        inputs = {a for a in found if a in data}
        if n.op == "placeholder" or inputs:
            data.add(n)
        if len(inputs) > 1 or (n in data and sum(u.op != "output" for u in n.users) > 1):
            return True
    return False


def _fx_reaches(node, target, maps) -> bool:
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n is target:
            return True
        for u in n.users:
            if u not in seen and u not in maps:
                seen.add(u)
                todo.append(u)
    return False


def _with_means(gm, map_nodes):
    """A GraphModule sharing `gm`'s layers that returns (prediction, [channel mean of each map])."""
    graph = gm.graph
    output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(output):
        means = [graph.call_method("mean", (n,), {"dim": 1}) for n in map_nodes]
    output.args = ((output.args[0], means),)
    gm.recompile()
    return gm


def require_maps(chain: Chain) -> Chain:
    """The chain itself, or a ValueError explaining why VisualBackProp does not apply."""
    if not chain.links:
        raise ValueError("the model has no Conv2d followed by an nn.ReLU module: VisualBackProp needs "
                         "post-ReLU convolutional feature maps (functional F.relu calls cannot be hooked)")
    return chain


_CHAINS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {input shape: Chain}


def cached_chain(model: nn.Module, input_shape) -> Chain | None:
    """The chain found earlier for this model and input shape (C,H,W), or None."""
    return _CHAINS.get(model, {}).get(tuple(input_shape))


def remember_chain(model: nn.Module, input_shape, chain: Chain) -> Chain:
    """Cache `chain` for this model and input shape (dropped with the model)."""
    _CHAINS.setdefault(model, {})[tuple(input_shape)] = chain
    return chain


def chain_for(model: nn.Module, input_shape) -> Chain:
    """The model's conv/ReLU chain for this input shape (C,H,W): traced once, then cached."""
    chain = cached_chain(model, input_shape)
    return chain if chain is not None else remember_chain(model, input_shape, find_torch_chain(model, input_shape))

"""The conv -> ReLU maps of an ONNX graph and every path between them, found by graph analysis.

Produces the same `vbp_rt.graph.Chain` the torch side finds, so the VBP head, the parity tests and the
runtime read one description. A map is the output of a `Relu` node with a 4-D output and a `Conv` on at least
one data path since the previous maps; every such path is an `Edge` whose `Conv` / `MaxPool` / `AveragePool`
nodes are its `SpatialOp`s (kernel, strides, pads, dilations from the node attributes, sizes from
`onnx.shape_inference`). A residual `Add` gives a map two edges (through the convs and the identity skip), a
`Concat` of branches one edge per branch; a map the prediction reads directly is a sink (docs/byom.md). An NHWC
input is read after its Transpose. `MapLink.name` is the Relu's output tensor name.
"""
from __future__ import annotations

import onnx
from onnx import shape_inference

from .graph import Chain, Edge, MapLink, SpatialOp
from .onnx_meta import data_input, load

SPATIAL_OPS = {"Conv": "conv", "MaxPool": "pool", "AveragePool": "pool", "LpPool": "pool",
               "GlobalAveragePool": "pool", "GlobalMaxPool": "pool"}


def _dims(vi: onnx.ValueInfoProto) -> tuple | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)


def input_dims(model: onnx.ModelProto) -> tuple:
    """The image input's 4 dims (None where symbolic)."""
    dims = _dims(data_input(model))
    if dims is None or len(dims) != 4:
        raise ValueError(f"the image input of the ONNX model must be 4-D (N,C,H,W or N,H,W,C), got shape {dims}")
    return dims


def _chw_axes(model: onnx.ModelProto) -> tuple:
    """Positions of C, H, W in the input tensor."""
    return (3, 1, 2) if image_source(model)[1] == "NHWC" else (1, 2, 3)


def input_chw(model: onnx.ModelProto) -> tuple | None:
    """(C,H,W) of the image input when the model fixes them (whatever its layout), else None."""
    dims = input_dims(model)
    chw = tuple(dims[a] for a in _chw_axes(model))
    return chw if all(d is not None for d in chw) else None


def with_input_shape(model: onnx.ModelProto, input_shape) -> onnx.ModelProto:
    """A copy of `model` whose image input has fixed (C,H,W) = input_shape (the batch stays as it is)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    input_dims(m)
    dims = list(data_input(m).type.tensor_type.shape.dim)
    axes = _chw_axes(m)
    have = tuple(dims[a].dim_value if dims[a].HasField("dim_value") else None for a in axes)
    for a, v, h in zip(axes, input_shape, have):
        if h is not None and h != v:
            raise ValueError(f"the ONNX model expects input (C,H,W)={have}, not {tuple(input_shape)}")
        dims[a].dim_value = int(v)
    return m


def tensor_shapes(model: onnx.ModelProto) -> dict:
    """Every tensor's shape (tuple, None for unknown dims) after ONNX shape inference."""
    inferred = shape_inference.infer_shapes(model)
    g = inferred.graph
    shapes = {i.name: tuple(i.dims) for i in g.initializer}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = _dims(vi)
        if dims is not None:
            shapes[vi.name] = dims
    return shapes


def _topological(graph: onnx.GraphProto) -> list:
    """The graph's nodes in a topological order (ONNX requires one; re-sorted here for safety)."""
    produced = {o: n for n in graph.node for o in n.output}
    order, state = [], {}

    def visit(node):
        stack = [(node, False)]
        while stack:
            n, done = stack.pop()
            key = id(n)
            if done:
                if state.get(key) != 2:
                    state[key] = 2
                    order.append(n)
                continue
            if state.get(key):
                continue
            state[key] = 1
            stack.append((n, True))
            stack.extend((produced[i], False) for i in n.input if i in produced and not state.get(id(produced[i])))

    for n in graph.node:
        visit(n)
    return order


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _decode(v):
    return v.decode() if isinstance(v, bytes) else v


def spatial_op(node, shapes: dict) -> SpatialOp:
    """The SpatialOp of a Conv / pooling node from its attributes and the inferred sizes around it."""
    a = _attrs(node)
    in_shape, out_shape = shapes.get(node.input[0]), shapes.get(node.output[0])
    if in_shape is None or out_shape is None or None in in_shape[2:] or None in out_shape[2:]:
        raise ValueError(f"cannot infer the map sizes around {node.op_type} node {node.name or node.output[0]} "
                         "(give the input shape explicitly)")
    in_hw, out_hw = tuple(in_shape[2:]), tuple(out_shape[2:])
    if len(in_hw) != 2:
        raise ValueError(f"{node.op_type} node {node.name or node.output[0]} is not 2-D")
    if node.op_type.startswith("Global"):
        return SpatialOp("pool", in_hw, in_hw, (0, 0, 0, 0), (1, 1), in_hw, out_hw)
    if node.op_type == "Conv":
        kernel = tuple(a.get("kernel_shape") or shapes[node.input[1]][2:])
    else:
        kernel = tuple(a["kernel_shape"])
    stride = tuple(a.get("strides") or (1, 1))
    dilation = tuple(a.get("dilations") or (1, 1))
    auto_pad = _decode(a.get("auto_pad", "NOTSET"))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for ax in range(2):
            total = max((out_hw[ax] - 1) * stride[ax] + (kernel[ax] - 1) * dilation[ax] + 1 - in_hw[ax], 0)
            small = total // 2
            pads.append((small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small))
        padding = (pads[0][0], pads[1][0], pads[0][1], pads[1][1])
    elif auto_pad == "VALID":
        padding = (0, 0, 0, 0)
    else:
        padding = tuple(a.get("pads") or (0, 0, 0, 0))
    return SpatialOp(SPATIAL_OPS[node.op_type], kernel, stride, padding, dilation, in_hw, out_hw)


class _Flow:
    """Producer/consumer relations of the data-dependent part of a graph."""

    def __init__(self, graph: onnx.GraphProto, source: str):
        self.nodes = _topological(graph)
        consumers: dict = {}
        for n in self.nodes:
            for t in n.input:
                consumers.setdefault(t, []).append(n)
        self.consumers = consumers
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.downstream_of_input = self.descendants(source)

    def descendants(self, tensor: str) -> set:
        """ids of the nodes that (transitively) consume `tensor`."""
        seen, todo = set(), list(self.consumers.get(tensor, []))
        while todo:
            n = todo.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            for o in n.output:
                todo.extend(self.consumers.get(o, []))
        return seen

    def ancestors(self, node) -> set:
        """ids of the nodes `node` (transitively) depends on, itself included."""
        seen, todo = set(), [node]
        while todo:
            n = todo.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            todo.extend(self.producer[i] for i in n.input if i in self.producer)
        return seen


def image_source(model: onnx.ModelProto) -> tuple:
    """(tensor, layout): the NCHW image tensor the convolutions read. An NHWC input (Keras models through
    tf2onnx) is read after its Transpose with perm (0,3,1,2); any other input is NCHW."""
    name = data_input(model).name
    for n in model.graph.node:
        if n.op_type == "Transpose" and n.input and n.input[0] == name and list(_attrs(n).get("perm", [])) == [0, 3, 1, 2]:
            return n.output[0], "NHWC"
    return name, "NCHW"


def prediction_name(model: onnx.ModelProto) -> str:
    """"prediction", or the first graph output (what the VBP path sum explains)."""
    names = [o.name for o in model.graph.output]
    return "prediction" if "prediction" in names else names[0]


MAX_PATHS = 256  # paths between two maps before the analysis refuses (a block that splits and merges often)


def find_onnx_chain(model, input_shape=None, prediction: str | None = None) -> Chain:
    """The maps of an ONNX model (path, bytes or ModelProto) and every path between them (a `Chain`, with
    `edges` and `sink` when the network branches).

    A map is the 4-D output of a `Relu` with a `Conv` on at least one data path from the previous maps. Between
    maps, Conv and pooling nodes give the geometry and every other node must keep the map size (BatchNorm,
    Add, Mul, Concat on channels, Split, ...); anything else is refused with its name. Only the part of the
    graph the prediction (`prediction`, default "prediction" or the first output) depends on counts.
    `input_shape` (C,H,W) is needed only when the model leaves H or W symbolic.
    """
    model = load(model)
    source, layout = image_source(model)
    chw = input_chw(model)
    if input_shape is not None and chw != tuple(input_shape):
        model = with_input_shape(model, input_shape)
    elif chw is None:
        raise ValueError("the ONNX model's input height/width are symbolic: give input_shape=(C,H,W)")
    shape = tuple(input_shape) if input_shape is not None else tuple(chw)
    shapes = tensor_shapes(model)
    flow = _Flow(model.graph, source)
    target = prediction or prediction_name(model)
    if target not in flow.producer:
        raise ValueError(f"the ONNX model has no output {target!r}")
    relevant = flow.ancestors(flow.producer[target]) & flow.downstream_of_input
    data = {o for n in flow.nodes if id(n) in flow.downstream_of_input for o in n.output} | {source}
    maps: dict = {}  # tensor -> index
    links = []
    for node in flow.nodes:
        if id(node) not in relevant or node.op_type != "Relu" or len(shapes.get(node.output[0]) or ()) != 4:
            continue
        paths = _paths_into(node, flow, maps, source, data, shapes)
        if not any(n.op_type == "Conv" for p in paths for n, _ in p[1]):
            continue
        edges: dict = {}
        for src, steps in paths:
            _check_path(steps, shapes, node)
            key = (src, tuple(spatial_op(n, shapes) for n, _ in steps if n.op_type in SPATIAL_OPS))
            edges[key] = edges.get(key, 0) + 1
        edges = tuple(Edge(src, ops, k) for (src, ops), k in edges.items())
        maps[node.output[0]] = len(links)
        links.append(MapLink(node.output[0], tuple(shapes[node.output[0]][1:]), edges[0].ops, edges))
    if not links:
        ops = sorted({n.op_type for n in flow.nodes if id(n) in flow.downstream_of_input})
        raise ValueError("VisualBackProp does not apply to this ONNX model: no Relu follows a Conv, so there are "
                         "no post-ReLU convolutional feature maps to average (ops in the graph: "
                         f"{', '.join(ops) or 'none'})")
    for tensor, i in maps.items():
        links[i].sink = _reaches(tensor, target, flow, maps)
    return Chain(shape, links).as_chain()


def _data_inputs(node, data: set, shapes: dict) -> list:
    """The inputs of `node` that carry the image's data (not weights, constants or shape tensors)."""
    return [t for t in node.input if t in data and len(shapes.get(t) or ()) == 4]


def _paths_into(relu, flow: _Flow, maps: dict, source: str, data: set, shapes: dict) -> list:
    """Every data path into `relu` from a map or the input: [(source index, [(node, the input it takes on this
    path)] in forward order)]."""
    out = []

    def walk(tensor, nodes):
        if len(out) > MAX_PATHS:
            raise ValueError(f"more than {MAX_PATHS} paths lead into Relu {relu.name or relu.output[0]} from the "
                             "previous maps: this block is not handled")
        if tensor == source or tensor in maps:
            out.append((maps.get(tensor, -1), nodes[::-1]))
            return
        node = flow.producer[tensor]
        inputs = _data_inputs(node, data, shapes)
        if not inputs and any(t in data for t in node.input):
            raise ValueError(f"{node.op_type} node {node.name or node.output[0]} turns a non-map tensor into a map "
                             "on the way to a Relu: VisualBackProp follows only 4-D feature maps")
        for t in inputs:
            walk(t, nodes + [(node, t)])

    for t in _data_inputs(relu, data, shapes):
        walk(t, [])
    return out


def _reaches(tensor: str, target: str, flow: _Flow, maps: dict) -> bool:
    """Whether `target` depends on `tensor` along a path that passes no other map."""
    seen, todo = set(), [tensor]
    while todo:
        t = todo.pop()
        if t == target:
            return True
        for n in flow.consumers.get(t, []):
            for o in n.output:
                if o not in seen and o not in maps:
                    seen.add(o)
                    todo.append(o)
    return False


def _check_path(steps, shapes, relu) -> None:
    """Between two maps, every node other than Conv/pooling must keep the 4-D map size."""
    for n, taken in steps:
        if n.op_type in SPATIAL_OPS:
            continue
        before, after = shapes.get(taken), shapes.get(n.output[0])
        if not after or len(after) != 4:
            raise ValueError(f"{n.op_type} node {n.name or n.output[0]} on the way to Relu {relu.name or relu.output[0]} "
                             "does not output a 4-D feature map: VisualBackProp cannot follow it")
        if before and len(before) == 4 and tuple(before[2:]) != tuple(after[2:]):
            raise ValueError(f"{n.op_type} node {n.name or n.output[0]} changes the map size from {before[2:]} to "
                             f"{after[2:]} in a way VisualBackProp cannot invert (supported: Conv, MaxPool, "
                             "AveragePool)")

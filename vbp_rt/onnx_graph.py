"""The conv -> ReLU chain of an ONNX graph, found by graph analysis.

Produces the same `vbp_rt.graph.Chain` the torch side traces, so the VBP head, the parity tests and the
runtime read one description. A chain map is the output of a `Relu` node with a 4-D output and at least
one `Conv` on the data path since the previous map; the `Conv` / `MaxPool` / `AveragePool` nodes on that
path are its `SpatialOp`s (kernel, strides, pads, dilations from the node attributes, sizes from
`onnx.shape_inference`). Residual blocks work: between two consecutive maps only the nodes that descend
from the earlier map and lead to the later one count, so an `Add` merging a skip connection from an
earlier map adds no geometry. `MapLink.name` is the Relu's output tensor name.
"""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import shape_inference

from .graph import Chain, MapLink, SpatialOp

SPATIAL_OPS = {"Conv": "conv", "MaxPool": "pool", "AveragePool": "pool", "LpPool": "pool",
               "GlobalAveragePool": "pool", "GlobalMaxPool": "pool"}


def load(model) -> onnx.ModelProto:
    """An ONNX ModelProto from a path, bytes or a ModelProto (clear error for anything else)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf raises DecodeError and friends
        raise ValueError(f"{path} is not a readable ONNX model: {e}") from e


def data_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The one graph input that is not an initializer (the image batch)."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"expected an ONNX model with one image input, found {len(inputs)}: "
                         f"{', '.join(i.name for i in inputs) or 'none'}")
    return inputs[0]


def _dims(vi: onnx.ValueInfoProto) -> tuple | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)


def input_chw(model: onnx.ModelProto) -> tuple | None:
    """(C,H,W) of the image input when the model fixes them, else None."""
    dims = _dims(data_input(model))
    if dims is None or len(dims) != 4:
        raise ValueError(f"the image input of the ONNX model must be 4-D (N,C,H,W), got shape {dims}")
    return dims[1:] if all(d is not None for d in dims[1:]) else None


def with_input_shape(model: onnx.ModelProto, input_shape) -> onnx.ModelProto:
    """A copy of `model` whose image input has fixed (C,H,W) = input_shape (the batch stays as it is)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    dims = data_input(m).type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ValueError(f"the image input of the ONNX model must be 4-D (N,C,H,W), got {len(dims)} dims")
    for d, v in zip(list(dims)[1:], input_shape):
        if d.HasField("dim_value") and d.dim_value != v:
            raise ValueError(f"the ONNX model expects input (C,H,W)={tuple(x.dim_value for x in list(dims)[1:])}, "
                             f"not {tuple(input_shape)}")
        d.dim_value = int(v)
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


def find_onnx_chain(model, input_shape=None) -> Chain:
    """The conv/ReLU chain of an ONNX model (path, bytes or ModelProto).

    `input_shape` (C,H,W) is needed only when the model leaves H or W symbolic.
    """
    model = load(model)
    chw = input_chw(model)
    if input_shape is not None and chw != tuple(input_shape):
        model = with_input_shape(model, input_shape)
    elif chw is None:
        raise ValueError("the ONNX model's input height/width are symbolic: give input_shape=(C,H,W)")
    shape = tuple(input_shape) if input_shape is not None else tuple(chw)
    shapes = tensor_shapes(model)
    source = data_input(model).name
    flow = _Flow(model.graph, source)
    data_nodes = [n for n in flow.nodes if id(n) in flow.downstream_of_input]
    candidates = [n for n in data_nodes if n.op_type == "Relu" and len(shapes.get(n.output[0], ())) == 4]
    chain = Chain(shape)
    prev_tensor, prev_desc = source, flow.downstream_of_input
    for relu in candidates:
        between = [n for n in data_nodes if id(n) in prev_desc and id(n) in flow.ancestors(relu) and n is not relu]
        spatial = [n for n in between if n.op_type in SPATIAL_OPS]
        if not any(n.op_type == "Conv" for n in spatial):
            continue
        _check_path(spatial, between, shapes, flow, prev_tensor, relu)
        ops = tuple(spatial_op(n, shapes) for n in spatial)
        chain.links.append(MapLink(relu.output[0], tuple(shapes[relu.output[0]][1:]), ops))
        prev_tensor, prev_desc = relu.output[0], flow.descendants(relu.output[0])
    if not chain.links:
        ops = sorted({n.op_type for n in data_nodes})
        raise ValueError("VisualBackProp does not apply to this ONNX model: no Relu follows a Conv, so there are "
                         "no post-ReLU convolutional feature maps to average (ops in the graph: "
                         f"{', '.join(ops) or 'none'})")
    return chain


def _check_path(spatial, between, shapes, flow, prev_tensor, relu) -> None:
    """The geometry between two maps must be one path of Conv/pool nodes and size-keeping ops."""
    for a, b in zip(spatial, spatial[1:]):
        if id(b) not in flow.descendants(a.output[0]):
            raise ValueError(f"between map {prev_tensor} and Relu {relu.name or relu.output[0]} the graph has "
                             f"parallel branches with their own geometry ({a.op_type} {a.name or a.output[0]} and "
                             f"{b.op_type} {b.name or b.output[0]}): VisualBackProp needs one conv path")
    for n in between:
        if n.op_type in SPATIAL_OPS or not n.input:
            continue
        before, after = shapes.get(n.input[0]), shapes.get(n.output[0])
        if before and after and len(before) == len(after) == 4 and tuple(before[2:]) != tuple(after[2:]):
            raise ValueError(f"{n.op_type} node {n.name or n.output[0]} changes the map size from {before[2:]} to "
                             f"{after[2:]} in a way VisualBackProp cannot invert (supported: Conv, MaxPool, "
                             "AveragePool)")

"""Conv/ReLU chain analysis of ONNX graphs: same description as the torch trace, foreign graphs, clear errors."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import randomize_bn
from tests.onnx_builders import (
    OTHER_CHAIN,
    OTHER_SHAPE,
    RESIDUAL_CHAIN,
    OtherNet,
    residual_cnn,
    torch_onnx,
)
from vbp_rt import onnx_graph, onnx_io
from vbp_rt.graph import find_torch_chain as torch_chain
from vbp_rt.models import build


def _geometry(chain):
    """The hand-written form of tests.onnx_builders: [(kernel, stride, pad_before, dilation, in_hw)] per link."""
    return [[(op.kernel, op.stride, op.padding[:2], op.dilation, op.in_hw) for op in link.ops] for link in chain.links]


def test_exported_chain_equals_torch_trace():
    model = randomize_bn(build("netsvf", height=41, width=77, channels=(4, 4, 6, 6, 8, 8), strides=(1, 2, 1, 2, 1, 2),
                               fc=(16,)))
    shape = model.config.input_shape
    onnx_chain = onnx_graph.find_onnx_chain(onnx_io.export_maps(model))
    assert onnx_chain == torch_chain(model, shape)  # names, map shapes and every SpatialOp
    assert onnx_chain.names == [f"features.{3 * i + 2}" for i in range(6)]


def test_foreign_graph_with_pooling_and_residual_add():
    chain = onnx_graph.find_onnx_chain(residual_cnn())
    assert chain.names == [name for name, _ in RESIDUAL_CHAIN]
    assert [link.shape for link in chain.links] == [(4, 29, 47), (6, 14, 23), (6, 14, 23), (8, 7, 12), (8, 3, 6)]
    assert _geometry(chain) == [[op[:5] for op in ops] for _, ops in RESIDUAL_CHAIN]
    assert [op.kind for link in chain.links for op in link.ops] == ["conv", "pool", "conv", "conv", "conv", "pool",
                                                                   "conv"]
    assert chain.links[4].ops[0].out_hw == (3, 6)  # ceil_mode pooling: the window runs past the 12 columns


def test_plain_torch_export_of_another_architecture():
    chain = onnx_graph.find_onnx_chain(torch_onnx(OtherNet(), OTHER_SHAPE))
    assert len(chain.links) == 3 and all(n.endswith("Relu_output_0") for n in chain.names)
    assert _geometry(chain) == [[op[:5] for op in ops] for _, ops in OTHER_CHAIN]


def _single_conv(auto_pad: str, stride: int, size=(10, 13)) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], auto_pad=auto_pad, strides=[stride, stride]),
             helper.make_node("Relu", ["c"], ["r"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, *size])],
                          [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 10
    return m


@pytest.mark.parametrize("auto_pad, stride, padding", [
    ("SAME_UPPER", 1, (1, 1, 1, 1)),
    ("SAME_UPPER", 2, (0, 1, 1, 1)),  # 10 rows -> 5 needs 1 pad row (after); 13 cols -> 7 needs 2 (1 + 1)
    ("SAME_LOWER", 2, (1, 1, 0, 1)),
    ("VALID", 2, (0, 0, 0, 0)),
])
def test_auto_pad(auto_pad, stride, padding):
    op = onnx_graph.find_onnx_chain(_single_conv(auto_pad, stride)).links[0].ops[0]
    assert op.padding == padding and op.stride == (stride, stride)


def test_symbolic_height_width_need_an_input_shape():
    model = _single_conv("SAME_UPPER", 1, size=("h", "w"))
    with pytest.raises(ValueError, match="input_shape"):
        onnx_graph.find_onnx_chain(model)
    assert onnx_graph.find_onnx_chain(model, (1, 8, 9)).links[0].shape == (2, 8, 9)


def test_no_relu_after_a_conv_says_why_vbp_does_not_apply():
    with pytest.raises(ValueError, match="VisualBackProp does not apply.*no Relu follows a Conv.*Sigmoid"):
        onnx_graph.find_onnx_chain(residual_cnn(relu=False))


def test_size_changing_op_between_maps_is_refused():
    model = residual_cnn()
    for node in model.graph.node:  # MaxPool -> Resize: no window geometry to invert
        if node.op_type == "MaxPool":
            scales = numpy_helper.from_array(np.array([1, 1, 0.5, 0.5], np.float32), "scales")
            model.graph.initializer.append(scales)
            node.op_type, node.input[:] = "Resize", [node.input[0], "", "scales"]
            del node.attribute[:]
    with pytest.raises(ValueError, match="Resize.*changes the map size"):
        onnx_graph.find_onnx_chain(model)


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        onnx_graph.find_onnx_chain(bad)
    with pytest.raises(FileNotFoundError):
        onnx_graph.find_onnx_chain(tmp_path / "missing.onnx")


def test_torch_and_onnx_views_of_other_net_agree_in_shape():
    net = OtherNet().eval()
    t = torch_chain(net, OTHER_SHAPE)
    o = onnx_graph.find_onnx_chain(torch_onnx(net, OTHER_SHAPE))
    assert [link.shape for link in t.links] == [link.shape for link in o.links]
    assert [link.ops for link in t.links] == [link.ops for link in o.links]


def test_parallel_branches_between_maps_become_two_edges():
    w3 = numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w3")
    w1 = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w1")
    w0 = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w0")
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1] * 4), helper.make_node("Relu", ["c0"], ["a"]),
             helper.make_node("Conv", ["a", "w3"], ["b3"], pads=[1] * 4), helper.make_node("Conv", ["a", "w1"], ["b1"]),
             helper.make_node("Concat", ["b3", "b1"], ["cat"], axis=1), helper.make_node("Relu", ["cat"], ["b"])]
    g = helper.make_graph(nodes, "inception", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                          [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)], [w0, w1, w3])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    chain = onnx_graph.find_onnx_chain(m)
    assert chain.names == ["a", "b"] and not chain.is_chain
    assert [(e.source, [op.kernel for op in e.ops]) for e in chain.edges(1)] == [(0, [(3, 3)]), (0, [(1, 1)])]

"""VisualBackProp on networks whose maps branch (residual Add, Concat of parallel branches, two maps feeding the
head): the maps and paths found in torch (torch.fx) and ONNX (graph analysis), and the masks of both engines
against the explicit path enumeration in tests/reference/vbp_dag_paths.py."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import vbp_rt
from vbp_rt import onnx_graph, onnx_io
from vbp_rt.graph import find_torch_chain
from tests.onnx_builders import torch_onnx
from tests.reference.vbp_dag_paths import enumerate_paths
from tests.reference.vbp_paths import normalize

SHAPE = (1, 10, 12)


class Residual(nn.Module):
    """A -> B = relu(conv(A) + A) -> max pool -> C -> linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(1, 3, 3, padding=1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.c3, self.r3 = nn.Conv2d(3, 4, 3), nn.ReLU()
        self.fc = nn.Linear(4 * 3 * 4, 1)

    def forward(self, x):
        a = self.r1(self.c1(x))
        b = self.r2(self.c2(a) + a)
        return self.fc(torch.flatten(self.r3(self.c3(self.pool(b))), 1))


class Inception(nn.Module):
    """A -> (1x1 conv: B1 | 3x3 conv: B2 -> 3x3 conv: B3) -> Concat(B1, B3) -> strided conv C -> linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(1, 3, 3, padding=1), nn.ReLU()
        self.b1, self.rb1 = nn.Conv2d(3, 2, 1), nn.ReLU()
        self.b2, self.rb2 = nn.Conv2d(3, 2, 3, padding=1), nn.ReLU()
        self.b3, self.rb3 = nn.Conv2d(2, 2, 3, padding=2, dilation=2), nn.ReLU()
        self.c4, self.r4 = nn.Conv2d(4, 3, 3, stride=2), nn.ReLU()
        self.fc = nn.Linear(3 * 4 * 5, 2)

    def forward(self, x):
        a = self.r1(self.c1(x))
        cat = torch.cat([self.rb1(self.b1(a)), self.rb3(self.b3(self.rb2(self.b2(a))))], dim=1)
        return self.fc(torch.flatten(self.r4(self.c4(cat)), 1))


class TwoHeads(nn.Module):
    """A -> strided conv B; the prediction reads both A (pooled) and B: two sink maps, paths of two lengths."""

    def __init__(self):
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(1, 3, 3, padding=1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(3, 4, 3, stride=2), nn.ReLU()
        self.fa, self.fb = nn.Linear(3 * 10 * 12, 1), nn.Linear(4 * 4 * 5, 1)

    def forward(self, x):
        a = self.r1(self.c1(x))
        return self.fa(torch.flatten(a, 1)) + self.fb(torch.flatten(self.r2(self.c2(a)), 1))


# Hand-written structure: per map, (edges as (source, kernels, count), sink)
EXPECTED = {
    Residual: [([(-1, [(3, 3)], 1)], False), ([(0, [(3, 3)], 1), (0, [], 1)], False),
               ([(1, [(2, 2), (3, 3)], 1)], True)],
    Inception: [([(-1, [(3, 3)], 1)], False), ([(0, [(1, 1)], 1)], False), ([(0, [(3, 3)], 1)], False),
                ([(2, [(3, 3)], 1)], False), ([(1, [(3, 3)], 1), (3, [(3, 3)], 1)], True)],
    TwoHeads: [([(-1, [(3, 3)], 1)], True), ([(0, [(3, 3)], 1)], True)],
}


def _net(cls, seed=0):
    torch.manual_seed(seed)
    net = cls().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.uniform_(0.0, 0.3)  # most units active: many paths carry weight
    return net


def _structure(chain):
    return [([(e.source, [op.kernel for op in e.ops], e.count) for e in chain.edges(i)], chain.is_sink(i))
            for i in range(len(chain.links))]


def _averages(net, chain, x):
    """Channel means of the maps in float64, taken by hooks on the ReLU modules (independent of the engine)."""
    out, modules = {}, dict(net.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: out.__setitem__(n, o.double().mean(1)))
               for n in chain.names]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return [out[n].numpy() for n in chain.names]


def _reference(chain, averages, k):
    maps = [([(e.source, e.ops, e.count) for e in chain.edges(i)], chain.is_sink(i)) for i in range(len(chain.links))]
    mask, paths = enumerate_paths([a[k] for a in averages], chain.input_shape, maps)
    return normalize(mask), paths


@pytest.mark.parametrize("cls", [Residual, Inception, TwoHeads])
def test_torch_dag_matches_the_path_enumeration(cls):
    net = _net(cls)
    chain = find_torch_chain(net, SHAPE)
    assert _structure(chain) == EXPECTED[cls] and not chain.is_chain
    x = torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(1))
    e = vbp_rt.explain(net, x)
    averages = _averages(net, chain, x)
    for k in range(3):
        reference, paths = _reference(chain, averages, k)
        assert paths > 100 and reference.std() > 0.05
        np.testing.assert_allclose(e.mask[k].numpy(), reference, atol=2e-6)
    np.testing.assert_allclose(e.prediction.numpy(), net(x).detach().numpy(), rtol=1e-6)


def test_dropping_the_skip_path_changes_the_mask():
    """The skip edge is not decoration: the chain-only rule (conv path alone) gives another mask."""
    net = _net(Residual)
    chain = find_torch_chain(net, SHAPE)
    x = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(2))
    averages = _averages(net, chain, x)
    full, _ = _reference(chain, averages, 0)
    maps = [([(e.source, e.ops, e.count) for e in chain.edges(i) if e.ops or i != 1], chain.is_sink(i))
            for i in range(len(chain.links))]
    no_skip = normalize(enumerate_paths([a[0] for a in averages], SHAPE, maps)[0])
    assert np.abs(full - no_skip).max() > 0.005  # one identity path against nine conv paths per position


@pytest.mark.parametrize("cls", [Residual, Inception, TwoHeads])
def test_onnx_dag_is_the_torch_dag_and_its_head_gives_the_same_mask(cls):
    net = _net(cls)
    model = torch_onnx(net, SHAPE)
    chain = onnx_graph.find_onnx_chain(model)
    assert _structure(chain) == EXPECTED[cls]
    x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(3))
    s = ort.InferenceSession(onnx_io.append_vbp_head(model).SerializeToString(), providers=["CPUExecutionProvider"])
    mask = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"x": x.numpy()})))["vbp_mask"]
    np.testing.assert_allclose(mask, vbp_rt.explain(net, x).mask.numpy(), atol=2e-5)


def test_log_scaled_sums_survive_underflow():
    """Paths of different lengths whose products sit far below float32's range still add up correctly."""
    net = _net(TwoHeads)
    with torch.no_grad():
        net.c2.weight.mul_(1e-30)
        net.c2.bias.fill_(1e-30)
    x = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(4))
    chain = find_torch_chain(net, SHAPE)
    reference, _ = _reference(chain, _averages(net, chain, x), 0)
    np.testing.assert_allclose(vbp_rt.explain(net, x).mask[0].numpy(), reference, atol=2e-6)


def _resize_between_maps():
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    w2 = numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w2")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4), helper.make_node("Relu", ["c"], ["a"]),
             helper.make_node("Resize", ["a", "", "scales"], ["up"], name="upsample_2x"),
             helper.make_node("Conv", ["up", "w2"], ["c2"]), helper.make_node("Relu", ["c2"], ["b"])]
    g = helper.make_graph(nodes, "fpn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                          [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)], [w, w2, scales])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_structures_not_handled_are_refused_naming_the_node():
    with pytest.raises(ValueError, match="Resize node upsample_2x changes the map size"):
        onnx_graph.find_onnx_chain(_resize_between_maps())

    class Sliced(Residual):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4 * 2 * 3, 1)

        def forward(self, x):
            a = self.r1(self.c1(x))
            return self.fc(torch.flatten(self.r3(self.c3(self.pool(self.r2(self.c2(a)[:, :, 1:, 1:])))), 1))

    with pytest.raises(ValueError, match="between layers c2 and r2 the map size changes"):
        find_torch_chain(_net(Sliced), SHAPE)


def test_onnx_graph_with_a_skip_and_concat_matches_the_path_enumeration():
    """A graph written with onnx.helper (no torch): Concat of a 3x3 and a 1x1 branch, then the head."""
    rng = np.random.default_rng(5)
    w0 = numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "w0")
    w3 = numpy_helper.from_array(rng.standard_normal((2, 2, 3, 3)).astype(np.float32), "w3")
    w1 = numpy_helper.from_array(rng.standard_normal((2, 2, 1, 1)).astype(np.float32), "w1")
    bias = numpy_helper.from_array(np.full(2, 0.5, np.float32), "bias")
    nodes = [helper.make_node("Conv", ["x", "w0", "bias"], ["c0"], pads=[1] * 4), helper.make_node("Relu", ["c0"], ["a"]),
             helper.make_node("Conv", ["a", "w3", "bias"], ["b3"], pads=[1] * 4),
             helper.make_node("Conv", ["a", "w1", "bias"], ["b1"]),
             helper.make_node("Concat", ["b3", "b1"], ["cat"], axis=1), helper.make_node("Relu", ["cat"], ["b"]),
             helper.make_node("ReduceSum", ["b"], ["y"], keepdims=0)]
    g = helper.make_graph(nodes, "inception", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 7, 9])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w0, w1, w3, bias])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 10
    chain = onnx_graph.find_onnx_chain(m)
    x = rng.random((2, 1, 7, 9), dtype=np.float32)
    maps = ort.InferenceSession(onnx_io.expose_maps(m).SerializeToString(), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in maps.get_outputs()], maps.run(None, {"x": x})))
    s = ort.InferenceSession(onnx_io.append_vbp_head(m).SerializeToString(), providers=["CPUExecutionProvider"])
    mask = s.run(["vbp_mask"], {"x": x})[0]
    averages = [outs[n].astype(np.float64).mean(1) for n in chain.names]
    for k in range(2):
        np.testing.assert_allclose(mask[k], _reference(chain, averages, k)[0], atol=2e-6)


def test_a_constant_first_operand_is_not_taken_for_the_map():
    """Add(shift, x) with a (1,C,1,1) constant first (a folded BatchNorm as some exporters write it) keeps the size."""
    w0 = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w0")
    shift = numpy_helper.from_array(np.full((1, 2, 1, 1), 0.1, np.float32), "shift")
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1] * 4), helper.make_node("Add", ["shift", "c0"], ["s"]),
             helper.make_node("Relu", ["s"], ["a"]), helper.make_node("ReduceSum", ["a"], ["y"], keepdims=0)]
    g = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 7])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w0, shift])
    chain = onnx_graph.find_onnx_chain(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    assert chain.names == ["a"] and chain.is_chain

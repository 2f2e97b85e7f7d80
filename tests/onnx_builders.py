"""ONNX models built without vbp-rt (onnx.helper, plain torch.onnx.export) and an independent numpy VBP."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

H, W = 29, 47


def _conv(nodes, inits, rng, name, x, c_in, c_out, k, stride=1, pad=0, dilation=1):
    w = numpy_helper.from_array((rng.standard_normal((c_out, c_in, k, k)) * (2.0 / (c_in * k * k)) ** 0.5)
                                .astype(np.float32), f"{name}.w")
    b = numpy_helper.from_array((rng.standard_normal(c_out) * 0.1).astype(np.float32), f"{name}.b")
    inits += [w, b]
    nodes.append(helper.make_node("Conv", [x, w.name, b.name], [f"{name}.out"], name=name, kernel_shape=[k, k],
                                  strides=[stride, stride], pads=[pad] * 4, dilations=[dilation, dilation]))
    return f"{name}.out"


def _relu(nodes, name, x):
    nodes.append(helper.make_node("Relu", [x], [name], name=f"{name}_node"))
    return name


def residual_cnn(opset: int = 18, seed: int = 0, relu: bool = True) -> onnx.ModelProto:
    """Input (N,1,29,47) -> normalize -> conv+BN+Relu (A) -> MaxPool 2/2 -> conv+Relu (B) -> conv, Add(B), Relu (C)
    -> conv k3 s2 pad 2 dilation 2 + Relu (D) -> AveragePool k3 s2 ceil_mode -> conv 1x1 + Relu (E) -> Flatten
    -> Gemm -> (N,1). With relu=False every Relu is a Sigmoid (VBP does not apply)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    act = _relu if relu else (lambda n, name, x: n.append(helper.make_node("Sigmoid", [x], [name])) or name)
    inits += [numpy_helper.from_array(np.array(0.5, np.float32), "center"),
              numpy_helper.from_array(np.array(2.0, np.float32), "gain")]
    nodes += [helper.make_node("Sub", ["image", "center"], ["centered"]),
              helper.make_node("Mul", ["centered", "gain"], ["normed"])]
    x = _conv(nodes, inits, rng, "conv1", "normed", 1, 4, 3, pad=1)
    bn = [numpy_helper.from_array(v.astype(np.float32), f"bn.{k}") for k, v in
          (("scale", rng.random(4) + 0.5), ("bias", rng.standard_normal(4) * 0.2),
           ("mean", rng.standard_normal(4) * 0.2), ("var", rng.random(4) + 0.5))]
    inits += bn
    nodes.append(helper.make_node("BatchNormalization", [x, *(t.name for t in bn)], ["bn.out"]))
    a = act(nodes, "map_a", "bn.out")
    nodes.append(helper.make_node("MaxPool", [a], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]))
    b = act(nodes, "map_b", _conv(nodes, inits, rng, "conv2", "pooled", 4, 6, 3, pad=1))
    nodes.append(helper.make_node("Add", [_conv(nodes, inits, rng, "conv3", b, 6, 6, 3, pad=1), b], ["sum"]))
    c = act(nodes, "map_c", "sum")
    d = act(nodes, "map_d", _conv(nodes, inits, rng, "conv4", c, 6, 8, 3, stride=2, pad=2, dilation=2))
    nodes.append(helper.make_node("AveragePool", [d], ["avg"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1))
    e = act(nodes, "map_e", _conv(nodes, inits, rng, "conv5", "avg", 8, 8, 1))
    nodes.append(helper.make_node("Flatten", [e], ["flat"]))
    inits += [numpy_helper.from_array((rng.standard_normal((1, 144)) * 0.1).astype(np.float32), "fc.w"),
              numpy_helper.from_array(np.zeros(1, np.float32), "fc.b")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["steer"], transB=1))
    graph = helper.make_graph(nodes, "residual_cnn",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, H, W])],
                              [helper.make_tensor_value_info("steer", TensorProto.FLOAT, ["N", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10  # onnx's helper writes IR 14, which onnxruntime 1.31 refuses
    onnx.checker.check_model(model)
    return model


# The chain of residual_cnn, written out by hand: map name -> [(kernel, stride, pad_before, dilation, out_hw)]
# for the spatial ops leading to it (the upscale of each lands on the previous op's input size).
RESIDUAL_CHAIN = [
    ("map_a", [((3, 3), (1, 1), (1, 1), (1, 1), (H, W))]),
    ("map_b", [((2, 2), (2, 2), (0, 0), (1, 1), (H, W)), ((3, 3), (1, 1), (1, 1), (1, 1), (14, 23))]),
    ("map_c", [((3, 3), (1, 1), (1, 1), (1, 1), (14, 23))]),
    ("map_d", [((3, 3), (2, 2), (2, 2), (2, 2), (14, 23))]),
    ("map_e", [((3, 3), (2, 2), (0, 0), (1, 1), (7, 12)), ((1, 1), (1, 1), (0, 0), (1, 1), (3, 6))]),
]
RESIDUAL_SKIPS = [2]  # map_c = Relu(conv3(map_b) + map_b): the skip is a second, identity path from map_b


class OtherNet(nn.Module):
    """A steering net structured unlike vbp-rt's: strided 5x5 stem, padded max pool, dilated block, 2 outputs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 5, stride=2, padding=2), nn.ReLU())
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 6, 3, padding=2, dilation=2), nn.BatchNorm2d(6), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(6, 8, (3, 2), stride=(2, 1)), nn.ReLU())
        self.fc = nn.Linear(8 * 4 * 11, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.down(self.block(self.pool(self.stem(x)))), 1))


OTHER_SHAPE = (1, 33, 45)
OTHER_CHAIN = [
    ("stem", [((5, 5), (2, 2), (2, 2), (1, 1), (33, 45))]),
    ("block", [((3, 3), (2, 2), (1, 1), (1, 1), (17, 23)), ((3, 3), (1, 1), (2, 2), (2, 2), (9, 12))]),
    ("down", [((3, 2), (2, 1), (0, 0), (1, 1), (9, 12))]),
]


def torch_onnx(model: nn.Module, shape) -> onnx.ModelProto:
    """A plain torch.onnx export (default names, dynamic batch), as a user would make it."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.rand(2, *shape),), buf, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=13)
    return onnx.load_from_string(buf.getvalue())


def ones_transposed(m: np.ndarray, kernel, stride, pad, dilation, out_hw) -> np.ndarray:
    """Scatter every value of m (N,h,w) onto the input positions its window covered, summing (float64)."""
    n, h, w = m.shape
    out = np.zeros((n, *out_hw))
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            ys = np.arange(h) * stride[0] - pad[0] + a * dilation[0]
            xs = np.arange(w) * stride[1] - pad[1] + b * dilation[1]
            keep_y, keep_x = (ys >= 0) & (ys < out_hw[0]), (xs >= 0) & (xs < out_hw[1])
            out[:, ys[keep_y][:, None], xs[keep_x][None, :]] += m[:, keep_y][:, :, keep_x]
    return out


def numpy_vbp(maps: list, chain, skips=()) -> np.ndarray:
    """VisualBackProp (Bojarski et al.) on post-ReLU maps (shallow -> deep) with a hand-written chain, in
    float64 and without intermediate rescaling (the final min-max makes it scale-free). `skips` lists the
    levels that also take the previous map unchanged (a residual Add): their paths are added."""
    averages = [np.asarray(mp, np.float64).mean(axis=1) for mp in maps]
    m = averages[-1]
    for level in range(len(chain) - 1, -1, -1):
        arriving = m
        for kernel, stride, pad, dilation, out_hw in reversed(chain[level][1]):
            m = ones_transposed(m, kernel, stride, pad, dilation, out_hw)
        if level in skips:
            m = m + arriving
        if level > 0:
            m = m * averages[level - 1]
    lo = m.min(axis=(1, 2), keepdims=True)
    span = m.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (m - lo) / np.where(span > 0, span, 1), 0)

"""Networks trained elsewhere, with their own input conventions, through every command.

Five small models shaped like real ones are built here: an RGB PilotNet-style net with per-channel mean/std
(a plain torch.onnx export, spec in a sidecar file), a Keras-style NHWC graph with its input Transpose (spec
on the command line), a graph with a fixed batch of 1 (no spec: assumed), a residual Add (letterboxed) and
Concat branches fed YUV. Each goes through `vbp explain`, headless `vbp view`, `vbp export` and
`vbp bench --quick`; the prediction must equal onnxruntime run directly on the frame preprocessed by hand.
"""
from __future__ import annotations

import importlib.util
import io
import json
import warnings

import cv2
import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import vbp_rt
from tests.conftest import randomize_bn
from tests.onnx_builders import residual_cnn
from vbp_rt import input_spec, onnx_io, onnx_torch
from vbp_rt.cli import main
from vbp_rt.runtime import Runtime

RNG = np.random.default_rng(0)
needs_onnx2torch = pytest.mark.skipif(importlib.util.find_spec("onnx2torch") is None,
                                      reason="onnx2torch is not installed (pip install --no-deps onnx2torch)")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class PilotNetRGB(nn.Module):
    """A PilotNet-shaped steering net (5x5 strided convs, then 3x3) on 3x33x100 RGB crops."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 5, stride=2), nn.ReLU(), nn.Conv2d(6, 8, 5, stride=2), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 20, 10), nn.ReLU(), nn.Linear(10, 1))

    def forward(self, x):
        return self.head(self.features(x))


def _export(module, shape, path):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.rand(1, *shape),), buf, dynamo=False, input_names=["x"],
                          output_names=["steering"], dynamic_axes={"x": {0: "n"}, "steering": {0: "n"}},
                          opset_version=17)
    path.write_bytes(buf.getvalue())


def _w(name, shape, scale=0.3):
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes, inits, inputs, outputs, name):
    m = helper.make_model(helper.make_graph(nodes, name, inputs, outputs, inits),
                          opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 10
    onnx.checker.check_model(m)
    return m


def keras_nhwc() -> onnx.ModelProto:
    """What tf2onnx makes of a Keras Conv2D stack: the NHWC input goes through a Transpose (0,3,1,2) before the
    first Conv and back (0,2,3,1) before Keras' Flatten (onnx/tensorflow-onnx, issue 938 on --inputs-as-nchw:
    without the flag the model keeps NHWC inputs and transposes inside)."""
    inits = [_w("k1", (4, 3, 3, 3)), _w("b1", (4,), 0.1), _w("k2", (6, 4, 3, 3)), _w("b2", (6,), 0.1),
             _w("dense", (6 * 9 * 14, 1), 0.05), _w("bias", (1,), 0.1),
             numpy_helper.from_array(np.array([-1, 6 * 9 * 14], np.int64), "flat_shape")]
    nodes = [helper.make_node("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "k1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "k2", "b2"], ["c2"], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Transpose", ["r2"], ["nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["nhwc", "flat_shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "dense"], ["mm"]), helper.make_node("Add", ["mm", "bias"], ["dense_1"])]
    return _model(nodes, inits, [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk", 19, 29, 3])],
                  [helper.make_tensor_value_info("dense_1", TensorProto.FLOAT, ["unk", 1])], "keras")


def fixed_batch() -> onnx.ModelProto:
    """Input (1,1,24,32) and a Reshape to the constant shape (1,-1): the graph only runs at batch 1."""
    inits = [_w("w1", (4, 1, 3, 3)), _w("w2", (4, 4, 3, 3)), _w("fc", (1, 4 * 5 * 7), 0.1), _w("fcb", (1,), 0.1),
             numpy_helper.from_array(np.array([1, -1], np.int64), "one_row")]
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], strides=[2, 2]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2]), helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Reshape", ["r2", "one_row"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc", "fcb"], ["angle"], transB=1)]
    return _model(nodes, inits, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 24, 32])],
                  [helper.make_tensor_value_info("angle", TensorProto.FLOAT, [1, 1])], "fixed")


def concat_branches() -> onnx.ModelProto:
    """3-channel stem, then a 3x3 and a 1x1 branch concatenated, a strided conv and a Gemm head."""
    inits = [_w("s", (4, 3, 3, 3)), _w("sb", (4,), 0.2), _w("b3", (3, 4, 3, 3)), _w("b1", (2, 4, 1, 1)),
             _w("bb", (3,), 0.2), _w("bc", (2,), 0.2), _w("t", (4, 5, 3, 3)), _w("tb", (4,), 0.2),
             _w("fc", (2, 4 * 10 * 14), 0.05)]
    nodes = [helper.make_node("Conv", ["img", "s", "sb"], ["c0"], pads=[1] * 4), helper.make_node("Relu", ["c0"], ["stem"]),
             helper.make_node("Conv", ["stem", "b3", "bb"], ["x3"], pads=[1] * 4),
             helper.make_node("Relu", ["x3"], ["branch3"]),
             helper.make_node("Conv", ["stem", "b1", "bc"], ["x1"]), helper.make_node("Relu", ["x1"], ["branch1"]),
             helper.make_node("Concat", ["branch3", "branch1"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "t", "tb"], ["c2"], strides=[2, 2]), helper.make_node("Relu", ["c2"], ["top"]),
             helper.make_node("Flatten", ["top"], ["flat"]), helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1)]
    return _model(nodes, inits, [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 3, 21, 30])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], "concat")


def _hand(frame, *, size, color, scale, mean=(0.0,), std=(1.0,), box=None, letterbox=False, nhwc=False):
    """The frame preprocessed by hand, as each model's documentation would tell its user."""
    h, w = size
    if box is not None:
        fh, fw = frame.shape[:2]
        frame = frame[round(box[1] * fh):round(box[3] * fh), round(box[0] * fw):round(box[2] * fw)]
    if color == "gray":
        frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    if letterbox:
        k = min(h / frame.shape[0], w / frame.shape[1])
        nh, nw = round(frame.shape[0] * k), round(frame.shape[1] * k)
        canvas = np.zeros((h, w) + frame.shape[2:], np.uint8)
        canvas[(h - nh) // 2:(h - nh) // 2 + nh, (w - nw) // 2:(w - nw) // 2 + nw] = cv2.resize(
            frame, (nw, nh), interpolation=cv2.INTER_AREA)
        frame = canvas
    else:
        frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
    if color == "rgb":
        frame = frame[:, :, ::-1]
    elif color == "yuv":
        frame = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV)
    x = frame.astype(np.float32).reshape(h, w, -1) * np.float32(scale)
    x = (x - np.float32(mean)) / np.float32(std)
    return x[None] if nhwc else x.transpose(2, 0, 1)[None]


# name: (build, how the spec is given, spec options or sidecar dict, hand preprocessing keywords)
CASES = {
    "rgb": ("sidecar", {"color": "rgb", "scale": 1 / 255, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                        "box": [0.0, 0.4, 1.0, 0.9], "output": {"unit": "deg", "label": "steering angle"}},
            dict(size=(33, 100), color="rgb", scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 box=(0.0, 0.4, 1.0, 0.9))),
    "nhwc": ("options", "color=bgr,scale=1/127.5,mean=1,std=1",
             dict(size=(19, 29), color="bgr", scale=1 / 127.5, mean=(1.0,), nhwc=True)),
    "fixed": ("assumed", None, dict(size=(24, 32), color="gray", scale=1 / 255)),
    "residual": ("sidecar", {"color": "gray", "fit": "letterbox"},
                 dict(size=(29, 47), color="gray", scale=1 / 255, letterbox=True)),
    "concat": ("options", "color=yuv,scale=1/255,mean=0.5,std=0.25",
               dict(size=(21, 30), color="yuv", scale=1 / 255, mean=(0.5,), std=(0.25,))),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("foreign")
    torch.manual_seed(0)
    _export(randomize_bn(PilotNetRGB()), (3, 33, 100), folder / "rgb.onnx")
    onnx.save(keras_nhwc(), str(folder / "nhwc.onnx"))
    onnx.save(fixed_batch(), str(folder / "fixed.onnx"))
    onnx.save(residual_cnn(), str(folder / "residual.onnx"))
    onnx.save(concat_branches(), str(folder / "concat.onnx"))
    for name, (how, spec, _) in CASES.items():
        if how == "sidecar":
            (folder / f"{name}.onnx.json").write_text(json.dumps(spec))
    return folder


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(480, 640), (360, 640), (300, 500)]):
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (9, 9), 3)
        cv2.imwrite(str(folder / f"f{i}.png"), img)
    return folder


def _spec_args(name):
    how, spec, _ = CASES[name]
    return ["--input-spec", spec] if how == "options" else []


def _ort(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {s.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(len(x))])


def _by_hand(name, frames):
    return np.concatenate([_hand(cv2.imread(str(frames / f"f{i}.png")), **CASES[name][2]) for i in range(3)])


@pytest.mark.parametrize("name", list(CASES))
def test_explain_predicts_what_onnxruntime_predicts_on_the_hand_preprocessed_frame(name, models, frames, tmp_path,
                                                                                   capsys):
    out = tmp_path / "o.h5"
    assert main(["explain", str(models / f"{name}.onnx"), str(frames), "--out", str(out), *_spec_args(name)]) == 0
    err = capsys.readouterr().err
    if CASES[name][0] == "assumed":
        assert "no input spec for" in err and "assuming gray NCHW 24x32" in err
        assert "fixed batch of 1: frames run 1 at a time" in err
    else:
        assert f"from {'options' if CASES[name][0] == 'options' else 'sidecar'}" in err
    expected = _ort(models / f"{name}.onnx", _by_hand(name, frames))
    with h5py.File(out) as f:
        pred, mask = f["prediction"][:], f["mask"][:]
    np.testing.assert_allclose(pred.reshape(expected.shape), expected, rtol=1e-4, atol=1e-5)
    assert mask.shape == (3, *CASES[name][2]["size"]) and 0 <= mask.min() and mask.max() == pytest.approx(1.0)


@pytest.mark.parametrize("name", list(CASES))
def test_headless_view(name, models, frames, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    rc = main(["view", str(frames), "--model", str(models / f"{name}.onnx"), "--headless", "--out", str(out),
               "--methods", "vbp", *_spec_args(name)])
    summary = json.loads(out.with_suffix(".json").read_text())
    assert rc == 0 and summary["frames"] == 3 and not summary["errors"] and out.stat().st_size > 0


@pytest.mark.parametrize("name", list(CASES))
def test_export_keeps_the_spec_and_the_vbp_variant_matches_explain(name, models, frames, tmp_path):
    out = tmp_path / f"{name}_x.onnx"
    assert main(["export", str(models / f"{name}.onnx"), "--out", str(out), *_spec_args(name)]) == 0
    vbp = onnx.load(str(out.with_name(f"{name}_x.vbp.onnx")))
    meta = onnx_io.metadata(vbp)
    assert meta["vbp_rt.format"] == "vbp-rt-onnx" and meta["vbp_rt.variant"] == "vbp"
    spec = input_spec.parse_entries(meta["vbp_rt.input"], "metadata")
    assert (spec["height"], spec["width"]) == CASES[name][2]["size"] and spec["color"] == CASES[name][2]["color"]
    assert spec["scale"] == pytest.approx(CASES[name][2]["scale"])
    batch = vbp.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.HasField("dim_value") == (name == "fixed")  # the fixed batch stays only where the graph needs it
    x = _by_hand(name, frames)
    explained = vbp_rt.explain(models / f"{name}.onnx", torch.from_numpy(x))
    s = ort.InferenceSession(vbp.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [dict(zip([o.name for o in s.get_outputs()], s.run(None, {s.get_inputs()[0].name: x[i:i + 1]})))
            for i in range(3)]
    np.testing.assert_allclose(np.concatenate([o["vbp_mask"] for o in outs]), explained.mask.numpy(), atol=1e-5)
    # the exported file carries its spec: the runtime reads it without a sidecar or options
    assert Runtime(out.with_name(f"{name}_x.vbp.onnx")).spec.origin == "metadata"


@pytest.mark.parametrize("name", list(CASES))
def test_bench_quick(name, models, tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--models", str(models / f"{name}.onnx"), "--backends", "ort-cpu",
                 "--methods", "vbp", "--no-peers", "--no-pipeline", "--seconds", "0.3", "--min-runs", "3",
                 "--out", str(out), *_spec_args(name)]) == 0
    rows = json.loads((out / "bench.json").read_text())["latency"]
    assert {r["method"] for r in rows if r["model"] == name} == {"forward", "vbp"}


def test_onnx_path_checks_input_like_the_torch_path(models):
    path = models / "rgb.onnx"
    good = torch.rand(2, 3, 33, 100)
    assert vbp_rt.explain(path, good).mask.shape == (2, 33, 100)
    bad = good.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        vbp_rt.explain(path, bad)
    with pytest.raises(ValueError, match="float tensor scaled"):
        vbp_rt.explain(path, (good * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"expected input of shape \(N,3,33,100\)"):
        vbp_rt.explain(path, torch.rand(2, 1, 33, 100))
    with pytest.raises(ValueError, match=r"\(N,19,29,3\) \(NHWC\)"):
        vbp_rt.explain(models / "nhwc.onnx", torch.rand(2, 3, 19, 29))


def test_fixed_batch_of_one_runs_frame_by_frame(models):
    x = torch.rand(4, 1, 24, 32)
    together = vbp_rt.explain(models / "fixed.onnx", x)
    alone = [vbp_rt.explain(models / "fixed.onnx", x[i:i + 1]) for i in range(4)]
    np.testing.assert_allclose(together.mask.numpy(), np.concatenate([a.mask.numpy() for a in alone]))
    rt = Runtime(models / "fixed.onnx")
    assert rt.spec.batch == 1 and rt.run(np.zeros((3, 24, 32), np.uint8)).prediction.shape == (3, 1)


@needs_onnx2torch
def test_torch_methods_on_a_foreign_model_run_on_its_conversion(models):
    x = torch.rand(2, 3, 33, 100)
    torch.manual_seed(0)
    native = randomize_bn(PilotNetRGB()).eval()  # the same weights as the exported rgb.onnx
    for method in ("lrp", "saliency", "gradcam"):
        e = vbp_rt.explain(models / "rgb.onnx", x, method)
        assert e.layers["backend"] == "torch (onnx2torch)"
        np.testing.assert_allclose(e.mask.numpy(), vbp_rt.explain(native, x, method).mask.numpy(), atol=1e-5)
    nhwc = vbp_rt.explain(models / "nhwc.onnx", torch.rand(2, 19, 29, 3), "saliency")
    assert nhwc.mask.shape == (2, 19, 29)


@needs_onnx2torch
def test_converted_and_native_agree_on_the_project_model():
    torch.manual_seed(3)
    net = randomize_bn(vbp_rt.build("netsvf", height=125, width=128)).eval()
    converted = onnx_torch.to_torch(onnx_io.export_maps(net), "prediction")
    x = torch.rand(2, 1, 125, 128)
    np.testing.assert_allclose(converted(x).detach().numpy(), net(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    for method in ("vbp", "lrp", "saliency", "guided", "gradcam"):
        a, b = vbp_rt.explain(net, x, method), vbp_rt.explain(converted, x, method)
        np.testing.assert_allclose(b.mask.numpy(), a.mask.numpy(), atol=1e-5, err_msg=method)


def test_view_falls_back_to_vbp_when_lrp_cannot_run(models, frames, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    assert main(["view", str(frames), "--model", str(models / "residual.onnx"), "--headless", "--out", str(out)]) == 0
    assert "showing vbp only" in capsys.readouterr().err
    assert json.loads(out.with_suffix(".json").read_text())["methods"] == ["vbp"]


def test_spec_text_and_files():
    assert input_spec.parse_options("scale=1/127.5,mean=0.485/0.456/0.406,size=66x200") == {
        "scale": pytest.approx(1 / 127.5), "mean": (0.485, 0.456, 0.406), "height": 66, "width": 200}
    with pytest.raises(ValueError, match="unknown key"):
        input_spec.parse_options("colour=rgb")
    with pytest.raises(ValueError, match="color must be one of"):
        input_spec.resolve(input_spec.InputSpec(10, 10), options="color=hsv")
    with pytest.raises(ValueError, match="mean needs 1 or 3 values"):
        input_spec.resolve(input_spec.InputSpec(10, 10, color="rgb"), options="mean=1/2/3/4")


def test_viewer_labels_the_prediction_with_the_spec_unit_and_the_summary_never_says_none():
    from types import SimpleNamespace

    from vbp_rt.viewer.headless import format_summary
    from vbp_rt.viewer.render import hud_lines
    frame = dict(index=3, angle=4.25, truth=None, timings={}, stats={}, backend="ort-cpu")
    assert "predicted +4.2 deg" in hud_lines(SimpleNamespace(**frame, unit="deg"))[0]
    assert hud_lines(SimpleNamespace(**frame, unit=""))[0].endswith("predicted +4.2")
    summary = {"frames": 0, "source": "clip", "out": None, "backend": "ort-cpu", "methods": ["vbp"], "stages_ms": {},
               "frames_per_second": 0.0, "dropped": 0, "bad_frames": 2}
    assert "None" not in format_summary(summary) and "no video written" in format_summary(summary)


@needs_onnx2torch
def test_vbp_on_the_conversion_equals_the_onnx_head_on_a_residual_graph(models):
    """The torch.fx analysis of the converted module finds the same maps and skip path as the ONNX analysis."""
    x = np.random.default_rng(2).integers(0, 256, (3, 29, 47), dtype=np.uint8)
    on_ort = Runtime(models / "residual.onnx").run(x)
    on_torch = Runtime(models / "residual.onnx", methods=("vbp", "saliency")).run(x, methods=("vbp",))
    np.testing.assert_allclose(on_torch.masks["vbp"], on_ort.masks["vbp"], atol=2e-6)
    np.testing.assert_allclose(on_torch.prediction, on_ort.prediction, rtol=1e-5, atol=1e-6)

"""ONNX export: maps, in-graph VBP and in-graph LRP equal the torch engine; VBP head on graphs from elsewhere."""
from __future__ import annotations

import cv2
import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.conftest import randomize_bn
from tests.onnx_builders import (
    OTHER_CHAIN,
    OTHER_SHAPE,
    RESIDUAL_CHAIN,
    RESIDUAL_SKIPS,
    H,
    OtherNet,
    W,
    numpy_vbp,
    residual_cnn,
    torch_onnx,
)
from vbp_rt import explain, onnx_graph, onnx_io
from vbp_rt.cli import main
from vbp_rt.graph import find_torch_chain, trace
from vbp_rt.models import build, save_checkpoint

EPS = 0.01  # on the scale of this small random model's pre-activations (the paper's 100 suits degree outputs)


def _run(model: onnx.ModelProto, x: np.ndarray) -> dict:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {s.get_inputs()[0].name: x})))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(3)
    return randomize_bn(build("netsvf", height=41, width=77, channels=(4, 4, 6, 6, 8, 8), strides=(1, 2, 1, 2, 1, 2),
                              fc=(16,), view=""), seed=3)  # no camera view: frames are resized to 77x41


@pytest.fixture(scope="module")
def batch():
    return torch.rand(3, 1, 41, 77, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def exported(net, tmp_path_factory):
    paths = onnx_io.export(net, tmp_path_factory.mktemp("onnx") / "small.onnx", eps=EPS)
    return {v: onnx.load(str(p)) for v, p in paths.items()}


def test_maps_variant_outputs_every_post_relu_map(net, batch, exported):
    out = _run(exported["maps"], batch.numpy())
    pred, entries = trace(net, batch, keep_tensors=True)
    relus = {e.name: e.output for e in entries if isinstance(e.module, torch.nn.ReLU) and e.output.dim() == 4}
    assert list(out) == ["prediction", *relus]
    np.testing.assert_allclose(out["prediction"], pred.detach().numpy(), rtol=1e-5, atol=1e-6)
    for name, t in relus.items():
        np.testing.assert_allclose(out[name], t.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_vbp_variant_equals_torch_vbp(net, batch, exported):
    out = _run(exported["vbp"], batch.numpy())
    e = explain(net, batch, "vbp")
    assert set(out) == {"prediction", "vbp_mask", "vbp_relevance"}
    np.testing.assert_allclose(out["prediction"], e.prediction.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["vbp_mask"], e.mask.numpy(), atol=2e-5)
    np.testing.assert_allclose(out["vbp_relevance"], e.relevance.numpy(), rtol=1e-4, atol=1e-6)
    assert out["vbp_mask"].min() == 0 and out["vbp_mask"].max() == 1


def test_lrp_variant_equals_torch_lrp(net, batch, exported):
    out = _run(exported["lrp"], batch.numpy())
    e = explain(net, batch, "lrp", eps=EPS)
    np.testing.assert_allclose(out["lrp_mask"], e.mask.numpy(), atol=1e-4)
    scale = np.abs(e.relevance.numpy()).max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out["lrp_relevance"] / scale, e.relevance.numpy() / scale, atol=1e-4)
    assert onnx_io.metadata(exported["lrp"])["vbp_rt.lrp_eps"] == EPS


def test_dynamic_batch_metadata_and_ir_version(net, exported):
    for variant, model in exported.items():
        assert model.ir_version <= 10
        meta = onnx_io.metadata(model)
        assert meta["vbp_rt.variant"] == variant
        assert meta["vbp_rt.input"]["layout"] == "NCHW" and meta["vbp_rt.input"]["color"] == "gray"
        assert (meta["vbp_rt.input"]["height"], meta["vbp_rt.input"]["width"]) == (41, 77)
        assert meta["vbp_rt.input"]["scale"] == pytest.approx(1 / 255)
        assert meta["vbp_rt.config"]["channels"] == [4, 4, 6, 6, 8, 8]
    for n in (1, 5):
        out = _run(exported["vbp"], np.random.rand(n, 1, 41, 77).astype(np.float32))
        assert out["vbp_mask"].shape == (n, 41, 77)


def test_vbp_head_on_a_helper_built_graph_matches_numpy_vbp():
    model = residual_cnn()
    x = np.random.default_rng(1).random((4, 1, H, W), dtype=np.float32)
    maps = _run(onnx_io.expose_maps(model), x)
    out = _run(onnx_io.append_vbp_head(model), x)
    reference = numpy_vbp([maps[name] for name, _ in RESIDUAL_CHAIN], RESIDUAL_CHAIN, RESIDUAL_SKIPS)
    np.testing.assert_allclose(out["vbp_mask"], reference, atol=1e-5)
    np.testing.assert_allclose(out["steer"], maps["steer"], rtol=1e-6)
    assert reference.std() > 0.05  # a real pattern, not a constant


def test_vbp_head_on_a_plain_torch_export_matches_torch_and_numpy():
    torch.manual_seed(0)
    net = randomize_bn(OtherNet())
    x = torch.rand(3, *OTHER_SHAPE)
    exported = torch_onnx(net, OTHER_SHAPE)
    maps = _run(onnx_io.expose_maps(exported), x.numpy())
    out = _run(onnx_io.append_vbp_head(exported), x.numpy())
    map_names = [n for n in maps if n != "y"]
    np.testing.assert_allclose(out["vbp_mask"], numpy_vbp([maps[n] for n in map_names], OTHER_CHAIN), atol=1e-5)
    np.testing.assert_allclose(out["vbp_mask"], explain(net, x, "vbp").mask.numpy(), atol=2e-5)


def test_opset_18_reductions_take_axes_as_inputs():
    model = residual_cnn(opset=13)
    x = np.random.default_rng(2).random((2, 1, H, W), dtype=np.float32)
    np.testing.assert_allclose(_run(onnx_io.append_vbp_head(model), x)["vbp_mask"],
                               _run(onnx_io.append_vbp_head(residual_cnn(opset=18)), x)["vbp_mask"], atol=1e-6)


def test_head_refuses_graphs_without_post_relu_maps_and_second_heads(exported):
    with pytest.raises(ValueError, match="VisualBackProp does not apply"):
        onnx_io.append_vbp_head(residual_cnn(relu=False))
    with pytest.raises(ValueError, match="already has"):
        onnx_io.append_vbp_head(exported["vbp"])


def test_input_offset_is_part_of_the_exported_graph(tmp_path):
    torch.manual_seed(4)
    net = build("netsvf", height=41, width=77, channels=(4, 4, 6, 6, 8, 8), strides=(1, 2, 1, 2, 1, 2), fc=(16,),
                view="", batchnorm=False, input_offset=0.45)
    x = torch.rand(3, 1, 41, 77, generator=torch.Generator().manual_seed(6))
    paths = onnx_io.export(net, tmp_path / "centred.onnx", eps=EPS)
    maps = onnx.load(str(paths["maps"]))
    assert onnx_graph.find_onnx_chain(maps) == find_torch_chain(net, net.config.input_shape)
    assert onnx_io.metadata(maps)["vbp_rt.config"]["input_offset"] == pytest.approx(0.45)
    out = _run(onnx.load(str(paths["vbp"])), x.numpy())
    e = explain(net, x, "vbp")
    np.testing.assert_allclose(out["prediction"], e.prediction.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["vbp_mask"], e.mask.numpy(), atol=2e-5)
    uncentred = build("netsvf", height=41, width=77, channels=(4, 4, 6, 6, 8, 8), strides=(1, 2, 1, 2, 1, 2),
                      fc=(16,), view="", batchnorm=False)
    uncentred.load_state_dict(net.state_dict())
    assert not np.allclose(out["prediction"], uncentred.eval()(x).detach().numpy(), atol=1e-3)  # the offset ran


def test_variant_paths():
    want = {"maps": "m.onnx", "vbp": "m.vbp.onnx", "lrp": "m.lrp.onnx"}
    for given in ("d/m.onnx", "d/m.vbp.onnx", "d/m.lrp.onnx"):
        assert {k: p.name for k, p in onnx_io.variant_paths(given).items()} == want


def test_vbp_export_cli_and_explain_on_the_files(net, batch, tmp_path, capsys):
    ckpt = tmp_path / "net.pt"
    save_checkpoint(ckpt, net)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--eps", str(EPS)]) == 0
    assert "6 post-ReLU conv maps" in capsys.readouterr().out
    assert {p.name for p in tmp_path.glob("*.onnx")} == {"x.onnx", "x.vbp.onnx", "x.lrp.onnx"}
    for method in ("vbp", "lrp"):
        got = explain(tmp_path / "x.onnx", batch, method)
        want = explain(net, batch, method, **({"eps": EPS} if method == "lrp" else {}))
        np.testing.assert_allclose(got.mask.numpy(), want.mask.numpy(), atol=1e-4)
        np.testing.assert_allclose(got.prediction.numpy(), want.prediction.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="exported with eps"):
        explain(tmp_path / "x.onnx", batch, "lrp", eps=1.0)
    frame = np.random.default_rng(4).integers(0, 256, (41, 77), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "frame.png"), frame)
    assert main(["explain", str(tmp_path / "x.vbp.onnx"), str(tmp_path / "frame.png"), "--out",
                 str(tmp_path / "m.h5")]) == 0
    with h5py.File(tmp_path / "m.h5", "r") as f:
        want = explain(net, torch.from_numpy(frame).float().div(255)[None, None], "vbp")
        np.testing.assert_allclose(f["mask"][:], want.mask.numpy(), atol=1e-4)
        np.testing.assert_allclose(f["prediction"][:], want.prediction.numpy()[:, 0], rtol=1e-5, atol=1e-6)
    foreign = tmp_path / "foreign.onnx"
    onnx.save(residual_cnn(), str(foreign))
    assert main(["export", str(foreign), "--out", str(tmp_path / "f.onnx")]) == 0
    assert (tmp_path / "f.vbp.onnx").is_file() and not (tmp_path / "f.lrp.onnx").exists()
    assert main(["export", str(foreign), "--out", str(tmp_path / "g.onnx"), "--variants", "lrp"]) == 2

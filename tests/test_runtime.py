"""Runtime: every backend gives the torch engine's prediction and masks; backend choice; GPU paths skip cleanly."""
from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.conftest import randomize_bn
from tests.onnx_builders import RESIDUAL_CHAIN, RESIDUAL_SKIPS, H, W, numpy_vbp, residual_cnn
from vbp_rt import explain, onnx_io
from vbp_rt.models import build, save_checkpoint
from vbp_rt.runtime import RunResult, Runtime, available_backends
from vbp_rt.sessions import cpu_session_options, ort_cuda_works, physical_cores

EPS = 0.01


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(7)
    return randomize_bn(build("netsvf", height=41, width=77, channels=(4, 4, 6, 6, 8, 8), strides=(1, 2, 1, 2, 1, 2),
                              fc=(16,), view=""), seed=7)


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).integers(0, 256, (3, 41, 77), dtype=np.uint8)


def _reference(net, frames, method):
    x = torch.from_numpy(frames).float().mul(1 / 255).unsqueeze(1)
    return explain(net, x, method, **({"eps": EPS} if method == "lrp" else {}))


GPU = {"rtol": 1e-4, "atol": 1e-5}  # exact float32 on the GPU (the Runtime's default): summation order only


def _check(result: RunResult, net, frames, methods, rtol=1e-5, atol=1e-6):
    assert isinstance(result.prediction, np.ndarray) and result.prediction.dtype == np.float32
    assert set(result.timings) == {"forward", *methods, "total"}
    assert all(t > 0 for t in result.timings.values())
    assert result.timings["total"] >= result.timings["forward"] + sum(result.timings[m] for m in methods)
    for m in methods:
        want = _reference(net, frames, m)
        np.testing.assert_allclose(result.prediction, want.prediction.numpy(), rtol=rtol, atol=atol)
        assert result.masks[m].shape == frames.shape and result.masks[m].dtype == np.float32
        np.testing.assert_allclose(result.masks[m], want.mask.numpy(), atol=1e-4)


@pytest.mark.parametrize("backend", ["ort-cpu", "torch-cpu"])
def test_cpu_backends_equal_the_torch_engine(net, frames, backend):
    rt = Runtime(net, backend, methods=("vbp", "lrp"), eps=EPS)
    assert rt.backend == backend and rt.methods == ("vbp", "lrp")
    _check(rt.run(frames), net, frames, ("vbp", "lrp"))
    _check(rt.run(frames[:1], methods=["vbp"]), net, frames[:1], ("vbp",))


def test_centred_network_without_batchnorm_on_every_cpu_backend(frames):
    torch.manual_seed(8)
    net = build("netsvf", height=41, width=77, channels=(4, 4, 6, 6, 8, 8), strides=(1, 2, 1, 2, 1, 2), fc=(16,),
                view="", batchnorm=False, input_offset=0.45)
    for backend in ("ort-cpu", "torch-cpu"):
        _check(Runtime(net, backend, methods=("vbp", "lrp"), eps=EPS).run(frames), net, frames, ("vbp", "lrp"))


def test_sources_checkpoint_onnx_files_and_auto(net, frames, tmp_path):
    save_checkpoint(tmp_path / "n.pt", net)
    onnx_io.export(net, tmp_path / "n.onnx", eps=EPS)
    auto = Runtime(tmp_path / "n.pt")
    assert auto.backend == available_backends()[0]
    _check(auto.run(frames), net, frames, ("vbp",))
    for name in ("n.onnx", "n.vbp.onnx"):
        rt = Runtime(tmp_path / name, "ort-cpu", methods=("vbp", "lrp"))  # LRP comes from n.lrp.onnx
        assert rt.config.channels == (4, 4, 6, 6, 8, 8)
        _check(rt.run(frames), net, frames, ("vbp", "lrp"))


def test_foreign_onnx_model(tmp_path):
    path = tmp_path / "foreign.onnx"
    onnx.save(residual_cnn(), str(path))
    rt = Runtime(path)
    assert rt.backend.startswith("ort") and (rt.config.height, rt.config.width) == (H, W) and rt.view is None
    frames = np.random.default_rng(1).integers(0, 256, (2, H, W), dtype=np.uint8)
    result = rt.run(frames)
    maps = onnx_io.expose_maps(residual_cnn())
    s = ort.InferenceSession(maps.SerializeToString())
    outs = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"image": frames[:, None] / np.float32(255)})))
    reference = numpy_vbp([outs[n] for n, _ in RESIDUAL_CHAIN], RESIDUAL_CHAIN, RESIDUAL_SKIPS)
    np.testing.assert_allclose(result.masks["vbp"], reference, atol=1e-5)
    np.testing.assert_allclose(result.prediction, outs["steer"], rtol=1e-5)
    if importlib.util.find_spec("onnx2torch") is not None:  # no LRP variant: the torch conversion's LRP refuses Sub
        with pytest.raises(ValueError, match="LRP: layer Sub of type OnnxBinaryMathOperation is not supported"):
            Runtime(path, "ort-cpu", methods=("lrp",))
    with pytest.raises(ValueError, match="onnxruntime"):
        Runtime(path, "torch-cpu")


def test_methods_without_an_onnx_head_run_on_torch(net, frames):
    rt = Runtime(net, methods=("vbp", "saliency"))
    assert rt.backend.startswith("torch")
    with pytest.raises(ValueError, match="no onnxruntime head"):
        Runtime(net, "ort-cpu", methods=("saliency",))
    with pytest.raises(ValueError, match="not prepared"):
        rt.run(frames, methods=["lrp"])


def test_input_checks_and_float_input(net, frames):
    rt = Runtime(net, "ort-cpu")
    with pytest.raises(ValueError, match="41x77"):
        rt.run(np.zeros((2, 40, 77), np.uint8))
    x = frames[:, None].astype(np.float32) / 255
    np.testing.assert_allclose(rt.run(x).masks["vbp"], rt.run(frames).masks["vbp"], atol=1e-6)
    assert rt.run(frames[0]).masks["vbp"].shape == (1, 41, 77)


def test_prepare_uses_the_models_view():
    from vbp_rt.data.preprocess import VIEWS, prepare
    rt = Runtime(build("netsvf"), "ort-cpu")
    frame = np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert rt.view == VIEWS["svf"]
    np.testing.assert_array_equal(rt.prepare(frame), prepare(frame, VIEWS["svf"]))


def test_cpu_session_options():
    so = cpu_session_options()
    assert so.intra_op_num_threads == physical_cores() >= 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert cpu_session_options(threads=1, spinning=True).get_session_config_entry(
        "session.intra_op.allow_spinning") == "1"


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_ort_cuda_is_refused_when_the_session_would_run_on_cpu(net):
    if ort_cuda_works():
        pytest.skip("onnxruntime runs CUDA here; the refusal path needs a machine without it")
    with pytest.raises(ValueError, match="CUDA"):
        Runtime(net, "ort-cuda")
    assert "ort-cuda" not in available_backends()


@pytest.mark.gpu
def test_torch_cuda_equals_the_torch_engine(net, frames, cuda):
    rt = Runtime(net, "torch-cuda", methods=("vbp", "lrp"), eps=EPS)
    _check(rt.run(frames), net, frames, ("vbp", "lrp"), **GPU)


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_ort_cuda_equals_the_torch_engine(net, frames, cuda_graph):
    if not ort_cuda_works():
        pytest.skip("onnxruntime cannot run CUDA on this machine (no GPU or no onnxruntime-gpu)")
    methods = ("vbp",) if cuda_graph else ("vbp", "lrp")
    rt = Runtime(net, "ort-cuda", methods=methods, eps=EPS, cuda_graph=cuda_graph)
    assert rt.providers[0] == "CUDAExecutionProvider"
    for _ in range(3):  # CUDA graphs are captured on an early run and replayed afterwards
        _check(rt.run(frames), net, frames, methods, **GPU)
    if cuda_graph:
        with pytest.raises(ValueError, match="fixed"):
            rt.run(frames[:1])

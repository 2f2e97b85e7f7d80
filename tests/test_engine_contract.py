"""The explain() contract, bad input, models and checkpoints."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import vbp_rt
from tests.conftest import randomize_bn
from vbp_rt import models


@pytest.fixture(scope="module")
def svf():
    torch.manual_seed(0)
    return randomize_bn(vbp_rt.build("netsvf"))


@pytest.mark.parametrize("method", ["vbp", "lrp"])
def test_every_method_same_call_shape(svf, method):
    x = torch.rand(2, 1, 135, 640)
    e = vbp_rt.explain(svf, x, method)
    assert e.method == method
    assert e.prediction.shape == (2, 1)
    assert e.mask.shape == (2, 135, 640) and e.mask.dtype == torch.float32
    assert e.relevance.shape == (2, 135, 640)
    assert 0.0 <= float(e.mask.min()) and float(e.mask.max()) <= 1.0


@pytest.mark.parametrize("x,match", [
    (torch.rand(1, 135, 640), "expected input of shape \\(N,C,H,W\\)"),
    (torch.rand(1, 3, 135, 640), "expected 1 input channel"),
    (torch.rand(1, 1, 135, 351), "expected input height x width 135x640"),
    (torch.full((1, 1, 135, 640), float("nan")), "NaN or inf"),
    (torch.full((1, 1, 135, 640), float("inf")), "NaN or inf"),
])
def test_bad_input_is_named(svf, x, match):
    with pytest.raises(ValueError, match=match):
        vbp_rt.explain(svf, x, "vbp")


def test_integer_input_is_refused(svf):
    with pytest.raises(TypeError, match="float tensor"):
        vbp_rt.explain(svf, torch.zeros(1, 1, 135, 640, dtype=torch.uint8))


def test_unknown_method_lists_the_known_ones(svf):
    with pytest.raises(ValueError) as info:
        vbp_rt.explain(svf, torch.rand(1, 1, 135, 640), "smoothgrad-9000")
    assert "vbp" in str(info.value) and "lrp" in str(info.value)


def test_model_without_conv_relu():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 6 * 6, 1))
    with pytest.raises(ValueError, match="no Conv2d followed by an nn.ReLU"):
        vbp_rt.explain(net, torch.rand(1, 1, 8, 8), "vbp")
    with pytest.raises(ValueError, match="not a convolutional network"):
        vbp_rt.explain(nn.Sequential(nn.Flatten(), nn.Linear(64, 1)), torch.rand(1, 1, 8, 8))


def test_bn_after_conv_and_maxpool_models_work():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.LazyLinear(1)).eval()
    net(torch.zeros(1, 1, 21, 23))
    for method in ("vbp", "lrp"):
        assert vbp_rt.explain(net, torch.rand(2, 1, 21, 23), method).mask.shape == (2, 21, 23)


def test_architectures():
    assert vbp_rt.build("netsvf").config.input_shape == (1, 135, 640)
    assert vbp_rt.build("nethvf").config.input_shape == (1, 135, 351)
    rel = vbp_rt.build("release")
    assert rel.config.input_shape == (1, 125, 640)
    assert [m.out_channels for m in rel.modules() if isinstance(m, nn.Conv2d)] == [8, 8, 16, 16, 24, 24, 36, 36, 48, 48]
    assert isinstance(rel.features[-1], nn.BatchNorm2d)
    assert [m.out_features for m in rel.modules() if isinstance(m, nn.Linear)] == [128, 16, 1]
    sign = vbp_rt.build("sign")
    assert sign(torch.zeros(2, 1, 125, 125)).shape == (2, 43)
    svf = vbp_rt.build("netsvf")
    kinds = [type(m).__name__ for m in svf.features]
    assert kinds[:3] == ["BatchNorm2d", "Conv2d", "ReLU"] and kinds.count("Conv2d") == 10
    assert [m.out_features for m in svf.modules() if isinstance(m, nn.Linear)] == [1024, 512, 1]
    with pytest.raises(ValueError, match="unknown architecture"):
        vbp_rt.build("resnet")


def test_checkpoint_round_trip_half(tmp_path, svf):
    path = tmp_path / "m.pt"
    models.save_checkpoint(path, svf, half=True, epoch=3)
    assert path.stat().st_size < 8e6
    loaded = models.load_model(path)
    assert models.read_checkpoint(path)["epoch"] == 3
    x = torch.rand(1, 1, 135, 640)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), svf.eval()(x), rtol=2e-2, atol=2e-3)
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.read_checkpoint(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        models.read_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not a vbp-rt checkpoint"):
        models.read_checkpoint(other)
    with pytest.raises(FileNotFoundError, match="no shipped model"):
        models.load_model("no-such-model")

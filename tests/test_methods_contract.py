"""Every registered method keeps the `explain` contract on the same model and input."""
from __future__ import annotations

import pytest
import torch

import vbp_rt
from tests.conftest import randomize_bn
from vbp_rt.models import NetConfig, build


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return randomize_bn(build(NetConfig(arch="tiny", height=21, width=30, channels=(4, 6, 8, 8), fc=(12,))))


@pytest.mark.parametrize("method", vbp_rt.available_methods())
def test_method_contract(net, method):
    x = torch.rand(3, 1, 21, 30)
    e = vbp_rt.explain(net, x, method)
    assert e.method == method
    torch.testing.assert_close(e.prediction, net(x).detach())
    assert e.mask.shape == (3, 21, 30) and e.relevance.shape == (3, 21, 30)
    assert e.mask.dtype == torch.float32 and torch.isfinite(e.relevance).all()
    assert e.mask.min() >= 0 and e.mask.max() <= 1
    assert torch.allclose(e.mask.amax(dim=(1, 2)), torch.ones(3))  # every image has a strongest pixel
    assert not any(p.grad is not None for p in net.parameters())  # no gradient left on the weights


def test_all_methods_are_registered():
    assert {"vbp", "lrp", "saliency", "guided", "deconvnet", "gradxinput", "gradcam", "affine"} <= set(
        vbp_rt.available_methods())

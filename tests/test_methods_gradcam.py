"""Grad-CAM against a computation written from the paper's formula."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import vbp_rt
from tests.conftest import randomize_bn
from vbp_rt.models import NetConfig, build


def tiny_convnet(outputs=1, seed=0):
    torch.manual_seed(seed)
    net = build(NetConfig(arch="tiny", height=20, width=24, channels=(4, 6, 8), fc=(10,), outputs=outputs))
    return randomize_bn(net, seed).double()


def hand_gradcam(net, x, depth, target):
    """Split the net at the post-ReLU map after conv block `depth`: A = front(x), S = back(A)."""
    front, back = net.features[:3 * (depth + 1)], net.features[3 * (depth + 1):]
    a = front(x).detach().requires_grad_(True)
    logits = net.head(back(a))
    (g,) = torch.autograd.grad(logits[:, target].sum(), a)
    alpha = g.mean(dim=(2, 3))
    cam = np.maximum((alpha[:, :, None, None] * a).sum(1).detach().numpy(), 0)
    h, w = x.shape[-2:]
    return np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in cam])


@pytest.mark.parametrize("layer,depth", [(-1, 2), (0, 0), ("features.5", 1)])
def test_gradcam_matches_hand_computation(layer, depth):
    net = tiny_convnet(outputs=4, seed=depth)
    x = torch.rand(3, 1, 20, 24, dtype=torch.float64)
    e = vbp_rt.explain(net, x, "gradcam", layer=layer, target=1)
    want = hand_gradcam(net, x, depth, 1)
    assert want.max() > 0
    want = want / want.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(e.mask.numpy(), want, atol=1e-5)
    assert e.layers["layer"] == f"features.{3 * depth + 2}"


def test_gradcam_explains_the_predicted_class_by_default():
    net = tiny_convnet(outputs=4, seed=5)
    x = torch.rand(1, 1, 20, 24, dtype=torch.float64)
    target = int(net(x).argmax())
    torch.testing.assert_close(vbp_rt.explain(net, x, "gradcam").mask,
                               vbp_rt.explain(net, x, "gradcam", target=target).mask)


def test_gradcam_rejects_the_input_and_unknown_layers():
    net = tiny_convnet()
    x = torch.rand(1, 1, 20, 24, dtype=torch.float64)
    with pytest.raises(ValueError, match="not the input"):
        vbp_rt.explain(net, x, "gradcam", layer="input")
    with pytest.raises(ValueError, match="features.2"):
        vbp_rt.explain(net, x, "gradcam", layer="head.1")
    with pytest.raises(ValueError, match="out of range"):
        vbp_rt.explain(net, x, "gradcam", layer=3)

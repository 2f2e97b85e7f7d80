"""Saliency, Guided Backprop, DeconvNet and gradient x input against independent backward passes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import vbp_rt
from tests.conftest import randomize_bn
from vbp_rt.methods.gradient import relu_rule
from vbp_rt.models import NetConfig, build


def tiny_convnet(outputs=1, seed=0):
    torch.manual_seed(seed)
    net = build(NetConfig(arch="tiny", height=12, width=16, channels=(4, 6, 8), fc=(10,), outputs=outputs))
    return randomize_bn(net, seed).double()


def test_saliency_is_the_gradient_of_the_explained_score():
    net = tiny_convnet()
    x = torch.rand(3, 1, 12, 16, dtype=torch.float64)
    e = vbp_rt.explain(net, x, "saliency")
    xr = x.clone().requires_grad_(True)
    y = net(xr)[:, 0]
    (g,) = torch.autograd.grad((y * torch.sign(y)).sum(), xr)
    torch.testing.assert_close(e.relevance, g[:, 0])
    torch.testing.assert_close(e.mask, (g[:, 0].abs() / g[:, 0].abs().amax(dim=(1, 2), keepdim=True)).float())


def test_saliency_matches_finite_differences_of_the_target_logit():
    net = tiny_convnet(outputs=3, seed=1)
    x = torch.rand(1, 1, 12, 16, dtype=torch.float64)
    e = vbp_rt.explain(net, x, "saliency", target=2)
    rng = np.random.default_rng(0)
    pixels = [(int(rng.integers(12)), int(rng.integers(16))) for _ in range(12)]
    h = 1e-6
    batch = x.repeat(2 * len(pixels), 1, 1, 1)
    for k, (i, j) in enumerate(pixels):
        batch[2 * k, 0, i, j] += h
        batch[2 * k + 1, 0, i, j] -= h
    with torch.no_grad():
        out = net(batch)[:, 2]
    fd = (out[0::2] - out[1::2]) / (2 * h)
    got = torch.stack([e.relevance[0, i, j] for i, j in pixels])
    torch.testing.assert_close(got, fd, rtol=1e-5, atol=1e-8)
    assert fd.abs().max() > 0


def test_gradxinput_is_gradient_times_input():
    net = tiny_convnet(seed=2)
    x = torch.rand(2, 1, 12, 16, dtype=torch.float64)
    s = vbp_rt.explain(net, x, "saliency")
    e = vbp_rt.explain(net, x, "gradxinput")
    torch.testing.assert_close(e.relevance, s.relevance * x[:, 0])


def conv_forward(x, w, b, stride):
    """Plain loops: x (C,H,W), w (O,C,k,k) -> (O,h,w)."""
    o, c, k, _ = w.shape
    h = (x.shape[1] - k) // stride + 1
    wd = (x.shape[2] - k) // stride + 1
    out = np.zeros((o, h, wd))
    for i in range(h):
        for j in range(wd):
            patch = x[:, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, i, j] = (w * patch[None]).sum(axis=(1, 2, 3)) + b
    return out


def conv_backward(t, w, in_shape, stride):
    """Spread t (O,h,w) back over the conv input (C,H,W) through the weights."""
    g = np.zeros(in_shape)
    k = w.shape[-1]
    for i in range(t.shape[1]):
        for j in range(t.shape[2]):
            g[:, i * stride:i * stride + k, j * stride:j * stride + k] += (w * t[:, i, j][:, None, None, None]).sum(0)
    return g


def relu_back(top, pre, rule):
    if rule == "gradient":
        return top * (pre > 0)
    if rule == "guided":
        return np.maximum(top, 0) * (pre > 0)
    return np.maximum(top, 0)  # deconvnet


def hand_backward(net, x, rule):
    """Forward and modified backward of `net` (Conv-ReLU-Conv-ReLU-Linear-ReLU-Linear) written out."""
    c1, _, c2, _, _, l1, _, l2 = net
    p = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    z1 = conv_forward(x, p["0.weight"], p["0.bias"], c1.stride[0])
    a1 = np.maximum(z1, 0)
    z2 = conv_forward(a1, p["2.weight"], p["2.bias"], c2.stride[0])
    a2 = np.maximum(z2, 0)
    z3 = p["5.weight"] @ a2.ravel() + p["5.bias"]
    y = p["7.weight"] @ np.maximum(z3, 0) + p["7.bias"]
    top = p["7.weight"][0] * (1.0 if y[0] >= 0 else -1.0)
    t3 = relu_back(top, z3, rule)
    t2 = relu_back((p["5.weight"].T @ t3).reshape(a2.shape), z2, rule)
    t1 = relu_back(conv_backward(t2, p["2.weight"], a1.shape, c2.stride[0]), z1, rule)
    return conv_backward(t1, p["0.weight"], x.shape, c1.stride[0]).sum(0)


@pytest.mark.parametrize("method,rule", [("guided", "guided"), ("deconvnet", "deconvnet"), ("saliency", "gradient")])
def test_modified_backward_matches_hand_written_backward(method, rule):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.Conv2d(5, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 3 * 4, 6), nn.ReLU(), nn.Linear(6, 1)).double()
    with torch.no_grad():
        net[0].bias.add_(0.1)  # some units on, some off
    x = torch.rand(2, 2, 10, 12, dtype=torch.float64) - 0.3
    e = vbp_rt.explain(net, x, method)
    for n in range(x.shape[0]):
        want = hand_backward(net, x[n].numpy(), rule)
        np.testing.assert_allclose(e.relevance[n].numpy(), want, rtol=1e-9, atol=1e-12)
    if method != "saliency":  # the rule must actually change something on this net
        assert not torch.allclose(e.relevance, vbp_rt.explain(net, x, "saliency").relevance)


def test_relu_rule_is_undone_on_exit_even_after_an_error():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(2 * 4 * 4, 1)).double()
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError):
        with relu_rule(net, "deconvnet"):
            assert net[1].inplace is False
            raise RuntimeError("boom")
    assert net[1].inplace is True and not net[1]._backward_hooks
    (g,) = torch.autograd.grad(net(x).sum(), x)
    (want,) = torch.autograd.grad(nn.Sequential(net[0], nn.ReLU(), net[2], net[3])(x).sum(), x)
    torch.testing.assert_close(g, want)
    with pytest.raises(ValueError, match="unknown ReLU rule"):
        with relu_rule(net, "nope"):
            pass

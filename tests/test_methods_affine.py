"""The piece-wise affine decomposition (Chen et al.): exact reconstruction, and a bias term checked
against a forward pass of the network linearized at x (ReLU masks frozen) evaluated at zero."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import vbp_rt
from tests.conftest import randomize_bn
from vbp_rt.methods.affine import decompose
from vbp_rt.models import NetConfig, build


def tiny_convnet(outputs=1, seed=0, bn=True):
    torch.manual_seed(seed)
    net = build(NetConfig(arch="tiny", height=14, width=18, channels=(4, 6, 8), fc=(10,), outputs=outputs))
    if not bn:
        for i, m in enumerate(net.features):
            if isinstance(m, nn.BatchNorm2d):
                net.features[i] = nn.Identity()
    return randomize_bn(net, seed).double()


def linearized_at_zero(net, x, layer=None):
    """The network with every ReLU mask frozen at its state for `x`, fed zero at the input (layer=None)
    or at the output of module `layer`: the constant term of the local affine map."""
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    masks = {}
    handles = [m.register_forward_hook(lambda m, i, o: masks.__setitem__(m, o > 0)) for m in relus]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    target = dict(net.named_modules()).get(layer)

    def frozen(m, i, o):
        return torch.zeros_like(o) if m is target else i[0] * masks[m]
    handles = [m.register_forward_hook(frozen) for m in relus]
    try:
        with torch.no_grad():
            return net(torch.zeros_like(x) if layer is None else x)
    finally:
        for h in handles:
            h.remove()


def test_contributions_plus_bias_reconstruct_the_prediction_at_the_input():
    net = tiny_convnet()
    x = torch.rand(4, 1, 14, 18, dtype=torch.float64)
    e = vbp_rt.explain(net, x, "affine")
    pred = net(x)[:, 0].detach()
    c, b = e.layers["contributions"], e.layers["bias"]
    torch.testing.assert_close(c.sum(dim=(1, 2)) + b, pred.abs())
    sign = torch.where(pred >= 0, 1.0, -1.0).double()
    torch.testing.assert_close(b, sign * linearized_at_zero(net, x)[:, 0])
    assert b.abs().min() > 1e-6  # BN shifts and conv biases give a real bias term here
    torch.testing.assert_close(e.relevance, vbp_rt.explain(net, x, "gradxinput").relevance)


@pytest.mark.parametrize("layer", [0, 1, -1])
def test_decomposition_at_a_conv_layer(layer):
    net = tiny_convnet(outputs=3, seed=1)
    x = torch.rand(2, 1, 14, 18, dtype=torch.float64)
    e = vbp_rt.explain(net, x, "affine", layer=layer, target=2)
    name = e.layers["layer"]
    assert name == f"features.{[2, 5, 8][layer]}"
    logit = net(x)[:, 2].detach()
    c, b = e.layers["contributions"], e.layers["bias"]
    torch.testing.assert_close(c.sum(dim=(1, 2)) + b, logit)
    torch.testing.assert_close(b, linearized_at_zero(net, x, name)[:, 2])
    assert e.mask.shape == (2, 14, 18) and e.relevance.shape == (2, 14, 18)


def test_local_linearity_at_a_layer():
    """F(a + d) - F(a) = W_a · d for a small d: the gradient is the exact local coefficient."""
    net = tiny_convnet(seed=2)
    x = torch.rand(1, 1, 14, 18, dtype=torch.float64)
    _, (d,) = decompose(net, x, ("features.5",))
    modules = dict(net.named_modules())
    acts = {}
    h = modules["features.5"].register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    xr = x.clone()
    y0 = net(xr)
    h.remove()
    a = acts["a"].detach()
    delta = 1e-7 * torch.randn(a.shape, dtype=torch.float64) * (a > 0)
    (w,) = torch.autograd.grad(y0[0, 0], acts["a"])
    h = modules["features.5"].register_forward_hook(lambda m, i, o: o + delta)
    with torch.no_grad():
        y1 = net(x)
    h.remove()
    torch.testing.assert_close((y1 - y0.detach())[0, 0], (w * delta).sum(), rtol=1e-6, atol=1e-15)
    sign = 1.0 if y0[0, 0] >= 0 else -1.0
    torch.testing.assert_close(d.contributions[0], sign * (w * a).sum(dim=1)[0])


def test_a_bias_free_network_has_no_bias_term():
    net = tiny_convnet(seed=3, bn=False)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.zero_()
    x = torch.rand(3, 1, 14, 18, dtype=torch.float64)
    _, ds = decompose(net, x, ("input", 0, 2))
    for d in ds:
        torch.testing.assert_close(d.bias, torch.zeros_like(d.bias), atol=1e-12, rtol=0)
        assert d.score.abs().min() > 0


def test_training_mode_is_refused():
    net = tiny_convnet().train()
    with pytest.raises(ValueError, match="eval mode"):
        vbp_rt.explain(net, torch.rand(2, 1, 14, 18, dtype=torch.float64), "affine")

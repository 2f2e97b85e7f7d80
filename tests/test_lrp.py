"""epsilon-LRP against captum, against an autograd reference on the composite layers, and its invariants."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import vbp_rt
from tests.conftest import randomize_bn

SMALL = dict(channels=(4, 4, 6, 6, 8, 8, 8, 8, 8, 8), fc=(16, 8))


def small_net(seed=0, width=131, **kw):
    torch.manual_seed(seed)
    return randomize_bn(vbp_rt.build("netsvf", height=125, width=width, **{**SMALL, **kw}), seed)


class CaptumView(nn.Module):
    """The same layers with a functional flatten: captum's LRP hooks trip on an nn.Flatten module."""

    def __init__(self, net):
        super().__init__()
        self.features = copy.deepcopy(net.features)
        self.fc = nn.Sequential(*copy.deepcopy(list(net.head)[1:]))

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def captum_lrp(net, x, eps, target=0):
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import EpsilonRule
    ref = CaptumView(net)
    for m in ref.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            m.rule = EpsilonRule(epsilon=eps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LRP(ref).attribute(x.clone(), target=target).detach().sum(dim=1)


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("eps", [100.0, 0.01])
def test_matches_captum_float64(eps):
    net = small_net().double()
    x = torch.rand(2, 1, 125, 131, dtype=torch.float64)
    mine = vbp_rt.explain(net, x, "lrp", eps=eps, bn="affine").relevance
    ref = captum_lrp(net, x, eps)
    assert ref.abs().max() > 0
    assert rel_err(mine, ref) < 1e-9


def test_float32_keeps_what_captum_float32_loses():
    """Outputs in degrees, eps=100, float32: the true relevance (~1e-60) is below float32's range, where
    captum returns zeros; our rescaled walk still matches captum run in float64."""
    net = small_net(seed=3)
    with torch.no_grad():
        net.head[-1].weight.mul_(300.0)
    x = torch.rand(3, 1, 125, 131)
    e = vbp_rt.explain(net, x, "lrp", bn="affine")
    assert e.prediction.abs().min() > 1.0
    assert captum_lrp(net, x, 100.0).abs().max() == 0
    assert rel_err(e.relevance, captum_lrp(net.double(), x.double(), 100.0)) < 1e-4


def composite_reference(net, x, eps):
    """Textbook eps-LRP, one autograd step per affine layer; a BatchNorm is merged with the conv it precedes
    by running them as one composite layer (no weight folding)."""
    feats, head = list(net.features), list(net.head)
    stages, i = [], 0
    while i < len(feats):  # (BN, Conv) pairs are one affine stage; ReLU passes relevance through
        if isinstance(feats[i], nn.BatchNorm2d) and i + 1 < len(feats) and isinstance(feats[i + 1], nn.Conv2d):
            stages.append(nn.Sequential(feats[i], feats[i + 1]))
            i += 2
        else:
            stages.append(feats[i])
            i += 1
    stages += head
    acts = [x]
    with torch.no_grad():
        for s in stages:
            acts.append(s(acts[-1]))
    r = acts[-1].clone()
    for s, a in zip(reversed(stages), reversed(acts[:-1])):
        if isinstance(s, (nn.ReLU, nn.Flatten)):
            r = r.reshape(a.shape)
            continue
        a = a.clone().requires_grad_(True)
        z = s(a)
        z = z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
        (z * (r / z).detach()).sum().backward()
        r = (a * a.grad).detach()
    return r.sum(dim=1)


@pytest.mark.parametrize("eps", [100.0, 0.5])
def test_batchnorm_folding_matches_composite_layers(eps):
    net = small_net(seed=1).double()
    x = torch.rand(2, 1, 125, 131, dtype=torch.float64)
    folded = vbp_rt.explain(net, x, "lrp", eps=eps).relevance
    assert rel_err(folded, composite_reference(net, x, eps)) < 1e-9
    assert rel_err(folded, vbp_rt.explain(net, x, "lrp", eps=eps, bn="affine").relevance) > 1e-6


def zero_biases(net):
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
    return net


def test_conservation_with_zero_biases_and_tiny_eps():
    net = zero_biases(small_net(seed=2)).double()
    x = torch.rand(2, 1, 125, 131, dtype=torch.float64)
    e = vbp_rt.explain(net, x, "lrp", eps=1e-20)
    torch.testing.assert_close(e.relevance.sum(dim=(1, 2)), e.prediction[:, 0], rtol=1e-8, atol=0)


def test_lrp0_equals_gradient_times_input():
    net = small_net(seed=4).double()
    x = torch.rand(1, 1, 125, 131, dtype=torch.float64, requires_grad=True)
    net(x).sum().backward()
    e = vbp_rt.explain(net, x.detach(), "lrp", eps=1e-12)
    assert rel_err(e.relevance, (x.grad * x).detach().sum(dim=1)) < 1e-6


def test_eps_100_absorbs_the_relevance_of_a_small_output_model():
    """eps only makes sense at the model's scale: outputs ~0.03 leave almost nothing for the input."""
    net = zero_biases(small_net(seed=5))
    x = torch.rand(2, 1, 125, 131)
    pred = vbp_rt.explain(net, x, "lrp").prediction[:, 0]
    assert pred.abs().max() < 1.0
    kept_small_eps = vbp_rt.explain(net, x, "lrp", eps=1e-20).relevance.sum(dim=(1, 2)) / pred
    kept_eps_100 = vbp_rt.explain(net, x, "lrp", eps=100.0).relevance.sum(dim=(1, 2)) / pred
    assert torch.all((kept_small_eps - 1).abs() < 1e-3)
    assert torch.all(kept_eps_100.abs() < 1e-6)


def test_no_underflow_in_float32_with_eps_100():
    net = small_net(seed=6)
    e = vbp_rt.explain(net, torch.rand(2, 1, 125, 131), "lrp")
    assert torch.isfinite(e.relevance).all() and torch.isfinite(e.mask).all()
    assert torch.all(e.mask.amax(dim=(1, 2)) == 1.0), "the mask underflowed to zero"


def test_classifier_relevance_starts_at_the_target_logit():
    torch.manual_seed(7)
    net = randomize_bn(vbp_rt.build("sign", channels=(4, 4, 6, 6, 8, 8, 8, 8), fc=(16,))).double()
    with torch.no_grad():
        net.head[-1].bias.zero_()
    zero_biases(net)
    x = torch.rand(2, 1, 125, 125, dtype=torch.float64)
    pred = net(x)
    for target in [None, 5]:
        e = vbp_rt.explain(net, x, "lrp", eps=1e-20, target=target)
        idx = pred.argmax(dim=1) if target is None else torch.tensor([5, 5])
        torch.testing.assert_close(e.relevance.sum(dim=(1, 2)), pred[torch.arange(2), idx], rtol=1e-8, atol=0)


def test_batchnorm_in_training_mode_is_refused():
    net = small_net().train()
    with pytest.raises(ValueError, match="eval mode"):
        vbp_rt.explain(net, torch.rand(2, 1, 125, 131), "lrp")


def test_pooling_layers():
    torch.manual_seed(8)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3), nn.ReLU(),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 1)).double()
    zero_biases(net)
    x = torch.rand(2, 1, 17, 17, dtype=torch.float64)
    e = vbp_rt.explain(net, x, "lrp", eps=1e-20)
    torch.testing.assert_close(e.relevance.sum(dim=(1, 2)), e.prediction[:, 0], rtol=1e-8, atol=0)
    x.requires_grad_(True)
    net(x).sum().backward()
    assert rel_err(e.relevance, (x.grad * x).detach().sum(dim=1)) < 1e-6

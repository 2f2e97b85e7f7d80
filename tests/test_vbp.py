"""VisualBackProp against the brute-force path sum of Theorem 1, and its contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vbp_rt
from tests.conftest import randomize_bn
from tests.reference.vbp_paths import normalize, path_sum_mask
from vbp_rt.graph import SpatialOp, find_torch_chain
from vbp_rt.upsample import ones_transposed_conv, output_padding


def tiny_net(spec, in_ch=1, bn_before=True, bias_shift=0.3):
    """spec: list of ("conv", out_ch, k, stride, pad, dil) | ("max", k, s) | ("avg", k, s); ReLU after each conv."""
    layers, c = [], in_ch
    for item in spec:
        if item[0] == "conv":
            _, out, k, s, p, d = item
            conv = nn.Conv2d(c, out, k, stride=s, padding=p, dilation=d)
            with torch.no_grad():
                conv.bias.add_(bias_shift)  # keep enough units active for a meaningful mask
            layers += ([nn.BatchNorm2d(c), conv] if bn_before else [conv, nn.BatchNorm2d(out)]) + [nn.ReLU()]
            c = out
        elif item[0] == "max":
            layers.append(nn.MaxPool2d(item[1], item[2]))
        else:
            layers.append(nn.AvgPool2d(item[1], item[2]))
    layers += [nn.Flatten(), nn.LazyLinear(1)]
    return nn.Sequential(*layers)


CASES = [
    # (spec, input size, bn_before)
    ([("conv", 3, 3, 1, 0, 1), ("conv", 4, 3, 2, 0, 1), ("conv", 2, 3, 1, 0, 1)], (13, 11), True),
    ([("conv", 3, 3, 2, 0, 1), ("conv", 3, 3, 2, 0, 1), ("conv", 3, 3, 2, 0, 1)], (23, 21), True),
    ([("conv", 3, 5, 2, 2, 1), ("conv", 3, 3, 1, 1, 1), ("conv", 2, 2, 2, 0, 1)], (12, 13), False),
    ([("conv", 3, 3, 1, 0, 2), ("conv", 2, 3, 3, 1, 1)], (15, 14), True),
    ([("conv", 3, 3, 1, 0, 1), ("max", 2, 2), ("conv", 3, 3, 1, 0, 1), ("avg", 3, 2), ("conv", 2, 2, 1, 0, 1)],
     (19, 18), False),
    ([(("conv", 4, (3, 1), (2, 1), (1, 0), 1)), ("conv", 3, (1, 3), (1, 2), 0, 1), ("conv", 2, 3, 1, 0, 1)],
     (11, 13), True),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_vbp_equals_theorem1_path_sum(case):
    spec, hw, bn_before = CASES[case]
    torch.manual_seed(case)
    net = tiny_net(spec, bn_before=bn_before).eval()
    net(torch.zeros(1, 1, *hw))  # materialize the lazy head
    randomize_bn(net, seed=case)
    x = torch.rand(3, 1, *hw)
    e = vbp_rt.explain(net, x, "vbp")
    chain = find_torch_chain(net, (1, *hw))
    for n in range(x.shape[0]):
        averages = [a[n].double().numpy() for a in e.layers["averages"]]
        assert all(a.max() > 0 for a in averages), "degenerate case: a layer is all zero"
        ref = normalize(path_sum_mask(averages, chain))
        np.testing.assert_allclose(e.mask[n].numpy(), ref, atol=2e-6)


def test_path_sum_reference_catches_a_wrong_stride():
    """The reference is sensitive to geometry: VBP with a mis-declared stride disagrees with it."""
    torch.manual_seed(0)
    spec, hw = CASES[0][0], CASES[0][1]
    net = tiny_net(spec)
    net(torch.zeros(1, 1, *hw))
    randomize_bn(net)
    x = torch.rand(1, 1, *hw)
    e = vbp_rt.explain(net, x, "vbp")
    chain = find_torch_chain(net, (1, *hw))
    averages = [a[0].double().numpy() for a in e.layers["averages"]]
    op = chain.links[1].ops[0]
    chain.links[1].ops = (SpatialOp(op.kind, op.kernel, (1, 1), op.padding, op.dilation, op.in_hw, op.out_hw),)
    wrong = normalize(path_sum_mask(averages, chain))
    assert np.abs(e.mask[0].numpy() - wrong).max() > 0.05


def test_netsvf_chain_matches_table1_at_height_125():
    """The paper's Table 1 sizes come out of NetSVF/NetHVF at 125 input rows."""
    svf = find_torch_chain(vbp_rt.build("netsvf", height=125), (1, 125, 640))
    assert [l.shape for l in svf.links] == [
        (32, 123, 638), (32, 61, 318), (48, 59, 316), (48, 29, 157), (64, 27, 155),
        (64, 13, 77), (96, 11, 75), (96, 5, 37), (128, 3, 35), (128, 1, 17)]
    hvf = find_torch_chain(vbp_rt.build("nethvf", height=125), (1, 125, 351))
    assert [l.shape[1:] for l in hvf.links] == [
        (123, 349), (61, 174), (59, 172), (29, 85), (27, 83), (13, 41), (11, 39), (5, 19), (3, 17), (1, 8)]
    assert all(l.ops[0].kernel == (3, 3) and l.ops[0].stride == ((1, 1) if i % 2 == 0 else (2, 2))
               for i, l in enumerate(svf.links))


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 0, 1), (3, 2, 0, 1), (3, 2, 1, 1), (5, 3, 2, 1), (3, 2, 0, 2),
                                     (2, 2, 0, 1), (4, 3, 1, 1), (1, 2, 0, 1)])
@pytest.mark.parametrize("size", [7, 8, 13, 16])
def test_ones_upscale_equals_conv_transpose_on_odd_sizes(k, s, p, d, size):
    """Output-padding arithmetic: the upscale lands exactly on the shallower size, for every stride."""
    conv = nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d)
    x = torch.zeros(1, 1, size, size + 3)
    y = conv(x)
    if min(y.shape[-2:]) < 1:
        pytest.skip("kernel larger than input")
    op = SpatialOp("conv", (k, k), (s, s), (p, p, p, p), (d, d), tuple(x.shape[-2:]), tuple(y.shape[-2:]))
    m = torch.rand(2, *y.shape[-2:])
    opad = output_padding(op)
    assert all(0 <= o < max(s, d) for o in opad)
    ref = F.conv_transpose2d(m[:, None], torch.ones(1, 1, k, k), stride=s, padding=p, dilation=d,
                             output_padding=opad)[:, 0]
    got = ones_transposed_conv(m, op)
    assert got.shape == (2, *x.shape[-2:])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_pooling_upscale_lands_on_the_pre_pool_size():
    for k, s, size in [(2, 2, 11), (3, 2, 12), (3, 3, 10), (2, 1, 9)]:
        pool = nn.MaxPool2d(k, s)
        x = torch.zeros(1, 1, size, size + 1)
        y = pool(x)
        op = SpatialOp("pool", (k, k), (s, s), (0, 0, 0, 0), (1, 1), tuple(x.shape[-2:]), tuple(y.shape[-2:]))
        assert ones_transposed_conv(torch.ones(1, *y.shape[-2:]), op).shape == (1, *x.shape[-2:])


def test_vbp_reuses_the_forward_and_exposes_figure_2b():
    torch.manual_seed(1)
    net = randomize_bn(vbp_rt.build("netsvf", height=125, width=128))
    calls = []
    net.features[1].register_forward_hook(lambda *a: calls.append(1))
    x = torch.rand(2, 1, 125, 128)
    e = vbp_rt.explain(net, x, "vbp")  # first call: the chain is found in the same forward
    assert len(calls) == 1, "VBP must not run an extra forward pass"
    e = vbp_rt.explain(net, x, "vbp")
    assert len(calls) == 2, "VBP must not run an extra forward pass"
    with torch.no_grad():
        torch.testing.assert_close(e.prediction, net(x))
    assert len(e.layers["averages"]) == 10 and len(e.layers["intermediate"]) == 11
    assert e.layers["intermediate"][-1].shape == (2, 125, 128)
    assert e.mask.dtype == torch.float32 and e.mask.shape == (2, 125, 128)
    assert float(e.mask.min()) == 0.0 and float(e.mask.max()) == 1.0


def test_constant_mask_is_zero_not_nan():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 1))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.fill_(-1.0)  # every unit dead: the path sum is 0 everywhere
    e = vbp_rt.explain(net, torch.rand(2, 1, 8, 8), "vbp")
    assert torch.equal(e.mask, torch.zeros(2, 8, 8))


def test_vbp_handles_tiny_activations_without_underflow():
    """Ten layers of small averages would underflow float32 without the per-step rescale (denormals
    flushed, as they are in any thread that has run LRP)."""
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    net = vbp_rt.build("netsvf", height=125, width=160).eval()
    x = torch.rand(1, 1, 125, 160)
    big = vbp_rt.explain(net, x, "vbp").mask
    with torch.no_grad():  # layer l's activations shrink by 1e-2**l: the products would reach 1e-110
        convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
        for level, m in enumerate(convs, start=1):
            m.weight.mul_(1e-2)
            m.bias.mul_(1e-2 ** level)
    small = vbp_rt.explain(net, x, "vbp").mask
    assert small.max() == 1.0
    torch.testing.assert_close(small, big, atol=1e-3, rtol=0)

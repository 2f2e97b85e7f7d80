"""The faithfulness metrics on cases whose answers are known."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import randomize_bn
from vbp_rt.evaluation import metrics as ev
from vbp_rt.models import NetConfig, build


def lane_and_distractor(h=20, w=30):
    lane = np.zeros((h, w), np.uint8)
    lane[:, 5:8] = 1
    lane[:, 20:22] = 1
    distractor = np.zeros((h, w), np.uint8)
    distractor[2:6, 10:16] = 1
    return lane, distractor


def test_pointing_and_auc_of_the_ground_truth_mask_itself():
    lane, distractor = lane_and_distractor()
    mask = lane.astype(np.float32)
    assert ev.mass_share(mask, lane)[0] == 1.0
    assert ev.mass_share(mask, distractor)[0] == 0.0
    assert ev.roc_auc(mask, lane) == 1.0
    assert ev.roc_auc(1 - mask, lane) == 0.0
    uniform = np.ones_like(mask)
    assert ev.mass_share(uniform, lane)[0] == pytest.approx(ev.area_share(lane)[0]) == pytest.approx(5 / 30)
    assert ev.roc_auc(uniform, lane) == 0.5  # all ties: chance
    assert np.isnan(ev.mass_share(np.zeros_like(mask), lane)[0])
    assert np.isnan(ev.roc_auc(mask, np.zeros_like(lane)))


def test_roc_auc_and_spearman_agree_with_reference_implementations():
    metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=500).astype(float)  # many ties
    labels = rng.random(500) < 0.3
    assert ev.roc_auc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores))
    other = scores + rng.normal(size=500)
    assert ev.spearman(scores, other) == pytest.approx(stats.spearmanr(scores, other).statistic)
    np.testing.assert_allclose(ev.average_ranks(scores), stats.rankdata(scores))


def test_correlations():
    rng = np.random.default_rng(1)
    a = rng.random((6, 7))
    assert ev.spearman(a, np.exp(3 * a)) == pytest.approx(1.0)
    assert ev.pearson(a, -2 * a + 1) == pytest.approx(-1.0)
    assert np.isnan(ev.pearson(a, np.ones_like(a)))
    np.testing.assert_allclose(ev.consecutive_correlation(np.stack([a, a]), np.stack([a, 2 * a])), [1.0, 1.0])


def test_region_order_and_perturbed_sequence():
    rel = np.zeros((5, 7))
    rel[4, 6] = 5.0  # partial region at the bottom-right corner (grid 2 x 3 of 3x3 regions)
    rel[0, 3] = 2.0
    rel[1, 1] = -1.0
    order = ev.region_order(rel, 3)
    assert list(order[:2]) == [5, 1] and order[-1] == 0
    image = np.zeros((5, 7), np.float32)
    noise = np.ones((5, 7), np.float32)
    seq = ev.perturbed_sequence(image, order, 2, 3, noise)
    assert seq.shape == (3, 5, 7)
    assert seq[0].sum() == 0 and seq[1].sum() == 2 * 1 and seq[2].sum() == 2 + 9
    assert seq[1][3:, 6].all() and seq[2][:3, 3:6].all()


def test_aopc_of_the_exact_ordering_on_a_linear_model_beats_random_and_reverse():
    rng = np.random.default_rng(2)
    w = rng.random((12, 18))

    def predict(batch):
        return (batch * w).sum(axis=(1, 2))

    x = rng.random((12, 18))
    relevance = w * x  # exact contributions of a linear model
    noise = np.zeros_like(x)  # removal
    best = ev.aopc(ev.perturbation_curve(predict, x, relevance, 10, 3, noise))
    worst = ev.aopc(ev.perturbation_curve(predict, x, -relevance, 10, 3, noise))
    randoms = [ev.aopc(ev.perturbation_curve(predict, x, rng.random(x.shape), 10, 3, noise)) for _ in range(20)]
    assert best > max(randoms) and np.mean(randoms) > worst
    curve = ev.perturbation_curve(predict, x, relevance, 10, 3, noise)
    assert curve[0] == 0 and np.all(np.diff(curve) > 0)


def test_keep_top_keeps_exactly_the_most_relevant_pixels():
    image = np.arange(1, 21, dtype=np.float32).reshape(4, 5)
    mask = np.zeros((4, 5))
    mask[0, :3] = [0.9, 0.8, 0.7]
    mask[3, 4] = 1.0
    kept = ev.keep_top(image, mask, 0.2)
    assert (kept != 0).sum() == 4
    assert kept[3, 4] == 20 and kept[0, 0] == 1 and kept[0, 2] == 3 and kept[1, 0] == 0
    with pytest.raises(ValueError):
        ev.keep_top(image, mask, 0)


def test_topk_agreement():
    a = np.array([[9, 8, 7, 6, 5, 0, 0, 0], [9, 8, 7, 6, 5, 0, 0, 0]], float)
    b = np.array([[9, 8, 7, 6, 5, 0, 0, 0], [0, 0, 0, 6, 5, 9, 8, 7]], float)
    np.testing.assert_allclose(ev.topk_agreement(a, b, 5), [1.0, 0.4])


def test_cascading_randomization_goes_top_down_and_leaves_the_model_alone():
    torch.manual_seed(0)
    net = randomize_bn(build(NetConfig(arch="tiny", height=12, width=16, channels=(4, 6, 8), fc=(10,))))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    labels, changed = [], []
    for label, rand in ev.cascading_randomization(net, seed=1):
        labels.append(label)
        state = rand.state_dict()
        changed.append({k for k in before if k.endswith("weight") and not torch.equal(state[k], before[k])})
    assert labels == ["head", "features.7", "features.4", "features.1"]
    assert changed[0] == {"head.1.weight", "head.3.weight"}
    assert changed[1] == changed[0] | {"features.6.weight", "features.7.weight"}
    assert all(k in changed[-1] for k in before if k.endswith("weight"))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_edge_map_and_bias_ratio():
    img = np.zeros((9, 9), np.uint8)
    img[:, 5:] = 200
    e = ev.edge_map(img)
    assert set(np.flatnonzero(e.max(axis=0))) == {4, 5} and e[:, 0].max() == 0
    r = ev.bias_score_ratio(np.array([1.0, 2.0, 3.0]), np.array([2.0, -4.0, 0.0]))
    np.testing.assert_allclose(r[:2], [0.5, -0.5])
    assert np.isnan(r[2])

"""Synthetic signs (data.signs), the shipped sign classifier, and the keep-top-30% top-5 agreement section."""
from __future__ import annotations

import csv
import math

import cv2
import numpy as np
import pytest
import torch
from vbp_rt.data import signs
from vbp_rt.data.preprocess import View
from vbp_rt.data.store import StoreWriter

import vbp_rt
from vbp_rt import cli
from vbp_rt.evaluation.metrics import keep_top, topk_agreement
from vbp_rt.evaluation.signs import ranked, sign_order, sign_table
from vbp_rt.model_config import shipped_models
from vbp_rt.models import NetConfig, build, load_model, save_checkpoint

ACCURACY_SEED = 4  # not used for training (0), validation (1) or vbp eval (2)


def test_generator_is_deterministic_per_seed_and_index():
    a, la, ma = signs.generate(3, 12, masks=True)
    b, lb, mb = signs.generate(3, 12, masks=True)
    assert a.shape == (12, 125, 125) and a.dtype == np.uint8 and la.dtype == np.int64 and ma.dtype == bool
    assert np.array_equal(a, b) and np.array_equal(la, lb) and np.array_equal(ma, mb)
    tail, lt = signs.generate(3, 4, start=8)  # image i depends on (seed, i) only
    assert np.array_equal(tail, a[8:]) and np.array_equal(lt, la[8:])
    c, _ = signs.generate(4, 12)
    assert not np.array_equal(a, c)
    area = ma.mean(axis=(1, 2))  # the sign covers 35-90 % of the side, partly outside the frame at most
    assert (area > 0.05).all() and (area < 0.75).all()
    assert a.std() > 20  # not blank


def test_every_class_appears_and_classes_differ():
    labels = signs.labels_for(7, 86)
    assert sorted(labels[:43]) == list(range(43)) and sorted(labels[43:]) == list(range(43))
    assert not np.array_equal(labels[:43], labels[43:])  # a fresh permutation per block
    assert np.array_equal(signs.labels_for(7, 30, start=20), labels[20:50])
    assert len(signs.NAMES) == signs.CLASSES == 43
    gray = []
    for k in range(43):  # the same colour jitter for every class: differences are the design alone
        img, alpha = signs.draw_sign(k, np.random.default_rng(0))
        gray.append(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32) * alpha)
    gray = np.stack(gray)
    d = (np.abs(gray[:, None] - gray[None]) > 60).sum(axis=(2, 3)).astype(float)  # pixels that clearly differ
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 150, f"classes {np.unravel_index(np.argmin(d), d.shape)} look alike"
    # families share shape and colour (30/50/80 differ in ~1% of the canvas): the closest pair is far closer
    # than the typical pair
    assert d.min() < 0.1 * np.median(d[np.isfinite(d)])
    # rendered per-class mean images (4 scenes each) differ too
    images, labels = signs.generate(11, 172)
    means = np.stack([images[labels == k].astype(np.float32).mean(0) for k in range(43)])
    dm = np.abs(means[:, None] - means[None]).mean(axis=(2, 3))
    np.fill_diagonal(dm, np.inf)
    assert dm.min() > 1.0


def test_shipped_sign_net_classifies_fresh_signs():
    assert "sign" in shipped_models()
    net = load_model("sign")
    assert net.config.arch == "sign" and net.config.outputs == 43 and net.config.input_shape == (1, 125, 125)
    images, labels = signs.generate(ACCURACY_SEED, 200)
    with torch.no_grad():
        pred = net(torch.from_numpy(images.astype(np.float32) / 255)[:, None]).argmax(1).numpy()
    acc = (pred == labels).mean()
    assert acc > 0.75, f"accuracy {acc:.3f} on seed {ACCURACY_SEED}"


def test_topk_agreement_by_hand():
    a = np.array([[9, 8, 7, 6, 5, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 0, 1, 0, 0, 0, 0]], np.float32)
    b = np.array([[9, 8, 7, 0, 0, 6, 5, 4],  # top-5 {0,1,2,5,6} vs {0,1,2,3,4}: 3 shared
                  [8, 7, 6, 5, 4, 3, 2, 1],  # reversed: {3..7} vs {0..4}: 3 and 4 shared
                  [0, 0, 0, 1, 0, 0, 0, 0]], np.float32)  # identical
    assert topk_agreement(a, b, 5).tolist() == [0.6, 0.4, 1.0]
    assert topk_agreement(a, b, 1).tolist() == [1.0, 0.0, 1.0]
    other = -a[1:2] + 0.5 * np.arange(8)[::-1]  # top-5 {0..4} again, from other values
    assert topk_agreement(a[1:2], other, 5).tolist() == [0.4]


def test_keep_top_with_random_ties():
    image = np.arange(1, 101, dtype=np.uint8).reshape(10, 10)
    mask = np.zeros((10, 10))
    mask[5, 5], mask[2, 3] = 1.0, 0.5  # two relevant pixels, 98 tied zeros
    kept = [keep_top(image, ranked(mask, np.random.default_rng(s)), 0.1) for s in range(3)]
    for k in kept:
        assert (k > 0).sum() == 10 and k[5, 5] == image[5, 5] and k[2, 3] == image[2, 3]
    assert not np.array_equal(kept[0], kept[1])  # the tied rest is drawn at random, not in raster order
    assert not (kept[0][0] > 0).all()
    sign = np.zeros((9, 9), bool)
    sign[2:7, 2:7] = True
    order = sign_order(sign)
    assert order[4, 4] == order.max() and order[0, 0] == order.min() and (order[sign] > order[~sign].max()).all()


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sign_table_values():
    t = sign_table(load_model("sign"), {"vbp": ("vbp", {}), "gradcam": ("gradcam", {})}, 6)
    names = [r[0] for r in t.rows]
    assert names == ["vbp", "gradcam", "random 30% of pixels (baseline)", "central disc (baseline)",
                     "the sign itself (ground truth)"]
    for row in t.rows:
        agree, se, lo, hi, top1, acc = row[1:7]
        assert 0 <= lo <= agree <= hi <= 1 and se >= 0 and 0 <= top1 <= 1 and 0 <= acc <= 1
        assert round(agree * 5 * 6) == pytest.approx(agree * 5 * 6)  # a mean of multiples of 1/5 over 6 images
    assert 0 <= t.rows[0][7] <= 1 and math.isnan(t.rows[2][7])
    bad = sign_table(load_model("sign"), {"gradcam:layer=9": ("gradcam", {"layer": 9}), "vbp": ("vbp", {})}, 2)
    assert bad.rows[0][0] == "gradcam:layer=9" and math.isnan(bad.rows[0][1]) and not math.isnan(bad.rows[1][1])
    assert "gradcam:layer=9 failed on this model" in bad.note and "out of range" in bad.note
    with pytest.raises(ValueError, match="1x125x125"):
        sign_table(build("sign", width=127), {"vbp": ("vbp", {})}, 2)


def test_eval_quick_has_the_sign_table(tmp_path):
    torch.manual_seed(0)
    steer = tmp_path / "tiny.pt"
    save_checkpoint(steer, build(NetConfig(arch="netsvf", height=24, width=64, channels=(4, 4, 6, 6), fc=(8,))).eval())
    store = tmp_path / "drive.h5"
    lane = np.zeros((4, 24, 64), np.uint8)
    lane[:, :, 20:23] = 1
    with StoreWriter(store, [View("svf", 64, 24, 255, 390)], source="test", ground_truth=True, fps=20.0) as w:
        w.append(images={"svf": (np.random.default_rng(0).integers(0, 60, (4, 24, 64)) + 150 * lane).astype(np.uint8)},
                 angle=np.linspace(-5, 5, 4), speed=np.full(4, 20.0), timestamp=np.arange(4) / 20.0,
                 frame_id=np.arange(4), lane_mask={"svf": lane}, distractor_mask={"svf": np.zeros_like(lane)})
    base = ["eval", "--quick", "--model", str(steer), "--store", str(store)]
    out = tmp_path / "report"
    assert cli.main(base + ["--methods", "vbp,lrp", "--out", str(out)]) == 0
    rows = read_csv(out / "sign_keep_top.csv")
    assert [r["method"] for r in rows] == ["vbp", "lrp", "random 30% of pixels (baseline)", "central disc (baseline)",
                                           "the sign itself (ground truth)"]
    assert all(0 <= float(r["top-5 agreement"]) <= 1 for r in rows)
    report = (out / "report.md").read_text()
    assert "top-5 agreement (Chen et al.)" in report and "sign_images=4" in report
    out2 = tmp_path / "nosign"
    assert cli.main(base + ["--methods", "vbp", "--sign-model", "none", "--out", str(out2)]) == 0
    assert not (out2 / "sign_keep_top.csv").exists() and "Sign classifier" not in (out2 / "report.md").read_text()
    assert cli.main(base + ["--sign-images", "0", "--out", str(out2)]) == 2
    assert cli.main(base + ["--sign-model", str(tmp_path / "missing.pt"), "--out", str(out2)]) == 2
    assert set(vbp_rt.available_methods()) >= {"vbp", "lrp", "gradcam", "saliency", "guided"}

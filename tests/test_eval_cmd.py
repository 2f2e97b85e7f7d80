"""`vbp eval --quick` end to end on tiny steering nets, and its errors."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from vbp_rt.data.preprocess import View
from vbp_rt.data.store import StoreWriter

import vbp_rt
from vbp_rt import cli
from vbp_rt.evaluation.cli import load_frames
from vbp_rt.methods import parse_methods
from vbp_rt.models import NetConfig, build, save_checkpoint

SMALL = View("svf", 64, 24, 255, 390)


def tiny_net(tmp, name, height=24, width=64, **extra):
    torch.manual_seed(0)
    path = tmp / name
    save_checkpoint(path, build(NetConfig(arch="netsvf", height=height, width=width, channels=(4, 4, 6, 6), fc=(8,),
                                          view="svf", **extra)).eval())
    return str(path)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 64x24 drive: bright lane stripes (ground truth) and a bright block (distractor) on noise."""
    d = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    n = 6
    lane = np.zeros((n, 24, 64), np.uint8)
    dist = np.zeros((n, 24, 64), np.uint8)
    for i in range(n):
        lane[i, :, 10 + i:13 + i] = 1
        lane[i, :, 50 - i:52 - i] = 1
        dist[i, 2:8, 25:38] = 1
    images = (rng.integers(20, 60, (n, 24, 64)) + 180 * lane + 120 * dist).astype(np.uint8)
    with StoreWriter(d / "drive.h5", [SMALL], source="test", ground_truth=True, fps=20.0) as w:
        w.append(images={"svf": images}, angle=np.linspace(-5, 5, n), speed=np.full(n, 20.0),
                 timestamp=np.arange(n) / 20.0, frame_id=np.arange(n), lane_mask={"svf": lane},
                 distractor_mask={"svf": dist})
    return d


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_quick_report_has_every_table_method_and_plot(small):
    out = small / "report"
    code = cli.main(["eval", "--quick", "--model", tiny_net(small, "tiny.pt"), "--store", str(small / "drive.h5"),
                     "--nobn-model", tiny_net(small, "nobn.pt", batchnorm=False), "--out", str(out)])
    assert code == 0
    report = (out / "report.md").read_text()
    for title in ("Lane pointing", "Region perturbation", "Keep the top 30%", "Temporal stability",
                  "Sanity checks", "Bias/score ratio"):
        assert title in report
    methods = vbp_rt.available_methods()
    pointing = read_csv(out / "pointing.csv")
    assert [r["method"] for r in pointing] == methods + ["edge map (baseline)", "uniform (chance)"]
    values = [float(r[c]) for r in pointing for c in ("mass on lane", "lane ROC-AUC")]
    assert all(0 <= v <= 1 for v in values if not math.isnan(v))
    frames = load_frames(small / "drive.h5", "svf", 3)
    assert float(pointing[-1]["mass on lane"]) == pytest.approx(frames.lane.astype(bool).mean(), abs=1e-5)
    assert float(pointing[-2]["lane ROC-AUC"]) > 0.5  # the stripes' edges are lane pixels
    assert [r["method"] for r in read_csv(out / "perturbation.csv")] == methods + ["edge map (baseline)",
                                                                                   "random order"]
    sanity = read_csv(out / "sanity.csv")
    assert [r["method"] for r in sanity] == methods and {r["passes: head"] for r in sanity} | {r["passes: all"] for r in sanity} <= {"yes", "no"}
    bias = read_csv(out / "bias_ratio.csv")
    assert [r["layer"] for r in bias] == ["input", "conv1", "conv2", "conv3", "conv4"] and len(bias[0]) == 3
    for name in ("examples.png", "perturbation.png", "sanity.png", "bias_ratio.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_drive_is_generated_with_seed_3(tmp_path):
    out = tmp_path / "report"
    model = tiny_net(tmp_path, "tiny.pt", height=135, width=640)
    assert cli.main(["eval", "--quick", "--model", model, "--methods", "vbp,lrp:eps=0.5", "--drive-frames", "3",
                     "--out", str(out)]) == 0
    assert "generated with seed 3, 3 frames" in (out / "report.md").read_text()
    assert not list(out.glob("*.h5"))  # the generated drive is not left behind
    assert float(read_csv(out / "pointing.csv")[-1]["mass on lane"]) > 0  # it has lane ground truth
    assert [r["method"] for r in read_csv(out / "temporal.csv")] == ["vbp", "lrp:eps=0.5",
                                                             "input images (reference)"]


def test_errors_name_the_problem(small, tmp_path):
    model = tiny_net(tmp_path, "tiny.pt")
    store = tmp_path / "hvf_only.h5"
    with StoreWriter(store, [View("hvf", 64, 24, 190, 436)], source="test") as w:
        w.append(images={"hvf": np.zeros((2, 24, 64), np.uint8)}, angle=np.zeros(2), speed=np.zeros(2),
                 timestamp=np.arange(2.0), frame_id=np.arange(2))
    with pytest.raises(ValueError, match="no view 'svf'"):
        load_frames(store, "svf", 3)
    for bad in (["--store", str(store)], ["--frames", "0"], ["--methods", "vbp,nope"], ["--keep", "1.5"]):
        assert cli.main(["eval", "--model", model, "--out", str(tmp_path), *bad]) == 2
    sign = tmp_path / "sign.pt"
    save_checkpoint(sign, build(NetConfig(arch="sign", height=24, width=64, channels=(4, 4), fc=(8,), outputs=3,
                                          view="svf")).eval())
    assert cli.main(["eval", "--model", str(sign), "--store", str(small / "drive.h5"), "--out", str(tmp_path)]) == 2


def test_method_specs():
    assert parse_methods("vbp, lrp:eps=0.01,gradcam:layer=-2,affine:layer=features.5") == {
        "vbp": ("vbp", {}), "lrp:eps=0.01": ("lrp", {"eps": 0.01}), "gradcam:layer=-2": ("gradcam", {"layer": -2}),
        "affine:layer=features.5": ("affine", {"layer": "features.5"})}
    for bad in ("lrp:eps", "nope", " , "):
        with pytest.raises(ValueError):
            parse_methods(bad)

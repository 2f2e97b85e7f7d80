"""vbp train-eval / trainer.steering_eval: per-drive steering metrics, worst stretch, table, plot, seeds."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.trainer_helpers import HEIGHT, make_store
from vbp_rt.cli import main
from vbp_rt.data.store import StoreReader
from vbp_rt.models import build, save_checkpoint
from vbp_rt.trainer import drives, steering_eval


def test_metrics_of_a_biased_predictor():
    label = np.sin(np.arange(500) / 30) * 10
    m = steering_eval.metrics(label + 2.5, label)
    assert m["bias"] == pytest.approx(2.5) and m["rmse"] == pytest.approx(2.5)
    assert m["corr"] == pytest.approx(1.0)
    assert m["zero_rmse"] == pytest.approx(np.sqrt(np.mean(label ** 2)))
    assert m["ratio"] == pytest.approx(2.5 / m["zero_rmse"])
    assert m["mean_pred"] - m["mean_label"] == pytest.approx(2.5)


def test_worst_stretch_is_located():
    label = np.full(1000, 4.0)
    pred = label.copy()
    pred[530:630] += 6.0  # the worst 100 frames
    pred[100:150] += 7.0  # higher error but only 50 frames: its 100-frame windows score less
    w = steering_eval.worst_stretch(pred, label, 100)
    assert (w["start"], w["stop"]) == (530, 630)
    assert w["rmse"] == pytest.approx(6.0) and w["zero_rmse"] == pytest.approx(4.0)
    # against a brute-force search
    brute = max(range(901), key=lambda i: np.mean((pred[i:i + 100] - label[i:i + 100]) ** 2))
    assert brute == w["start"]


def test_worst_stretch_of_a_short_drive_is_the_whole_drive():
    w = steering_eval.worst_stretch(np.ones(30), np.zeros(30), 100)
    assert (w["start"], w["stop"], w["rmse"]) == (0, 30, 1.0)


def test_bias_by_label_bins_each_frame_once_with_closed_lower_edges():
    label = np.array([-95.0, -60, -55, -30, -10, 0, 9.99, 10, 30, 55, 60, 95])
    err = np.arange(1.0, 13.0)  # frame i is off by i + 1 degrees
    rows = steering_eval.bias_by_label({"series": {"a": (label + err, label)}}, edges=(10, 55))
    assert [(r["lo"], r["hi"]) for r in rows] == [(None, -55), (-55, -10), (-10, 10), (10, 55), (55, None)]
    # by hand: < -55: -95, -60 | -55 to -10: -55, -30 | -10 to 10: -10, 0, 9.99 | 10 to 55: 10, 30 | >= 55: 55, 60, 95
    assert [r["frames"] for r in rows] == [2, 2, 3, 2, 3]
    assert [r["bias"] for r in rows] == pytest.approx([1.5, 3.5, 6.0, 8.5, 11.0])
    assert rows[4]["drives"] == {"a": {"frames": 3, "bias": pytest.approx(11.0)}}


def test_bias_by_label_pools_drives_and_lists_each_only_where_it_has_frames():
    a = (np.array([-70.0, 0.0]) + [4.0, 0.0], np.array([-70.0, 0.0]))
    b = (np.array([0.0, 0.0, 1.0]) - 2.0, np.array([0.0, 0.0, 1.0]))
    rows = steering_eval.bias_by_label({"series": {"a": a, "b": b}})
    sharp_left, straight = rows[0], rows[4]
    assert sharp_left["frames"] == 1 and sharp_left["drives"] == {"a": {"frames": 1, "bias": pytest.approx(4.0)}}
    assert straight["frames"] == 4 and straight["bias"] == pytest.approx((0.0 - 2 - 2 - 2) / 4)
    assert [r["bias"] for r in rows if not r["frames"]] == [None] * 7


@given(st.lists(st.tuples(st.floats(-120, 120, allow_subnormal=False), st.floats(-30, 30, allow_subnormal=False)),
                min_size=1, max_size=60))
def test_bias_by_label_partitions_the_frames(pairs):
    label, err = np.array(pairs).T
    rows = steering_eval.bias_by_label({"series": {"d": (label + err, label)}})
    assert sum(r["frames"] for r in rows) == len(label)
    pooled = sum(r["bias"] * r["frames"] for r in rows if r["frames"]) / len(label)
    assert pooled == pytest.approx(np.mean((label + err) - label), abs=1e-9)


@pytest.mark.parametrize("edges", [(), (10, 10), (25, 10), (0, 10), (-5, 10), (10, float("inf"))])
def test_label_bins_refuse_bad_edges(edges):
    with pytest.raises(ValueError, match="positive and increasing"):
        steering_eval.label_bins(edges)


class Biased(torch.nn.Module):
    """Reads the angle back from the bar position of trainer_helpers.make_store, times `gain`, plus a fixed bias."""

    def __init__(self, config, bias, gain=1.0):
        super().__init__()
        self.config, self.bias, self.gain = config, bias, gain

    def forward(self, x):
        w = x.shape[-1]
        col = (x[:, 0, 0] > 200 / 255).float()
        centre = (col * torch.arange(w)).sum(1) / col.sum(1)
        return ((centre - w / 2 + 0.5) * 50 / w * self.gain + self.bias)[:, None]


def test_evaluate_finds_a_known_bias_per_drive(tmp_path):
    paths = [make_store(tmp_path / f"d{i}.h5", frames=50, seed=i) for i in range(3)]
    model = Biased(build("nethvf", height=HEIGHT, channels=(4, 4), strides=(), fc=(8,)).config, bias=-1.75)
    result = steering_eval.evaluate(model, [str(p) for p in paths], batch_size=16)
    assert [r["drive"] for r in result["drives"]] == ["d0", "d1", "d2"]
    for row, path in zip(result["drives"], paths):
        with StoreReader(path) as r:
            angle = r.angle[:].astype(np.float64)
        assert row["bias"] == pytest.approx(-1.75, abs=0.35)  # the bar is 16 px wide: +-0.07 deg per frame
        assert row["zero_rmse"] == pytest.approx(np.sqrt(np.mean(angle ** 2)))
        assert row["corr"] > 0.99
    assert result["all"]["frames"] == 150 and result["all"]["max_abs_bias"] == pytest.approx(1.75, abs=0.35)
    assert result["all"]["median_ratio"] == pytest.approx(np.median([r["ratio"] for r in result["drives"]]))
    assert result["all"]["drive_bias_sd"] < 0.35  # one bias on every drive: no spread beyond the bar's steps


def test_evaluate_reports_the_spread_of_bias_between_drives(tmp_path):
    """A gain of 3 makes each drive's bias 2x its mean label - 1.75: the spread is known from the labels alone."""
    paths = [make_store(tmp_path / f"d{i}.h5", frames=50, seed=10 + i) for i in range(4)]
    model = Biased(build("nethvf", height=HEIGHT, channels=(4, 4), strides=(), fc=(8,)).config, bias=-1.75, gain=3.0)
    result = steering_eval.evaluate(model, [str(p) for p in paths], batch_size=16)
    expected = []
    for path in paths:
        with StoreReader(path) as r:
            expected.append(2 * r.angle[:].astype(np.float64).mean() - 1.75)
    assert np.std(expected, ddof=1) > 1.0  # the drives do differ
    # the bar steps shift every drive alike (about -0.2 deg), so the spread matches closely (ddof=0 is 0.4 off)
    assert result["all"]["drive_bias_sd"] == pytest.approx(np.std(expected, ddof=1), abs=0.1)
    assert result["all"]["drive_bias_mean"] == pytest.approx(np.mean(expected), abs=0.35)
    assert "bias per drive" in steering_eval.markdown(result)
    one = steering_eval.evaluate(model, [str(paths[0])], batch_size=16)
    assert one["all"]["drive_bias_sd"] is None and "bias per drive" not in steering_eval.markdown(one)


def test_mirror_separates_a_fixed_offset_from_a_misreading(tmp_path):
    """Biased reads the bar exactly left-right (gain 3 misreads it, in a way that turns with the mirror) and adds
    a fixed -1.75: mirrored, the offset changes sign; the mean of both readings is the offset-free reading."""
    paths = [make_store(tmp_path / f"d{i}.h5", frames=50, seed=10 + i) for i in range(3)]
    config = build("nethvf", height=HEIGHT, channels=(4, 4), strides=(), fc=(8,)).config
    result = steering_eval.evaluate(Biased(config, bias=-1.75, gain=3.0), [str(p) for p in paths], batch_size=16,
                                    mirror=True)
    plain = steering_eval.evaluate(Biased(config, bias=0.0, gain=3.0), [str(p) for p in paths], batch_size=16)
    assert plain["all"]["drive_bias_sd"] > 1.0  # the gain's misreading differs between drives; the mean keeps it
    for row, ref in zip(result["drives"], plain["drives"]):
        assert row["mirror_mean_bias"] == pytest.approx(ref["bias"], abs=1e-5)
        assert row["mirror_bias"] == pytest.approx(ref["bias"] + 1.75, abs=1e-5)
        assert row["bias"] == pytest.approx(ref["bias"] - 1.75, abs=1e-5)
    a = result["all"]
    assert a["mirror_mean_bias"] == pytest.approx(plain["all"]["bias"], abs=1e-5)
    assert a["mirror_mean_bias_sd"] == pytest.approx(plain["all"]["drive_bias_sd"], abs=1e-5)
    assert a["mirror_bias_max_abs"] == pytest.approx(max(abs(r["bias"] + 1.75) for r in plain["drives"]), abs=1e-5)
    md = steering_eval.markdown(result)
    assert "mirror-mean bias (deg)" in md and "Read mirrored left-right" in md
    assert f"{result['drives'][0]['mirror_bias']:+.2f}" in md.split("\n")[2]
    csv_rows = list(csv.DictReader(io.StringIO(steering_eval.csv_text(result))))
    assert float(csv_rows[-1]["mirror_mean_bias"]) == pytest.approx(a["mirror_mean_bias"], abs=1e-4)
    assert "mirror" not in steering_eval.markdown(plain) and "mirror" not in steering_eval.csv_text(plain)


def test_train_eval_command_writes_table_csv_plot_and_refuses_to_overwrite(tmp_path, capsys):
    paths = [make_store(tmp_path / f"d{i}.h5", frames=40, seed=i) for i in range(2)]
    model = build("nethvf", height=HEIGHT, channels=(4, 4), strides=(), fc=(8,))
    save_checkpoint(tmp_path / "m.pt", model)
    out = tmp_path / "eval"
    args = ["train-eval", str(tmp_path / "m.pt"), *map(str, paths), "--out", str(out), "--window", "10"]
    assert main(args) == 0
    md = (out / "steering.md").read_text()
    assert "| d0 |" in md and "| d1 |" in md and "| all |" in md
    rows = list(csv.DictReader(io.StringIO((out / "steering.csv").read_text())))
    assert [r["drive"] for r in rows] == ["d0", "d1", "all"]
    saved = json.loads((out / "steering.json").read_text())
    assert float(rows[0]["rmse"]) == pytest.approx(saved["drives"][0]["rmse"], rel=1e-5)
    frames = list(csv.DictReader(io.StringIO((out / "steering_frames.csv").read_text())))
    assert len(frames) == 80 and frames[40]["drive"] == "d1" and frames[40]["frame"] == "0"
    with StoreReader(paths[1]) as r:
        assert float(frames[40]["label"]) == pytest.approx(float(r.angle[0]), abs=1e-4)
    assert (out / "steering.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_label = saved["by_label"]
    assert sum(b["frames"] for b in by_label) == 80 and by_label[0]["lo"] is None and by_label[-1]["hi"] is None
    labels = np.array([float(f["label"]) for f in frames])
    errors = np.array([float(f["prediction"]) for f in frames]) - labels
    for b in by_label:
        lo, hi = (-np.inf if b["lo"] is None else b["lo"]), (np.inf if b["hi"] is None else b["hi"])
        m = (labels >= lo) & (labels < hi)
        assert b["frames"] == m.sum()
        if m.any():  # the table agrees with the frames file, to its 4 decimals
            assert b["bias"] == pytest.approx(errors[m].mean(), abs=1e-3)
            assert f"{b['bias']:+.2f} ({b['frames']})" in md
    before = (out / "steering.md").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err and (out / "steering.md").read_bytes() == before
    assert main(args + ["--force"]) == 0
    assert main(args + ["--force", "--mirror"]) == 0
    rows = list(csv.DictReader(io.StringIO((out / "steering.csv").read_text())))
    saved = json.loads((out / "steering.json").read_text())
    assert float(rows[0]["mirror_bias"]) == pytest.approx(saved["drives"][0]["mirror_bias"], abs=1e-4)
    assert "mirror_mean_bias_sd" in saved["all"] and "Read mirrored" in (out / "steering.md").read_text()


def test_train_eval_bad_inputs(tmp_path, capsys):
    assert main(["train-eval", "netsvf", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.h5 does not exist" in capsys.readouterr().err
    assert main(["train-eval", "netsvf", "--out", str(tmp_path / "o")]) == 2
    assert "at least one DRIVE or --seeds" in capsys.readouterr().err
    assert main(["train-eval", "netsvf", "--seeds", "3", "--label-bins", "10,x", "--out", str(tmp_path / "o")]) == 2
    assert "--label-bins takes degrees" in capsys.readouterr().err
    assert main(["train-eval", "netsvf", "--seeds", "3", "--label-bins", "40,10", "--out", str(tmp_path / "o")]) == 2
    assert "positive and increasing" in capsys.readouterr().err
    assert main(["train-eval", "netsvf", "--seeds", "x", "--out", str(tmp_path / "o")]) == 2
    assert "seeds like" in capsys.readouterr().err
    make_store(tmp_path / "h.h5", frames=10)  # hvf only
    assert main(["train-eval", "netsvf", str(tmp_path / "h.h5"), "--out", str(tmp_path / "o")]) == 2
    assert "no view 'svf'" in capsys.readouterr().err


def test_synthetic_drives_from_seeds_are_written_once(tmp_path):
    first = drives.resolve(["5"], 6, tmp_path, progress=False)
    assert first == [str(tmp_path / "synth_s5_f6.h5")]
    stamp = (tmp_path / "synth_s5_f6.h5").stat().st_mtime_ns
    assert drives.resolve(["5"], 6, tmp_path, progress=False) == first
    assert (tmp_path / "synth_s5_f6.h5").stat().st_mtime_ns == stamp
    with StoreReader(first[0]) as r:
        assert len(r) == 6 and r.attrs["preprocess"]["options"]["seed"] == 5

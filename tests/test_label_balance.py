"""`vbp train --label-balance`: loss weights from the training labels' |angle| histogram."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vbp_rt.trainer.balance import CAP, LabelBalance
from vbp_rt.trainer.train import FrameDataset, TrainConfig, check_store, train

from vbp_rt.cli import main

from .trainer_helpers import HEIGHT, TINY_NET, make_store, train_args


def test_weights_are_the_inverse_share_of_the_bin_to_the_power_alpha():
    # 80 frames in [0, 5) deg, 20 in [10, 15) deg (on both sides): shares 0.8 and 0.2
    angles = np.r_[np.full(40, 1.0), np.full(40, -4.9), np.full(10, 12.0), np.full(10, -14.0)]
    full = LabelBalance(angles, 1.0)
    # raw 1/0.8 = 1.25 and 1/0.2 = 5, mean over the frames 2: weights 0.625 and 2.5
    w = full(torch.tensor([0.5, -3.0, 11.0, -12.5], dtype=torch.float32))
    assert torch.allclose(w, torch.tensor([0.625, 0.625, 2.5, 2.5]))
    half = LabelBalance(angles, 0.5)(torch.tensor([2.0, 13.0]))
    assert half[1] / half[0] == pytest.approx(2.0)  # sqrt(0.8 / 0.2)
    assert torch.equal(LabelBalance(angles, 0.0)(torch.tensor([2.0, 13.0, 80.0])), torch.ones(3))


def test_a_label_beyond_the_training_range_takes_the_last_bin():
    angles = np.r_[np.zeros(9), 22.0]
    w = LabelBalance(angles, 0.5)
    assert w(torch.tensor([70.0]))[0] == w(torch.tensor([22.0]))[0] > w(torch.tensor([0.0]))[0]


def test_a_lone_frame_is_capped():
    angles = np.r_[np.zeros(9999), 90.0]
    w = LabelBalance(angles, 1.0)(torch.tensor([0.0, 90.0]))
    assert w[1] == CAP and w[0] < 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-120, 120, width=32, allow_subnormal=False), min_size=1, max_size=300),
       st.floats(0, 1, allow_subnormal=False))
def test_weights_have_mean_one_on_the_training_labels_unless_capped(labels, alpha):
    angles = np.asarray(labels, np.float32)
    balance = LabelBalance(angles, alpha)
    w = balance(torch.from_numpy(angles)).double()
    assert torch.all(w > 0) and torch.all(w <= CAP)
    assert torch.equal(w, balance(torch.from_numpy(-angles)).double())  # mirrored frames weigh alike
    if w.max() < CAP:
        assert float(w.mean()) == pytest.approx(1.0, rel=1e-5)
    else:
        assert float(w.mean()) <= 1.0 + 1e-6
    # rarer bins never weigh less than commoner ones
    bins = np.floor(np.abs(angles) / 5).astype(int)
    counts = np.bincount(bins)[bins]
    order = np.argsort(counts, kind="stable")
    assert np.all(np.diff(w.numpy()[order]) <= 1e-6)


def _recording_weights(monkeypatch) -> list:
    """(labels, weights) of every batch the trainer weighs."""
    from vbp_rt.trainer import balance as balance_module
    seen = []
    original = balance_module.LabelBalance.__call__

    def record(self, angles):
        w = original(self, angles)
        seen.append((angles.clone(), w.clone()))
        return w
    monkeypatch.setattr(balance_module.LabelBalance, "__call__", record)
    return seen


def test_training_weighs_each_frame_by_its_bin(tmp_path, monkeypatch):
    store = make_store(tmp_path / "drive.h5", frames=60)
    seen = _recording_weights(monkeypatch)
    opts = dict(epochs=1, batch_size=4, lr=1e-3, workers=0, probes=2, height=HEIGHT, net=TINY_NET, snapshots=())
    train(TrainConfig(store=str(store), arch="nethvf", out=str(tmp_path / "w"), label_balance=0.5, flip=0.5, **opts))
    monkeypatch.undo()
    assert len(seen) == 13  # every step of the epoch, on its (mirrored) labels
    data = FrameDataset([str(store)], "hvf")
    train_angles = data.angles(check_store(str(store), "train", "hvf", HEIGHT, 351, 4)).astype(np.float32)
    reference = LabelBalance(train_angles, 0.5)
    for angles, w in seen:
        assert torch.equal(w, reference(angles))
    weighted = [w for _, w in seen]
    assert not all(torch.allclose(w, torch.ones_like(w)) for w in weighted)

    # the weighted run ends elsewhere than the plain one from the same start
    train(TrainConfig(store=str(store), arch="nethvf", out=str(tmp_path / "p"), flip=0.5, **opts))
    a = torch.load(tmp_path / "w" / "last.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "p" / "last.pt", weights_only=False)["state_dict"]
    assert any(not torch.allclose(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_cli_option_is_recorded_and_checked(tmp_path, capsys):
    store = make_store(tmp_path / "drive.h5", frames=60)
    out = tmp_path / "run"
    assert main(["train", *train_args(store, out, "--epochs", "1", "--label-balance", "0.5")]) == 0
    assert json.loads((out / "config.json").read_text())["label_balance"] == 0.5
    with pytest.raises(ValueError, match="label-balance"):
        TrainConfig(store=str(store), arch="nethvf", out=str(tmp_path / "x"), label_balance=1.5)
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--label-balance", "0.2"]) != 0
    assert "do not give --label-balance" in capsys.readouterr().err

"""`vbp train` as separate processes: reading the run log while training writes it, SIGKILL then
--resume, and two torchrun processes (gloo) against one process."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from vbp_rt.trainer.runlog import RunLogReader
from vbp_rt.trainer.train import TrainConfig, train

from vbp_rt.models import build, read_checkpoint

from .trainer_helpers import HEIGHT, ROOT, TINY_NET, env, make_store, train_args, vbp


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "drive.h5", frames=120)


def test_kill_mid_epoch_then_resume(store, tmp_path):
    out = tmp_path / "run"
    # a checkpoint after every step, and a wider net so that an epoch takes a while
    args = train_args(store, out, "--epochs", 2, "--checkpoint-minutes", 0, "--snapshots", "0.1,0.5")
    args[args.index("--net") + 1] = '{"channels": [16, 16, 32, 32], "fc": [64]}'
    args[args.index("--lr") + 1] = "1e-4"
    proc = vbp("train", *args)
    seen, deadline = None, time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "runlog.h5").exists():
                with RunLogReader(out / "runlog.h5") as log:  # opened while the trainer writes it
                    while time.monotonic() < deadline and proc.poll() is None:
                        log.refresh()
                        steps, snaps = log.steps()["epoch"], log.snapshots()["epoch"]
                        if len(steps) and len(snaps):  # the 0.1-epoch snapshot is there
                            seen = (len(steps), float(steps[-1]), len(snaps))
                            break
                        time.sleep(0.02)
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"training ended before it could be killed: {proc.communicate()[1][-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert seen is not None and seen[1] < 1, "the reader saw no steps of the first epoch while training ran"
    killed = read_checkpoint(out / "last.pt")  # never a torn file
    assert 0 < killed["position"]["batch"] and killed["position"]["epoch"] == 0
    with RunLogReader(out / "runlog.h5") as log:
        assert len(log.steps()["epoch"]) >= seen[0]

    resumed = vbp("train", "--resume", out)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    assert "resuming" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "last.pt", "runlog.h5"]
    last = read_checkpoint(out / "last.pt")
    assert last["position"]["epoch"] == 2 and last["position"]["batch"] == 0
    steps_per_epoch = (round(120 * 190 / 210)) // 4
    assert last["step"] == 2 * steps_per_epoch
    with RunLogReader(out / "runlog.h5") as log:
        np.testing.assert_allclose(log.metrics()["epoch"], [1, 2])
        steps = log.steps()["epoch"]
        assert len(steps) == 2 * steps_per_epoch and np.all(np.diff(steps) > 0)  # no step logged twice
        np.testing.assert_allclose(log.snapshots()["epoch"], [0.1, 0.5, 1, 2], atol=1 / steps_per_epoch)


def weights_gap(a: dict, b: dict, start: dict) -> float:
    """|a - b| relative to how far training moved the weights from `start`."""
    num = sum(float((a[k].double() - b[k].double()).norm() ** 2) for k in start if k.endswith("weight"))
    den = sum(float((a[k].double() - start[k].double()).norm() ** 2) for k in start if k.endswith("weight"))
    return (num / den) ** 0.5


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_match_one(store, tmp_path):
    """Two gloo processes, each with half of every global batch, average their gradients: the same
    update as one process on the whole batch. The network has no BatchNorm here: on CPU each process
    would normalize with the statistics of its half batch (docs/training.md), which is close but not equal."""
    net = dict(TINY_NET, batchnorm=False)
    args = train_args(store, tmp_path / "two", "--epochs", 1, "--snapshots", "", "--device", "cpu",
                      "--batch-size", 8, "--net", json.dumps(net))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "vbp_rt.cli", "train", *args]
    p = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("best validation RMSE") == 1  # printed by rank 0 only
    two = read_checkpoint(tmp_path / "two" / "last.pt")
    one_cfg = TrainConfig(**dict(two["train_config"], out=str(tmp_path / "one")))
    train(one_cfg)
    one = read_checkpoint(tmp_path / "one" / "last.pt")
    assert two["step"] == one["step"] == (round(120 * 190 / 210)) // 8
    torch.manual_seed(0)  # the trainer's initial weights (--seed 0)
    start = build("nethvf", height=HEIGHT, strides=(), **net).state_dict()
    assert max(float((one["state_dict"][k] - v).abs().max()) for k, v in start.items()) > 1e-3  # it trained
    assert weights_gap(one["state_dict"], two["state_dict"], start) < 1e-4
    for k, v in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][k], v, rtol=1e-4, atol=1e-5)
    assert two["history"][-1]["val_rmse"] == pytest.approx(one["history"][-1]["val_rmse"], rel=1e-4)
    with RunLogReader(tmp_path / "two" / "runlog.h5") as a, RunLogReader(tmp_path / "one" / "runlog.h5") as b:
        np.testing.assert_allclose(a.steps()["loss"], b.steps()["loss"], rtol=1e-3)

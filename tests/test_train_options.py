"""`vbp train --optimizer adam --warmup EPOCHS` and the input offset of a network without BatchNorm."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from vbp_rt.data.store import StoreReader
from vbp_rt.trainer import train as train_module
from vbp_rt.trainer.runlog import RunLogReader
from vbp_rt.trainer.train import TrainConfig, train, warmup_factor, warmup_steps

from vbp_rt.cli import main
from vbp_rt.models import atomic_torch_save, build, load_model, read_checkpoint, save_checkpoint

from .trainer_helpers import HEIGHT, TINY_NET, make_store, train_args

STEPS = 13  # complete batches of 4 in the 54-frame train split of a 60-frame store


def tiny(store, out, **kw) -> TrainConfig:
    opts = dict(epochs=2, batch_size=4, lr=1e-3, workers=0, probes=2, height=HEIGHT, net=TINY_NET, snapshots=())
    opts.update(kw)
    return TrainConfig(store=str(store), arch="nethvf", out=str(out), **opts)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "drive.h5", frames=60)


def test_warmup_schedule():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0 and warmup_factor(0, 1) == 1.0
    assert warmup_steps(0, 67) == 0 and warmup_steps(0.2, 67) == 14 and warmup_steps(0.5, 12) == 6
    assert warmup_steps(1.5, 13) == 20 and warmup_steps(1e-6, 13) == 1


def _recording_optimizer(monkeypatch) -> list:
    """The learning rate of every optimizer step the trainer takes."""
    lrs, make = [], train_module.make_optimizer

    def recording(cfg, params):
        opt = make(cfg, params)
        opt.register_step_pre_hook(lambda o, *_: lrs.append(o.param_groups[0]["lr"]))
        return opt

    monkeypatch.setattr(train_module, "make_optimizer", recording)
    return lrs


def test_training_steps_follow_the_warmup(store, tmp_path, monkeypatch):
    lrs = _recording_optimizer(monkeypatch)
    train(tiny(store, tmp_path / "run", lr=2e-3, warmup=1.5))
    ramp = 20  # 1.5 epochs of 13 steps
    np.testing.assert_allclose(lrs, [2e-3 * min(1, (s + 1) / ramp) for s in range(2 * STEPS)], rtol=1e-12)
    with RunLogReader(tmp_path / "run" / "runlog.h5") as log:  # the rate of each epoch's last step
        np.testing.assert_allclose(log.metrics()["lr"], [2e-3 * 13 / 20, 2e-3])


def test_adam_with_warmup_resumed_equals_an_uninterrupted_run(store, tmp_path, monkeypatch):
    kw = dict(optimizer="adam", warmup=1.5, lr=3e-3)
    train(tiny(store, tmp_path / "straight", **kw))
    lrs = _recording_optimizer(monkeypatch)
    train(tiny(store, tmp_path / "split", epochs=1, **kw))
    train(resume_dir=tmp_path / "split", epochs=2)
    np.testing.assert_allclose(lrs, [3e-3 * min(1, (s + 1) / 20) for s in range(2 * STEPS)], rtol=1e-12)
    a, b = read_checkpoint(tmp_path / "straight" / "last.pt"), read_checkpoint(tmp_path / "split" / "last.pt")
    assert b["train_config"]["optimizer"] == "adam" and b["train_config"]["warmup"] == 1.5
    assert b["position"] == a["position"] and b["step"] == 2 * STEPS
    for k in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][k], a["state_dict"][k], rtol=1e-5, atol=1e-6)
    for k, state in a["optimizer"]["state"].items():  # Adam's moments and step count carried over
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
        assert float(b["optimizer"]["state"][k]["step"]) == 2 * STEPS
        torch.testing.assert_close(b["optimizer"]["state"][k]["exp_avg_sq"], state["exp_avg_sq"], rtol=1e-4, atol=1e-9)
    sgd = read_checkpoint(tmp_path / "straight" / "last.pt")["state_dict"]
    train(tiny(store, tmp_path / "sgd", lr=3e-3, warmup=1.5))
    other = read_checkpoint(tmp_path / "sgd" / "last.pt")["state_dict"]
    assert not torch.allclose(sgd["head.1.weight"], other["head.1.weight"], atol=1e-4)  # Adam really ran


def test_a_run_from_before_the_options_resumes_as_sgd(store, tmp_path):
    out = tmp_path / "old"
    train(tiny(store, out, epochs=1, lr=2e-3))
    ckpt = read_checkpoint(out / "last.pt")
    for key in ("optimizer", "warmup"):  # what a last.pt and config.json written before these options hold
        del ckpt["train_config"][key]
    atomic_torch_save(ckpt, out / "last.pt")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in ("optimizer", "warmup")}))
    result = train(resume_dir=out, epochs=2)
    assert [h["lr"] for h in result["history"]] == [2e-3, 2e-3]
    last = read_checkpoint(out / "last.pt")
    assert last["train_config"]["optimizer"] == "sgd" and last["train_config"]["warmup"] == 0.0
    assert set(next(iter(last["optimizer"]["state"].values()))) == {"momentum_buffer"}


def _exit_code(argv) -> int:
    """`vbp` exit code: argparse's errors exit, the command's ValueErrors return 2."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_cli_options_and_their_errors(store, tmp_path, capsys):
    net = json.dumps({**TINY_NET, "batchnorm": False, "input_offset": 0.5})
    args = train_args(store, tmp_path / "run", "--epochs", "1", "--optimizer", "adam", "--warmup", "0.2",
                      "--snapshots", "")
    args[args.index("--net") + 1] = net
    assert main(["train", *args]) == 0
    last = read_checkpoint(tmp_path / "run" / "last.pt")
    assert last["train_config"]["optimizer"] == "adam" and last["train_config"]["warmup"] == 0.2
    assert last["config"]["input_offset"] == 0.5 and not last["config"]["batchnorm"]
    assert load_model(tmp_path / "run" / "last.pt").config.input_offset == 0.5
    capsys.readouterr()
    for bad, words in ((["--optimizer", "adam", "--momentum", "0.5"], "--momentum is SGD's"),
                       (["--warmup", "-1"], "--warmup is a number of epochs"),
                       (["--optimizer", "rmsprop"], "invalid choice")):
        assert _exit_code(["train", *train_args(store, tmp_path / "bad", *bad)]) == 2
        assert words in capsys.readouterr().err
    for fixed in (["--optimizer", "sgd"], ["--warmup", "1"]):
        assert _exit_code(["train", "--resume", str(tmp_path / "run"), *fixed]) == 2
        assert fixed[0] in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def _small(**kw):
    torch.manual_seed(1)
    return build("netsvf", height=23, width=41, channels=(4, 6, 8), strides=(1, 2, 1), fc=(8,), view="", batchnorm=False, **kw).eval()


def test_input_offset_is_subtracted_before_the_first_convolution():
    centred, plain = _small(input_offset=0.43), _small()
    plain.load_state_dict(centred.state_dict())
    x = torch.rand(3, 1, 23, 41, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(centred(x), plain(x - 0.43), rtol=0, atol=0)
        # independent reference: an unpadded conv of (x - c) is the conv of x with bias - c * sum of the kernel
        first = plain.features[0]
        first.bias -= 0.43 * first.weight.sum(dim=(1, 2, 3))
        torch.testing.assert_close(centred(x), plain(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(centred(x), _small()(x), atol=1e-3)


def test_a_checkpoint_without_the_offset_loads_unchanged(tmp_path):
    net = _small()
    save_checkpoint(tmp_path / "old.pt", net)
    ckpt = read_checkpoint(tmp_path / "old.pt")
    del ckpt["config"]["input_offset"]  # as written before the field existed
    atomic_torch_save(ckpt, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt")
    x = torch.rand(2, 1, 23, 41)
    assert loaded.config.input_offset == 0.0
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


def test_lr_drops_and_kept_epochs(store, tmp_path, monkeypatch, capsys):
    lrs = _recording_optimizer(monkeypatch)
    args = train_args(store, tmp_path / "run", "--epochs", "3", "--lr-drop", "2:1e-4", "--lr-drop", "3:2e-5",
                      "--keep-epochs", "--snapshots", "")
    assert main(["train", *args]) == 0
    assert lrs == [1e-3] * STEPS + [1e-4] * STEPS + [2e-5] * STEPS
    history = read_checkpoint(tmp_path / "run" / "last.pt")["history"]
    assert [h["lr"] for h in history] == [1e-3, 1e-4, 2e-5]
    last = read_checkpoint(tmp_path / "run" / "last.pt")
    for n in (1, 2, 3):
        kept = read_checkpoint(tmp_path / "run" / f"epoch{n}.pt")
        assert kept["epoch"] == n and "optimizer" not in kept
    for k, v in read_checkpoint(tmp_path / "run" / "epoch3.pt")["state_dict"].items():
        torch.testing.assert_close(v, last["state_dict"][k])
    assert not torch.equal(read_checkpoint(tmp_path / "run" / "epoch1.pt")["state_dict"]["head.1.weight"],
                           last["state_dict"]["head.1.weight"])
    capsys.readouterr()
    assert _exit_code(["train", *train_args(store, tmp_path / "bad", "--lr-drop", "two:1e-4")]) == 2
    assert "--lr-drop expects EPOCH:LR" in capsys.readouterr().err
    assert _exit_code(["train", *train_args(store, tmp_path / "bad", "--lr-drop", "0:1e-4")]) == 2
    assert "EPOCH >= 1" in capsys.readouterr().err


def test_frame_step_trains_on_every_nth_frame(store, tmp_path, monkeypatch):
    seen, batches = [], train_module.epoch_batches

    def recording(indices, batch_size, seed, epoch):
        seen.append(np.array(indices))
        return batches(indices, batch_size, seed, epoch)

    monkeypatch.setattr(train_module, "epoch_batches", recording)
    lrs = _recording_optimizer(monkeypatch)
    args = train_args(store, tmp_path / "run", "--epochs", "1", "--frame-step", "3", "--snapshots", "")
    assert main(["train", *args]) == 0
    with StoreReader(store) as r:
        s = r.split("train")
    np.testing.assert_array_equal(seen[0], np.arange(s.start, s.stop, 3))  # 54 frames -> 18
    assert len(lrs) == 18 // 4
    assert json.loads((tmp_path / "run" / "config.json").read_text())["frame_step"] == 3
    with pytest.raises(ValueError, match="frame-step must be positive"):
        TrainConfig(store=str(store), arch="nethvf", out=str(tmp_path / "bad"), frame_step=0)

"""`vbp train`: metrics against an independent evaluation, run log contents, resume, bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from vbp_rt.data.store import StoreReader
from vbp_rt.trainer.runlog import RunLogReader
from vbp_rt.trainer.ship import evaluate, export
from vbp_rt.trainer.train import TrainConfig, epoch_batches, mirror, train

from vbp_rt import explain
from vbp_rt.cli import main
from vbp_rt.models import build, load_model, read_checkpoint, save_checkpoint

from .trainer_helpers import HEIGHT, TINY_NET, make_store, train_args


def tiny(store, out, **kw) -> TrainConfig:
    opts = dict(epochs=2, batch_size=4, lr=1e-3, workers=0, probes=3, height=HEIGHT, net=TINY_NET,
                snapshots=(0, 0.5))
    opts.update(kw)
    return TrainConfig(store=str(store), arch="nethvf", out=str(out), **opts)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "drive.h5", frames=60)


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    result = train(tiny(store, out, workers=1))
    return out, result


def rmse_of(model, store, split="test"):
    with StoreReader(store) as r:
        s = r.split(split)
        x = torch.from_numpy(r.images("hvf")[s]).float().unsqueeze(1) / 255
        y = r.angle[s].astype(np.float64)
    with torch.no_grad():
        pred = model.eval()(x)[:, 0].double().numpy()
    return float(np.sqrt(np.mean((pred - y) ** 2)))


def test_run_directory_and_metrics(run, store):
    out, result = run
    assert {p.name for p in out.iterdir()} == {"config.json", "last.pt", "best.pt", "runlog.h5"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["arch"] == "nethvf" and cfg["epochs"] == 2 and cfg["net"] == TINY_NET
    last = read_checkpoint(out / "last.pt")
    assert last["position"]["epoch"] == 2 and last["position"]["batch"] == 0
    assert last["step"] == 2 * len(epoch_batches(np.arange(round(60 * 190 / 210)), 4, 0, 0))
    assert set(last["optimizer"]["state"])  # momentum buffers saved
    # the logged validation RMSE is the RMSE of the saved weights, evaluated independently
    assert rmse_of(load_model(out / "last.pt"), store) == pytest.approx(last["history"][-1]["val_rmse"], rel=1e-4)
    best = read_checkpoint(out / "best.pt")
    assert best["best_val_rmse"] == pytest.approx(min(h["val_rmse"] for h in last["history"]))
    assert rmse_of(load_model(out / "best.pt"), store) == pytest.approx(best["best_val_rmse"], rel=1e-4)
    with RunLogReader(out / "runlog.h5") as log:
        m = log.metrics()
        np.testing.assert_allclose(m["epoch"], [1, 2])
        np.testing.assert_allclose(m["val_rmse"], [h["val_rmse"] for h in last["history"]])
        assert np.all(np.isfinite(m["train_loss"])) and np.all(m["lr"] == 1e-3)
        steps = log.steps()
        assert len(steps["epoch"]) == last["step"] and np.all(np.diff(steps["epoch"]) > 0)


def test_runlog_snapshots_are_vbp_of_the_weights(run, store):
    out, _ = run
    with RunLogReader(out / "runlog.h5") as log:
        probe, snaps = log.probe(), log.snapshots()
        attrs = log.attrs
    assert attrs["arch"] == "nethvf" and attrs["view"] == "hvf" and attrs["epochs"] == 2
    with StoreReader(store) as r:
        test = r.split("test")
        assert np.all((probe["index"] >= test.start) & (probe["index"] < test.stop)) and len(probe["index"]) == 3
        np.testing.assert_array_equal(probe["image"], r.images("hvf")[probe["index"]])
        np.testing.assert_array_equal(probe["angle"], r.angle[probe["index"]])
    # 0 (untrained), 0.5, and every epoch end
    np.testing.assert_allclose(snaps["epoch"], [0, 0.5, 1, 2], atol=1 / 12)
    assert snaps["mask"].shape == (4, 3, HEIGHT, 351) and snaps["prediction"].shape == (4, 3)
    model = load_model(out / "last.pt")
    e = explain(model, torch.from_numpy(probe["image"]).float().unsqueeze(1) / 255, "vbp")
    np.testing.assert_allclose(snaps["mask"][-1], e.mask.numpy(), atol=2e-3)
    np.testing.assert_allclose(snaps["prediction"][-1], e.prediction[:, 0].numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(snaps["prediction"][0], snaps["prediction"][-1])


def test_resume_continues_the_same_run(store, tmp_path):
    straight = tmp_path / "straight"
    train(tiny(store, straight, snapshots=()))
    split = tmp_path / "split"
    train(tiny(store, split, epochs=1, snapshots=()))
    train(resume_dir=split, epochs=2)
    a, b = read_checkpoint(straight / "last.pt"), read_checkpoint(split / "last.pt")
    assert b["position"] == a["position"] and b["step"] == a["step"]
    assert set(b["head"]) == {"weight", "bias"}  # the last layer as trained, not re-derived from degrees
    for k in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][k], a["state_dict"][k], rtol=1e-5, atol=1e-6)
    with RunLogReader(split / "runlog.h5") as log:
        np.testing.assert_allclose(log.metrics()["epoch"], [1, 2])
        np.testing.assert_allclose(log.snapshots()["epoch"], [1, 2])


def test_every_checkpoint_finds_the_log_as_far_as_itself(store, tmp_path, monkeypatch):
    """A run killed right after a checkpoint resumes from it: the log must already hold its steps."""
    import vbp_rt.trainer.train as train_module

    seen, save = [], train_module.save_checkpoint

    def checking_save(path, model, **extra):
        if path.name == "last.pt" and extra["step"] > 0:
            # the bytes on disk, as a kill would leave them (this process's HDF5 would share its own cache)
            copy = shutil.copy(path.parent / "runlog.h5", tmp_path / "on_disk.h5")
            with RunLogReader(copy) as log:
                seen.append((len(log.steps()["epoch"]), extra["step"]))
        save(path, model, **extra)

    monkeypatch.setattr(train_module, "save_checkpoint", checking_save)
    train(tiny(store, tmp_path / "run", snapshots=(), checkpoint_minutes=0.0))
    assert len(seen) > 10 and all(rows == step for rows, step in seen), seen


def test_mirror_flips_frames_and_negates_their_angles():
    images = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 3, 4).repeat(50, 1, 1)
    angles = torch.linspace(-30, 30, 100)
    same = mirror(images, angles, 0.0, 0, 0, 0)
    assert same[0] is images and same[1] is angles
    im, an = mirror(images, angles, 1.0, 0, 0, 0)
    torch.testing.assert_close(im, images.flip(-1))
    torch.testing.assert_close(an, -angles)
    im, an = mirror(images, angles, 0.5, 3, 1, 7)
    flipped = an != angles
    assert 25 < int(flipped.sum()) < 75  # about half, drawn per frame
    torch.testing.assert_close(an[flipped], -angles[flipped])
    assert torch.equal(im[flipped], images[flipped].flip(-1)) and torch.equal(im[~flipped], images[~flipped])
    again = mirror(images, angles, 0.5, 3, 1, 7)  # the same (seed, epoch, batch): the same frames
    assert torch.equal(again[0], im) and torch.equal(again[1], an)
    assert not torch.equal(mirror(images, angles, 0.5, 3, 2, 7)[1], an)


def run_cli(args, capsys) -> tuple:
    code = main(["train", *args])
    return code, capsys.readouterr().err


def test_wrong_view_size(tmp_path, capsys):
    store = make_store(tmp_path / "short.h5", frames=20, height=HEIGHT + 4)
    code, err = run_cli(train_args(store, tmp_path / "run"), capsys)
    assert code == 2 and str(store) in err and f"351x{HEIGHT + 4}" in err and f"351x{HEIGHT}" in err


def test_missing_view(tmp_path, capsys):
    store = make_store(tmp_path / "svf_only.h5", frames=20, views=("svf",))
    code, err = run_cli(train_args(store, tmp_path / "run"), capsys)
    assert code == 2 and str(store) in err and "no view 'hvf'" in err


def test_empty_split(tmp_path, capsys):
    store = make_store(tmp_path / "three.h5", frames=3)
    code, err = run_cli(train_args(store, tmp_path / "run"), capsys)
    assert code == 2 and str(store) in err and "train split has 3 frames" in err


def test_empty_or_missing_validation_store(tmp_path, capsys):
    store = make_store(tmp_path / "drive.h5", frames=20)
    empty = make_store(tmp_path / "empty.h5", frames=0)
    code, err = run_cli(train_args(store, tmp_path / "run", "--val-store", empty), capsys)
    assert code == 2 and str(empty) in err and "has 0 frames" in err
    code, err = run_cli(train_args(store, tmp_path / "run", "--val-store", tmp_path / "none.h5"), capsys)
    assert code == 2 and "none.h5 does not exist" in err


def test_nan_labels(tmp_path, capsys):
    store = make_store(tmp_path / "nan.h5", frames=20, nan_at=5)
    code, err = run_cli(train_args(store, tmp_path / "run"), capsys)
    assert code == 2 and str(store) in err and "NaN" in err and "frame 5" in err


def test_resume_missing_and_corrupt_checkpoint(tmp_path, capsys):
    code, err = run_cli(["--resume", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "nowhere" in err and "does not exist" in err
    run = tmp_path / "run"
    run.mkdir()
    code, err = run_cli(["--resume", str(run)], capsys)
    assert code == 2 and str(run / "last.pt") in err and "does not exist" in err
    (run / "last.pt").write_bytes(b"\x80\x02 truncated")
    code, err = run_cli(["--resume", str(run)], capsys)
    assert code == 2 and str(run / "last.pt") in err and "corrupt" in err
    save_checkpoint(run / "last.pt", build("nethvf", height=HEIGHT, channels=(4, 4), strides=(), fc=(8,)))
    code, err = run_cli(["--resume", str(run)], capsys)
    assert code == 2 and str(run / "last.pt") in err and "without training state" in err


def test_resume_refuses_new_settings(tmp_path, capsys):
    code, err = run_cli(["--resume", str(tmp_path), "--momentum", "0.5"], capsys)
    assert code == 2 and "--momentum" in err


def test_resume_with_more_epochs_and_a_lower_lr(run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    assert main(["train", "--resume", str(out), "--epochs", "3", "--lr", "1e-4", "--flip", "0.5"]) == 0
    last = read_checkpoint(out / "last.pt")
    assert last["train_config"]["flip"] == 0.5
    assert last["position"]["epoch"] == 3 and last["optimizer"]["param_groups"][0]["lr"] == 1e-4
    assert json.loads((out / "config.json").read_text())["epochs"] == 3
    with RunLogReader(out / "runlog.h5") as log:
        np.testing.assert_allclose(log.metrics()["lr"], [1e-3, 1e-3, 1e-4])
        np.testing.assert_allclose(log.snapshots()["epoch"], [0, 0.5, 1, 2, 3], atol=1 / 12)


def test_ship_half_precision_and_evaluate(run, tmp_path):
    out, _ = run
    shipped = export(out / "best.pt", tmp_path / "tiny.pt")
    ckpt = read_checkpoint(shipped)
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert "optimizer" not in ckpt and ckpt["train_config"]["arch"] == "nethvf"
    assert shipped.stat().st_size < (out / "best.pt").stat().st_size / 2
    store = make_store(tmp_path / "truth.h5", frames=20, seed=7, masks=True)
    full, half = evaluate(out / "best.pt", store), evaluate(shipped, store)
    model = load_model(out / "best.pt")
    assert full["rmse"] == pytest.approx(rmse_of(model, store, "all"), rel=1e-5)
    assert half["rmse"] == pytest.approx(full["rmse"], rel=1e-2)
    with StoreReader(store) as r:
        lane, dist = r.lane_mask("hvf")[()].astype(bool), r.distractor_mask("hvf")[()].astype(bool)
        assert full["zero_rmse"] == pytest.approx(float(np.sqrt(np.mean(r.angle.astype(np.float64) ** 2))))
        x = torch.from_numpy(r.images("hvf")[()]).float().unsqueeze(1) / 255
        with torch.no_grad():
            predicted = model.eval()(x)[:, 0].double().numpy()
        assert full["bias"] == pytest.approx(float(np.mean(predicted - r.angle.astype(np.float64))), abs=1e-4)
    mask = explain(model, x, "vbp").mask.numpy().astype(np.float64)
    on_lane = ((mask * lane).sum(axis=(1, 2)) / mask.sum(axis=(1, 2))).mean()
    assert full["mask_on_lane"] == pytest.approx(on_lane, rel=1e-4)
    on_distractor = ((mask * dist).sum(axis=(1, 2)) / mask.sum(axis=(1, 2))).mean()
    assert 0 < on_distractor and full["mask_on_distractor"] == pytest.approx(on_distractor, rel=1e-4)
    assert full["lane_area"] == pytest.approx(lane.mean(axis=(1, 2)).mean())
    assert full["distractor_area"] == pytest.approx(40 / 351)


def test_existing_run_is_refused_and_overwrite_moves_it_aside(run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, err = run_cli(train_args(_store_of(run), out, "--epochs", "1"), capsys)
    assert code == 2 and f"vbp train --resume {out}" in err and "new --out" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    code, err = run_cli(train_args(_store_of(run), out, "--epochs", "1", "--overwrite"), capsys)
    assert code == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and f"moved the earlier run {out} to {aside[0]}" in err
    assert {p.name: p.read_bytes() for p in aside[0].iterdir() if p.is_file()} == before
    assert read_checkpoint(out / "last.pt")["position"]["epoch"] == 1


def _store_of(run):
    return read_checkpoint(run[0] / "last.pt")["train_config"]["store"]


def test_damaged_store_is_one_error_and_creates_nothing(store, tmp_path, capsys):
    cut = tmp_path / "cut.h5"
    data = store.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    code, err = run_cli(train_args(cut, tmp_path / "run"), capsys)
    assert code == 2 and f"{cut} is a truncated or corrupt HDF5 store" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_resume_checks_before_any_work(run, tmp_path, capsys, monkeypatch):
    from vbp_rt.trainer import train as train_module
    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    config = (out / "config.json").read_bytes()
    other = build("netsvf", height=HEIGHT, channels=(4, 4, 8, 8), strides=(), fc=(16,))
    ckpt = read_checkpoint(out / "last.pt")
    ckpt["train_config"] = dict(ckpt["train_config"], arch="netsvf")
    save_checkpoint(out / "last.pt", other, **{k: v for k, v in ckpt.items()
                                                if k not in ("format", "version", "config", "state_dict")})
    monkeypatch.setattr(train_module.Trainer, "run", lambda self: pytest.fail("training started"))
    code, err = run_cli(["--resume", str(out)], capsys)
    assert code == 2 and "does not belong to this run" in err and "netsvf" in err and "nethvf" in err
    assert (out / "config.json").read_bytes() == config
    code, err = run_cli(["--resume", str(out / "last.pt")], capsys)
    assert code == 2 and "takes the run folder" in err and f"--resume {out}" in err


def test_checkpoints_follow_the_umask(tmp_path):
    import os
    old = os.umask(0o027)
    try:
        save_checkpoint(tmp_path / "m.pt", build("nethvf", height=HEIGHT, channels=(4, 4), strides=(), fc=(8,)))
    finally:
        os.umask(old)
    assert (tmp_path / "m.pt").stat().st_mode & 0o777 == 0o640


def _drive_stats(model, path):
    """(RMSE, zero-predictor RMSE, bias) of a model on every frame of a store, computed here."""
    with StoreReader(path) as r:
        x = torch.from_numpy(r.images("hvf")[:]).float().unsqueeze(1) / 255
        y = r.angle[:].astype(np.float64)
    with torch.no_grad():
        err = model.eval()(x)[:, 0].double().numpy() - y
    return np.sqrt(np.mean(err ** 2)), np.sqrt(np.mean(y ** 2)), err.mean()


def test_several_training_stores_and_validation_drives(tmp_path, capsys):
    train_stores = [make_store(tmp_path / f"t{i}.h5", frames=30, seed=10 + i) for i in range(2)]
    val = [make_store(tmp_path / f"v{i}.h5", frames=12 + 4 * i, seed=20 + i) for i in range(3)]
    out = tmp_path / "run"
    args = [*map(str, train_stores), *train_args(train_stores[0], out, "--epochs", "2")[1:], "--val", *map(str, val)]
    assert run_cli(args, capsys)[0] == 0
    last = read_checkpoint(out / "last.pt")
    assert last["train_config"]["store"] == [str(p) for p in train_stores]
    # both stores' train splits: 2 x 27 frames in batches of 4
    assert last["step"] == 2 * (2 * round(30 * 190 / 210) // 4)
    model = load_model(out / "last.pt")
    rows = last["history"][-1]["val_drives"]
    assert [r["drive"] for r in rows] == ["v0", "v1", "v2"]
    for row, path in zip(rows, val):
        rmse, zero, bias = _drive_stats(model, path)
        assert (row["rmse"], row["zero_rmse"], row["bias"]) == pytest.approx((rmse, zero, bias), rel=1e-4, abs=1e-4)
    # the aggregate weighs drives equally (not frames), and best.pt is chosen on it
    assert last["history"][-1]["val_rmse"] == pytest.approx(np.sqrt(np.mean([r["rmse"] ** 2 for r in rows])))
    assert read_checkpoint(out / "best.pt")["best_val_rmse"] == pytest.approx(
        min(h["val_rmse"] for h in last["history"]))
    with RunLogReader(out / "runlog.h5") as log:
        v = log.validation()
        probe = log.probe()
    assert v["drives"] == ["v0", "v1", "v2"] and v["rmse"].shape == (2, 3)
    np.testing.assert_allclose(v["rmse"][-1], [r["rmse"] for r in rows])
    np.testing.assert_allclose(v["bias"][-1], [r["bias"] for r in rows])
    # probe frames come from the validation drives (indices over the three drives in order)
    frames = []
    for p in val:
        with StoreReader(p) as r:
            frames.append(r.images("hvf")[:])
    frames = np.concatenate(frames)
    np.testing.assert_array_equal(probe["image"], frames[probe["index"]])
    # resuming keeps the drives and the per-drive rows
    train(resume_dir=out, epochs=3)
    with RunLogReader(out / "runlog.h5") as log:
        assert log.validation()["rmse"].shape == (3, 3)
    assert run_cli(["--resume", str(out), "--val", str(val[0])], capsys)[1].count("--val") == 1


def test_runlog_written_before_per_drive_rows_still_reads(run, tmp_path):
    import h5py
    out, _ = run
    with RunLogReader(out / "runlog.h5") as log:
        v, metrics = log.validation(), log.metrics()
    assert v["drives"] == ["drive"] and v["rmse"].shape == (2, 1)  # the store's own test split
    old = tmp_path / "runlog.h5"
    shutil.copy(out / "runlog.h5", old)
    with h5py.File(old, "r+") as f:
        del f["validation"]
    with RunLogReader(old) as log:
        assert log.validation() == {}
        np.testing.assert_array_equal(log.metrics()["val_rmse"], metrics["val_rmse"])
        assert set(log.rows_until(1.0)) == {"snapshots", "metrics", "steps"}


def test_init_starts_from_another_models_weights(store, tmp_path, monkeypatch, capsys):
    from vbp_rt.trainer import train as train_module
    start = build("nethvf", height=HEIGHT, channels=TINY_NET["channels"], strides=(), fc=TINY_NET["fc"])
    with torch.no_grad():
        for p in start.parameters():
            p.add_(0.05)
    save_checkpoint(tmp_path / "start.pt", start, half=True)
    monkeypatch.setattr(train_module.Trainer, "run", lambda self: {"best_val_rmse": 0.0, "history": []})
    train(tiny(store, tmp_path / "run", init=str(tmp_path / "start.pt")))
    first = load_model(tmp_path / "run" / "last.pt")  # written before the first step
    x = torch.rand(5, 1, HEIGHT, 351)
    torch.testing.assert_close(first(x), start.half().float().eval()(x), rtol=1e-4, atol=1e-4)
    other = build("nethvf", height=HEIGHT, channels=(4, 4), strides=(), fc=(8,))
    save_checkpoint(tmp_path / "other.pt", other)
    code, err = run_cli(train_args(store, tmp_path / "run2", "--init", tmp_path / "other.pt"), capsys)
    assert code == 2 and "is not a nethvf of this layout" in err and "channels" in err
    code, err = run_cli(["--resume", str(tmp_path / "run"), "--init", "x.pt"], capsys)
    assert code == 2 and "--init" in err


def test_ship_measures_several_drives(run, tmp_path, capsys):
    from vbp_rt.trainer.ship import main as ship_main
    stores = [make_store(tmp_path / f"m{i}.h5", frames=12, seed=30 + i, masks=True) for i in range(2)]
    assert ship_main([str(run[0] / "best.pt"), "--eval-store", *map(str, stores)]) == 0
    out = json.loads(capsys.readouterr().out)
    singles = [evaluate(run[0] / "best.pt", s) for s in stores]
    for single, store in zip(singles, stores):
        assert out[str(store)]["rmse"] == pytest.approx(single["rmse"])
    assert out["summary"]["rmse"]["mean"] == pytest.approx(np.mean([s["rmse"] for s in singles]))
    assert out["summary"]["mask_on_lane"]["max"] == pytest.approx(max(s["mask_on_lane"] for s in singles))


def test_bf16_training_learns_like_float32_and_can_be_switched_on_resume(store, tmp_path):
    runs = {}
    for bf16 in (False, True):
        out = tmp_path / f"bf16_{bf16}"
        runs[bf16] = train(tiny(store, out, epochs=3, snapshots=(), bf16=bf16, lr=3e-3))
    first = runs[False]["history"][0]["val_rmse"]
    for bf16, result in runs.items():  # both learn: the validation RMSE falls well below the first epoch's
        assert result["best_val_rmse"] < 0.8 * first, (bf16, [h["val_rmse"] for h in result["history"]])
    assert runs[True]["history"][-1]["val_rmse"] == pytest.approx(runs[False]["history"][-1]["val_rmse"], rel=0.25)
    assert runs[True]["history"][0]["train_loss"] != runs[False]["history"][0]["train_loss"]  # bf16 really ran
    train(resume_dir=tmp_path / "bf16_True", epochs=4, bf16=False)
    assert read_checkpoint(tmp_path / "bf16_True" / "last.pt")["train_config"]["bf16"] is False


def test_the_run_log_follows_the_umask(tmp_path):
    import os

    from vbp_rt.trainer.runlog import RunLogWriter
    probe = {"image": np.zeros((2, HEIGHT, 8), np.uint8), "angle": np.zeros(2), "index": np.arange(2)}
    old = os.umask(0o027)
    try:
        RunLogWriter(tmp_path / "runlog.h5", {"arch": "netsvf"}, probe).close()
    finally:
        os.umask(old)
    assert (tmp_path / "runlog.h5").stat().st_mode & 0o777 == 0o640

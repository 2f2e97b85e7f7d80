"""Fault injection: every command that writes is killed (SIGTERM, then SIGKILL) at a random point of its work.

For each command a first run makes the output; a second run to the same output is killed at a seeded random
moment within the first run's duration; then the earlier output must be byte-identical (or, where the command
finishes its file on SIGTERM, a complete readable one), no unreadable file may have taken its place, SIGTERM
must leave no temporary files, and the next run must succeed (naming what a SIGKILL left behind).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import av
import h5py
import numpy as np
import onnx
import pytest
import torch
from vbp_rt.data.store import StoreReader
from vbp_rt.trainer.runlog import RunLogReader

import vbp_rt
import vbp_rt.cli
import vbp_rt.cli.doctor
from tests.trainer_helpers import HEIGHT, make_store, train_args
from tests.udacity_fixtures import frame, sim_log
from tests.viewer_helpers import write_video
from vbp_rt.files import stale_partials
from vbp_rt.models import read_checkpoint, save_checkpoint

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[1]


def vbp(*args) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), QT_QPA_PLATFORM="offscreen")
    return subprocess.Popen([sys.executable, "-m", "vbp_rt.cli", *map(str, args)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen) -> tuple:
    out, err = p.communicate(timeout=300)
    return p.returncode, err


def run_ok(args) -> tuple:
    start = time.monotonic()
    code, err = finish(vbp(*args))
    assert code == 0, err
    return time.monotonic() - start, err


def killed(args, sig, delay: float) -> tuple:
    p = vbp(*args)
    time.sleep(delay)
    if p.poll() is None:
        p.send_signal(sig)
    code, err = finish(p)
    assert code in (0, -sig, 128 + sig), err  # finished first, killed, or stopped cleanly on SIGTERM
    if sig == signal.SIGTERM and code == 128 + sig:
        assert "terminated" in err and "Traceback" not in err
    return code, err


def leftovers(*outputs) -> list:
    """Temporary files (and locks) beside the outputs: hidden `.OUT.*` and the store writer's `OUT.*.partial`."""
    found = []
    for out in outputs:
        out = Path(out)
        found += [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")
                  or (p.name.startswith(f"{out.name}.") and p.name.endswith(".partial"))]
    return found


def snapshot(paths) -> dict:
    return {str(p): Path(p).read_bytes() for p in paths}


def frames_in(video) -> int:
    with av.open(str(video)) as c:
        n = 0
        try:
            for _ in c.decode(video=0):
                n += 1
        except av.FFmpegError:
            pass
        return n


# ---------------------------------------------------------------- the commands: inputs, outputs, validity


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, vbp_rt.build("netsvf", channels=(4, 4, 8, 8), strides=(), fc=(16,)))
    return path


def _explain(tmp, model):
    video = write_video(tmp / "clip.mp4", 100)
    out = tmp / "masks.h5"
    return ["explain", model, video, "--out", out, "--batch-size", "4"], [out]


def _synth(tmp, model):
    out = tmp / "drive.h5"
    return ["data", "synth", "--frames", "60", "--views", "svf", "--out", out, "--video", tmp / "drive.mp4"], \
        [out, tmp / "drive.mp4"]


def _udacity(tmp, model):
    # a simulator recording folder (driving_log.csv + IMG/): shape from tests/udacity_fixtures.sim_log
    t0 = datetime(2016, 12, 1, 13, 30, 48)
    sim_log(tmp / "sim" / "driving_log.csv",
            [(t0 + timedelta(seconds=i / 15), 0.1 * np.sin(i / 5), 0.5, 0, 20.0, frame(i)) for i in range(120)])
    out = tmp / "sim.h5"
    return ["data", "udacity", tmp / "sim", "--out", out], [out]


def _view(tmp, model):
    video = write_video(tmp / "clip.mp4", 80)
    out = tmp / "overlay.mp4"
    return ["view", video, "--model", model, "--backend", "torch-cpu", "--methods", "vbp", "--headless",
            "--out", out], [out, tmp / "overlay.json"]


def _export(tmp, model):
    out = tmp / "m.onnx"
    return ["export", model, "--out", out], [out, tmp / "m.vbp.onnx", tmp / "m.lrp.onnx"]


def readable(path: Path) -> None:
    """Fails when an output file is not a complete file of its kind."""
    if path.suffix == ".h5":
        if "masks" in path.name:
            with h5py.File(path, "r") as f:
                assert f["mask"].shape[0] == f.attrs["frames"] > 0
        else:
            with StoreReader(path) as r:
                assert len(r) == r.attrs["frames"] > 0
    elif path.suffix == ".onnx":
        onnx.checker.check_model(onnx.load(str(path)))
    elif path.suffix == ".mp4":
        assert frames_in(path) > 0
    elif path.suffix == ".json":
        json.loads(path.read_text())


COMMANDS = {"explain": _explain, "synth": _synth, "udacity": _udacity, "view": _view, "export": _export}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_kill_leaves_the_earlier_output_and_the_next_run_works(name, tiny_model, tmp_path):
    args, outputs = COMMANDS[name](tmp_path, tiny_model)
    seconds, _ = run_ok(args)
    before = snapshot(outputs)
    rng = np.random.default_rng(sorted(COMMANDS).index(name))
    again = [*args, "--overwrite"]  # replacing an earlier output is where a kill could lose it
    for sig in (signal.SIGTERM, signal.SIGKILL):
        code, err = killed(again, sig, rng.uniform(0.1, 0.6) * seconds)
        for out in outputs:
            readable(out)  # never an unreadable file in place of the output
        if code == 0 or (name == "view" and sig == signal.SIGTERM):
            # finished before the signal, or (view) SIGTERM finished the video like Ctrl-C: a complete new output
            before = snapshot(outputs)
        else:
            assert snapshot(outputs) == before, f"{name}: output changed after {sig.name} (exit {code})"
        left = leftovers(*outputs)
        if sig == signal.SIGTERM:
            if name == "udacity" and left:  # an interrupted ingest keeps its frames and says where
                assert all(str(p) in err for p in left) and all(len(StoreReader(p)) > 0 for p in left)
                for p in left:
                    p.unlink()
            else:
                assert not left, f"{name}: SIGTERM left {left}"
    stale = [p for out in outputs for p in stale_partials(out)]
    _, err = run_ok(again)
    for p in stale:
        assert str(p) in err, f"{name}: the next run did not name {p}"
    for out in outputs:
        readable(out)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_an_earlier_output_is_kept_unless_overwrite_is_given(name, tiny_model, tmp_path):
    args, outputs = COMMANDS[name](tmp_path, tiny_model)
    run_ok(args)
    before = snapshot(outputs)
    code, err = finish(vbp(*args))
    assert code == 2 and "--overwrite" in err and str(outputs[0]) in err, err
    assert snapshot(outputs) == before


def test_kill_during_training_keeps_a_resumable_run(tmp_path):
    store = make_store(tmp_path / "drive.h5", frames=80)
    run = tmp_path / "run"
    seconds, _ = run_ok(["train", *train_args(store, run, "--epochs", "1")])
    config = (run / "config.json").read_bytes()
    rng = np.random.default_rng(7)
    epochs = 1
    for sig in (signal.SIGTERM, signal.SIGKILL):
        epochs += 2
        killed(["train", "--resume", run, "--epochs", epochs], sig, rng.uniform(0.1, 0.6) * seconds * 2)
        for ckpt in ("last.pt", "best.pt"):
            assert read_checkpoint(run / ckpt)["position"]["epoch"] >= 0
        with RunLogReader(run / "runlog.h5") as log:
            assert len(log.metrics()["epoch"]) >= 1
        if sig == signal.SIGTERM:
            assert not list(run.glob(".*tmp")), "SIGTERM left temporary checkpoints"
    assert json.loads((run / "config.json").read_text())["arch"] == json.loads(config)["arch"]
    run_ok(["train", "--resume", run, "--epochs", epochs])
    assert read_checkpoint(run / "last.pt")["position"]["epoch"] == epochs
    assert HEIGHT == read_checkpoint(run / "last.pt")["train_config"]["height"]


def test_killed_recording_plays_up_to_the_last_second(tmp_path):
    """SIGKILL while `VideoRecorder` writes: the partial file decodes up to about one second before the kill."""
    script = f"""
import os, signal, numpy as np
from vbp_rt.viewer.render import VideoRecorder
rec = VideoRecorder({str(tmp_path / 'rec.mp4')!r}, 20)
for i in range(90):
    rec.write(np.random.default_rng(i).integers(0, 255, (120, 160, 3), dtype=np.uint8))
os.kill(os.getpid(), signal.SIGKILL)
"""
    p = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == -signal.SIGKILL
    (partial,) = stale_partials(tmp_path / "rec.mp4")
    assert 90 - 20 <= frames_in(partial) <= 90
    assert not (tmp_path / "rec.mp4").exists()


@pytest.mark.parametrize("stop, code", [(vbp_rt.cli.Terminated(), 143), (KeyboardInterrupt(), 130)])
def test_a_stop_wrapped_by_c_code_is_still_a_stop(monkeypatch, capsys, stop, code):
    """numpy's import turns a SIGTERM that lands inside it into an ImportError raised from it: the command must
    still report the stop and exit 128 + signal, not die with numpy's "bad install" traceback."""
    def run(args):
        try:
            raise stop
        except KeyboardInterrupt as e:
            raise ImportError("PyCapsule_Import could not import module") from e

    monkeypatch.setattr(vbp_rt.cli.doctor, "run", run)
    assert vbp_rt.cli.main(["doctor"]) == code
    assert "vbp doctor: " + ("terminated" if code == 143 else "interrupted") in capsys.readouterr().err


def test_an_error_without_a_stop_behind_it_is_not_taken_for_one(monkeypatch):
    def run(args):
        raise ImportError("a real import error")

    monkeypatch.setattr(vbp_rt.cli.doctor, "run", run)
    with pytest.raises(ImportError, match="a real import error"):
        vbp_rt.cli.main(["doctor"])


@pytest.mark.parametrize("lost_as", [ImportError, OSError])
def test_a_sigterm_whose_error_c_code_replaced_is_still_a_stop(monkeypatch, capsys, lost_as):
    """PyCapsule_Import (numpy's import of datetime) replaces a SIGTERM that lands inside it with an ImportError that
    no longer holds it (other C code could leave an OSError): the command must still report the stop and exit 143."""
    def run(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at the next bytecode
        except vbp_rt.cli.Terminated:
            pass
        raise lost_as('PyCapsule_Import could not import module "datetime"')  # no cause, no context

    monkeypatch.setattr(vbp_rt.cli.doctor, "run", run)
    assert vbp_rt.cli.main(["doctor"]) == 143
    assert "vbp doctor: terminated" in capsys.readouterr().err

    def fail(args):
        raise ImportError("a real import error")

    monkeypatch.setattr(vbp_rt.cli.doctor, "run", fail)
    with pytest.raises(ImportError, match="a real import error"):  # the next run starts without that SIGTERM
        vbp_rt.cli.main(["doctor"])

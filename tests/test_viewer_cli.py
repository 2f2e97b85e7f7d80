"""`vbp view`: headless video + timing summary, the real highway clip, clear errors, the demo drive."""
from __future__ import annotations

import json

import cv2
import pytest
from vbp_rt.data.preprocess import View
from vbp_rt.viewer import cli as view_cli

from tests.viewer_helpers import tiny_checkpoint, write_drive, write_video
from vbp_rt.cli import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


def frames_in(path) -> tuple:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    return n, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))


def test_headless_writes_the_overlaid_video_and_a_timing_summary(tmp_path, ckpt, capsys):
    video = write_video(tmp_path / "clip.mp4", 6)
    out = tmp_path / "out" / "overlay.mp4"
    rc = main(["view", str(video), "--model", str(ckpt), "--backend", "torch-cpu", "--headless", "--out", str(out)])
    assert rc == 0
    assert frames_in(out) == (6, 640, 480 + 2 * 135 + 44)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["frames"] == 6 and summary["dropped"] == 0 and summary["bad_frames"] == 0
    assert summary["methods"] == ["vbp", "lrp"] and summary["backend"] == "torch-cpu"
    assert set(summary["stages_ms"]) == {"forward", "vbp", "lrp", "total"} and summary["frames_per_second"] > 0
    printed = capsys.readouterr().out
    assert "6 frames of clip.mp4" in printed and "end to end" in printed and "frames/s" in printed


def test_headless_plays_the_real_highway_clip(real_data_dir, tmp_path, ckpt):
    clip = real_data_dir / "lanelines" / "solidWhiteRight.mp4"
    out = tmp_path / "real.mp4"
    rc = main(["view", str(clip), "--model", str(ckpt), "--backend", "torch-cpu", "--methods", "vbp",
               "--headless", "--out", str(out), "--frames", "8", "--summary", str(tmp_path / "t.json")])
    assert rc == 0
    # 960x540 frames scaled to 640x360, one VBP strip, the text bar, one row to make the height even
    assert frames_in(out) == (8, 640, 360 + 135 + 44 + 1)
    assert json.loads((tmp_path / "t.json").read_text())["frames"] == 8


def test_clear_errors(tmp_path, ckpt, capsys, monkeypatch):
    video = write_video(tmp_path / "clip.mp4", 2)
    base = ["view", "--model", str(ckpt), "--backend", "torch-cpu"]
    assert main(base + [str(video), "--headless"]) == 2
    assert "--headless needs --out" in capsys.readouterr().err
    assert main(base + [str(tmp_path / "gone.mp4"), "--headless", "--out", str(tmp_path / "o.mp4")]) == 2
    assert "gone.mp4 does not exist" in capsys.readouterr().err
    assert main(base + [str(video), "--methods", "vbp,nope", "--headless", "--out", str(tmp_path / "o.mp4")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    short = write_drive(tmp_path / "short.h5", 2, views=(View("svf", 640, 125, 265, 390),))
    assert main(base + [str(short), "--headless", "--out", str(tmp_path / "o.mp4")]) == 1
    assert "the model expects 640x135" in capsys.readouterr().err
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    assert main(base + [str(video)]) == 2
    assert "no display" in capsys.readouterr().err


def test_the_demo_drive_is_generated_once_with_its_video(tmp_path, monkeypatch):
    calls = []

    def fake_synth(cmd):
        calls.append(cmd)
        out = cmd[cmd.index("--out") + 1]
        write_drive(out, 3)
        return 0

    monkeypatch.setenv("VBP_RT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(view_cli.subprocess, "call", fake_synth)
    first = view_cli.default_drive()
    assert view_cli.default_drive() == first == tmp_path / "cache" / "demo_drive.h5"
    assert len(calls) == 1
    cmd = calls[0]
    assert cmd[cmd.index("data") + 1] == "synth" and cmd[cmd.index("--video") + 1].endswith("demo_drive.mp4")

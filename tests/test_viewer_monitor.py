"""The training monitor follows a run log that another process is still writing (offscreen Qt)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from vbp_rt.viewer.monitor import MonitorWindow

from tests.viewer_helpers import red_dominance, road_image

WAIT = 60_000
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = Path("/tmp/vbp-view-test-monitor.png")

# A trainer stand-in: writes the run log with trainer.runlog.RunLogWriter, one command per stdin line.
WRITER = """
import sys
import numpy as np
from tests.viewer_helpers import road_image
from vbp_rt.trainer.runlog import RunLogWriter

P = 3
probe = {"image": np.stack([road_image(5 * i) for i in range(P)]), "angle": np.arange(P) * 2.0,
         "index": np.arange(P)}
writer = None
for line in sys.stdin:
    cmd, *a = line.split()
    if cmd == "create":
        writer = RunLogWriter(sys.argv[1], {"arch": "netsvf", "view": "svf", "store": "drive.h5", "epochs": 4},
                              probe)
    elif cmd == "snapshot":  # epoch, first column of a 40-pixel band where every probe's mask is 1
        masks = np.zeros((P, 135, 640), np.float32)
        masks[:, :, int(a[1]):int(a[1]) + 40] = 1
        writer.snapshot(float(a[0]), masks, np.full(P, float(a[0])))
    elif cmd == "epoch":  # epoch, train loss, val rmse
        writer.steps([float(a[0]) - 0.5, float(a[0])], [float(a[1]) * 2, float(a[1])])
        writer.metrics(float(a[0]), float(a[1]), float(a[2]), 0.01)
    elif cmd == "quit":
        writer.close()
        break
    print("ok", flush=True)
"""


class Trainer:
    def __init__(self, path: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def __call__(self, *command) -> None:
        self.proc.stdin.write(" ".join(map(str, command)) + "\n")
        self.proc.stdin.flush()
        if command[0] != "quit":
            assert self.proc.stdout.readline().strip() == "ok", f"writer failed on {command}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self("quit")
            self.proc.wait(30)


@pytest.fixture
def trainer(tmp_path):
    (tmp_path / "run").mkdir()
    t = Trainer(tmp_path / "run" / "runlog.h5")
    yield t
    t.close()


def band_columns(image: np.ndarray) -> tuple:
    """First and last column where the red overlay is strong."""
    cols = np.flatnonzero((red_dominance(image) > 100).mean(axis=0) > 0.9)
    return (int(cols[0]), int(cols[-1])) if len(cols) else None


def test_monitor_follows_a_run_log_while_it_is_written(qtbot, tmp_path, trainer):
    monitor = MonitorWindow(tmp_path / "run", poll_ms=100)
    qtbot.addWidget(monitor)
    monitor.show()
    assert "waiting for" in monitor.status.text() and "runlog.h5" in monitor.status.text()

    (tmp_path / "run" / "runlog.h5").write_bytes(b"\x89HDF half-written")  # not an HDF5 file yet
    qtbot.waitUntil(lambda: "cannot read" in monitor.status.text(), timeout=WAIT)

    trainer("create")
    qtbot.waitUntil(lambda: "0 of 4 epochs done, 0 snapshots" in monitor.status.text(), timeout=WAIT)
    assert not monitor.probe_views and not monitor.epoch_slider.isEnabled()

    trainer("snapshot", 0.1, 100)
    qtbot.waitUntil(lambda: len(monitor.probe_views) == 3, timeout=WAIT)
    assert monitor.epoch_label.text() == "epoch 0.1 (snapshot 1 of 1)"
    for i, view in enumerate(monitor.probe_views):
        image = view.image()
        assert band_columns(image) == (100, 139)
        # the probe frame itself, untouched outside the mask
        assert np.array_equal(image[:, 300:, 0], road_image(5 * i)[:, 300:])
    assert "predicted +0.1°, true +2.0°" in monitor.probe_views[1].title

    trainer("epoch", 1.0, 4.0, 2.0)
    trainer("snapshot", 1.0, 400)
    qtbot.waitUntil(lambda: monitor.epoch_slider.maximum() == 1, timeout=WAIT)
    assert monitor.epoch_slider.value() == 1  # follows the newest snapshot
    assert band_columns(monitor.probe_views[0].image()) == (400, 439)
    assert list(monitor.rmse_curve.getData()[1]) == [2.0]
    assert list(monitor.loss_curve.getOriginalDataset()[1]) == [4.0]  # (the loss axis is logarithmic)
    assert list(monitor.step_curve.getOriginalDataset()[1]) == [8.0, 4.0]
    assert "1 of 4 epochs done, 2 snapshots" in monitor.status.text()

    monitor.epoch_slider.setValue(0)  # back to the first snapshot
    assert band_columns(monitor.probe_views[2].image()) == (100, 139)
    assert monitor.epoch_label.text() == "epoch 0.1 (snapshot 1 of 2)"
    trainer("snapshot", 2.0, 250)
    qtbot.waitUntil(lambda: monitor.epoch_slider.maximum() == 2, timeout=WAIT)
    assert monitor.epoch_slider.value() == 0  # the user's choice is kept while not at the newest
    monitor.resize(1000, 700)
    monitor.grab().save(str(SCREENSHOT))
    monitor.close()

"""The Qt window (offscreen): open a drive, play, step, seek, switch method/backend/display, snapshot, record,
bad input; every check looks at what the widgets show."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PyQt5.QtCore import Qt
from vbp_rt.data.preprocess import View
from vbp_rt.viewer.app import ViewerWindow
from vbp_rt.viewer.render import composite

from tests.viewer_helpers import (
    make_runtime,
    red_dominance,
    shown,
    tiny_model,
    write_drive,
    write_video,
)
from vbp_rt.overlay import overlay

WAIT = 60_000  # ms; generous for 2 busy cores
SCREENSHOT = Path("/tmp/vbp-view-test-window.png")


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    return write_drive(tmp_path_factory.mktemp("drive") / "drive.h5", 30)


class Factory:
    """Runtime factory that records what it was asked for ("auto" runs torch: no ONNX export to wait for)."""

    def __init__(self):
        self.model = tiny_model()
        self.calls = []

    def __call__(self, backend, methods):
        self.calls.append((backend, tuple(methods)))
        return make_runtime(self.model, methods, backend="torch-cpu" if backend == "auto" else backend)


@pytest.fixture
def window(qtbot, tmp_path):
    factory = Factory()
    w = ViewerWindow(factory, factory("auto", ("vbp", "lrp")), methods=("vbp", "lrp"), realtime=False,
                     save_dir=tmp_path)
    w.factory = factory
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    w.activateWindow()
    yield w
    w.close()


def key(qtbot, window, k, modifier=Qt.NoModifier):
    qtbot.keyClick(window, k, modifier)


def test_drive_play_step_seek_and_what_the_widgets_show(window, qtbot, drive):
    assert window.open_source(drive)
    r = shown(window, qtbot, 0)
    assert np.array_equal(window.frame_view.image(), r.image)
    assert list(window.panel_views) == ["vbp", "lrp"]
    for name in ("vbp", "lrp"):
        panel = window.panel_views[name].image()
        assert np.array_equal(panel, r.panels[name])
        # the drive image is gray, so the red overlay raises R over G/B by 255 * opacity * mask
        np.testing.assert_allclose(red_dominance(panel), 255 * 0.7 * r.masks[name], atol=1.5)
        assert (red_dominance(panel) > 150).any()  # visibly red where the mask is high
    assert (window.gauge.predicted, window.gauge.truth) == (pytest.approx(r.angle), 0.0)
    assert "true +0.0°" in window.gauge.text()
    assert set(window.timing_table.values["timings"]) >= {"forward", "vbp", "lrp"}
    assert "frames/s" in window.timing_table.text()

    key(qtbot, window, Qt.Key_Space)  # play
    qtbot.waitUntil(lambda: window.last_result.index >= 6, timeout=WAIT)
    key(qtbot, window, Qt.Key_Space)  # pause
    assert not window.pipeline.playing
    qtbot.waitUntil(lambda: not window.bridge.pending and window.last_result.index == window.pipeline.position,
                    timeout=WAIT)  # the frame that was on its way when playback paused is on screen
    at = window.last_result.index
    assert window.transport.slider.value() == at and window.transport.position.text() == f"{at + 1} / 30"
    key(qtbot, window, Qt.Key_Right)
    shown(window, qtbot, at + 1)
    key(qtbot, window, Qt.Key_Left)
    key(qtbot, window, Qt.Key_Left)
    shown(window, qtbot, at - 1)
    window.transport.slider.setValue(20)  # seek by the slider
    r = shown(window, qtbot, 20)
    assert window.gauge.truth == pytest.approx(30.0) and window.transport.position.text() == "21 / 30"
    frames, truth = np.array(window.angle_plot.frames), np.array(window.angle_plot.truth)
    np.testing.assert_allclose(truth, 1.5 * frames)  # the plot's true angles are the drive's labels
    window.grab().save(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000


def test_switch_methods_backend_and_display(window, qtbot, drive):
    window.open_source(drive)
    shown(window, qtbot, 0)
    window.method_boxes["lrp"].setChecked(False)
    qtbot.waitUntil(lambda: list(window.panel_views) == ["vbp"], timeout=WAIT)
    assert set(window.last_result.masks) == {"vbp"}
    window.method_boxes["vbp"].setChecked(False)  # the last method stays
    assert window.method_boxes["vbp"].isChecked() and "choose at least one method" in window.banner.text()
    window.banner.hide()

    window.backend_box.setCurrentText("ort-cpu")
    qtbot.waitUntil(lambda: window.last_result.backend == "ort-cpu", timeout=WAIT)
    assert window.factory.calls[-1] == ("ort-cpu", ("vbp", "lrp")) and window.backend_label.text() == "backend ort-cpu"
    window.method_boxes["saliency"].setChecked(True)  # onnxruntime runs only vbp and lrp
    qtbot.waitUntil(lambda: window.banner.isVisible(), timeout=WAIT)
    assert "cannot switch to backend ort-cpu" in window.banner.text()
    qtbot.waitUntil(lambda: not window.method_boxes["saliency"].isChecked(), timeout=WAIT)
    key(qtbot, window, Qt.Key_Right)  # still running on the engine it had
    assert shown(window, qtbot, 1).backend == "ort-cpu"

    window.backend_box.setCurrentText("auto")
    window.method_boxes["saliency"].setChecked(True)
    qtbot.waitUntil(lambda: set(window.panel_views) == {"saliency", "vbp"}, timeout=WAIT)
    assert window.factory.calls[-1] == ("auto", ("vbp", "lrp", "saliency"))
    assert window.last_result.backend == "torch-cpu"

    window.opacity_slider.setValue(30)
    qtbot.waitUntil(lambda: abs(window.pipeline.opacity - 0.3) < 1e-9, timeout=WAIT)
    m = window.last_result.masks["vbp"]
    qtbot.waitUntil(lambda: np.allclose(red_dominance(window.panel_views["vbp"].image()), 255 * 0.3 * m, atol=1.5),
                    timeout=WAIT)
    window.colormap_box.setCurrentText("jet")
    jet = overlay(window.last_result.view_image, m, opacity=0.3, colormap="jet")
    qtbot.waitUntil(lambda: np.array_equal(window.panel_views["vbp"].image(), jet), timeout=WAIT)
    high = m > 0.5
    assert high.any() and not np.allclose(red_dominance(jet)[high], 255 * 0.3 * m[high], atol=1.5)


def test_snapshot_record_and_help(window, qtbot, tmp_path, drive):
    window.open_source(drive)
    r = shown(window, qtbot, 0)
    png = window.snapshot()
    saved = cv2.imread(str(png))
    assert np.array_equal(saved, composite(r))
    key(qtbot, window, Qt.Key_R)
    assert window.pipeline.recording and "REC" in window.record_label.text()
    key(qtbot, window, Qt.Key_Space)
    qtbot.waitUntil(lambda: window.last_result.index >= 6, timeout=WAIT)
    key(qtbot, window, Qt.Key_Space)
    path = window.toggle_record()
    assert path.parent == tmp_path and path.suffix == ".mp4" and window.record_label.text() == ""
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n >= 6
    key(qtbot, window, Qt.Key_F1)
    qtbot.waitUntil(window.help_dialog.isVisible, timeout=WAIT)
    assert "play / pause" in window.help_dialog.findChild(type(window.banner)).text()


def test_bad_input_is_reported_in_the_window(window, qtbot, tmp_path, drive):
    window.open_source(drive)
    shown(window, qtbot, 0)
    good = window.pipeline
    assert not window.open_source(tmp_path / "missing.mp4")
    assert window.banner.isVisible() and "missing.mp4 does not exist" in window.banner.text()
    fake = tmp_path / "fake.mp4"
    fake.write_text("no video here")
    assert not window.open_source(fake)
    assert "cannot open video" in window.banner.text()
    assert not window.open_source("57")
    assert "camera 57 does not exist" in window.banner.text()
    assert window.pipeline is good  # what was open keeps playing
    key(qtbot, window, Qt.Key_Right)
    shown(window, qtbot, 1)

    short = write_drive(tmp_path / "short.h5", 3, views=(View("svf", 640, 125, 265, 390),))
    assert window.open_source(short)
    qtbot.waitUntil(lambda: window.banner.isVisible(), timeout=WAIT)
    assert "the model expects 640x135" in window.banner.text()

    assert window.open_source(write_video(tmp_path / "clip.mp4", 4))
    assert not window.banner.isVisible()
    r = shown(window, qtbot, 0)
    assert r.image.shape == (240, 320, 3) and window.frame_view.title.startswith("camera frame")

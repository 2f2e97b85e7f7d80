"""The window is up before its model: the source waits, the model is prepared on a thread, then frames play; a model
that fails to start is said in the window."""
from __future__ import annotations

import threading

import pytest
from vbp_rt.viewer.app import ViewerWindow, start_in_background

from tests.viewer_helpers import make_runtime, tiny_model, write_drive

WAIT = 60_000  # ms; generous for 2 busy cores


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    return write_drive(tmp_path_factory.mktemp("drive") / "drive.h5", 12)


def _window(qtbot, tmp_path, factory):
    w = ViewerWindow(factory, None, methods=("vbp",), realtime=False, save_dir=tmp_path)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    return w


def test_window_first_then_the_model_then_frames(qtbot, tmp_path, drive):
    model = tiny_model()
    factory = lambda backend, methods: make_runtime(model, methods, backend="torch-cpu")  # noqa: E731
    release = threading.Event()

    def start():
        assert release.wait(WAIT / 1000)
        return factory("auto", ("vbp",)), ("vbp",)

    w = _window(qtbot, tmp_path, factory)
    assert w.open_source(drive, play=True)
    start_in_background(w, start)
    assert w.isVisible() and w.runtime is None and w.pipeline is None
    assert "waiting for the model" in w.source_label.text() and "preparing" in w.backend_label.text()
    assert list(w.method_boxes) == ["vbp"]  # the registry is listed once the engine is loaded
    release.set()
    qtbot.waitUntil(lambda: w.last_result is not None, timeout=WAIT)
    assert w.runtime is not None and w.backend_label.text() == "backend torch-cpu"
    assert {"vbp", "lrp", "saliency"} <= set(w.method_boxes) and w.method_boxes["vbp"].isChecked()
    assert not w.method_boxes["lrp"].isChecked() and set(w.last_result.masks) == {"vbp"}
    w.close()


def test_a_model_that_fails_to_start_is_shown(qtbot, tmp_path, drive):
    def start():
        raise ValueError("no backend can run this model")

    w = _window(qtbot, tmp_path, lambda backend, methods: None)
    w.open_source(drive, play=True)
    start_in_background(w, start)
    qtbot.waitUntil(w.banner.isVisible, timeout=WAIT)
    assert "the model did not start: no backend can run this model" in w.banner.text()
    assert w.pipeline is None
    w.close()

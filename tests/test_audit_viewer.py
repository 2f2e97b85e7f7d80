"""vbp view SOURCE --audit AUDIT_DIR (offscreen Qt): the timeline shows the audit's score and events, N / P and
the buttons jump to the events' first frames, and an audit of another source is refused with a message."""
from __future__ import annotations

import numpy as np
import pytest
from PyQt5.QtCore import Qt
from vbp_rt.viewer.app import ViewerWindow

from tests.test_viewer_app import WAIT, Factory
from tests.viewer_helpers import shown, write_drive
from vbp_rt.audit import runner, store

FRAMES = 60
PLANTED = [(10, 15), (40, 46)]  # frames where attention jumps to the left edge


def planted_audit(out, drive):
    """An audit of `drive` whose statistics are made up: calm everywhere except the PLANTED stretches."""
    config = {"methods": ["vbp"], "sources": [str(drive.resolve())], "model": "made up", "chunk": FRAMES,
              "edge": 0.125, "horizon": None, "modes": 2}
    store.prepare_dir(out, config, resume=False)
    rng = np.random.default_rng(0)
    cols = {name: np.zeros((FRAMES,) + tuple(shape), dtype) for name, (shape, dtype) in runner.schema(["vbp"]).items()}
    cols["index"] = np.arange(FRAMES)
    cols["entropy"] = rng.normal(0.6, 0.01, FRAMES)
    cols["centroid"] = rng.normal(0.5, 0.01, (FRAMES, 2))
    cols["grid"] = rng.dirichlet(np.ones(12) * 100, FRAMES).reshape(FRAMES, 3, 4)
    cols["regions"] = rng.dirichlet([100, 1, 10], FRAMES)
    cols["compact/vbp"][:, 6:10, 28:36] = 1
    for a, b in PLANTED:
        cols["centroid"][a:b, 0] = 0.05
        cols["entropy"][a:b] = 0.2
        cols["compact/vbp"][a:b] = 0
        cols["compact/vbp"][a:b, 6:10, 0:4] = 1
    cols = {k: v.astype(runner.schema(["vbp"])[k][1]) for k, v in cols.items()}
    store.write_chunk(store.chunk_path(out, 0, 0), cols, {"complete": True, "frames": FRAMES})
    runner.finish(out, config, [runner.Outcome(frames=FRAMES)],
                  {"backend": "none", "view": "svf", "height": 135, "width": 640})
    return out


@pytest.fixture
def window(qtbot, tmp_path):
    factory = Factory()
    w = ViewerWindow(factory, factory("auto", ("vbp",)), methods=("vbp",), realtime=False, save_dir=tmp_path)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    w.activateWindow()
    yield w
    w.close()


def test_timeline_and_event_jumps(window, qtbot, tmp_path):
    drive = write_drive(tmp_path / "drive.h5", FRAMES)
    out = planted_audit(tmp_path / "audit", drive)
    assert window.open_source(drive)
    shown(window, qtbot, 0)
    timeline = window.attach_audit(out, drive)
    assert timeline is not None
    qtbot.waitUntil(timeline.isVisible, timeout=WAIT)
    assert [(e.first, e.last + 1) for e in timeline.timeline.events] == PLANTED
    assert len(timeline.regions) == 2
    qtbot.keyClick(window, Qt.Key_N)
    shown(window, qtbot, 10)
    assert timeline.cursor.value() == 10 and "frames 10-14" in timeline.info.text()
    qtbot.mouseClick(timeline.next_button, Qt.LeftButton)
    shown(window, qtbot, 40)
    qtbot.keyClick(window, Qt.Key_N)  # no event after the last one: stays
    assert "no further event" in timeline.info.text() and window.last_result.index == 40
    qtbot.keyClick(window, Qt.Key_P)
    shown(window, qtbot, 10)
    qtbot.mouseClick(timeline.previous_button, Qt.LeftButton)
    assert "no earlier event" in timeline.info.text()


def test_an_audit_of_another_source_is_refused(window, qtbot, tmp_path):
    drive = write_drive(tmp_path / "drive.h5", FRAMES)
    other = write_drive(tmp_path / "other.h5", 5)
    out = planted_audit(tmp_path / "audit", drive)
    assert window.open_source(other)
    assert window.attach_audit(out, other) is None
    assert "does not cover" in window.banner.text() and window.audit_timeline is None

"""Viewer without Qt: sources, the bounded queue, the capture/inference pipeline, rendering, recording."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
import torch
from vbp_rt.data import sources
from vbp_rt.data.preprocess import View, view_box
from vbp_rt.data.sources import open_source
from vbp_rt.viewer.pipeline import FrameQueue, Pipeline
from vbp_rt.viewer.render import VideoRecorder, composite, frame_panel, method_panels

import vbp_rt
from tests.viewer_helpers import (
    SVF,
    camera_frame,
    make_runtime,
    red_dominance,
    road_image,
    tiny_model,
    write_drive,
    write_folder,
    write_video,
)

WAIT = 60  # seconds; generous for 2 busy cores


class Collector:
    """Results and events of a pipeline, with waiting helpers."""

    def __init__(self):
        self.results, self.events = [], []
        self.cond = threading.Condition()

    def on_result(self, r):
        with self.cond:
            self.results.append(r)
            self.cond.notify_all()

    def on_event(self, kind, message):
        with self.cond:
            self.events.append((kind, message))
            self.cond.notify_all()

    def wait(self, predicate, timeout=WAIT):
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), f"timed out; events: {self.events}"

    def kinds(self, kind):
        return [m for k, m in self.events if k == kind]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def start(source, runtime, realtime=False, playing=True, **kw):
    c = Collector()
    p = Pipeline(source, runtime, c.on_result, c.on_event, realtime=realtime, **kw).start(playing=playing)
    return p, c


def test_frame_queue_drops_the_oldest_and_counts():
    q = FrameQueue(2)
    for i in range(5):
        q.put(i, drop_stale=True)
    assert q.dropped == 3
    assert [q.get(0.01), q.get(0.01), q.get(0.01)] == [3, 4, None]
    q.put("a", drop_stale=False)
    q.put("b", drop_stale=False)
    assert q.put("c", drop_stale=False, abort=lambda: True) is False  # full: waits unless aborted
    assert len(q) == 2 and q.dropped == 3


def test_sources_read_video_folder_and_drive(tmp_path):
    video = open_source(write_video(tmp_path / "clip.mp4", 6), "svf")
    assert (video.kind, video.length, video.fps, video.live) == ("video", 6, 25.0, False)
    assert video.read(0).image.shape == (240, 320, 3)
    f3 = video.read(3).image  # a seek
    assert np.abs(f3.astype(int) - camera_frame(3)).mean() < 8  # mp4v is lossy
    folder = open_source(write_folder(tmp_path / "imgs", 3), "svf")
    assert (folder.kind, folder.length) == ("images", 3)
    assert np.array_equal(folder.read(2).image, camera_frame(2))
    drive = open_source(write_drive(tmp_path / "d.h5", 5), "svf")
    frame = drive.read(4)
    assert (drive.kind, drive.length, drive.fps, frame.prepared, frame.truth) == ("drive", 5, 20.0, True, 6.0)
    assert np.array_equal(frame.image, road_image(4))
    for s in (video, folder, drive):
        s.close()


def test_bad_sources_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        open_source(tmp_path / "nowhere.mp4", "svf")
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    with pytest.raises(ValueError, match="cannot open video .*fake.mp4"):
        open_source(fake, "svf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no images"):
        open_source(tmp_path / "empty", "svf")
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match="unknown kind"):
        open_source(other, "svf")
    hvf_only = write_drive(tmp_path / "hvf.h5", 2, views=(View("hvf", 351, 135, 190, 436),))
    with pytest.raises(ValueError, match="reads view 'svf'.*only has: hvf"):
        open_source(hvf_only, "svf")
    with pytest.raises(ValueError, match="camera 57 does not exist"):
        open_source("57", "svf")


def test_every_frame_in_order_in_fast_mode_with_the_engines_masks(tmp_path, model):
    p, c = start(open_source(write_drive(tmp_path / "d.h5", 8), "svf"), make_runtime(model))
    c.wait(lambda: c.kinds("finished"))
    p.stop()
    assert [r.index for r in c.results] == list(range(8))
    assert p.dropped == 0 and p.bad == 0
    r = c.results[5]
    x = torch.from_numpy(road_image(5)).float().div(255)[None, None]
    for method in ("vbp", "lrp"):  # the engine's masks, untouched
        ref = vbp_rt.explain(model, x, method=method)
        np.testing.assert_allclose(r.masks[method], ref.mask[0].numpy(), atol=1e-5)
    with torch.no_grad():
        assert r.angle == pytest.approx(float(model(x)[0, 0]), abs=1e-4)
    assert r.truth == 7.5
    assert set(r.timings) >= {"forward", "vbp", "lrp"} and r.stats["fps"] > 0


class SlowRuntime:
    """The engine, slowed down, to see real-time playback drop what it cannot process."""

    def __init__(self, runtime, seconds):
        self.inner, self.seconds = runtime, seconds
        self.config, self.view, self.methods, self.backend = runtime.config, runtime.view, runtime.methods, "slow"

    def prepare(self, frame):
        return self.inner.prepare(frame)

    def run(self, images, methods=None):
        time.sleep(self.seconds)
        return self.inner.run(images, methods)


def test_realtime_drops_stale_frames_and_counts_them(tmp_path, model):
    source = open_source(write_drive(tmp_path / "d.h5", 16), "svf")  # 20 fps: 0.8 s of video
    p, c = start(source, SlowRuntime(make_runtime(model, ("vbp",)), 0.25), realtime=True)
    c.wait(lambda: c.kinds("finished"))
    p.stop()
    shown = [r.index for r in c.results]
    assert p.dropped > 0
    assert len(shown) + p.dropped == 16  # every frame was either processed or dropped, and counted
    assert shown == sorted(shown) and shown[-1] == 15  # newest frames win
    assert c.results[-1].dropped == p.dropped


def test_step_seek_and_resume(tmp_path, model):
    p, c = start(open_source(write_drive(tmp_path / "d.h5", 12), "svf"), make_runtime(model, ("vbp",)),
                 playing=False)
    p.seek(5)
    c.wait(lambda: c.results and c.results[-1].index == 5)
    p.step(1)
    c.wait(lambda: c.results[-1].index == 6)
    p.step(-2)
    c.wait(lambda: c.results[-1].index == 4)
    p.seek(99)  # clamped to the last frame
    c.wait(lambda: c.results[-1].index == 11)
    p.seek(8)
    c.wait(lambda: c.results[-1].index == 8)
    p.play()
    c.wait(lambda: c.kinds("finished"))
    p.stop()
    played = [r.index for r in c.results[5:]]
    assert played == [9, 10, 11]


def test_corrupt_image_is_counted_and_skipped(tmp_path, model):
    folder = write_folder(tmp_path / "imgs", 4)
    (folder / "001b.png").write_bytes(b"\x89PNG broken")
    p, c = start(open_source(folder, "svf"), make_runtime(model, ("vbp",)))
    c.wait(lambda: c.kinds("finished"))
    p.stop()
    assert len(c.results) == 4 and p.bad == 1
    assert any("001b.png cannot be decoded" in m for m in c.kinds("warning"))


def test_a_long_run_of_bad_frames_in_a_file_of_known_length_is_played_through(tmp_path, model):
    folder = write_folder(tmp_path / "imgs", 3)
    for i in range(30):  # more than BAD_RUN unreadable frames in a row, then a good one
        (folder / f"001_{i:02d}.png").write_bytes(b"\x89PNG broken")
    p, c = start(open_source(folder, "svf"), make_runtime(model, ("vbp",)))
    c.wait(lambda: c.kinds("finished"))
    p.stop()
    assert len(c.results) == 3 and p.bad == 30


def test_truncated_video_plays_what_it_has_and_says_so(tmp_path, model):
    path = tmp_path / "cut.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 240))
    for i in range(20):
        w.write(camera_frame(i))
    w.release()
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * 0.6))
    p, c = start(open_source(path, "svf"), make_runtime(model, ("vbp",)))
    c.wait(lambda: c.kinds("finished"))
    p.stop()
    assert 0 < len(c.results) < 20
    assert any("cut.avi ends at frame" in m and "announces 20" in m for m in c.kinds("warning"))


def test_model_input_mismatch_is_reported_and_the_player_keeps_running(tmp_path, model):
    short = write_drive(tmp_path / "short.h5", 3, views=(View("svf", 640, 125, 265, 390),))
    p, c = start(open_source(short, "svf"), make_runtime(model, ("vbp",)))
    c.wait(lambda: c.kinds("error"))
    assert "frames at the model's view are 640x125, but the model expects 640x135" in c.kinds("error")[0]
    assert not p.playing and not c.results
    assert all(t.is_alive() for t in p._threads)
    p.stop()


class FakeCamera:
    """cv2.VideoCapture stand-in: delivers `frames` frames, then fails as an unplugged camera does."""

    def __init__(self, index, frames=3):
        self.left = frames

    def isOpened(self):
        return True

    def get(self, prop):
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        time.sleep(1 / 30)  # a camera delivers at its own pace
        self.left -= 1
        return (True, camera_frame(self.left)) if self.left >= 0 else (False, None)

    def release(self):
        pass


def test_camera_that_disappears_is_reported(monkeypatch, model):
    monkeypatch.setattr(sources.cv2, "VideoCapture", FakeCamera)
    source = open_source("0", "svf")
    assert (source.kind, source.live, source.length) == ("camera", True, None)
    p, c = start(source, make_runtime(model, ("vbp",)), realtime=True)
    c.wait(lambda: c.kinds("error"))
    assert "camera 0 stopped delivering frames" in c.kinds("error")[0]
    assert 1 <= len(c.results) <= 3 and not p.playing
    p.stop()


def test_panels_show_the_crop_and_the_mask_in_red(model):
    frame = camera_frame(2, 540, 960)
    box = view_box(frame.shape, SVF)
    panel = frame_panel(frame, box)
    x0, y0, x1, y1 = box
    assert tuple(panel[y0, (x0 + x1) // 2]) == (0, 220, 0) and tuple(panel[y1 - 1, x0 + 5]) == (0, 220, 0)
    assert np.array_equal(panel[:y0 - 3], frame[:y0 - 3])  # nothing drawn outside the outline
    view = road_image(2)
    mask = np.tile(np.linspace(0, 1, SVF.width, dtype=np.float32), (SVF.height, 1))
    red = method_panels(view, {"vbp": mask}, opacity=0.6, colormap="red")["vbp"]
    # on a gray image the red overlay raises R over G and B by 255 * opacity * mask
    np.testing.assert_allclose(red_dominance(red), 255 * 0.6 * mask, atol=1.5)


def test_composite_and_recording(tmp_path, model):
    p, c = start(open_source(write_video(tmp_path / "clip.mp4", 5), "svf"), make_runtime(model), playing=False)
    p.start_recording(tmp_path / "rec.mp4")
    p.play()
    c.wait(lambda: c.kinds("finished"))
    path, frames = p.stop_recording()
    p.stop()
    image = composite(c.results[-1], width=640)
    assert image.shape == (480 + 2 * 135 + 44, 640, 3)  # frame, vbp, lrp, text bar
    assert frames == 5 and path == tmp_path / "rec.mp4" and not list(tmp_path.glob(".*partial*"))
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 5 and (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (640, 794)


def test_recorder_scales_frames_of_another_size(tmp_path):
    rec = VideoRecorder(tmp_path / "r.mp4", 10)
    rec.write(np.zeros((101, 200, 3), np.uint8))
    rec.write(np.zeros((50, 80, 3), np.uint8))
    assert rec.close() == tmp_path / "r.mp4" and rec.frames == 2
    cap = cv2.VideoCapture(str(tmp_path / "r.mp4"))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (200, 102)  # even sizes
    assert VideoRecorder(tmp_path / "none.mp4", 10).close() is None


def test_drive_with_its_camera_video_shows_the_camera_frame(tmp_path, model):
    drive = write_drive(tmp_path / "d.h5", 4)
    write_video(tmp_path / "d.mp4", 4)  # as `vbp data synth --video` writes it beside the drive
    p, c = start(open_source(drive, "svf"), make_runtime(model, ("vbp",)))
    c.wait(lambda: c.kinds("finished"))
    p.stop()
    r = c.results[2]
    x0, y0, x1, y1 = view_box((240, 320), SVF)
    assert r.image.shape == (240, 320, 3) and tuple(r.image[y0, 100]) == (0, 220, 0)
    assert np.array_equal(r.view_image, road_image(2)) and r.truth == 3.0  # the network still reads the drive
    write_video(tmp_path / "d.mp4", 3)  # a video of another length is not this drive's
    source = open_source(drive, "svf")
    assert source.camera is None and source.read(0).camera is None
    source.close()

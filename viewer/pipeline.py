"""Frames -> engine -> pictures, off the UI thread.

A capture thread reads the source into a small bounded queue, pacing a file at its frame rate (times
the speed) in real-time mode. When the queue is full in real-time mode (and always for a live camera)
the oldest frame is dropped and counted, so inference works on the newest frame; in fast mode the
capture thread waits instead and every frame is processed. An inference thread runs the engine,
renders the overlays and hands a `Result` to a callback: the Qt window turns it into a signal,
headless mode writes it to a video. Commands (play, step, seek, method/backend switches) are
thread-safe and never wait for inference.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from vbp_rt.data.preprocess import view_box
from vbp_rt.data.sources import BadFrame, EndOfSource, Frame, SourceLost

from .render import VideoRecorder, composite, frame_panel, method_panels

END = object()  # queued after the last frame of a file
BAD_RUN = 25  # consecutive undecodable frames after which a file of unknown length is treated as ended


class FrameQueue:
    """Bounded FIFO between capture and inference; in drop mode a full queue discards its oldest item."""

    def __init__(self, maxsize: int = 2):
        self.maxsize = maxsize
        self.dropped = 0
        self._items = collections.deque()
        self._cond = threading.Condition()

    def put(self, item, drop_stale: bool, abort=lambda: False) -> bool:
        """Queue `item`. Drop mode never waits; otherwise wait for room unless `abort()` turns true
        (then the item is not queued and False is returned)."""
        with self._cond:
            if drop_stale:
                while len(self._items) >= self.maxsize:
                    self._items.popleft()
                    self.dropped += 1
            else:
                while len(self._items) >= self.maxsize:
                    if abort():
                        return False
                    self._cond.wait(0.05)
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout: float):
        """The oldest item, or None after `timeout` seconds without one."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def clear(self) -> None:
        """Forget queued frames (superseded by a seek or a step; not counted as drops)."""
        with self._cond:
            self._items.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)


class TimingStats:
    """Per-stage timings in ms (rolling over `window` frames, or all of them when window is None) and the
    rate at which results arrive."""

    def __init__(self, window: int | None = 120):
        self.window = window
        self.samples: dict = {}
        self.arrivals = collections.deque(maxlen=window)

    def add(self, timings: dict, now: float) -> None:
        for k, v in timings.items():
            self.samples.setdefault(k, collections.deque(maxlen=self.window)).append(float(v))
        self.arrivals.append(now)

    def summary(self) -> dict:
        """{stage: {"median": ms, "p95": ms}, ..., "fps": results per second}."""
        out = {k: {"median": float(np.median(v)), "p95": float(np.percentile(v, 95))}
               for k, v in self.samples.items() if v}
        span = self.arrivals[-1] - self.arrivals[0] if len(self.arrivals) > 1 else 0.0
        out["fps"] = (len(self.arrivals) - 1) / span if span > 0 else 0.0
        return out


@dataclass
class Result:
    """What the window shows for one frame."""

    source: str
    index: int
    length: int | None
    image: np.ndarray  # the source frame (BGR) with the network's crop outlined
    panels: dict  # method -> view image with that method's mask overlaid (BGR)
    masks: dict  # method -> (H,W) float32 in [0,1], as the engine returned it
    view_image: np.ndarray  # the network's input image (uint8)
    prediction: np.ndarray  # (outputs,)
    truth: float | None
    timings: dict  # this frame, ms, from the engine
    stats: dict = field(default_factory=dict)  # TimingStats.summary()
    backend: str = ""
    dropped: int = 0
    bad: int = 0
    fresh: bool = True  # False when only the display settings changed (same inference as the last result)
    unit: str = "deg"  # the prediction's unit (the model's input spec)

    @property
    def angle(self) -> float | None:
        """The predicted steering angle (degrees) of a single-output network."""
        return float(self.prediction[0]) if self.prediction.shape == (1,) else None


@dataclass
class _Captured:
    frame: Frame
    view: np.ndarray
    shown: np.ndarray  # the picture for the frame panel
    box: tuple | None  # the network's crop in `shown`
    requested: bool  # read for a step or seek (not by playback)


@dataclass
class _Raw:
    item: _Captured
    masks: dict
    prediction: np.ndarray
    timings: dict


class Pipeline:
    """Plays `source` through `runtime`; results go to `on_result(Result)`, news to `on_event(kind, message)`.

    Event kinds: "warning" (counted, playing goes on), "error" (the user has to act: frames that cannot
    be processed pause playback; a refused engine switch keeps the engine that runs), "finished" (the
    last frame of a file was processed). `runtime_factory(backend, methods)` builds a
    new engine when the backend changes or a method the current one was not built for is chosen;
    `backend` is the user's choice ("auto" lets the engine pick one that runs every chosen method).
    """

    def __init__(self, source, runtime, on_result, on_event=lambda kind, message: None, *, runtime_factory=None,
                 methods=None, backend: str = "auto", realtime: bool = True, speed: float = 1.0, opacity: float = 0.7,
                 colormap: str = "red", queue_size: int = 2, stats_window: int = 120):
        self.source = source
        self.runtime = runtime
        self.on_result = on_result
        self.on_event = on_event
        self.runtime_factory = runtime_factory
        self.methods = tuple(methods or runtime.methods)
        self.backend_choice = backend
        self.realtime = realtime
        self.speed = speed
        self.opacity = opacity
        self.colormap = colormap
        self.queue = FrameQueue(queue_size)
        self.stats = TimingStats(stats_window)
        self.bad = 0
        self.processed = 0
        self._cond = threading.Condition()
        self._playing = False
        self._at_end = False  # the capture thread reached the end of a file (END is queued)
        self._stopped = False
        self._request = None  # index asked for by a step or seek
        self._next = 0  # next index to read while playing
        self._target = -1  # the frame on screen or on its way (being processed, or asked for): steps count from it
        self._clock = None  # (wall time, index) real-time pacing origin
        self._bad_run = 0
        self._want_backend = None
        self._refresh = False  # re-run the last frame (methods/backend changed)
        self._redraw = False  # re-render the last result (opacity/colour map changed)
        self._last: _Raw | None = None
        self._recorder: VideoRecorder | None = None
        self._record_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._capture_loop, name="vbp-capture", daemon=True),
                         threading.Thread(target=self._inference_loop, name="vbp-inference", daemon=True)]

    # ---- commands (any thread) ----
    def start(self, playing: bool = False) -> "Pipeline":
        self._playing = playing
        for t in self._threads:
            t.start()
        return self

    @property
    def playing(self) -> bool:
        return self._playing

    @property
    def position(self) -> int:
        """The frame on screen, or the one on its way there (-1 before the first)."""
        return self._target

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def play(self) -> None:
        with self._cond:
            length = self.source.length
            if self._target >= 0:
                self._next = self._target + 1
            if length is not None and self._next >= length:
                self._next = 0
            self._playing = True
            self._at_end = False
            self._clock = None
            self._cond.notify_all()

    def pause(self) -> None:
        with self._cond:
            self._playing = False
            self._cond.notify_all()
        self.queue.clear()

    def toggle(self) -> bool:
        """Play or pause; returns whether it now plays."""
        if self._playing:
            self.pause()
        else:
            self.play()
        return self._playing

    def seek(self, index: int) -> None:
        """Show frame `index` next (clamped to the source); playing continues from there."""
        with self._cond:
            if self.source.length is not None:
                index = min(index, self.source.length - 1)
            self._request = self._target = max(0, int(index))
            self._at_end = False
            self._clock = None
            self._cond.notify_all()

    def step(self, delta: int) -> None:
        """Pause and show the frame `delta` frames from the one on screen (a live camera only steps forward)."""
        self.pause()
        if self.source.live and delta < 0:
            return
        self.seek(max(0, self._target + delta))

    def set_realtime(self, realtime: bool) -> None:
        with self._cond:
            self.realtime = realtime
            self._clock = None

    def set_speed(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        with self._cond:
            self.speed = speed
            self._clock = None

    def set_methods(self, methods) -> None:
        methods = tuple(methods)
        if not methods:
            raise ValueError("choose at least one method")
        self.methods = methods
        self._refresh = True

    def set_backend(self, backend: str) -> None:
        self.backend_choice = self._want_backend = backend
        self._refresh = True

    def set_display(self, opacity: float | None = None, colormap: str | None = None) -> None:
        if opacity is not None:
            self.opacity = float(opacity)
        if colormap is not None:
            self.colormap = colormap
        self._redraw = True

    def start_recording(self, path) -> None:
        with self._record_lock:
            if self._recorder is not None:
                raise ValueError(f"already recording to {self._recorder.path}")
            self._recorder = VideoRecorder(path, self.source.fps)

    def stop_recording(self):
        """Finish the recording; returns (path or None, frames written)."""
        with self._record_lock:
            rec, self._recorder = self._recorder, None
        if rec is None:
            return None, 0
        return rec.close(), rec.frames

    @property
    def recording(self) -> bool:
        return self._recorder is not None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both threads, finish a recording and close the source."""
        with self._cond:
            self._stopped = True
            self._playing = False
            self._cond.notify_all()
        self.queue.clear()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout)
        self.stop_recording()
        self.source.close()

    # ---- capture thread ----
    def _interrupted(self) -> bool:
        return self._stopped or self._request is not None or not self._playing

    def _capture_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and self._request is None and (not self._playing or self._at_end):
                    self._cond.wait()
                if self._stopped:
                    return
                single = self._request is not None
                index = self._request if single else self._next
                self._request = None
                length = self.source.length
            if not single and length is not None and index >= length:
                self._end()
                continue
            item = self._read(index, single)
            if item is None:
                continue
            with self._cond:
                self._next = index + 1
            if single:
                self.queue.clear()
                self.queue.put(item, drop_stale=True)
                continue
            self._pace(index)
            if not self.queue.put(item, drop_stale=self.realtime or self.source.live, abort=self._interrupted):
                with self._cond:
                    if self._next == index + 1:
                        self._next = index  # not shown: play it when playback resumes

    def _read(self, index: int, single: bool):
        try:
            frame = self.source.read(index)
            view = frame.image if frame.prepared else self.runtime.prepare(frame.image)
        except EndOfSource as e:
            if str(e):
                self.on_event("warning", str(e))
            self._end()
            return None
        except SourceLost as e:
            self.pause()
            self.on_event("error", str(e))
            return None
        except (BadFrame, ValueError) as e:
            self.bad += 1
            self._bad_run += 1
            with self._cond:
                self._next = index + 1
            if not self.source.live and self.source.length is None and self._bad_run >= BAD_RUN:
                self.on_event("warning", f"{e}; {BAD_RUN} unreadable frames in a row, stopping at frame {index}")
                self.source.length = index
                self._end()
            elif not self.source.live or self._bad_run == 1:  # a failing camera: say it once per run
                self.on_event("warning", f"skipped a bad frame: {e}")
            return None
        self._bad_run = 0
        shown = frame.image if frame.camera is None else frame.camera
        geometry = getattr(self.source, "view", None) if frame.prepared else self.runtime.view
        box = None if shown is view or geometry is None else view_box(shown.shape, geometry)
        return _Captured(frame, view, shown, box, single)

    def _end(self) -> None:
        with self._cond:
            self._at_end = True
        self.queue.put(END, drop_stale=False, abort=lambda: self._stopped)

    def _pace(self, index: int) -> None:
        if not self.realtime or self.source.live:
            return
        with self._cond:
            now = time.perf_counter()
            if self._clock is None:
                self._clock = (now, index)
            t0, i0 = self._clock
            due = t0 + (index - i0) / (self.source.fps * self.speed)
            while due > now and not self._interrupted():
                self._cond.wait(due - now)
                now = time.perf_counter()
            if now - due > 0.5:  # fell behind (slow decoding): restart the clock rather than rush
                self._clock = (now, index)

    # ---- inference thread ----
    def _inference_loop(self) -> None:
        while not self._stopped:
            item = self.queue.get(timeout=0.05)
            if item is None:
                if self._refresh and self._last is not None:
                    self._refresh = False
                    self._process(self._last.item)
                elif self._redraw and self._last is not None:
                    self._redraw = False
                    self._emit(self._last, fresh=False)
                continue
            self._refresh = self._redraw = False
            if item is not END and not item.requested:
                with self._cond:
                    if not self._playing:
                        continue  # played frame that was still on its way when playback paused
                    self._target = item.frame.index
            if item is END:
                with self._cond:
                    self._playing = False
                self.on_event("finished", f"{self.source.name}: end ({self.processed} frames shown, "
                                          f"{self.dropped} dropped, {self.bad} bad)")
                continue
            self._process(item)

    def _switch_runtime(self) -> None:
        backend, self._want_backend = self._want_backend, None
        missing = set(self.methods) - set(self.runtime.methods)
        if backend is None and not missing:
            return
        if self.runtime_factory is None:
            self.on_event("error", "this player cannot switch backends or methods")
            return
        backend = backend or self.backend_choice
        methods = tuple(dict.fromkeys(self.runtime.methods + self.methods))
        try:
            self.runtime = self.runtime_factory(backend, methods)
        except Exception as e:  # the engine reports unusable backends/models in many ways; say which
            self.methods = tuple(m for m in self.methods if m in self.runtime.methods) or self.runtime.methods
            self.on_event("error", f"cannot switch to backend {backend} with methods {', '.join(methods)}: {e}")
        self.stats = TimingStats(self.stats.window)  # timings of different engines do not mix

    def _process(self, item: _Captured) -> None:
        self._switch_runtime()  # the fields it reads are set before the refresh flag that may have led here
        rt = self.runtime
        want = (rt.config.height, rt.config.width)
        if item.view.shape[:2] != want:
            self.pause()
            self.on_event("error", f"{self.source.name}: frames at the model's view are {item.view.shape[1]}x"
                                   f"{item.view.shape[0]}, but the model expects {want[1]}x{want[0]}")
            return
        try:
            r = rt.run(item.view[None], methods=self.methods)
        except Exception as e:  # an engine failure on one frame must not end the viewer; report it
            self.pause()
            self.on_event("error", f"{self.source.name}: inference failed on frame {item.frame.index}: "
                                   f"{type(e).__name__}: {e}")
            return
        self.stats.add(r.timings, time.perf_counter())
        self.processed += 1
        raw = _Raw(item, {m: np.asarray(r.masks[m][0]) for m in self.methods}, np.asarray(r.prediction[0]).ravel(),
                   dict(r.timings))
        self._last = raw
        self._emit(raw)

    def _emit(self, raw: _Raw, fresh: bool = True) -> None:
        item = raw.item
        result = Result(self.source.name, item.frame.index, self.source.length, frame_panel(item.shown, item.box),
                        method_panels(item.view, raw.masks, self.opacity, self.colormap), raw.masks, item.view,
                        raw.prediction, item.frame.truth, raw.timings, self.stats.summary(), self.runtime.backend,
                        self.dropped, self.bad, fresh,
                        getattr(getattr(self.runtime, "spec", None), "unit", "deg"))
        with self._record_lock:
            if fresh and self._recorder is not None:
                try:
                    self._recorder.write(composite(result))
                except OSError as e:
                    self._recorder = None
                    self.on_event("error", f"recording stopped: {e}")
        self.on_result(result)

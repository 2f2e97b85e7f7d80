"""The viewer's main window: the frame with the crop outlined, one overlay per method side by side, the
steering gauge and angle plot, live engine timing, and the controls. Inference runs in `Pipeline`
threads; results arrive here through a queued signal, newest only, so the window never waits."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from PyQt5.QtCore import QObject, Qt, pyqtSignal
from PyQt5.QtWidgets import (
    QAction,
    QApplication,
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMainWindow,
    QSlider,
    QVBoxLayout,
    QWidget,
)
from vbp_rt.audit.timeline import load_timeline
from vbp_rt.data.sources import open_source

from vbp_rt.methods import available as available_methods
from vbp_rt.overlay import COLORMAPS

from .audit_timeline import AuditTimeline
from .pipeline import Pipeline
from .render import composite, write_image
from .widgets import (
    AnglePlot,
    ImageView,
    SteeringGauge,
    TimingPlot,
    TimingTable,
    TransportBar,
)
from .widgets.transport import SPEEDS

SHORTCUTS = [
    ("Space", "play / pause"),
    ("Left / Right", "previous / next frame"),
    ("Shift+Left / Shift+Right", "10 frames back / forward"),
    ("Home", "first frame"),
    ("F", "real time (drop stale frames) / every frame as fast as possible"),
    ("+ / -", "faster / slower (real time)"),
    ("S", "snapshot of the overlaid output (PNG, in the save folder)"),
    ("R", "start / stop recording the overlaid output (MP4, in the save folder)"),
    ("Ctrl+O", "open a video, drive (.h5) or image"),
    ("Ctrl+Shift+O", "open a folder of images"),
    ("C", "open a camera"),
    ("M", "open a training run in the monitor"),
    ("N / P", "next / previous audit event (vbp view SOURCE --audit AUDIT_DIR)"),
    ("F1", "this help"),
    ("Ctrl+Q", "quit"),
]
MESSAGE_STYLE = {"error": "background:#8b1a1a; color:white; padding:6px;",
                 "warning": "background:#8a6d00; color:white; padding:6px;"}


class StartBridge(QObject):
    """Hands the Runtime prepared in the background (or why it failed) to the UI thread."""

    ready = pyqtSignal(object, object)  # runtime, methods
    failed = pyqtSignal(str)


class ResultBridge(QObject):
    """Hands results from the inference thread to the UI thread, keeping only the newest undisplayed one."""

    result_ready = pyqtSignal()
    event = pyqtSignal(str, str)

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._latest = None

    def push(self, result) -> None:
        with self._lock:
            waiting = self._latest is not None
            self._latest = result
        if not waiting:
            self.result_ready.emit()

    @property
    def pending(self) -> bool:
        """A result waits to be shown."""
        return self._latest is not None

    def take(self):
        with self._lock:
            result, self._latest = self._latest, None
        return result


class HelpDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("vbp view: keys")
        rows = "".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in SHORTCUTS)
        label = QLabel(f"<table cellspacing=6>{rows}</table><p>Masks and timings come from the engine; red = "
                       "where the network looks (VisualBackProp), the other panels use the same frame.</p>")
        label.setWordWrap(True)
        QVBoxLayout(self).addWidget(label)


class ViewerWindow(QMainWindow):
    def __init__(self, runtime_factory, runtime, *, methods=("vbp", "lrp"), backend: str = "auto",
                 realtime: bool = True, speed: float = 1.0, opacity: float = 0.7, colormap: str = "red", save_dir="."):
        super().__init__()
        self.make_runtime = runtime_factory
        self.runtime = runtime  # None until a model prepared in the background arrives (set_runtime)
        self._pending_source = None
        self.methods = tuple(methods)
        self.backend_choice = backend
        self.realtime, self.speed, self.opacity, self.colormap = realtime, speed, opacity, colormap
        self.save_dir = Path(save_dir)
        self.pipeline: Pipeline | None = None
        self.last_result = None
        self.results_shown = 0
        self.messages: list = []  # (kind, text), oldest first
        self.monitors: list = []
        self.audit_timeline = None
        self.bridge = ResultBridge()
        self.bridge.result_ready.connect(self._show_result, Qt.QueuedConnection)
        self.bridge.event.connect(self._on_event, Qt.QueuedConnection)
        self.help_dialog = HelpDialog(self)
        self._build_ui()
        self._build_actions()
        self.setWindowTitle("vbp view")
        self.resize(1400, 920)
        if runtime is not None:
            self._fill_choices()

    # ---- layout ----
    def _build_ui(self) -> None:
        central = QWidget()
        v = QVBoxLayout(central)
        self.banner = QLabel(wordWrap=True)
        self.banner.hide()
        self.banner.mousePressEvent = lambda _e: self.banner.hide()
        v.addWidget(self.banner)

        top = QHBoxLayout()
        self.frame_view = ImageView("frame")
        top.addWidget(self.frame_view, 3)
        side = QVBoxLayout()
        self.gauge = SteeringGauge()
        self.angle_plot = AnglePlot()
        side.addWidget(self.gauge, 2)
        side.addWidget(self.angle_plot, 3)
        top.addLayout(side, 2)
        v.addLayout(top, 5)

        self.panels_grid = QGridLayout()
        self.panel_views: dict = {}
        v.addLayout(self.panels_grid, 2)

        bottom = QHBoxLayout()
        self.timing_table = TimingTable()
        self.timing_plot = TimingPlot()
        bottom.addWidget(self.timing_table)
        bottom.addWidget(self.timing_plot, 1)
        v.addLayout(bottom, 2)

        self.transport = TransportBar()
        self.transport.play_clicked.connect(self.toggle_play)
        self.transport.step.connect(self.step)
        self.transport.seek.connect(self.seek)
        self.transport.speed_changed.connect(self.set_speed)
        self.transport.realtime_changed.connect(self.set_realtime)
        self.transport.realtime.setChecked(self.realtime)
        self.transport.set_speed(self.speed)
        v.addWidget(self.transport)
        v.addLayout(self._settings_row())
        self.setCentralWidget(central)

        self.source_label = QLabel("no source")
        self.backend_label = QLabel(f"backend {self.runtime.backend}" if self.runtime is not None
                                    else "preparing the model…")
        self.record_label = QLabel("")
        self.record_label.setStyleSheet("color:#ff4040; font-weight:bold;")
        for w in (self.source_label, self.backend_label, self.record_label):
            self.statusBar().addPermanentWidget(w)

    def _settings_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(QLabel("methods:"))
        self.method_boxes = {}
        self.method_row = QHBoxLayout()  # every registered method once the engine is loaded (_fill_choices)
        for name in self.methods:
            self._add_method_box(name)
        row.addLayout(self.method_row)
        row.addStretch(1)
        row.addWidget(QLabel("backend:"))
        self.backend_box = QComboBox()
        self.backend_box.addItems(list(dict.fromkeys(["auto", self.backend_choice])))
        self.backend_box.setCurrentText(self.backend_choice)
        self.backend_box.currentTextChanged.connect(self.set_backend)
        row.addWidget(self.backend_box)
        row.addWidget(QLabel("opacity:"))
        self.opacity_slider = QSlider(Qt.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(round(self.opacity * 100))
        self.opacity_slider.setMaximumWidth(140)
        self.opacity_slider.valueChanged.connect(lambda v: self.set_display(opacity=v / 100))
        row.addWidget(self.opacity_slider)
        row.addWidget(QLabel("colours:"))
        self.colormap_box = QComboBox()
        self.colormap_box.addItems(list(COLORMAPS))
        self.colormap_box.setCurrentText(self.colormap)
        self.colormap_box.currentTextChanged.connect(lambda c: self.set_display(colormap=c))
        row.addWidget(self.colormap_box)
        for w in (self.backend_box, self.opacity_slider, self.colormap_box):
            w.setFocusPolicy(Qt.NoFocus)
        return row

    def _add_method_box(self, name: str) -> None:
        box = QCheckBox(name)
        box.setChecked(name in self.methods)
        box.setFocusPolicy(Qt.NoFocus)
        box.toggled.connect(self._methods_toggled)
        self.method_boxes[name] = box
        self.method_row.addWidget(box)

    def _fill_choices(self) -> None:
        """Every registered method and every backend this machine runs: finding the backends probes onnxruntime and
        CUDA, so a window shown before its model is ready lists them once the model is."""
        from vbp_rt.runtime import available_backends  # onnxruntime: the model brought it in already
        for name in available_methods():
            if name not in self.method_boxes:
                self._add_method_box(name)
        self.backend_box.blockSignals(True)
        self.backend_box.addItems([b for b in available_backends()
                                   if self.backend_box.findText(b) < 0])
        self.backend_box.blockSignals(False)

    def set_runtime(self, runtime, methods) -> None:
        """The model prepared in the background is ready: list the choices and open the source waiting for it."""
        self.runtime = runtime
        self._fill_choices()
        self.set_methods(methods)
        self.backend_label.setText(f"backend {runtime.backend}")
        if self._pending_source is not None:
            spec, play = self._pending_source
            self._pending_source = None
            self.open_source(spec, play=play)

    def _build_actions(self) -> None:
        def action(menu, text, shortcut, slot):
            a = QAction(text, self)
            if shortcut:
                a.setShortcuts([shortcut] if isinstance(shortcut, str) else shortcut)
                a.setShortcutContext(Qt.ApplicationShortcut)
            a.triggered.connect(slot)
            menu.addAction(a)
            return a

        bar = self.menuBar()
        f = bar.addMenu("&File")
        action(f, "Open video, drive or image…", "Ctrl+O", self._ask_open_file)
        action(f, "Open image folder…", "Ctrl+Shift+O", self._ask_open_folder)
        action(f, "Open camera…", "C", self._ask_open_camera)
        action(f, "Training monitor…", "M", self._ask_open_monitor)
        f.addSeparator()
        action(f, "Snapshot (PNG)", "S", self.snapshot)
        action(f, "Record / stop recording", "R", self.toggle_record)
        f.addSeparator()
        action(f, "Quit", "Ctrl+Q", self.close)
        p = bar.addMenu("&Play")
        action(p, "Play / pause", "Space", self.toggle_play)
        action(p, "Previous frame", "Left", lambda: self.step(-1))
        action(p, "Next frame", "Right", lambda: self.step(1))
        action(p, "10 frames back", "Shift+Left", lambda: self.step(-10))
        action(p, "10 frames forward", "Shift+Right", lambda: self.step(10))
        action(p, "First frame", "Home", lambda: self.seek(0))
        action(p, "Next audit event", "N", lambda: self._audit_event(1))
        action(p, "Previous audit event", "P", lambda: self._audit_event(-1))
        action(p, "Real time / as fast as possible", "F",
               lambda: self.transport.realtime.setChecked(not self.transport.realtime.isChecked()))
        action(p, "Faster", ["+", "="], lambda: self._change_speed(1))
        action(p, "Slower", "-", lambda: self._change_speed(-1))
        h = bar.addMenu("&Help")
        action(h, "Keys", "F1", self.help_dialog.show)

    # ---- sources ----
    def open_source(self, spec, play: bool = False) -> bool:
        """Open a video, camera index, drive or image folder; on failure say why and keep what was open. Before the
        model is ready the source waits for it."""
        if self.runtime is None:
            self._pending_source = (spec, play)
            self.source_label.setText(f"{spec} (waiting for the model)")
            return True
        try:
            source = open_source(spec, self.runtime.config.view)
        except (ValueError, OSError) as e:
            self.show_message("error", str(e))
            return False
        self._stop_pipeline()
        self.banner.hide()
        self.last_result = None
        self.angle_plot.clear_data()
        self.timing_plot.clear_data()
        self.pipeline = Pipeline(source, self.runtime, self.bridge.push, self.bridge.event.emit,
                                 runtime_factory=self.make_runtime, methods=self.methods,
                                 backend=self.backend_choice, realtime=self.realtime,
                                 speed=self.speed, opacity=self.opacity, colormap=self.colormap)
        self.pipeline.start(playing=play)
        if not play:
            self.pipeline.seek(0)
        self.transport.set_playing(play)
        self.frame_view.title = ("network input (a drive stores the view)"
                                 if source.kind == "drive" and source.camera is None
                                 else "camera frame (green: the network's crop)")
        kind = "live" if source.live else f"{source.length} frames at {source.fps:g} fps"
        self.source_label.setText(f"{source.name} ({kind})")
        self.setWindowTitle(f"vbp view: {source.name}")
        return True

    def _stop_pipeline(self) -> None:
        if self.pipeline is None:
            return
        if self.pipeline.recording:
            self.toggle_record()
        self.pipeline.stop()
        self.runtime = self.pipeline.runtime
        self.pipeline = None

    def open_monitor(self, run_dir):
        from .monitor import MonitorWindow
        monitor = MonitorWindow(run_dir, opacity=self.opacity, colormap=self.colormap)
        monitor.show()
        self.monitors.append(monitor)
        return monitor

    def attach_audit(self, audit_dir, source_spec):
        """Show the audit timeline of the open source under the frame; N / P and its buttons jump between events."""
        try:
            timeline = load_timeline(audit_dir, source_spec)
        except (ValueError, OSError) as e:
            self.show_message("error", str(e))
            return None
        if self.audit_timeline is not None:
            self.audit_timeline.deleteLater()
        self.audit_timeline = AuditTimeline(timeline)
        self.audit_timeline.jump.connect(self._jump_to_event)
        layout = self.centralWidget().layout()
        layout.insertWidget(layout.indexOf(self.transport), self.audit_timeline)
        return self.audit_timeline

    def _jump_to_event(self, frame: int) -> None:
        if self.pipeline is not None and self.pipeline.playing:
            self.toggle_play()
        self.seek(frame)

    def _audit_event(self, direction: int) -> None:
        if self.audit_timeline is not None:
            self.audit_timeline.go(direction)

    def _ask_open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a video, drive or image", "",
                                              "Videos, drives, images (*.mp4 *.avi *.mkv *.mov *.m4v *.h5 *.hdf5 "
                                              "*.png *.jpg *.jpeg *.bmp);;All files (*)")
        if path:
            self.open_source(path, play=True)

    def _ask_open_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a folder of images")
        if path:
            self.open_source(path, play=True)

    def _ask_open_camera(self) -> None:
        index, ok = QInputDialog.getInt(self, "Open a camera", "camera index:", 0, 0, 64)
        if ok:
            self.open_source(str(index), play=True)

    def _ask_open_monitor(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a training run folder (vbp train --out)")
        if path:
            self.open_monitor(path)

    # ---- controls ----
    def toggle_play(self) -> None:
        if self.pipeline is not None:
            self.transport.set_playing(self.pipeline.toggle())

    def step(self, delta: int) -> None:
        if self.pipeline is not None:
            self.pipeline.step(delta)
            self.transport.set_playing(False)

    def seek(self, index: int) -> None:
        if self.pipeline is not None:
            self.pipeline.seek(index)

    def set_speed(self, speed: float) -> None:
        self.speed = speed
        if self.pipeline is not None:
            self.pipeline.set_speed(speed)

    def _change_speed(self, direction: int) -> None:
        i = min(range(len(SPEEDS)), key=lambda k: abs(SPEEDS[k] - self.speed))
        self.transport.set_speed(SPEEDS[max(0, min(len(SPEEDS) - 1, i + direction))])

    def set_realtime(self, realtime: bool) -> None:
        self.realtime = realtime
        if self.pipeline is not None:
            self.pipeline.set_realtime(realtime)
        self.statusBar().showMessage("real time: stale frames are dropped" if realtime
                                     else "as fast as possible: every frame", 4000)

    def _methods_toggled(self) -> None:
        chosen = tuple(name for name, box in self.method_boxes.items() if box.isChecked())
        if not chosen:
            self.show_message("warning", "choose at least one method")
        self.set_methods(chosen or self.methods)

    def set_methods(self, methods) -> None:
        self.methods = tuple(methods)
        for name, box in self.method_boxes.items():
            box.blockSignals(True)
            box.setChecked(name in self.methods)
            box.blockSignals(False)
        if self.pipeline is not None:
            self.pipeline.set_methods(self.methods)

    def set_backend(self, backend: str) -> None:
        if self.backend_box.currentText() != backend:
            self.backend_box.setCurrentText(backend)  # comes back here through the signal
            return
        self.backend_choice = backend
        if self.pipeline is not None:
            self.pipeline.set_backend(backend)
        self.statusBar().showMessage(f"switching to backend {backend}…", 4000)

    def set_display(self, opacity: float | None = None, colormap: str | None = None) -> None:
        self.opacity = self.opacity if opacity is None else opacity
        self.colormap = colormap or self.colormap
        if self.pipeline is not None:
            self.pipeline.set_display(opacity, colormap)

    def snapshot(self) -> Path | None:
        """Save the overlaid output of the frame on screen as PNG in the save folder."""
        r = self.last_result
        if r is None:
            self.show_message("warning", "nothing to save yet")
            return None
        try:
            path = write_image(self.save_dir / f"vbp-{Path(r.source).stem}-{r.index:06d}.png", composite(r))
        except OSError as e:
            self.show_message("error", f"snapshot failed: {e}")
            return None
        self.statusBar().showMessage(f"snapshot saved: {path}", 6000)
        return path

    def toggle_record(self) -> Path | None:
        """Start recording the overlaid output, or stop and return the finished file."""
        if self.pipeline is None:
            return None
        if self.pipeline.recording:
            path, frames = self.pipeline.stop_recording()
            self.record_label.setText("")
            self.statusBar().showMessage(f"recorded {frames} frames to {path}" if path else "nothing recorded", 8000)
            return path
        stem = Path(self.pipeline.source.name).stem.replace(" ", "")
        path = self.save_dir / f"vbp-{stem}-{time.strftime('%Y%m%d-%H%M%S')}.mp4"
        self.pipeline.start_recording(path)
        self.record_label.setText(f"● REC {path.name}")
        return None

    # ---- results and news ----
    def _sync_panels(self, names) -> None:
        names = list(names)
        if names == list(self.panel_views):
            return
        for view in self.panel_views.values():
            self.panels_grid.removeWidget(view)
            view.deleteLater()
        self.panel_views = {}
        columns = 2 if len(names) <= 4 else 3
        for i, name in enumerate(names):
            view = ImageView(name.upper())
            self.panels_grid.addWidget(view, i // columns, i % columns)
            self.panel_views[name] = view

    def _show_result(self) -> None:
        r = self.bridge.take()
        if r is None:
            return
        self.last_result = r
        self.results_shown += 1
        self.frame_view.set_image(r.image)
        self._sync_panels(r.panels)
        for name, image in r.panels.items():
            self.panel_views[name].set_image(image)
        if r.fresh:
            if r.angle is not None:
                self.gauge.set_angles(r.angle, r.truth)
                self.angle_plot.add(r.index, r.angle, r.truth)
            self.timing_plot.add(r.timings)
        self.timing_table.show_result(r.timings, r.stats, r.dropped, r.bad)
        self.transport.set_position(r.index, r.length)
        if self.audit_timeline is not None:
            self.audit_timeline.set_position(r.index)
        self.backend_label.setText(f"backend {r.backend}")

    def _on_event(self, kind: str, message: str) -> None:
        self.messages.append((kind, message))
        if kind == "finished":
            self.transport.set_playing(False)
            self.statusBar().showMessage(message, 8000)
            return
        if kind == "error" and self.pipeline is not None:
            self.transport.set_playing(self.pipeline.playing)
            self.set_methods(self.pipeline.methods)  # a method the engine refused is unchecked again
        self.show_message(kind, message)

    def show_message(self, kind: str, text: str) -> None:
        """Show an error or warning in the banner above the frame (click it to dismiss) and on stderr."""
        self.banner.setStyleSheet(MESSAGE_STYLE.get(kind, MESSAGE_STYLE["warning"]))
        self.banner.setText(f"{kind}: {text}")
        self.banner.show()
        print(f"vbp view: {kind}: {text}", file=sys.stderr)

    def closeEvent(self, event) -> None:
        self._stop_pipeline()
        for m in self.monitors:
            m.close()
        super().closeEvent(event)


def start_in_background(window: ViewerWindow, start) -> threading.Thread:
    """Run `start() -> (runtime, methods)` on a thread; the window gets the result (set_runtime) or the error."""
    bridge = window.start_bridge = StartBridge()
    bridge.ready.connect(window.set_runtime, Qt.QueuedConnection)
    bridge.failed.connect(lambda text: window.show_message("error", text), Qt.QueuedConnection)

    def work():
        try:
            bridge.ready.emit(*start())
        except Exception as e:  # shown in the window: ValueError/OSError from the model, onnxruntime's own errors
            bridge.failed.emit(f"the model did not start: {e}")

    thread = threading.Thread(target=work, name="vbp-model-start", daemon=True)
    thread.start()
    return thread


def run_app(runtime_factory, runtime, source_spec, *, methods, backend="auto", realtime=True, speed=1.0,
            opacity=0.7, colormap="red", save_dir=".", monitor=None, audit=None, start=None) -> int:
    """The window. With runtime=None, `start() -> (runtime, methods)` prepares the model on a thread while the
    window is already up; the source opens when it is ready."""
    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = ViewerWindow(runtime_factory, runtime, methods=methods, backend=backend, realtime=realtime, speed=speed,
                          opacity=opacity, colormap=colormap, save_dir=save_dir)
    window.show()
    window.open_source(source_spec, play=True)
    if runtime is None:
        start_in_background(window, start)
    if audit:
        window.attach_audit(audit, source_spec)
    if monitor:
        window.open_monitor(monitor)
    return app.exec_()

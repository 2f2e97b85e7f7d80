"""The training monitor: a `vbp train` run folder, followed live while it trains.

Shows the probe frames with their VBP masks at each stored snapshot (a slider over the epochs, as in
the paper's Figures 5 and 14) and the loss and validation RMSE curves. The run log is read with
`trainer.runlog.RunLogReader` and polled once a second; a run whose log does not exist yet (or cannot
be opened yet) is waited for, with a message saying so.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PyQt5.QtCore import Qt, QTimer
from PyQt5.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from vbp_rt.overlay import overlay

from .widgets import ImageView

RUNLOG = "runlog.h5"


class MonitorWindow(QWidget):
    def __init__(self, run_dir, opacity: float = 0.7, colormap: str = "red", poll_ms: int = 1000, parent=None):
        super().__init__(parent)
        run_dir = Path(run_dir)
        self.path = run_dir if run_dir.suffix == ".h5" else run_dir / RUNLOG
        self.opacity, self.colormap = opacity, colormap
        self.reader = None
        self.rows = {}
        self.probe = None
        self.snaps = None
        self.setWindowTitle(f"vbp view: training monitor: {self.path.parent.name}")
        self.resize(1300, 900)

        v = QVBoxLayout(self)
        self.status = QLabel(wordWrap=True)
        v.addWidget(self.status)
        row = QHBoxLayout()
        self.epoch_slider = QSlider(Qt.Horizontal)
        self.epoch_slider.setEnabled(False)
        self.epoch_slider.valueChanged.connect(self._show_snapshot)
        self.epoch_label = QLabel("no snapshot yet")
        self.epoch_label.setMinimumWidth(220)
        self.follow = QCheckBox("follow the newest", checked=True)
        row.addWidget(QLabel("epoch:"))
        row.addWidget(self.epoch_slider, 1)
        row.addWidget(self.epoch_label)
        row.addWidget(self.follow)
        v.addLayout(row)
        self.grid = QGridLayout()
        self.probe_views: list = []
        v.addLayout(self.grid, 3)
        plots = QHBoxLayout()
        self.loss_plot = pg.PlotWidget(title="training loss (MSE, deg²)")
        self.loss_plot.setLogMode(y=True)
        self.loss_plot.addLegend(offset=(5, 5))
        self.step_curve = self.loss_plot.plot(pen=pg.mkPen((120, 170, 255, 120)), name="steps")
        self.loss_curve = self.loss_plot.plot(pen=pg.mkPen((255, 200, 40), width=2), symbol="o", symbolSize=6,
                                              name="epoch mean")
        self.rmse_plot = pg.PlotWidget(title="validation RMSE (deg)")
        self.rmse_curve = self.rmse_plot.plot(pen=pg.mkPen((60, 220, 90), width=2), symbol="o", symbolSize=6)
        for p in (self.loss_plot, self.rmse_plot):
            p.getAxis("left").enableAutoSIPrefix(False)
            p.setLabel("bottom", "epoch")
            p.showGrid(x=True, y=True, alpha=0.25)
            plots.addWidget(p)
        v.addLayout(plots, 2)

        self.timer = QTimer(self, interval=poll_ms)
        self.timer.timeout.connect(self.refresh)
        self.timer.start()
        self.refresh()

    def refresh(self) -> None:
        """Open the log when it appears, then pick up whatever the trainer has flushed since."""
        if self.reader is None and not self._open():
            return
        try:
            rows = self.reader.refresh()
        except (OSError, KeyError) as e:
            self._close_reader()
            self._say(f"lost the run log {self.path} ({e}); retrying…", error=True)
            return
        if rows != self.rows:
            self.rows = rows
            self._update_snapshots()
            self._update_curves()
        attrs = self.reader.attrs
        self._say(f"run {self.path.parent}: {attrs.get('arch', '?')} on view {attrs.get('view', '?')}, "
                  f"{rows['metrics']} of {attrs.get('epochs', '?')} epochs done, {rows['snapshots']} snapshots, "
                  f"started {attrs.get('started', '?')}")

    def _open(self) -> bool:
        from vbp_rt.trainer.runlog import RunLogReader
        if not self.path.exists():
            self._say(f"waiting for {self.path} (training has not written its run log yet)…")
            return False
        try:
            self.reader = RunLogReader(self.path)
        except (OSError, ValueError, KeyError) as e:
            self._say(f"cannot read {self.path} yet ({e}); retrying…", error=True)
            return False
        self.probe = self.reader.probe()
        self.rows = {}
        return True

    def _close_reader(self) -> None:
        if self.reader is not None:
            self.reader.close()
        self.reader = None

    def _say(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("color:#ff5050;" if error else "")

    def _update_snapshots(self) -> None:
        self.snaps = self.reader.snapshots()
        n = len(self.snaps["epoch"])
        at_end = self.epoch_slider.value() >= self.epoch_slider.maximum()
        self.epoch_slider.setEnabled(n > 0)
        self.epoch_slider.setRange(0, max(0, n - 1))
        if n and (self.follow.isChecked() and at_end or not self.probe_views):
            self.epoch_slider.setValue(n - 1)
        self._show_snapshot(self.epoch_slider.value())

    def _update_curves(self) -> None:
        m = self.reader.metrics()
        steps = self.reader.steps()
        ok = np.isfinite(steps["loss"]) & (steps["loss"] > 0)
        self.step_curve.setData(steps["epoch"][ok], steps["loss"][ok])
        ok = np.isfinite(m["train_loss"]) & (m["train_loss"] > 0)
        self.loss_curve.setData(m["epoch"][ok], m["train_loss"][ok])
        self.rmse_curve.setData(m["epoch"], m["val_rmse"])

    def _show_snapshot(self, s: int) -> None:
        if self.snaps is None or not len(self.snaps["epoch"]):
            return
        images, truth = self.probe["image"], self.probe["angle"]
        if len(self.probe_views) != len(images):
            columns = 2 if len(images) <= 8 else 3
            for i in range(len(images)):
                view = ImageView()
                self.grid.addWidget(view, i // columns, i % columns)
                self.probe_views.append(view)
        mask = self.snaps["mask"][s].astype(np.float32)
        pred = self.snaps["prediction"][s]
        for i, view in enumerate(self.probe_views):
            view.title = f"probe {i}: predicted {pred[i]:+.1f}°, true {truth[i]:+.1f}°"
            view.set_image(overlay(images[i], mask[i], opacity=self.opacity, colormap=self.colormap))
        self.epoch_label.setText(f"epoch {self.snaps['epoch'][s]:g} (snapshot {s + 1} of {len(self.snaps['epoch'])})")

    def closeEvent(self, event) -> None:
        self.timer.stop()
        self._close_reader()
        super().closeEvent(event)

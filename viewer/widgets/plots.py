"""Scrolling pyqtgraph plots: steering angle (predicted and true) and per-stage engine time."""
from __future__ import annotations

import collections

import pyqtgraph as pg

STAGE_COLORS = {"forward": (120, 170, 255), "vbp": (255, 80, 60), "lrp": (255, 200, 40), "total": (200, 200, 200)}
OTHER_COLORS = [(180, 110, 255), (60, 220, 200), (240, 130, 200), (150, 220, 90)]


class AnglePlot(pg.PlotWidget):
    """The last `history` shown frames: predicted angle (red) and true angle (green)."""

    def __init__(self, history: int = 300, parent=None):
        super().__init__(parent)
        self.history = history
        self.setLabel("left", "steering (deg)")
        self.getAxis("left").enableAutoSIPrefix(False)
        self.setLabel("bottom", "frame")
        self.addLegend(offset=(5, 5))
        self.showGrid(x=True, y=True, alpha=0.25)
        self.predicted_curve = self.plot(pen=pg.mkPen((255, 80, 60), width=2), name="predicted")
        self.truth_curve = self.plot(pen=pg.mkPen((60, 220, 90), width=2), name="true")
        self.clear_data()

    def clear_data(self) -> None:
        self.frames = collections.deque(maxlen=self.history)
        self.predicted = collections.deque(maxlen=self.history)
        self.truth = collections.deque(maxlen=self.history)
        self.predicted_curve.setData([], [])
        self.truth_curve.setData([], [])

    def add(self, frame: int, predicted: float, truth: float | None) -> None:
        if self.frames and frame == self.frames[-1]:  # the same frame again (method or backend changed)
            self.frames.pop()
            self.predicted.pop()
            self.truth.pop()
        elif self.frames and frame < self.frames[-1]:
            self.clear_data()  # a seek backwards starts a new trace
        self.frames.append(frame)
        self.predicted.append(predicted)
        self.truth.append(float("nan") if truth is None else truth)
        self.predicted_curve.setData(list(self.frames), list(self.predicted))
        self.truth_curve.setData(list(self.frames), list(self.truth), connect="finite")


class TimingPlot(pg.PlotWidget):
    """Milliseconds per stage for the last `history` results."""

    def __init__(self, history: int = 300, parent=None):
        super().__init__(parent)
        self.history = history
        self.setLabel("left", "time (ms)")
        self.getAxis("left").enableAutoSIPrefix(False)
        self.setLabel("bottom", "result")
        self.addLegend(offset=(5, 5))
        self.showGrid(x=True, y=True, alpha=0.25)
        self.curves: dict = {}
        self.series: dict = {}
        self.count = 0

    def clear_data(self) -> None:
        for curve in self.curves.values():
            self.removeItem(curve)
        self.plotItem.legend.clear()
        self.curves, self.series, self.count = {}, {}, 0

    def add(self, timings: dict) -> None:
        self.count += 1
        for stage, ms in timings.items():
            if stage not in self.curves:
                color = STAGE_COLORS.get(stage, OTHER_COLORS[len(self.curves) % len(OTHER_COLORS)])
                self.curves[stage] = self.plot(pen=pg.mkPen(color, width=2), name=stage)
                self.series[stage] = collections.deque(maxlen=self.history)
            self.series[stage].append((self.count, ms))
        for stage, points in self.series.items():
            xs, ys = zip(*points)
            self.curves[stage].setData(xs, ys)

"""The audit timeline under the viewer's frame (`vbp view SOURCE --audit AUDIT_DIR`): the anomaly score of every
frame with the drive's threshold, the events shaded and numbered by rank, a cursor at the frame on screen, and
buttons (keys N / P) that jump to the next / previous event."""
from __future__ import annotations

import pyqtgraph as pg
from PyQt5.QtCore import Qt, pyqtSignal
from PyQt5.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from vbp_rt.audit.timeline import Timeline, next_event


class AuditTimeline(QWidget):
    """Emits `jump(frame)` when an event is chosen; `set_position(frame)` moves the cursor."""

    jump = pyqtSignal(int)

    def __init__(self, timeline: Timeline, parent=None):
        super().__init__(parent)
        self.timeline = timeline
        self.position = 0
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.plot = pg.PlotWidget()
        self.plot.setMaximumHeight(140)
        self.plot.setLabel("left", "anomaly")
        self.plot.setLabel("bottom", "frame")
        self.plot.plot(timeline.index, timeline.score, pen=pg.mkPen((230, 70, 60), width=1))
        self.plot.addItem(pg.InfiniteLine(timeline.threshold, angle=0, pen=pg.mkPen((230, 70, 60), style=Qt.DashLine)))
        self.regions = []
        for e in timeline.events:
            region = pg.LinearRegionItem((e.first - 0.5, e.last + 0.5), movable=False,
                                         brush=pg.mkBrush(255, 152, 0, 70))
            self.plot.addItem(region)
            label = pg.TextItem(f"#{e.rank}", color=(255, 170, 60), anchor=(0, 0))
            label.setPos(e.first, float(timeline.score.max()) if len(timeline.score) else 1.0)
            self.plot.addItem(label)
            self.regions.append(region)
        self.cursor = pg.InfiniteLine(0, pen=pg.mkPen((80, 160, 255), width=2))
        self.plot.addItem(self.cursor)
        layout.addWidget(self.plot)
        row = QHBoxLayout()
        self.previous_button = QPushButton("◀ previous event (P)")
        self.next_button = QPushButton("next event (N) ▶")
        for b in (self.previous_button, self.next_button):
            b.setFocusPolicy(Qt.NoFocus)
        self.previous_button.clicked.connect(lambda: self.go(-1))
        self.next_button.clicked.connect(lambda: self.go(1))
        self.info = QLabel(f"{len(timeline.events)} events in this drive")
        row.addWidget(self.previous_button)
        row.addWidget(self.next_button)
        row.addWidget(self.info, 1)
        layout.addLayout(row)

    def set_position(self, frame: int) -> None:
        self.position = frame
        self.cursor.setValue(frame)

    def go(self, direction: int):
        """Jump to the next (+1) or previous (-1) event from the cursor; returns it (None when there is none)."""
        event = next_event(self.timeline, self.position, direction)
        if event is None:
            self.info.setText("no further event" if direction > 0 else "no earlier event")
            return None
        self.info.setText(f"event #{event.rank}: frames {event.first}-{event.last}, peak {event.peak}, "
                          f"score {event.score:.1f}")
        self.set_position(event.first)
        self.jump.emit(event.first)
        return event

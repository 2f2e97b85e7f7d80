"""Play/pause, step, seek slider, position, speed and the real-time / as-fast-as-possible toggle."""
from __future__ import annotations

from PyQt5.QtCore import Qt, pyqtSignal
from PyQt5.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QSlider,
    QToolButton,
    QWidget,
)

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0)


class TransportBar(QWidget):
    play_clicked = pyqtSignal()
    step = pyqtSignal(int)
    seek = pyqtSignal(int)
    speed_changed = pyqtSignal(float)
    realtime_changed = pyqtSignal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.back = QToolButton(text="◀", toolTip="previous frame (Left)")
        self.play = QToolButton(text="▶", toolTip="play / pause (Space)")
        self.forward = QToolButton(text="▶|", toolTip="next frame (Right)")
        self.slider = QSlider(Qt.Horizontal, toolTip="seek")
        self.position = QLabel("–")
        self.position.setMinimumWidth(110)
        self.speed = QComboBox(toolTip="playback speed in real-time mode (+/-)")
        self.speed.addItems([f"{s:g}x" for s in SPEEDS])
        self.speed.setCurrentIndex(SPEEDS.index(1.0))
        self.realtime = QCheckBox("real time", toolTip="play at the source's frame rate, dropping stale frames; "
                                                       "off: every frame as fast as possible (F)")
        self.realtime.setChecked(True)
        for w in (self.back, self.play, self.forward, self.slider, self.speed, self.realtime):
            w.setFocusPolicy(Qt.NoFocus)  # keys belong to the window's shortcuts
        for w in (self.back, self.play, self.forward):
            row.addWidget(w)
        row.addWidget(self.slider, 1)
        for w in (self.position, self.speed, self.realtime):
            row.addWidget(w)
        self.back.clicked.connect(lambda: self.step.emit(-1))
        self.forward.clicked.connect(lambda: self.step.emit(1))
        self.play.clicked.connect(self.play_clicked)
        self.slider.valueChanged.connect(self.seek)
        self.speed.currentIndexChanged.connect(lambda i: self.speed_changed.emit(SPEEDS[i]))
        self.realtime.toggled.connect(self.realtime_changed)

    def set_playing(self, playing: bool) -> None:
        self.play.setText("❚❚" if playing else "▶")

    def set_position(self, index: int, length: int | None) -> None:
        """Show the frame on screen; the slider follows without emitting seeks."""
        self.slider.blockSignals(True)
        if length:
            self.slider.setRange(0, length - 1)
            self.slider.setValue(index)
        self.slider.blockSignals(False)
        self.slider.setEnabled(bool(length))
        self.position.setText(f"{index + 1} / {length}" if length else f"{index + 1} (live)")

    def set_speed(self, speed: float) -> None:
        self.speed.setCurrentIndex(min(range(len(SPEEDS)), key=lambda i: abs(SPEEDS[i] - speed)))

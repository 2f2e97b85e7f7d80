"""A steering wheel turned to the predicted angle, with the true angle marked on the rim."""
from __future__ import annotations

from PyQt5.QtCore import QPointF, QRectF, QSize, Qt
from PyQt5.QtGui import QColor, QFont, QPainter, QPen
from PyQt5.QtWidgets import QSizePolicy, QWidget

PREDICTED = QColor(255, 80, 60)
TRUTH = QColor(60, 220, 90)


class SteeringGauge(QWidget):
    """Angles in steering-wheel degrees, positive = left (counter-clockwise), as in the drives."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.predicted: float | None = None
        self.truth: float | None = None
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Expanding)
        self.setMinimumSize(140, 150)

    def set_angles(self, predicted: float | None, truth: float | None = None) -> None:
        self.predicted, self.truth = predicted, truth
        self.update()

    def text(self) -> str:
        """The numbers under the wheel."""
        if self.predicted is None:
            return "no angle"
        s = f"pred {self.predicted:+.1f}°"
        if self.truth is not None:
            s += f"   true {self.truth:+.1f}°   err {self.predicted - self.truth:+.1f}°"
        return s

    def sizeHint(self) -> QSize:
        return QSize(220, 220)

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        p.fillRect(self.rect(), QColor(24, 24, 24))
        text_h = 36
        r = max(10.0, min(self.width(), self.height() - text_h) / 2 - 10)
        c = QPointF(self.width() / 2, (self.height() - text_h) / 2)
        if self.truth is not None:  # a tick on a fixed outer ring where the wheel should point
            p.save()
            p.translate(c)
            p.rotate(-self.truth)
            p.setPen(QPen(TRUTH, 5))
            p.drawLine(QPointF(0, -r - 8), QPointF(0, -r + 4))
            p.restore()
        p.save()
        p.translate(c)
        p.rotate(-(self.predicted or 0.0))
        p.setPen(QPen(QColor(200, 200, 200), max(3.0, r / 9)))
        p.drawEllipse(QRectF(-r, -r, 2 * r, 2 * r))
        p.setPen(QPen(QColor(170, 170, 170), max(2.0, r / 12)))
        for end in (QPointF(-r, 0), QPointF(r, 0), QPointF(0, r)):
            p.drawLine(QPointF(0, 0), end)
        p.setBrush(QColor(120, 120, 120))
        p.drawEllipse(QRectF(-r / 5, -r / 5, 2 * r / 5, 2 * r / 5))
        if self.predicted is not None:
            p.setPen(QPen(PREDICTED, max(4.0, r / 8)))
            p.drawLine(QPointF(0, -r - 4), QPointF(0, -r + r / 5))
        p.restore()
        p.setPen(QColor(235, 235, 235))
        f = QFont(p.font())
        f.setPointSizeF(max(8.0, f.pointSizeF()))
        p.setFont(f)
        p.drawText(QRectF(0, self.height() - text_h, self.width(), text_h), Qt.AlignCenter | Qt.TextWordWrap,
                   self.text())
        p.end()

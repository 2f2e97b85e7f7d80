"""A panel that shows a numpy image (BGR or gray) scaled to fit, keeping its aspect ratio, with a title."""
from __future__ import annotations

import cv2
import numpy as np
from PyQt5.QtCore import QRectF, QSize
from PyQt5.QtGui import QColor, QImage, QPainter
from PyQt5.QtWidgets import QSizePolicy, QWidget


class ImageView(QWidget):
    def __init__(self, title: str = "", parent=None):
        super().__init__(parent)
        self.title = title
        self._array: np.ndarray | None = None
        self._qimage: QImage | None = None
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.setMinimumSize(120, 40)

    def set_image(self, image: np.ndarray | None) -> None:
        """Show `image` (BGR or gray uint8); None clears the panel."""
        self._array = image
        if image is None:
            self._qimage = None
        else:
            rgb = np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if image.ndim == 2 else
                                                    cv2.COLOR_BGR2RGB))
            h, w = rgb.shape[:2]
            self._qimage = QImage(rgb.data, w, h, 3 * w, QImage.Format_RGB888).copy()
        self.update()

    def image(self) -> np.ndarray | None:
        """The array on display."""
        return self._array

    def image_rect(self) -> QRectF:
        """Where the image is drawn inside the widget."""
        if self._qimage is None:
            return QRectF()
        w, h = self._qimage.width(), self._qimage.height()
        scale = min(self.width() / w, self.height() / h)
        return QRectF((self.width() - w * scale) / 2, (self.height() - h * scale) / 2, w * scale, h * scale)

    def sizeHint(self) -> QSize:
        if self._qimage is None:
            return QSize(320, 120)
        return QSize(min(self._qimage.width(), 720), min(self._qimage.height(), 420))

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(24, 24, 24))
        if self._qimage is not None:
            p.setRenderHint(QPainter.SmoothPixmapTransform)
            p.drawImage(self.image_rect(), self._qimage)
        if self.title:
            p.setPen(QColor(0, 0, 0))
            p.drawText(7, 17, self.title)
            p.setPen(QColor(255, 255, 255))
            p.drawText(6, 16, self.title)
        p.end()

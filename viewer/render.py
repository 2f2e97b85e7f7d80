"""Pictures of a result: the frame with the crop outlined, one overlay per method, and the composite that
headless mode, recording and snapshots write. Masks and colours come from `vbp_rt.overlay`."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from vbp_rt.files import partial_path, publish, warn_stale
from vbp_rt.overlay import overlay, to_bgr

OUTLINE = (0, 220, 0)  # BGR
TEXT = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def frame_panel(image: np.ndarray, box) -> np.ndarray:
    """The source frame (BGR) with the network's crop rectangle `box` (x0, y0, x1, y1) outlined."""
    out = to_bgr(image).copy()
    if box is not None:
        x0, y0, x1, y1 = box
        thick = max(1, out.shape[1] // 320)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), OUTLINE, thick)
    return out


def method_panels(view_image: np.ndarray, masks: dict, opacity: float, colormap: str) -> dict:
    """method -> the view image with that method's mask overlaid."""
    return {name: overlay(view_image, mask, opacity=opacity, colormap=colormap) for name, mask in masks.items()}


def _fit_width(image: np.ndarray, width: int) -> np.ndarray:
    if image.shape[1] == width:
        return image
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _label(image: np.ndarray, text: str) -> np.ndarray:
    (w, h), base = cv2.getTextSize(text, FONT, 0.5, 1)
    cv2.rectangle(image, (0, 0), (w + 10, h + base + 8), (0, 0, 0), cv2.FILLED)
    cv2.putText(image, text, (5, h + 4), FONT, 0.5, TEXT, 1, cv2.LINE_AA)
    return image


def hud_lines(result) -> list:
    """Two lines of text: the angles, and this frame's engine timings with the rolling frame rate."""
    first = f"frame {result.index}"
    if result.angle is not None:
        unit = f" {result.unit}" if result.unit else ""
        first += f"   predicted {result.angle:+.1f}{unit}"
        if result.truth is not None:
            first += f"   true {result.truth:+.1f}{unit}   error {result.angle - result.truth:+.1f}{unit}"
    second = "   ".join(f"{k} {v:.1f} ms" for k, v in result.timings.items())
    second += f"   {result.stats.get('fps', 0.0):.1f} frames/s   {result.backend}"
    return [first, second]


def composite(result, width: int = 640) -> np.ndarray:
    """The frame on top, each method's overlay below it (labelled), and a text bar: one BGR image."""
    parts = [_label(_fit_width(result.image, width).copy(), result.source)]
    for name, panel in result.panels.items():
        parts.append(_label(_fit_width(panel, width).copy(), name.upper()))
    bar = np.zeros((44, width, 3), np.uint8)
    for i, line in enumerate(hud_lines(result)):
        cv2.putText(bar, line, (6, 17 + 20 * i), FONT, 0.45, TEXT, 1, cv2.LINE_AA)
    parts.append(bar)
    return np.vstack(parts)


def write_image(path, image: np.ndarray) -> Path:
    """Write an image atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path, path.suffix)  # OpenCV picks the format from the suffix
    try:
        if not cv2.imwrite(str(tmp), image):
            raise OSError(f"cannot write image {path} (unknown image suffix or unwritable folder)")
        return publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class VideoRecorder:
    """Writes BGR frames to a video under a temporary name; `close()` renames it into place.

    The video is MPEG-4 Part 2 in a fragmented MP4 (`.mp4`, `.m4v`, `.mov`) or Matroska (`.mkv`), written
    through FFmpeg (PyAV) with a keyframe every second: if the process is killed, the temporary file
    (named by the next run) still plays up to about the last second written. The size is taken from the
    first frame, padded to even numbers; later frames of another size are scaled to the first one's.
    """

    FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mp4", ".mkv": "matroska"}
    FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}

    def __init__(self, path, fps: float):
        self.path = Path(path)
        self.format = self.FORMATS.get(self.path.suffix.lower())
        if self.format is None:
            raise OSError(f"cannot write video {self.path}: give a .mp4 or .mkv file name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        warn_stale(self.path, "vbp view")
        self.tmp = partial_path(self.path, self.path.suffix)
        self.fps = fps
        self.container = None
        self.stream = None
        self.size = None
        self.frames = 0

    def _open(self, w: int, h: int) -> None:
        try:
            self.container = av.open(str(self.tmp), "w", format=self.format,
                                     options=self.FRAGMENTED if self.format == "mp4" else {"flush_packets": "1"})
        except (av.FFmpegError, OSError) as e:
            raise OSError(f"cannot write video {self.path} ({e})") from None
        self.stream = self.container.add_stream("mpeg4", rate=Fraction(self.fps).limit_denominator(1001))
        self.stream.width, self.stream.height = w + w % 2, h + h % 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.bit_rate = int(min(20e6, max(1e6, 0.25 * w * h * self.fps)))
        self.stream.codec_context.gop_size = max(1, round(self.fps))  # a keyframe, so a fragment, per second

    def write(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        if self.container is None:
            self.size = (w, h)
            self._open(w, h)
        if (w, h) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        w, h = self.size
        if w % 2 or h % 2:
            image = cv2.copyMakeBorder(image, 0, h % 2, 0, w % 2, cv2.BORDER_CONSTANT)
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file; returns its path, or None when no frame was written."""
        if self.container is None:
            return None
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()
            self.container = None
        publish(self.tmp, self.path)
        return self.path

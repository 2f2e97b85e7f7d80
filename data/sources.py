"""Where frames come from: video files, cameras, HDF5 drives from `vbp data`, image folders.

Every source has `kind`, `name`, `length` (None for a live camera), `fps`, `live`, `read(index) -> Frame` and
`label(index)` (what a result file names the frame by). A frame that cannot be decoded raises `BadFrame` (the
reader counts it and goes on); the end of a stream raises `EndOfSource`; a camera that stops delivering raises
`SourceLost`. The viewer plays sources; `vbp explain` and the audit read them to the end with `iter_frames`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .store import StoreReader

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".pgm", ".ppm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v"}
STORE_SUFFIXES = {".h5", ".hdf5"}

CAMERA_FAILURES = 30  # consecutive failed reads after which a camera counts as gone


class BadFrame(Exception):
    """One frame could not be read or decoded; the source itself is still usable."""


class EndOfSource(Exception):
    """The stream ended; the message (if any) says what is wrong with a stream that ended early."""


class SourceLost(Exception):
    """The source stopped delivering frames (a camera that was unplugged or closed)."""


@dataclass
class Frame:
    """One frame: `image` as delivered (BGR or gray), or already the network's view image when `prepared`;
    `camera` is the whole camera frame of a prepared one when the source has it."""

    index: int
    image: np.ndarray
    truth: float | None = None
    prepared: bool = False
    camera: np.ndarray | None = None


class VideoSource:
    kind = "video"
    live = False

    def __init__(self, path):
        self.path = Path(path)
        self.name = self.path.name
        self.cap = cv2.VideoCapture(str(self.path))
        if not self.cap.isOpened():
            raise ValueError(f"cannot open video {self.path} (not a video, or a codec OpenCV cannot decode)")
        ok, _ = self.cap.read()
        if not ok:
            self.cap.release()
            raise ValueError(f"video {self.path} opens but its first frame cannot be decoded")
        self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.length = count if count > 0 else None
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 25.0
        self._next = 0

    def read(self, index: int) -> Frame:
        sequential = index == self._next
        if not sequential:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = self.cap.read()
        self._next = index + 1
        if ok and frame is not None:
            return Frame(index, frame)
        if sequential:
            announced, self.length = self.length, index
            truncated = announced is not None and index < announced - 1
            raise EndOfSource(f"video {self.path} ends at frame {index} although its header announces {announced} "
                              f"(truncated or corrupt file)" if truncated else "")
        raise BadFrame(f"video {self.path}: frame {index} cannot be decoded")

    def label(self, index: int) -> str:
        return f"{self.path}#{index}"

    def close(self) -> None:
        self.cap.release()


class CameraSource:
    kind = "camera"
    live = True
    length = None

    def __init__(self, index: int):
        self.index = index
        self.name = f"camera {index}"
        self.cap = cv2.VideoCapture(index)
        if not self.cap.isOpened():
            raise ValueError(f"camera {index} does not exist or cannot be opened")
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 30.0
        self._failures = 0

    def label(self, index: int) -> str:
        return f"camera{self.index}#{index}"

    def read(self, index: int) -> Frame:
        ok, frame = self.cap.read()
        if ok and frame is not None:
            self._failures = 0
            return Frame(index, frame)
        self._failures += 1
        if self._failures >= CAMERA_FAILURES:
            raise SourceLost(f"camera {self.index} stopped delivering frames ({self._failures} failed reads)")
        raise BadFrame(f"camera {self.index}: a frame could not be read")

    def close(self) -> None:
        self.cap.release()


class ImageFolderSource:
    kind = "images"
    live = False

    def __init__(self, path, fps: float = 10.0):
        self.path = Path(path)
        self.name = self.path.name
        if self.path.is_dir():
            self.files = sorted(f for f in self.path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            self.files = [self.path]
        if not self.files:
            raise ValueError(f"folder {self.path} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.length = len(self.files)
        self.fps = fps

    def read(self, index: int) -> Frame:
        f = self.files[index]
        image = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if image is None or image.size == 0:
            raise BadFrame(f"image {f} cannot be decoded")
        if image.dtype != np.uint8:  # 16-bit or float images: stretch their range to 8 bits
            image = cv2.convertScaleAbs(image, alpha=255.0 / max(1, int(image.max())))
        return Frame(index, image)

    def label(self, index: int) -> str:
        return str(self.files[index])

    def close(self) -> None:
        pass


class StoreSource:
    """A drive written by `vbp data`: the images of one view, with the recorded steering angles as truth.

    When a video of the same name and frame count lies beside it (`vbp data synth --video`), its frames
    are shown as the camera frames the views were cropped from.
    """

    kind = "drive"
    live = False

    def __init__(self, path, view: str):
        self.path = Path(path)
        self.name = self.path.name
        self.reader = StoreReader(self.path)
        if view not in self.reader.views:
            views = ", ".join(self.reader.views)
            self.reader.close()
            raise ValueError(f"the model reads view {view!r}, but drive {self.path} only has: {views} "
                             f"(pick a model for that view with --model)")
        self.view = self.reader.view(view)
        self.images = self.reader.images(view)
        self.angle = self.reader.angle
        self.length = len(self.reader)
        self.fps = float(self.reader.attrs.get("fps") or 20.0)
        self.camera = self._camera_video()

    def _camera_video(self):
        path = self.path.with_suffix(".mp4")
        if not path.is_file():
            return None
        try:
            video = VideoSource(path)
        except ValueError:
            return None
        if video.length == self.length:
            return video
        video.close()
        return None

    def read(self, index: int) -> Frame:
        try:
            image = self.images[index]
        except (OSError, ValueError) as e:
            raise BadFrame(f"drive {self.path}: frame {index} cannot be read ({e})") from None
        truth = float(self.angle[index])
        camera = None
        if self.camera is not None:
            try:
                camera = self.camera.read(index).image
            except (BadFrame, EndOfSource):
                camera = None
        return Frame(index, image, truth if np.isfinite(truth) else None, prepared=True, camera=camera)

    def label(self, index: int) -> str:
        return f"{self.path}#{index}"

    def close(self) -> None:
        self.reader.close()
        if self.camera is not None:
            self.camera.close()


def open_source(spec, view: str):
    """A source from a command-line SOURCE: a camera index ("0"), a video, an HDF5 drive, an image folder or file.

    `view` is the network view ("svf", "hvf") read from drives.
    """
    spec = str(spec)
    if spec.isdigit():
        return CameraSource(int(spec))
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"source {path} does not exist (give a video, a drive .h5, an image folder "
                                f"or a camera index)")
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in IMAGE_SUFFIXES:
        return ImageFolderSource(path)
    if suffix in STORE_SUFFIXES:
        return StoreSource(path, view)
    if suffix in VIDEO_SUFFIXES:
        return VideoSource(path)
    raise ValueError(f"source {path}: unknown kind (videos: {', '.join(sorted(VIDEO_SUFFIXES))}; drives: .h5; "
                     f"images: {', '.join(sorted(IMAGE_SUFFIXES))}; or a folder of images)")


def iter_frames(source, on_bad=None, on_end=None):
    """Every frame of a finite source, in order. A frame that cannot be read is skipped after
    `on_bad(index, message)`; a stream that ends early calls `on_end(message)`."""
    index = 0
    while source.length is None or index < source.length:
        try:
            yield source.read(index)
        except BadFrame as e:
            if on_bad is not None:
                on_bad(index, str(e))
        except EndOfSource as e:
            if str(e) and on_end is not None:
                on_end(str(e))
            return
        index += 1

"""Where frames come from: video files, cameras, HDF5 drives from `vbp data`, image folders.

Every source has `kind`, `name`, `length` (None for a live camera), `fps`, `live`, `read(index) -> Frame` and
`label(index)` (what a result file names the frame by). A frame that cannot be decoded raises `BadFrame` (the
reader counts it and goes on); the end of a stream raises `EndOfSource`; a camera that stops delivering raises
`SourceLost`. The viewer plays sources; `vbp explain` and the audit read them to the end with `iter_frames`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from .images import CorruptImage, read_image
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
    """A video file decoded with FFmpeg (PyAV). A frame that does not decode, or decodes with errors, is a
    `BadFrame` and reading goes on with the next one; a file that ends before the frame count its header
    announces (cut short) raises `EndOfSource` with a message saying so. Frames are numbered by timestamp."""

    kind = "video"
    live = False
    SEEK_AHEAD = 50  # frames: a request further ahead than this seeks instead of decoding through
    DEMUX_ERRORS = 100  # consecutive unreadable packets after which the rest of the file counts as missing
    MAX_JUMP = 1000  # frames: a timestamp further ahead than this is damaged, the frame is numbered on from the last

    def __init__(self, path):
        self.path = Path(path)
        self.name = self.path.name
        try:
            self.container = av.open(str(self.path))
        except (av.FFmpegError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot open video {self.path} (not a video, or a codec FFmpeg cannot decode: "
                             f"{e})") from None
        if not self.container.streams.video:
            self.container.close()
            raise ValueError(f"cannot open video {self.path}: it has no video stream")
        self.stream = self.container.streams.video[0]
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else 25.0
        self._tb = float(self.stream.time_base or 0) or 1.0 / self.fps
        self._start = self.stream.start_time or 0
        count = self.stream.frames
        if not count and self.stream.duration:
            count = round(self.stream.duration * self._tb * self.fps)
        self.length = count if count > 0 else None
        self._frames = self._decode()
        self._pending = next(self._frames, None)  # (index, av frame or None when decoded with errors)
        self._after = 0  # the index after the last frame taken from the decoder
        if self._pending is None:
            self.container.close()
            raise ValueError(f"video {self.path} opens but none of its frames can be decoded")

    def _decode(self):
        """(index, frame or None for a frame decoded with errors) in decoding order, past unreadable packets."""
        packets = self.container.demux(self.stream)
        errors, last = 0, None
        while errors < self.DEMUX_ERRORS:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError:
                errors += 1
                packets = self.container.demux(self.stream)
                continue
            errors = 0
            try:
                frames = packet.decode()
            except av.FFmpegError:
                continue
            for f in frames:
                index = round((f.pts - self._start) * self._tb * self.fps) if f.pts is not None else None
                if index is None or (last is not None and index > last + self.MAX_JUMP):
                    index = 0 if last is None else last + 1  # no or implausible timestamp: count on
                last = index
                yield index, (None if f.is_corrupt else f)

    def _seek(self, index: int) -> None:
        self.container.seek(self._start + int(index / self.fps / self._tb), stream=self.stream)
        self._frames, self._pending, self._after = self._decode(), None, 0

    def read(self, index: int) -> Frame:
        position = self._pending[0] if self._pending is not None else self._after
        if index < position or index > position + self.SEEK_AHEAD:
            self._seek(index)
        while self._pending is None or self._pending[0] < index:
            self._pending = next(self._frames, None)
            if self._pending is None:
                return self._ended(index)
            self._after = self._pending[0] + 1
        got, frame = self._pending
        if got > index:
            raise BadFrame(f"video {self.path}: frame {index} cannot be decoded")
        self._pending = None
        if frame is None:
            raise BadFrame(f"video {self.path}: frame {index} is damaged (decoded with errors)")
        return Frame(index, frame.to_ndarray(format="bgr24"))

    def _ended(self, index: int):
        announced, self.length = self.length, index
        truncated = announced is not None and index < announced - 1
        raise EndOfSource(f"video {self.path} ends at frame {index} although its header announces {announced} "
                          f"(truncated or corrupt file)" if truncated else "")

    def label(self, index: int) -> str:
        return f"{self.path}#{index}"

    def close(self) -> None:
        self.container.close()


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
        try:
            image = read_image(f)
        except CorruptImage as e:
            raise BadFrame(f"{e}") from None
        except OSError as e:
            raise BadFrame(f"image {f} cannot be read ({e.strerror or e})") from None
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

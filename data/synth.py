"""Synthetic drives with ground truth: `vbp data synth --frames N --seed S --out X.h5 [--video X.mp4]`.

A car drives a procedural road (data.road) seen by a forward pinhole camera (data.ground.Camera,
640x480, 20 frames/s): textured asphalt, white and yellow lane markings of varying width and wear,
stop lines, crosswalks, shadows, other cars (data.traffic), sky and skyline, lighting changes and
sensor noise. Every frame comes with two coverage masks at 640x480 (lane-marking paint; distractors:
shadows, cars and their shadows, stop lines and crosswalks), cropped and scaled exactly like the
image, then thresholded at 25 % coverage into the store's 0/1 `lane_mask` / `distractor_mask`.
The label is the steering wheel angle in degrees (road wheel angle x 14.8), positive to the left.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..files import partial_path, publish, warn_stale
from . import shortcut
from .ground import DN0, DS0, LEVELS, Camera, GroundPainter, level_scale
from .preprocess import crop_view, to_gray, view_for
from .road import SEGMENT, STEERING_RATIO, WHEELBASE, Driver, Road, check_appearance
from .store import StoreWriter
from .traffic import Traffic

MASK_THRESHOLD = 64  # coverage (0-255) from which a view pixel counts as lane marking / distractor
AHEAD = 250.0  # m of road kept painted ahead of the car (3 px below the horizon)
MIN_HEIGHT = 16  # rows of the smallest view a store may hold


@dataclass
class SynthOptions:
    frames: int = 2000
    seed: int = 0
    fps: float = 20.0
    shadows: float = 1.0  # shadow density (0: none)
    cars: float = 1.0  # traffic density (0: none)
    crossings_per_km: float = 3.0  # stop lines and crosswalks per km (0: none)
    lighting: float = 1.0  # strength of exposure/colour changes (0: constant)
    noise: float = 1.0  # sensor noise strength
    shortcut: str = ""  # a shortcut cue, data.shortcut KIND[:MODE] ("": none)
    appearance: dict = field(default_factory=dict)  # section attributes forced on the whole drive (road.APPEARANCE)

    def __post_init__(self):
        if self.frames < 1:
            raise ValueError(f"--frames must be at least 1, got {self.frames}")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        for name in ("shadows", "cars", "crossings_per_km", "lighting", "noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0 (0: none), got {value}")
        self.appearance = check_appearance(self.appearance)


def check_height(height: int, views) -> None:
    """A view height from MIN_HEIGHT rows up to the most the 480-row camera frame holds for every view."""
    highest = min(int(v.bottom * v.height // (v.bottom - v.top)) for v in (view_for(name) for name in views))
    if not MIN_HEIGHT <= height <= highest:
        raise ValueError(f"--height must be between {MIN_HEIGHT} and {highest} rows for views {', '.join(views)} "
                         f"(the crop must fit in the 480-row camera frame), got {height}")


@dataclass
class SynthFrame:
    index: int
    image: np.ndarray  # (480, 640, 3) BGR uint8
    masks: np.ndarray  # (480, 640, 2) uint8 coverage 0-255: lane-marking paint, distractors
    angle: float  # steering wheel degrees, positive left
    speed: float  # m/s


def _smooth_series(rng, n, periods, amplitude):
    """Sum of sinusoids with random phases: a smooth deterministic signal of n samples."""
    t = np.arange(n)
    out = np.zeros(n)
    for p in periods:
        out += np.sin(2 * np.pi * t / (p * rng.uniform(0.7, 1.3)) + rng.uniform(0, 2 * np.pi))
    return amplitude * out / len(periods)


def road_and_driver(o: SynthOptions) -> tuple:
    """The road of drive `o` and its driver at the start: what decides the steering labels."""
    road = Road(o.frames * 26.0 / o.fps + AHEAD + 200, o.seed, shadows=o.shadows, crossings_per_km=o.crossings_per_km,
                appearance=o.appearance)
    return road, Driver(road, o.seed, o.fps)


class Drive:
    """Iterates the frames of one synthetic drive."""

    def __init__(self, options: SynthOptions):
        o = self.options = options
        self.road, self.driver = road_and_driver(o)
        self.traffic = Traffic(self.road, o.seed, o.cars)
        self.painter = GroundPainter(self.road, o.seed)
        self.camera = Camera()
        rng = np.random.default_rng([o.seed, 5])
        n = o.frames + 1
        self.gain = 1 + _smooth_series(rng, n, (90, 300, 900), 0.5 * o.lighting)
        self.tint = np.stack([1 + _smooth_series(rng, n, (400, 1200), 0.04 * o.lighting) for _ in range(3)], 1)
        self.bounce = _smooth_series(rng, n, (6, 17, 40), 2.5)
        self.noise = [np.clip(rng.normal(8, 2.5 * o.noise, (480, 640, 3)), 0, 16).astype(np.uint8) for _ in range(3)]
        self.skyline = self._skyline(rng)
        self.cue = shortcut.Cue(o.shortcut, o.seed, o.frames, self.road) if o.shortcut else None
        self.boards = {}  # frame -> the cue's board drawn into it
        self.sky = self._sky(rng)
        self._window = None

    @staticmethod
    def _skyline(rng, bins=4096):
        """Heights in pixels of distant trees/buildings over the azimuth (0..2pi)."""
        h = np.abs(cv2.GaussianBlur(rng.normal(0, 1, (1, bins)).astype(np.float32), (0, 0), 12)[0]) * 60 + 3
        for _ in range(40):
            i, w = int(rng.integers(bins)), int(rng.integers(5, 60))
            h[i:i + w] = np.maximum(h[i:i + w], rng.uniform(10, 40))
        return np.clip(h, 2, 45).astype(np.float32)

    @staticmethod
    def _sky(rng):
        top = np.array([200, 150, 110], np.float32) * rng.uniform(0.8, 1.1)
        low = np.array([235, 225, 215], np.float32) * rng.uniform(0.85, 1.05)
        t = np.linspace(0, 1, 480, dtype=np.float32)[:, None, None]
        clouds = cv2.GaussianBlur(rng.normal(0, 1, (480, 640)).astype(np.float32), (0, 0), 25)
        clouds = (clouds / (clouds.std() + 1e-6))[..., None] * 10
        return np.clip(top + (low - top) * t ** 0.6 + clouds, 0, 255).astype(np.uint8)

    def _strips(self, s: float):
        """Per level: (colour strip, mask strip) from just behind the car to as far as that level is used."""
        j0 = int(math.floor((s - 10.0) / SEGMENT))
        if self._window is None or self._window[0] != j0:
            first = max(j0, 0)
            cam = self.camera
            levels = []
            for k in range(LEVELS):
                # rows of level k see the ground up to this depth; leave room for the road's sideways extent
                depth = math.sqrt(cam.f * cam.h * DS0 * 2 ** (k + 0.5)) if k < LEVELS - 1 else AHEAD
                j1 = int(math.ceil((s + SEGMENT + 30.0 + 1.5 * depth) / SEGMENT))
                segs = [self.painter.segment(j) for j in range(first, j1 + 1)]
                levels.append((np.concatenate([c[k] for c, _ in segs]), np.concatenate([m[k] for _, m in segs])))
            self.painter.forget_before(j0)
            self._window = (j0, first * SEGMENT, levels)
        return self._window[1], self._window[2]

    def __len__(self):
        return self.options.frames

    def __iter__(self):
        for i in range(self.options.frames):
            yield self.render(i)

    def render(self, i: int) -> SynthFrame:
        """Advance the car one frame and render it (call with i = 0, 1, 2, ...)."""
        cam, road = self.camera, self.road
        state = self.driver.step()
        self.traffic.step(state.s, state.v, 1.0 / self.options.fps)
        pose = cam.pose(road, state)
        horizon = cam.horizon + self.bounce[i]
        origin, levels = self._strips(state.s)
        v0, level, (a, b, c, e), valid = cam.ground_rows(road, state, pose, horizon, origin)
        a, b = np.where(valid, a, 0.05), np.where(valid, b, -50.0)

        image = np.empty((480, 640, 3), np.uint8)
        masks = np.empty((480, 640, 2), np.uint8)  # lane-marking paint, distractor coverage
        self._draw_sky(image, v0, horizon, pose[2])
        masks[:v0] = 0
        u = cam.u
        for k in range(LEVELS):
            rows = np.flatnonzero(level == k)
            if not len(rows):
                continue
            r0, r1 = rows[0], rows[-1] + 1
            along, across = level_scale(k)
            mx = ((np.outer(a[r0:r1], u) + b[r0:r1, None]) / across - 0.5).astype(np.float32)
            my = ((np.outer(c[r0:r1], u) + e[r0:r1, None]) / along - 0.5).astype(np.float32)
            color, mask = levels[k]
            band = slice(v0 + r0, v0 + r1)
            cv2.remap(color, mx, my, cv2.INTER_LINEAR, dst=image[band], borderMode=cv2.BORDER_REFLECT_101)
            cv2.remap(mask, mx, my, cv2.INTER_LINEAR, dst=masks[band], borderMode=cv2.BORDER_REFLECT_101)
        self._haze(image, v0, horizon)
        self.traffic.draw(cam, pose, horizon, image, masks)
        image = self._expose(image, i)
        if self.cue is not None and (board := self.cue.board(i, state.s)) is not None:
            self.cue.paint(image, board)
            self.boards[i] = board
        return SynthFrame(i, image, masks,  angle=self.driver.wheel_angle_deg,
                          speed=float(state.v))

    def _draw_sky(self, image, v0, horizon, heading):
        """Sky, clouds and the skyline above the horizon."""
        az = heading + np.arctan2(-self.camera.u, self.camera.f)
        idx = ((az % (2 * np.pi)) / (2 * np.pi) * len(self.skyline)).astype(int) % len(self.skyline)
        top = horizon - self.skyline[idx]
        r0 = min(max(0, int(top.min()) - 1), v0)
        image[:r0] = self.sky[:r0]
        cover = np.clip(np.arange(r0, v0, dtype=np.float32)[:, None] - top[None, :] + 0.5, 0, 1)[..., None]
        tree = np.array([70, 95, 80], np.float32)
        image[r0:v0] = self.sky[r0:v0] * (1 - cover) + tree * cover

    def _haze(self, image, v0, horizon):
        """Blend distant ground rows towards the horizon colour."""
        rows = np.arange(v0, min(v0 + 40, 480))
        depth = self.camera.f * self.camera.h / (rows - horizon)
        fog = (1 - np.exp(-depth / 600.0)).astype(np.float32)[:, None, None]
        haze = np.array([200, 200, 195], np.float32)
        band = image[rows[0]:rows[-1] + 1].astype(np.float32)
        image[rows[0]:rows[-1] + 1] = (band * (1 - fog) + haze * fog).astype(np.uint8)

    def _expose(self, image, i):
        g = self.gain[i] * self.tint[i]
        m = np.zeros((3, 4), np.float32)
        m[[0, 1, 2], [0, 1, 2]] = g
        m[:, 3] = -8.0
        out = cv2.transform(image, m)
        return cv2.add(out, self.noise[i % len(self.noise)])


def view_masks(frame: SynthFrame, view) -> tuple[np.ndarray, np.ndarray]:
    """The frame's lane / distractor masks at a view's resolution, 0/1 uint8."""
    masks = crop_view(frame.masks, view) >= MASK_THRESHOLD
    return masks[..., 0].astype(np.uint8), masks[..., 1].astype(np.uint8)


class _Video:
    """An mp4v video written under a temporary name and renamed when complete."""

    def __init__(self, path, fps):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        warn_stale(self.path, "vbp data synth")
        self.tmp = partial_path(self.path, self.path.suffix or ".mp4")
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 480))
        if not self.writer.isOpened():
            raise OSError(f"cannot write video {self.path} (OpenCV mp4v writer failed to open {self.tmp})")

    def write(self, image):
        self.writer.write(image)

    def close(self, ok: bool):
        self.writer.release()
        if ok:
            publish(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def write_synth(out, options: SynthOptions, views=("svf", "hvf"), height: int = 135, video=None,
                batch: int = 32, progress: bool = True) -> dict:
    """Generate a drive into a store (and optionally a video); returns a summary with frames/s. Everything that
    can be checked is checked before the first frame; an interrupted run removes its partial files."""
    check_height(height, views)
    for path, what in ((out, "store"), (video, "video")):
        if path is not None and Path(path).is_dir():
            raise ValueError(f"the output {what} {path} is a folder; give a file name")
    vs = [view_for(v, height) for v in views]
    drive = Drive(options)
    meta = {"generator": "data.synth", "options": asdict(options), "views": {v.name: v.to_dict() for v in vs},
            "camera": {"width": 640, "height": 480, "focal_px": drive.camera.f, "height_m": drive.camera.h,
                       "horizon_row": drive.camera.horizon, "fps": options.fps},
            "steering_ratio": STEERING_RATIO, "wheelbase_m": WHEELBASE, "angle": "steering wheel degrees, + left",
            "mask_threshold": MASK_THRESHOLD / 255, "strip_resolution_m": [DS0, DN0]}
    vid = _Video(video, options.fps) if video else None
    ok = False
    start = time.perf_counter()
    try:
        target = shortcut.partial_path(out) if drive.cue else out  # the cue's masks are added before the rename
        with StoreWriter(target, vs, source=f"synthetic drive, seed {options.seed}", preprocess=meta,
                         ground_truth=True, fps=options.fps, keep_partial=False) as w:
            buf = []
            for frame in tqdm(drive, total=options.frames, unit="frame", desc="vbp data synth",
                              disable=None if progress else True):
                if vid:
                    vid.write(frame.image)
                buf.append(frame)
                if len(buf) == batch or frame.index == options.frames - 1:
                    _append(w, buf, vs, options.fps)
                    buf = []
        if drive.cue:
            shortcut.finish(shortcut.partial_path(out), out, drive.cue, drive.boards, vs, MASK_THRESHOLD)
        ok = True
    finally:
        if vid:
            vid.close(ok)
    seconds = time.perf_counter() - start
    return {"frames": options.frames, "seconds": seconds, "fps": options.frames / max(seconds, 1e-9)}


def _append(writer: StoreWriter, frames, views, fps):
    images, lanes, dists = {}, {}, {}
    for v in views:
        pairs = [view_masks(f, v) for f in frames]
        images[v.name] = np.stack([crop_view(to_gray(f.image), v) for f in frames])
        lanes[v.name] = np.stack([p[0] for p in pairs])
        dists[v.name] = np.stack([p[1] for p in pairs])
    idx = np.array([f.index for f in frames])
    writer.append(images=images, angle=[f.angle for f in frames], speed=[f.speed for f in frames],
                  timestamp=idx / fps, frame_id=idx, lane_mask=lanes, distractor_mask=dists)

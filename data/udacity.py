"""Udacity driving data -> the HDF5 store: `vbp data udacity SOURCE --out FILE.h5`.

As in the VisualBackProp paper: centre camera only, steering and speed interpolated to each image's
timestamp, frames at 5 m/s or slower dropped, then gray, lower crop and scale to each view
(data.preprocess). Angles are stored as steering wheel degrees, positive to the left.

Sources (detected from SOURCE):
- ROS1 bags (a .bag file or a folder of them), read with `rosbags`: images from
  /center_camera/image_color/compressed (JPEG/PNG) or /center_camera/image_color (raw, incl. Bayer),
  /vehicle/steering_report (dbw_mkz_msgs/SteeringReport: steering_wheel_angle in radians, speed m/s);
- bagdump folders: interpolated.csv (index,timestamp,width,height,frame_id,filename,angle,torque,speed,...)
  or camera.csv + steering.csv; timestamps in ns, angle in radians unless --angle-unit deg;
- the Udacity simulator's driving_log.csv (center,left,right,steering,throttle,brake,speed; header optional):
  steering in [-1, 1], positive to the right, times --sim-max-angle road wheel degrees (25 by default)
  times the steering ratio 14.8; speed in mph;
- the comma.ai research layout: camera/*.h5 (X: N,3,H,W) with log/*.h5 of the same name
  (cam1_ptr, steering_angle in steering wheel degrees, speed in m/s, times in s).
Bad frames are reported, skipped and counted (attribute bad_frames); nothing usable is an error.
"""
from __future__ import annotations

import csv
import math
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
from tqdm import tqdm

from ..extras import require
from .preprocess import REFERENCE_H, REFERENCE_W, View, prepare
from .road import STEERING_RATIO
from .store import StoreWriter

MIN_SPEED = 5.0  # m/s; slower frames are dropped (paper)
MPH = 0.44704  # m/s per mph
MAX_GAP = 0.25  # s: a frame further than this from any steering measurement cannot be labelled
CAMERA_TOPICS = ("/center_camera/image_color/compressed", "/center_camera/image_color")
STEERING_TOPIC = "/vehicle/steering_report"
STEERING_TYPE = "dbw_mkz_msgs/msg/SteeringReport"
STEERING_MSG = """\
std_msgs/Header header
float32 steering_wheel_angle
float32 steering_wheel_angle_cmd
float32 steering_wheel_torque
float32 speed
bool enabled
bool override
bool driver
bool fault_wdc
bool fault_bus1
bool fault_bus2
bool fault_calibration
bool fault_connector
"""
SHOWN_REASONS = 20  # bad frames printed individually; the rest are only counted


class BadFrame(Exception):
    """A frame that cannot be used; the message names it and says why."""


@dataclass
class Sample:
    """One centre-camera frame before decoding."""

    timestamp: float  # s
    frame_id: int
    label: str  # file#index or path, for messages
    load: Callable[[], np.ndarray]  # -> BGR or gray uint8; raises BadFrame
    angle: float | None = None  # steering wheel degrees, + left, when the source gives it per frame
    speed: float | None = None  # m/s
    size: tuple | None = None  # (width, height) the source claims


@dataclass
class Measurements:
    """Vehicle measurements to interpolate at image timestamps."""

    t: np.ndarray
    angle: np.ndarray  # steering wheel degrees, + left
    speed: np.ndarray  # m/s

    def at(self, t: float):
        """(angle, speed) at t, or None when no measurement is within MAX_GAP of t."""
        i = int(np.searchsorted(self.t, t))
        near = min(abs(self.t[j] - t) for j in (i - 1, i) if 0 <= j < len(self.t))
        if near > MAX_GAP:
            return None
        return float(np.interp(t, self.t, self.angle)), float(np.interp(t, self.t, self.speed))


@dataclass
class Source:
    kind: str
    path: Path
    samples: Iterable[Sample]
    total: int | None
    measurements: Measurements | None = None
    fps: float = 20.0
    notes: dict = field(default_factory=dict)
    bad: list = field(default_factory=list)  # reasons found while listing the source


# ---------------------------------------------------------------- decoding


def decode_image_bytes(data: bytes, label: str) -> np.ndarray:
    """JPEG/PNG bytes -> BGR; truncated or corrupt data is a BadFrame."""
    data = bytes(data)
    if not data:
        raise BadFrame(f"{label}: empty image data")
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise BadFrame(f"{label}: truncated JPEG (no end-of-image marker)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise BadFrame(f"{label}: cannot be decoded as an image (corrupt JPEG/PNG?)")
    return img


def _read_image_file(path: Path, label: str) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadFrame(f"{label}: cannot be read ({e.strerror or e})") from None
    return decode_image_bytes(data, label)


_BAYER = {"bayer_rggb8": cv2.COLOR_BayerBG2BGR, "bayer_bggr8": cv2.COLOR_BayerRG2BGR,
          "bayer_gbrg8": cv2.COLOR_BayerGR2BGR, "bayer_grbg8": cv2.COLOR_BayerGB2BGR}
_CHANNELS = {"mono8": 1, "8UC1": 1, "bgr8": 3, "rgb8": 3, "8UC3": 3, "bgra8": 4, "rgba8": 4}


def decode_raw_image(msg, label: str) -> np.ndarray:
    """sensor_msgs/Image (8-bit encodings, Bayer included) -> BGR or gray."""
    enc, h, w, step = msg.encoding, int(msg.height), int(msg.width), int(msg.step)
    cn = 1 if enc in _BAYER else _CHANNELS.get(enc)
    if cn is None:
        raise BadFrame(f"{label}: unsupported image encoding {enc!r} (8-bit mono/bgr/rgb/bgra/rgba/bayer)")
    data = np.asarray(msg.data, np.uint8)
    if h <= 0 or w <= 0 or step < w * cn or data.size < step * h:
        raise BadFrame(f"{label}: {data.size} bytes do not hold a {w}x{h} {enc} image (step {step})")
    img = data[:step * h].reshape(h, step)[:, :w * cn].reshape(h, w, cn) if cn > 1 else \
        data[:step * h].reshape(h, step)[:, :w]
    if enc in _BAYER:
        return cv2.cvtColor(np.ascontiguousarray(img), _BAYER[enc])
    if enc == "rgb8":
        return cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if enc == "rgba8":
        return cv2.cvtColor(img, cv2.COLOR_RGBA2BGR)
    if enc == "bgra8":
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(img)


# ---------------------------------------------------------------- ROS1 bags


def _typestore():
    typesys = require("rosbags.typesys", "ingest", "reading ROS bags")
    store = typesys.get_typestore(typesys.Stores.ROS1_NOETIC)
    store.register(typesys.get_types_from_msg(STEERING_MSG, STEERING_TYPE))
    return store


def _stamp(msg, fallback_ns: int) -> float:
    header = getattr(msg, "header", None)
    if header is not None and (header.stamp.sec or header.stamp.nanosec):
        return header.stamp.sec + header.stamp.nanosec * 1e-9
    return fallback_ns * 1e-9


def bag_source(paths: list[Path], root: Path, angle_unit: str = "rad") -> Source:
    highlevel = require("rosbags.highlevel", "ingest", "reading ROS bags")
    AnyReader, AnyReaderError = highlevel.AnyReader, highlevel.AnyReaderError
    typestore = _typestore()
    t, angle, speed, bad = [], [], [], []
    cams, total = [], 0
    for path in paths:
        try:
            with AnyReader([path], default_typestore=typestore) as reader:
                topics = {c.topic: c for c in reader.connections}
                steer = [c for c in reader.connections if c.topic == STEERING_TOPIC]
                cam_topic = next((tp for tp in CAMERA_TOPICS if tp in topics), None)
                if not steer:
                    raise ValueError(f"bag {path} has no {STEERING_TOPIC} topic (dbw_mkz_msgs/SteeringReport); "
                                     f"its topics: {', '.join(sorted(topics)) or 'none'}")
                if cam_topic is None:
                    raise ValueError(f"bag {path} has no centre camera topic ({' or '.join(CAMERA_TOPICS)}); "
                                     f"its topics: {', '.join(sorted(topics)) or 'none'}")
                for conn, ts, raw in reader.messages(connections=steer):
                    try:
                        msg = reader.deserialize(raw, conn.msgtype)
                        a, v = float(msg.steering_wheel_angle), float(msg.speed)
                    except Exception as e:  # noqa: BLE001 - any undecodable message is reported, not fatal
                        bad.append(f"{path}: steering message at {ts * 1e-9:.3f} s cannot be decoded ({e})")
                        continue
                    if not (math.isfinite(a) and math.isfinite(v)):
                        bad.append(f"{path}: steering message at {ts * 1e-9:.3f} s is not finite")
                        continue
                    t.append(_stamp(msg, ts))
                    angle.append(math.degrees(a) if angle_unit == "rad" else a)
                    speed.append(v)
                cam_conns = [c for c in reader.connections if c.topic == cam_topic]
                cams.append((path, cam_topic))
                total += sum(c.msgcount for c in cam_conns)
        except AnyReaderError as e:
            raise ValueError(f"{path} is not a readable ROS1 bag ({e})") from None
    if not t:
        raise ValueError(f"no usable {STEERING_TOPIC} messages in {', '.join(map(str, paths))}")
    order = np.argsort(t)
    meas = Measurements(np.array(t)[order], np.array(angle)[order], np.array(speed)[order])
    return Source("ros1-bag", root, _bag_frames(cams, typestore), total, meas,
                  notes={"camera_topics": sorted({tp for _, tp in cams}), "steering_topic": STEERING_TOPIC,
                         "bags": [str(p) for p in paths]}, bad=bad)


def _bag_frames(cams, typestore):
    AnyReader = require("rosbags.highlevel", "ingest", "reading ROS bags").AnyReader
    index = 0
    for path, topic in cams:
        with AnyReader([path], default_typestore=typestore) as reader:
            conns = [c for c in reader.connections if c.topic == topic]
            for conn, ts, raw in reader.messages(connections=conns):
                label = f"{path.name}#{index} ({topic} at {ts * 1e-9:.3f} s)"
                try:
                    msg = reader.deserialize(raw, conn.msgtype)
                except Exception as e:  # noqa: BLE001
                    yield Sample(ts * 1e-9, index, label, _raise(BadFrame(f"{label}: cannot be deserialized ({e})")))
                    index += 1
                    continue
                if topic.endswith("/compressed"):
                    load = (lambda m=msg, lb=label: decode_image_bytes(m.data.tobytes(), lb))
                else:
                    load = (lambda m=msg, lb=label: decode_raw_image(m, lb))
                yield Sample(_stamp(msg, ts), index, label, load)
                index += 1


def _raise(exc):
    def load():
        raise exc
    return load


# ---------------------------------------------------------------- CSV helpers


def _read_csv(path: Path, required: list[str]) -> tuple[list[dict], list[int]]:
    """Rows (dicts) of a CSV with a header that must contain `required`; also their line numbers."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (found: "
                                 f"{', '.join(header) or 'no header'}; expected {', '.join(required)})")
            reader.fieldnames = header
            rows, lines = [], []
            for row in reader:
                rows.append({k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()})
                lines.append(reader.line_num)
            return rows, lines
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text CSV file") from None


def _numbers(row: dict, names: list[str], where: str) -> list[float]:
    out = []
    for name in names:
        text = row.get(name)
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise BadFrame(f"{where}: {name} {text!r} is not a number") from None
        if not math.isfinite(value):
            raise BadFrame(f"{where}: {name} {text!r} is not finite")
        out.append(value)
    return out


def _is_center(frame_id: str) -> bool:
    return frame_id in ("center_camera", "center", "/center_camera")


# ---------------------------------------------------------------- bagdump folders


def interpolated_source(path: Path, angle_unit: str) -> Source:
    rows, lines = _read_csv(path, ["timestamp", "width", "height", "frame_id", "filename", "angle", "speed"])
    samples, bad = [], []
    for row, line in zip(rows, lines):
        if not _is_center(row["frame_id"]):
            continue
        where = f"{path.name} line {line}"
        try:
            ts, w, h, a, v = _numbers(row, ["timestamp", "width", "height", "angle", "speed"], where)
            index = int(_numbers(row, ["index"], where)[0]) if row.get("index") not in (None, "") else line - 2
        except BadFrame as e:
            bad.append(str(e))
            continue
        file = path.parent / row["filename"]
        samples.append(Sample(ts * 1e-9, index, f"{where} ({row['filename']})",
                              (lambda p=file, lb=f"{where} ({file})": _read_image_file(p, lb)),
                              angle=math.degrees(a) if angle_unit == "rad" else a, speed=v, size=(int(w), int(h))))
    return Source("bagdump-interpolated", path.parent, samples, len(samples), bad=bad,
                  notes={"csv": path.name, "angle_unit": angle_unit})


def camera_steering_source(folder: Path, angle_unit: str) -> Source:
    cam_path, steer_path = folder / "camera.csv", folder / "steering.csv"
    steer_rows, steer_lines = _read_csv(steer_path, ["timestamp", "angle", "speed"])
    t, angle, speed, bad = [], [], [], []
    for row, line in zip(steer_rows, steer_lines):
        try:
            ts, a, v = _numbers(row, ["timestamp", "angle", "speed"], f"{steer_path.name} line {line}")
        except BadFrame as e:
            bad.append(str(e))
            continue
        t.append(ts * 1e-9)
        angle.append(math.degrees(a) if angle_unit == "rad" else a)
        speed.append(v)
    if not t:
        raise ValueError(f"{steer_path}: no usable steering rows")
    order = np.argsort(t)
    meas = Measurements(np.array(t)[order], np.array(angle)[order], np.array(speed)[order])
    cam_rows, cam_lines = _read_csv(cam_path, ["timestamp", "width", "height", "frame_id", "filename"])
    samples = []
    for i, (row, line) in enumerate(zip(cam_rows, cam_lines)):
        if not _is_center(row["frame_id"]):
            continue
        where = f"{cam_path.name} line {line}"
        try:
            ts, w, h = _numbers(row, ["timestamp", "width", "height"], where)
        except BadFrame as e:
            bad.append(str(e))
            continue
        file = folder / row["filename"]
        samples.append(Sample(ts * 1e-9, i, f"{where} ({row['filename']})",
                              (lambda p=file, lb=f"{where} ({file})": _read_image_file(p, lb)), size=(int(w), int(h))))
    samples.sort(key=lambda s: s.timestamp)
    return Source("bagdump-camera-steering", folder, samples, len(samples), meas, bad=bad,
                  notes={"csv": ["camera.csv", "steering.csv"], "angle_unit": angle_unit})


# ---------------------------------------------------------------- simulator


SIM_COLUMNS = ["center", "left", "right", "steering", "throttle", "brake", "speed"]
_SIM_TIME = re.compile(r"(\d{4})_(\d{2})_(\d{2})_(\d{2})_(\d{2})_(\d{2})_(\d{3})")


def sim_source(path: Path, max_angle: float) -> Source:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text CSV file") from None
    if not rows:
        raise ValueError(f"{path}: empty (expected rows of {', '.join(SIM_COLUMNS)})")
    first = [c.strip() for c in rows[0]]
    start = 1
    if "steering" in first:
        missing = [c for c in SIM_COLUMNS if c not in first]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(first)})")
        cols = {c: first.index(c) for c in SIM_COLUMNS}
    else:
        start = 0
        if len(first) < len(SIM_COLUMNS):
            raise ValueError(f"{path}: {len(first)} columns, expected {len(SIM_COLUMNS)} "
                             f"({', '.join(SIM_COLUMNS)}; header optional)")
        cols = {c: i for i, c in enumerate(SIM_COLUMNS)}
    samples, bad = [], []
    for n, row in enumerate(rows[start:], start=start + 1):
        where = f"{path.name} line {n}"
        if len(row) <= max(cols.values()):
            bad.append(f"{where}: {len(row)} columns, expected {len(SIM_COLUMNS)}")
            continue
        rec = {c: row[i].strip() for c, i in cols.items()}
        try:
            steering, mph = _numbers(rec, ["steering", "speed"], where)
        except BadFrame as e:
            bad.append(str(e))
            continue
        name = rec["center"].replace("\\", "/").split("/")[-1]
        file = path.parent / "IMG" / name
        if not file.exists() and (path.parent / rec["center"]).exists():
            file = path.parent / rec["center"]
        m = _SIM_TIME.search(name)
        ts = (datetime(*map(int, m.groups()[:6]), int(m.group(7)) * 1000).timestamp() if m else (n - start) / 10.0)
        samples.append(Sample(ts, n - start - 1 if start else n - 1, f"{where} ({name})",
                              (lambda p=file, lb=f"{where} ({file})": _read_image_file(p, lb)),
                              angle=-steering * max_angle * STEERING_RATIO, speed=mph * MPH))
    dts = np.diff([s.timestamp for s in samples]) if len(samples) > 1 else np.array([])
    fps = float(1.0 / np.median(dts)) if len(dts) and np.median(dts) > 0 else 10.0
    return Source("udacity-simulator", path.parent, samples, len(samples), fps=fps, bad=bad,
                  notes={"csv": path.name, "sim_max_angle_deg": max_angle, "steering_ratio": STEERING_RATIO,
                         "speed_unit": "mph"})


# ---------------------------------------------------------------- comma.ai


def comma_source(folder: Path) -> Source:
    import h5py

    cams = sorted((folder / "camera").glob("*.h5"))
    if not cams:
        raise ValueError(f"{folder / 'camera'}: no .h5 files")
    samples, bad, total = [], [], 0
    for cam in cams:
        log = folder / "log" / cam.name
        if not log.exists():
            raise ValueError(f"{cam}: no matching log file {log}")
        try:
            with h5py.File(log, "r") as f:
                missing = [k for k in ("cam1_ptr", "steering_angle", "speed") if k not in f]
                if missing:
                    raise ValueError(f"{log}: missing dataset(s) {', '.join(missing)} "
                                     f"(expected cam1_ptr, steering_angle, speed)")
                ptr = f["cam1_ptr"][:].astype(np.int64)
                steer = f["steering_angle"][:].astype(float)
                speed = f["speed"][:].astype(float).reshape(-1)
                times = f["times"][:].astype(float) if "times" in f else np.arange(len(ptr)) / 100.0
            with h5py.File(cam, "r") as f:
                if "X" not in f:
                    raise ValueError(f"{cam}: no dataset X (camera frames N,3,H,W)")
                n = f["X"].shape[0]
        except OSError as e:
            raise ValueError(f"{cam} / {log}: not readable HDF5 ({e})") from None
        total += n
        for i in range(n):
            sel = ptr == i
            label = f"{cam.name}#{i}"
            if not sel.any():
                bad.append(f"{label}: no log samples point at this frame (cam1_ptr)")
                continue
            samples.append(Sample(float(times[sel].mean()), i, label, (lambda c=cam, j=i: _comma_frame(c, j)),
                                  angle=float(steer[sel].mean()), speed=float(speed[sel].mean())))
    return Source("comma-ai", folder, samples, len(samples), fps=20.0, bad=bad,
                  notes={"camera_files": [c.name for c in cams]})


def _comma_frame(cam: Path, i: int) -> np.ndarray:
    import h5py

    with h5py.File(cam, "r") as f:
        x = f["X"][i]
    if x.ndim != 3 or x.shape[0] != 3:
        raise BadFrame(f"{cam.name}#{i}: frame of shape {x.shape}, expected (3, H, W)")
    return cv2.cvtColor(np.ascontiguousarray(x.transpose(1, 2, 0)), cv2.COLOR_RGB2BGR)


# ---------------------------------------------------------------- detection and the ingest loop


def open_source(source, angle_unit: str = "rad", sim_max_angle: float = 25.0) -> Source:
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        if path.suffix == ".bag":
            return bag_source([path], path, angle_unit)
        if path.name == "driving_log.csv":
            return sim_source(path, sim_max_angle)
        if path.name == "interpolated.csv":
            return interpolated_source(path, angle_unit)
        if path.name in ("camera.csv", "steering.csv"):
            return camera_steering_source(path.parent, angle_unit)
        raise ValueError(f"{path}: not a known Udacity source (a .bag, interpolated.csv, camera.csv + steering.csv, "
                         f"driving_log.csv, or a folder holding them)")
    entries = list(path.iterdir())
    if not entries:
        raise ValueError(f"folder {path} is empty (expected .bag files, interpolated.csv, camera.csv + steering.csv, "
                         f"driving_log.csv or camera/ + log/)")
    bags = sorted(p for p in entries if p.suffix == ".bag")
    if bags:
        return bag_source(bags, path, angle_unit)
    if (path / "interpolated.csv").is_file():
        return interpolated_source(path / "interpolated.csv", angle_unit)
    if (path / "camera.csv").is_file() or (path / "steering.csv").is_file():
        for name in ("camera.csv", "steering.csv"):
            if not (path / name).is_file():
                raise ValueError(f"{path}: has {'camera.csv' if name == 'steering.csv' else 'steering.csv'} "
                                 f"but no {name}")
        return camera_steering_source(path, angle_unit)
    if (path / "driving_log.csv").is_file():
        return sim_source(path / "driving_log.csv", sim_max_angle)
    if (path / "camera").is_dir() and (path / "log").is_dir():
        return comma_source(path)
    raise ValueError(f"folder {path} holds no known Udacity source (.bag files, interpolated.csv, camera.csv + "
                     f"steering.csv, driving_log.csv, or camera/ + log/ of the comma.ai layout)")


@dataclass
class Summary:
    kept: int = 0
    slow: int = 0
    bad: int = 0
    seconds: float = 0.0

    @property
    def fps(self) -> float:
        return (self.kept + self.slow + self.bad) / max(self.seconds, 1e-9)


class _Reporter:
    def __init__(self, writer: StoreWriter, summary: Summary):
        self.writer, self.summary = writer, summary

    def __call__(self, reason: str) -> None:
        self.writer.bad(reason)
        self.summary.bad += 1
        if self.summary.bad <= SHOWN_REASONS:
            tqdm.write(f"vbp data udacity: skipping {reason}", file=sys.stderr)
        elif self.summary.bad == SHOWN_REASONS + 1:
            tqdm.write("vbp data udacity: more bad frames; only counting them from now on", file=sys.stderr)


def ingest(source: Source, out, views: list[View], min_speed: float = MIN_SPEED, batch: int = 64,
           progress: bool = True) -> Summary:
    """Write a source's usable frames into a store; raises ValueError when none is usable."""
    import time

    summary = Summary()
    start = time.perf_counter()
    meta = {"ingest": source.kind, "min_speed_mps": min_speed, "camera": "center", "views":
            {v.name: v.to_dict() for v in views}, "angle": "steering wheel degrees, + left", **source.notes}
    expected = None
    with StoreWriter(out, views, source=f"{source.kind}: {source.path}", preprocess=meta, fps=source.fps) as w:
        report = _Reporter(w, summary)
        for reason in source.bad:
            report(reason)
        buf: list = []
        for s in tqdm(source.samples, total=source.total, unit="frame", desc=f"vbp data udacity ({source.kind})",
                      disable=None if progress else True):
            if s.angle is None:
                got = source.measurements.at(s.timestamp)
                if got is None:
                    report(f"{s.label}: no steering measurement within {MAX_GAP} s of its timestamp")
                    continue
                s.angle, s.speed = got
            if not s.speed > min_speed:
                summary.slow += 1
                continue
            try:
                img = s.load()
                h, w_ = img.shape[:2]
                if s.size is not None and s.size != (w_, h):
                    raise BadFrame(f"{s.label}: image is {w_}x{h}, the source says {s.size[0]}x{s.size[1]}")
                if expected is None:
                    expected = (w_, h)
                    if expected != (REFERENCE_W, REFERENCE_H):
                        tqdm.write(f"vbp data udacity: frames are {w_}x{h}, not the Udacity centre camera's "
                                   f"{REFERENCE_W}x{REFERENCE_H}; cropping to 4:3 and resizing", file=sys.stderr)
                elif (w_, h) != expected:
                    raise BadFrame(f"{s.label}: image is {w_}x{h}, expected {expected[0]}x{expected[1]} like the "
                                   f"first frame of this source")
            except BadFrame as e:
                report(str(e))
                continue
            buf.append((s, {v.name: prepare(img, v) for v in views}))
            if len(buf) >= batch:
                _flush(w, buf, views)
                summary.kept += len(buf)
                buf = []
        if buf:
            _flush(w, buf, views)
            summary.kept += len(buf)
        if summary.kept == 0:
            raise ValueError(f"no usable frames in {source.path}: {summary.bad} bad, {summary.slow} at or below "
                             f"{min_speed:g} m/s")
    summary.seconds = time.perf_counter() - start
    return summary


def _flush(writer: StoreWriter, buf, views) -> None:
    writer.append(images={v.name: np.stack([imgs[v.name] for _, imgs in buf]) for v in views},
                  angle=[s.angle for s, _ in buf], speed=[s.speed for s, _ in buf],
                  timestamp=[s.timestamp for s, _ in buf], frame_id=[s.frame_id for s, _ in buf])

"""Udacity driving data -> the HDF5 store: `vbp data udacity SOURCE --out FILE.h5`.

As in the VisualBackProp paper: one camera (the centre camera unless `camera` names another), steering and
speed interpolated to each image's timestamp, frames at 5 m/s or slower dropped, then gray, lower crop and
scale to each view (data.preprocess). Angles are stored as steering wheel degrees, positive to the left.

Formats (recognised by their content, not their file names; docs/data.md has a table per format):
- "bag": ROS1 bags (a .bag file or a folder of them), read with `rosbags`: images from
  /<camera>/image_color/compressed (JPEG/PNG) or /<camera>/image_color (raw, incl. Bayer),
  /vehicle/steering_report (dbw_mkz_msgs/SteeringReport: steering_wheel_angle in radians, speed m/s);
- "camera-steering" and "interpolated": the CSVs udacity-driving-reader's bagdump.py writes (camera.csv +
  steering.csv, and interpolated.csv whose first column is a date-time index); timestamps in ns, angle in
  radians unless angle_unit "deg";
- "simulator": the Udacity simulator's driving_log.csv (center,left,right,steering,throttle,brake,speed;
  header optional): steering in [-1, 1], positive to the right, times sim_max_angle road wheel degrees
  times the steering ratio 14.8; speed in mph; time from the image names, read as wall-clock time;
- "comma": the comma.ai research layout: camera/*.h5 (X: N,3,H,W) with log/*.h5 of the same name
  (cam1_ptr, steering_angle in tenths of a degree with positive to the right, speed m/s, times s).
Frames keep the source's order. A new session starts where time goes backwards or jumps forward by more
than SESSION_GAP; steering is never interpolated across such a gap. Bad frames are reported, skipped and
counted; nothing usable is an error.
"""
from __future__ import annotations

import csv
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from ..extras import require
from .images import CorruptImage, decode_image
from .road import STEERING_RATIO

MIN_SPEED = 5.0  # m/s; slower frames are dropped (paper)
MPH = 0.44704  # m/s per mph
MAX_GAP = 0.25  # s: a frame further than this from any steering measurement cannot be labelled
SESSION_GAP = 1.0  # s: a larger forward jump, or any backward one, starts a new session
SIM_PERIOD = 1 / 15  # s between simulator samples (CarController.Sample), for logs without times in names
CENTRE_CAMERA = "center_camera"
CENTRE_IDS = ("center_camera", "center")  # bagdump frame_id of the centre camera, with or without "/"
STEERING_TOPIC = "/vehicle/steering_report"
STEERING_TYPE = "dbw_mkz_msgs/msg/SteeringReport"
IMAGE_TYPES = ("sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/Image")
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
FORMATS = {"bag": "ROS1 bags", "camera-steering": "bagdump camera + steering CSVs",
           "interpolated": "bagdump interpolated.csv", "simulator": "simulator driving log",
           "comma": "comma.ai camera/ + log/"}
LFS_MAGIC = b"version https://git-lfs.github.com/spec/"
BAG_MAGIC = b"#ROSBAG V2.0"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
BAGDUMP_IMAGE = ["timestamp", "width", "height", "frame_id", "filename"]
BAGDUMP_STEERING = ["timestamp", "angle", "speed"]
SIM_COLUMNS = ["center", "left", "right", "steering", "throttle", "brake", "speed"]


class BadFrame(Exception):
    """A frame that cannot be used; the message names it and says why."""


@dataclass
class Sample:
    """One camera frame before decoding."""

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
        """(angle, speed) at t, or None when no measurement is within MAX_GAP of t. Interpolates between the
        two measurements around t only when they are at most SESSION_GAP apart, else takes the nearer one."""
        i = int(np.searchsorted(self.t, t))
        around = [j for j in (i - 1, i) if 0 <= j < len(self.t)]
        near = min(around, key=lambda j: abs(self.t[j] - t))
        if abs(self.t[near] - t) > MAX_GAP:
            return None
        if len(around) == 2 and self.t[i] - self.t[i - 1] <= SESSION_GAP:
            sl = slice(i - 1, i + 1)
            return float(np.interp(t, self.t[sl], self.angle[sl])), float(np.interp(t, self.t[sl], self.speed[sl]))
        return float(self.angle[near]), float(self.speed[near])


@dataclass
class Source:
    kind: str  # a FORMATS key
    path: Path
    samples: Iterable[Sample]
    total: int | None
    measurements: Measurements | None = None
    fps: float = 20.0
    notes: dict = field(default_factory=dict)
    bad: list = field(default_factory=list)  # reasons found while listing the source
    rows: int = 0  # records read: CSV rows, image messages, camera frames
    other_cameras: dict = field(default_factory=dict)  # frame id or topic -> records of cameras not used


# ---------------------------------------------------------------- files


def head_bytes(path: Path, n: int = 64) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise ValueError(f"{path} cannot be read ({e.strerror or e})") from None


def refuse_lfs_pointer(path: Path, what: str) -> None:
    """A Git LFS pointer (the small text file Git keeps instead of a large one) is named as such."""
    if head_bytes(path).startswith(LFS_MAGIC):
        raise ValueError(f"{path} is a Git LFS pointer, not the {what} itself: fetch the file with `git lfs pull` "
                         f"in the repository it came from")


# ---------------------------------------------------------------- decoding


def decode_image_bytes(data: bytes, label: str) -> np.ndarray:
    """JPEG/PNG bytes -> BGR; truncated or corrupt data is a BadFrame (data.images walks the structure)."""
    try:
        return decode_image(data, color=True)
    except CorruptImage as e:
        raise BadFrame(f"{label}: cannot be decoded as an image ({e})") from None


def _read_image_file(path: Path, label: str) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadFrame(f"{label}: cannot be read ({e.strerror or e})") from None
    if data.startswith(LFS_MAGIC):
        raise BadFrame(f"{label}: a Git LFS pointer, not the image (fetch it with `git lfs pull`)")
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


# ---------------------------------------------------------------- cameras


def _is_camera(frame_id: str, camera: str | None) -> bool:
    fid = frame_id.strip().strip("/")
    return fid in CENTRE_IDS if camera is None else fid == camera.strip().strip("/")


def _camera_text(camera: str | None) -> str:
    return "the centre camera (frame_id center_camera)" if camera is None else f"camera {camera!r}"


def counts_text(counts: dict) -> str:
    return ", ".join(f"{k or '(empty)'} ({n})" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _select_camera(frame_ids: list[str], camera: str | None, where: Path) -> tuple[list[int], dict]:
    """Positions of the rows of `camera` and the counts of the other frame ids; no such row is an error."""
    keep = [i for i, fid in enumerate(frame_ids) if _is_camera(fid, camera)]
    others = dict(Counter(fid for fid in frame_ids if not _is_camera(fid, camera)))
    if frame_ids and not keep:
        raise ValueError(f"{where}: no rows of {_camera_text(camera)}; frame ids present: {counts_text(others)}; "
                         f"choose one with --camera FRAME_ID")
    return keep, others


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


def _camera_topics(camera: str | None) -> list[str]:
    if camera and camera.startswith("/") and "/image" in camera:
        return [camera]
    name = (camera or CENTRE_CAMERA).strip("/")
    return [f"/{name}/image_color/compressed", f"/{name}/image_color"]


def bag_source(paths: list[Path], root: Path, angle_unit: str = "rad", camera: str | None = None) -> Source:
    highlevel = require("rosbags.highlevel", "ingest", "reading ROS bags")
    AnyReader, AnyReaderError = highlevel.AnyReader, highlevel.AnyReaderError
    typestore = _typestore()
    t, angle, speed, bad = [], [], [], []
    cams, total, rows, others = [], 0, 0, Counter()
    wanted = _camera_topics(camera)
    for path in paths:
        refuse_lfs_pointer(path, "ROS1 bag")
        try:
            with AnyReader([path], default_typestore=typestore) as reader:
                topics = {c.topic: c for c in reader.connections}
                images = Counter()
                for c in reader.connections:
                    if c.msgtype in IMAGE_TYPES:
                        images[c.topic] += c.msgcount
                steer = [c for c in reader.connections if c.topic == STEERING_TOPIC]
                cam_topic = next((tp for tp in wanted if tp in topics), None)
                if not steer:
                    raise ValueError(f"bag {path} has no {STEERING_TOPIC} topic (dbw_mkz_msgs/SteeringReport); "
                                     f"its topics: {', '.join(sorted(topics)) or 'none'}")
                if cam_topic is None:
                    raise ValueError(f"bag {path} has no topic of {_camera_text(camera)} ({' or '.join(wanted)}); "
                                     f"its image topics: {counts_text(images) or 'none'}; "
                                     f"choose one with --camera NAME or --camera /TOPIC")
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
                cams.append((path, cam_topic))
                total += images[cam_topic]
                rows += sum(images.values())
                others.update({tp: n for tp, n in images.items() if tp != cam_topic})
        except AnyReaderError as e:
            raise ValueError(f"{path} is not a readable ROS1 bag ({e})") from None
    if not t:
        raise ValueError(f"no usable {STEERING_TOPIC} messages in {', '.join(map(str, paths))}")
    order = np.argsort(t, kind="stable")
    meas = Measurements(np.array(t)[order], np.array(angle)[order], np.array(speed)[order])
    return Source("bag", root, _bag_frames(cams, typestore), total, meas, bad=bad, rows=rows,
                  other_cameras=dict(others),
                  notes={"camera_topics": sorted({tp for _, tp in cams}), "steering_topic": STEERING_TOPIC,
                         "bags": [str(p) for p in paths]})


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
                if conn.msgtype == IMAGE_TYPES[0]:
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


def _text_rows(path: Path) -> list[list[str]]:
    """The non-empty rows of a CSV file, fields stripped; ", " separators are read like ","."""
    refuse_lfs_pointer(path, "CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [[c.strip() for c in r] for r in csv.reader(f, skipinitialspace=True) if any(c.strip() for c in r)]
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text CSV file") from None


def _read_csv(path: Path, required: list[str]) -> tuple[list[dict], list[int], list[str]]:
    """Rows (dicts) of a CSV with a header that must contain `required`, their row numbers (1 = header), and
    the reasons for rows with fewer cells than the header (a file cut short), which are left out."""
    rows = _text_rows(path)
    header = rows[0] if rows else []
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (found: "
                         f"{', '.join(header) or 'no header'}; expected {', '.join(required)})")
    out, lines, bad = [], [], []
    for n, r in enumerate(rows[1:], start=2):
        if len(r) < len(header):
            bad.append(f"{path.name} line {n}: {len(r)} of {len(header)} columns (cut short?)")
            continue
        out.append(dict(zip(header, r)))
        lines.append(n)
    return out, lines, bad


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


def _seconds(row: dict, where: str) -> float:
    """The `timestamp` column (integer nanoseconds, read exactly when integer) in seconds."""
    text = row.get("timestamp") or ""
    if text.lstrip("-").isdigit():
        return int(text) * 1e-9
    return _numbers(row, ["timestamp"], where)[0] * 1e-9


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def sniff_csv(path: Path) -> str | None:
    """Which CSV format a file holds, from its header or first row: "interpolated", "camera", "steering",
    "simulator", or None."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = next((r for r in csv.reader(f, skipinitialspace=True) if any(c.strip() for c in r)), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if not first:
        return None
    cells = [c.strip() for c in first]
    cols = set(cells)
    if cols & {"filename", "frame_id"}:  # missing columns are reported when the file is read
        return "interpolated" if cols & {"angle", "speed"} else "camera"
    if {"timestamp", "angle"} <= cols:
        return "steering"
    if {"center", "steering"} <= {c.lower() for c in cols}:
        return "simulator"
    if cells[0].lower().endswith(IMAGE_SUFFIXES) and (len(cells) < 4 or _is_number(cells[3])):
        return "simulator"  # header-less: image paths, then numbers
    return None


# ---------------------------------------------------------------- bagdump folders


def interpolated_source(path: Path, angle_unit: str, camera: str | None = None) -> Source:
    """bagdump's interpolated.csv. Its first column, `index`, is the row's time as a date ("2016-11-17
    23:10:15.873184606", or only "2016-10-25"): the integer `timestamp` column is used instead."""
    rows, lines, bad = _read_csv(path, BAGDUMP_IMAGE + ["angle", "speed"])
    read = len(rows) + len(bad)
    keep, others = _select_camera([r["frame_id"] for r in rows], camera, path)
    samples = []
    for i in keep:
        row, where = rows[i], f"{path.name} line {lines[i]}"
        try:
            ts = _seconds(row, where)
            w, h, a, v = _numbers(row, ["width", "height", "angle", "speed"], where)
        except BadFrame as e:
            bad.append(str(e))
            continue
        file = path.parent / row["filename"]
        samples.append(Sample(ts, i, f"{where} ({row['filename']})",
                              (lambda p=file, lb=f"{where} ({file})": _read_image_file(p, lb)),
                              angle=math.degrees(a) if angle_unit == "rad" else a, speed=v, size=(int(w), int(h))))
    return Source("interpolated", path.parent, samples, len(samples), bad=bad, rows=read, other_cameras=others,
                  notes={"csv": path.name, "angle_unit": angle_unit, "camera": camera or CENTRE_CAMERA})


def camera_steering_source(cam_path: Path, steer_path: Path, angle_unit: str, camera: str | None = None) -> Source:
    """bagdump's camera.csv (seq,timestamp,width,height,frame_id,filename) with steering.csv
    (seq,timestamp,angle,torque,speed): steering interpolated to each image."""
    steer_rows, steer_lines, bad = _read_csv(steer_path, BAGDUMP_STEERING)
    t, angle, speed = [], [], []
    for row, line in zip(steer_rows, steer_lines):
        where = f"{steer_path.name} line {line}"
        try:
            ts = _seconds(row, where)
            a, v = _numbers(row, ["angle", "speed"], where)
        except BadFrame as e:
            bad.append(str(e))
            continue
        t.append(ts)
        angle.append(math.degrees(a) if angle_unit == "rad" else a)
        speed.append(v)
    if not t:
        raise ValueError(f"{steer_path}: no usable steering rows")
    order = np.argsort(t, kind="stable")
    meas = Measurements(np.array(t)[order], np.array(angle)[order], np.array(speed)[order])
    cam_rows, cam_lines, cut = _read_csv(cam_path, BAGDUMP_IMAGE)
    bad += cut
    keep, others = _select_camera([r["frame_id"] for r in cam_rows], camera, cam_path)
    samples = []
    for i in keep:
        row, where = cam_rows[i], f"{cam_path.name} line {cam_lines[i]}"
        try:
            ts = _seconds(row, where)
            w, h = _numbers(row, ["width", "height"], where)
        except BadFrame as e:
            bad.append(str(e))
            continue
        file = cam_path.parent / row["filename"]
        samples.append(Sample(ts, i, f"{where} ({row['filename']})",
                              (lambda p=file, lb=f"{where} ({file})": _read_image_file(p, lb)), size=(int(w), int(h))))
    return Source("camera-steering", cam_path.parent, samples, len(samples), meas, bad=bad,
                  rows=len(cam_rows) + len(cut), other_cameras=others,
                  notes={"csv": [cam_path.name, steer_path.name], "angle_unit": angle_unit,
                         "camera": camera or CENTRE_CAMERA})


# ---------------------------------------------------------------- simulator


_SIM_TIME = re.compile(r"(\d{4})_(\d{2})_(\d{2})_(\d{2})_(\d{2})_(\d{2})_(\d{3})")


def sim_time(name: str) -> float | None:
    """Seconds of the wall-clock time in a simulator image name (center_2016_12_01_13_30_48_287.jpg), read
    as UTC so that the same file gives the same number in every time zone."""
    m = _SIM_TIME.search(name)
    if not m:
        return None
    y, mo, d, h, mi, s, ms = map(int, m.groups())
    return datetime(y, mo, d, h, mi, s, ms * 1000, tzinfo=timezone.utc).timestamp()


def sim_image_candidates(folder: Path, text: str) -> list[Path]:
    """Where a simulator log's image path may be, in order: as written (either separator; relative to the
    log's folder), the log's folder + the path's last two components, the log's IMG/ + the base name."""
    parts = [p for p in text.replace("\\", "/").split("/") if p]
    written = Path(text.replace("\\", "/"))
    out = [written if written.is_absolute() else folder / written]
    if len(parts) >= 2:
        out.append(folder / parts[-2] / parts[-1])
    if parts:  # an empty path cell names no file
        out.append(folder / "IMG" / parts[-1])
    return list(dict.fromkeys(out))


def _sim_image(folder: Path, text: str, label: str) -> np.ndarray:
    candidates = sim_image_candidates(folder, text)
    for p in candidates:
        if p.is_file():
            return _read_image_file(p, f"{label} ({p})")
    raise BadFrame(f"{label}: image '{text}' not found (looked for {', '.join(map(str, candidates))})")


def sim_source(path: Path, max_angle: float, camera: str | None = None) -> Source:
    rows = _text_rows(path)
    if not rows:
        raise ValueError(f"{path}: empty (expected rows of {', '.join(SIM_COLUMNS)})")
    first = [c.lower() for c in rows[0]]
    start = 1
    if "steering" in first and "center" in first:
        missing = [c for c in SIM_COLUMNS if c not in first]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(rows[0])})")
        cols = {c: first.index(c) for c in SIM_COLUMNS}
    else:
        start = 0
        if len(first) < len(SIM_COLUMNS):
            raise ValueError(f"{path}: {len(first)} columns, expected {len(SIM_COLUMNS)} "
                             f"({', '.join(SIM_COLUMNS)}; header optional)")
        cols = {c: i for i, c in enumerate(SIM_COLUMNS)}
    image_col = (camera or "center").strip().lower()
    if image_col not in ("center", "left", "right"):
        raise ValueError(f"{path}: simulator logs have the cameras center, left and right, not {camera!r}")
    samples, bad = [], []
    for k, row in enumerate(rows[start:]):
        where = f"{path.name} line {k + start + 1}"
        if len(row) <= max(cols.values()):
            bad.append(f"{where}: {len(row)} columns, expected {len(SIM_COLUMNS)}")
            continue
        rec = {c: row[i] for c, i in cols.items()}
        try:
            steering, mph = _numbers(rec, ["steering", "speed"], where)
        except BadFrame as e:
            bad.append(str(e))
            continue
        text = rec[image_col]
        ts = sim_time(text.replace("\\", "/").split("/")[-1])
        samples.append(Sample(k * SIM_PERIOD if ts is None else ts, k, f"{where} ({text})",
                              (lambda t=text, lb=where: _sim_image(path.parent, t, lb)),
                              angle=-steering * max_angle * STEERING_RATIO, speed=mph * MPH))
    return Source("simulator", path.parent, samples, len(samples), fps=_fps(samples, 1 / SIM_PERIOD), bad=bad,
                  rows=len(rows) - start,
                  notes={"csv": path.name, "sim_max_angle_deg": max_angle, "steering_ratio": STEERING_RATIO,
                         "speed_unit": "mph", "camera_column": image_col})


def _fps(samples: list[Sample], default: float) -> float:
    dts = np.diff([s.timestamp for s in samples])
    dts = dts[(dts > 0) & (dts <= SESSION_GAP)]
    return float(1.0 / np.median(dts)) if len(dts) else default


# ---------------------------------------------------------------- comma.ai


COMMA_ANGLE_SCALE = 0.1  # degrees per unit of steering_angle: a fixed-point value in tenths of a degree


def comma_source(folder: Path, names: list[str] | None = None, camera: str | None = None) -> Source:
    """comma.ai research logs. `steering_angle` is stored as -steering_angle / 10 degrees: comma's
    view_steering_model.py divides it by 10 and negates it before using it as steering wheel degrees with
    positive to the left (its raw range is about +-5000)."""
    import h5py

    if camera is not None:
        raise ValueError(f"{folder}: comma.ai logs have a single camera; --camera does not apply")
    cams = [folder / "camera" / f"{n}.h5" for n in names] if names else sorted((folder / "camera").glob("*.h5"))
    if not cams:
        raise ValueError(f"{folder / 'camera'}: no .h5 files")
    samples, bad, total = [], [], 0
    for cam in cams:
        log = folder / "log" / cam.name
        if not log.exists():
            raise ValueError(f"{cam}: no matching log file {log}")
        refuse_lfs_pointer(cam, "HDF5 camera file")
        refuse_lfs_pointer(log, "HDF5 log file")
        try:
            with h5py.File(log, "r") as f:
                missing = [k for k in ("cam1_ptr", "steering_angle", "speed") if k not in f]
                if missing:
                    raise ValueError(f"{log}: missing dataset(s) {', '.join(missing)} "
                                     f"(expected cam1_ptr, steering_angle, speed)")
                ptr = f["cam1_ptr"][:].astype(np.int64)
                steer = f["steering_angle"][:].astype(float) * -COMMA_ANGLE_SCALE
                speed = f["speed"][:].astype(float).reshape(-1)
                times = f["times"][:].astype(float) if "times" in f else np.arange(len(ptr)) / 100.0
            with h5py.File(cam, "r") as f:
                if "X" not in f:
                    raise ValueError(f"{cam}: no dataset X (camera frames N,3,H,W)")
                n = f["X"].shape[0]
        except OSError as e:
            raise ValueError(f"{cam} / {log}: not readable HDF5 ({e})") from None
        total += n
        order = np.argsort(ptr, kind="stable")
        bounds = np.searchsorted(ptr[order], [np.arange(n), np.arange(1, n + 1)])
        for i in range(n):
            sel = order[bounds[0][i]:bounds[1][i]]
            label = f"{cam.name}#{i}"
            if not len(sel):
                bad.append(f"{label}: no log samples point at this frame (cam1_ptr)")
                continue
            samples.append(Sample(float(times[sel].mean()), i, label, (lambda c=cam, j=i: _comma_frame(c, j)),
                                  angle=float(steer[sel].mean()), speed=float(speed[sel].mean())))
    return Source("comma", folder, samples, len(samples), fps=20.0, bad=bad, rows=total,
                  notes={"camera_files": [c.name for c in cams],
                         "angle": "-steering_angle / 10 (tenths of a degree, positive right, in the log)"})


def _comma_frame(cam: Path, i: int) -> np.ndarray:
    import h5py

    with h5py.File(cam, "r") as f:
        x = f["X"][i]
    if x.ndim != 3 or x.shape[0] != 3:
        raise BadFrame(f"{cam.name}#{i}: frame of shape {x.shape}, expected (3, H, W)")
    return cv2.cvtColor(np.ascontiguousarray(x.transpose(1, 2, 0)), cv2.COLOR_RGB2BGR)

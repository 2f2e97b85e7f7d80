"""Udacity-format test data in the exact shape the recording tools write, each builder naming its source.

- bagdump(): rwightman/udacity-driving-reader, script/bagdump.py. Per bag set it writes left/, center/, right/
  image folders (file name = header stamp in ns, '.jpg' by default or '.png' with -f png), camera.csv
  (seq,timestamp,width,height,frame_id,filename; filename relative to the dump folder), steering.csv
  (seq,timestamp,angle,torque,speed from dbw_mkz_msgs/SteeringReport), gps.csv (seq,timestamp,status,service,
  lat,long,alt) and interpolated.csv: camera, steering and gps rows outer-merged on a pandas DatetimeIndex
  named "index", interpolated with method='time' (leading gaps stay empty and become 0.0 by fillna), cut back
  to the camera rows and written with columns index,timestamp,width,height,frame_id,filename,angle,torque,
  speed,lat,long,alt. The first row of the real dump quoted in REAL_INTERPOLATED_ROW opens every fixture.
- sim_log(): udacity/self-driving-car-sim, Assets/Standard Assets/Vehicles/Car/Scripts/CarController.cs:
  WriteSamplesToDisk appends string.Format("{0},{1},{2},{3},{4},{5},{6}\\n", centerPath, leftPath, rightPath,
  steering, throttle, brake, speed) to driving_log.csv without a header; paths are
  Path.Combine(saveLocation, "IMG", "center_" + DateTime.Now.ToString("yyyy_MM_dd_HH_mm_ss_fff") + ".jpg")
  (absolute, Windows separators on Windows); steering = m_SteerAngle / m_MaximumSteerAngle in [-1, 1]; speed in
  mph; one sample every 1/15 s; a new recording in the same folder appends to the same file. Udacity's sample
  data for the behavioural cloning project has the header center,left,right,steering,throttle,brake,speed,
  ", " separators and relative paths: "IMG/center_2016_12_01_13_30_48_287.jpg, IMG/left_2016_12_01_13_30_48_287.jpg,
  IMG/right_2016_12_01_13_30_48_287.jpg, 0, 0, 0, 22.14829".
- comma_log(): commaai/research README.md and Logs.md: camera/<name>.h5 holds X (N, 3, 160, 320) uint8 at
  20 Hz; log/<name>.h5 holds measurements on a 100 Hz time base: cam1_ptr (camera frame index at this time,
  float), steering_angle, speed (m/s), times (s), among others. view_steering_model.py draws
  -steering_angle / 10 as steering wheel degrees; issue #32 there: values reach about +-5000, "fixed point.
  Divide by 10".
- lfs_pointer(): git-lfs/git-lfs docs/spec.md: "version https://git-lfs.github.com/spec/v1", "oid sha256:<hex>",
  "size <bytes>", one "key value" line each.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import cv2
import h5py
import numpy as np

# The first row of a real interpolated.csv (an Udacity drive dumped with bagdump.py -f png).
REAL_INTERPOLATED_HEADER = "index,timestamp,width,height,frame_id,filename,angle,torque,speed,lat,long,alt"
REAL_INTERPOLATED_ROW = ("2016-11-17 23:10:15.873184606,1479424215873184606,640,480,left_camera,"
                         "left/1479424215873184606.png,0.00035957866912,0.375,23.0033496401,37.5452690125,"
                         "-122.32648468,8.11666368356")
REAL_T0_NS = 1479424215873184606
CAMERAS = ("left_camera", "center_camera", "right_camera")


def frame(i: int, w: int = 640, h: int = 480) -> np.ndarray:
    """A distinct BGR frame: gradients plus a per-frame level."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // w), (y * 255 // h), np.full_like(x, 20 + 9 * i)], -1)
    return img.astype(np.uint8)


def _pandas_datetime(ns: int, date_only: bool) -> str:
    """How pandas writes one value of a DatetimeIndex: nanoseconds when the index needs them; only the date when
    every value of the index is midnight."""
    d = datetime.fromtimestamp(ns // 10**9, timezone.utc)
    return f"{d:%Y-%m-%d}" if date_only else f"{d:%Y-%m-%d %H:%M:%S}.{ns % 10**9:09d}"


def _num(x: float) -> str:
    return repr(float(x))


def bagdump(root: Path, times_ns: list[int], angle_rad, speed_mps, steer_ns: list[int], img_format: str = "png",
            cameras=CAMERAS, camera_size=(640, 480), files=("camera", "steering", "interpolated"),
            date_only_index: bool = False, skip_images=()) -> dict:
    """A bagdump output folder. Each time in `times_ns` has one image per camera (the cameras a few ms apart,
    interleaved in time order like the bag); steering reports at `steer_ns` carry angle_rad(t), speed_mps(t)
    (t in s). Returns {camera frame_id: [(ns, relative filename, BGR image)]}."""
    root.mkdir(parents=True, exist_ok=True)
    w, h = camera_size
    images = {c: [] for c in cameras}
    real = "left_camera" in cameras  # the real first row, a left camera frame
    cam_rows = [(REAL_T0_NS, 640, 480, "left_camera", f"left/{REAL_T0_NS}.png")] if real else []
    for i, t in enumerate(times_ns):
        for k, cam in enumerate(cameras):
            ns = t + k * 1_700_000
            folder = {"left_camera": "left", "center_camera": "center", "right_camera": "right"}.get(cam, "center")
            name = f"{folder}/{ns}.{img_format}"
            img = frame(i, w, h) if cam == "center_camera" or len(cameras) == 1 else frame(i, w, h) // 2
            if (cam, i) not in skip_images:
                (root / folder).mkdir(exist_ok=True)
                cv2.imwrite(str(root / name), img)
            images[cam].append((ns, name, img))
            cam_rows.append((ns, w, h, cam, name))
    steer_t = np.array(steer_ns, np.int64)
    steer_a = np.array([angle_rad(t * 1e-9) for t in steer_t])
    steer_v = np.array([speed_mps(t * 1e-9) for t in steer_t])
    if "camera" in files:
        lines = ["seq,timestamp,width,height,frame_id,filename"]
        lines += [f"{seq},{ns},{cw},{ch},{fid},{fn}" for seq, (ns, cw, ch, fid, fn) in enumerate(cam_rows)]
        (root / "camera.csv").write_text("\n".join(lines) + "\n")
    if "steering" in files:
        lines = ["seq,timestamp,angle,torque,speed"]
        lines += [f"{seq},{t},{_num(a)},0.375,{_num(v)}"
                  for seq, (t, a, v) in enumerate(zip(steer_t, steer_a, steer_v))]
        (root / "steering.csv").write_text("\n".join(lines) + "\n")
        (root / "gps.csv").write_text("seq,timestamp,status,service,lat,long,alt\n"
                                      f"0,{steer_ns[0]},0,1,37.5452690125,-122.32648468,8.11666368356\n")
    if "interpolated" in files:
        lines = [REAL_INTERPOLATED_HEADER] + ([REAL_INTERPOLATED_ROW] if real else [])
        for ns, cw, ch, fid, fn in cam_rows[int(real):]:
            inside = steer_t[0] <= ns
            a = np.interp(ns, steer_t, steer_a) if inside else 0.0  # method='time', then fillna(0.0)
            v = np.interp(ns, steer_t, steer_v) if inside else 0.0
            lines.append(f"{_pandas_datetime(ns, date_only_index)},{ns},{cw},{ch},{fid},{fn},{_num(a)},0.375,"
                         f"{_num(v)},37.5452690125,-122.32648468,8.11666368356")
        (root / "interpolated.csv").write_text("\n".join(lines) + "\n")
    return images


def sim_name(when: datetime, camera: str = "center") -> str:
    """The simulator's image name for a sample taken at local wall-clock time `when`."""
    return f"{camera}_{when:%Y_%m_%d_%H_%M_%S}_{when.microsecond // 1000:03d}.jpg"


def _cs_float(x: float) -> str:
    """C# float.ToString(): shortest form, no trailing ".0"."""
    text = f"{x:.7g}"
    return text[:-2] if text.endswith(".0") else text


def sim_log(path: Path, samples, header: bool = False, separator: str = ",",
            paths: str = r"C:\Users\John Doe\Desktop\sim data") -> list[str]:
    """A simulator driving log. `samples`: (datetime, steering, throttle, brake, speed mph, image or None).
    `paths`: the recording folder as the simulator wrote it into each row (Windows absolute with spaces by
    default; "" for relative IMG/ names as in Udacity's sample data); images are written into IMG/ next to the
    log. Returns the centre paths as written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "IMG").mkdir(exist_ok=True)
    sep = "\\" if "\\" in paths else "/"
    lines = ["center,left,right,steering,throttle,brake,speed"] if header else []
    centres = []
    for when, steering, throttle, brake, mph, img in samples:
        names = [sim_name(when, cam) for cam in ("center", "left", "right")]
        written = [sep.join([paths, "IMG", n]) if paths else f"IMG/{n}" for n in names]
        if img is not None:
            cv2.imwrite(str(path.parent / "IMG" / names[0]), img)
        lines.append(separator.join(written + [_cs_float(steering), _cs_float(throttle), _cs_float(brake),
                                               _cs_float(mph)]))
        centres.append(written[0])
    append_rows(path, lines)
    return centres


def sim_row(center: str, left: str, right: str, steering: float, throttle: float, brake: float, mph: float,
            separator: str = ",") -> str:
    """One driving_log.csv row as CarController.WriteSamplesToDisk formats it."""
    return separator.join([center, left, right, *map(_cs_float, (steering, throttle, brake, mph))])


def append_rows(path: Path, lines: list[str]) -> None:
    """Append rows the way File.AppendAllText does (a new recording adds to the same log)."""
    with open(path, "a", newline="") as f:
        f.write("".join(line + "\n" for line in lines))


def comma_log(root: Path, name: str, frames: list[np.ndarray], steering_raw, speed, t0: float = 0.0) -> None:
    """camera/<name>.h5 and log/<name>.h5: frames are RGB (160, 320, 3); 5 log samples per frame (100 Hz vs
    20 Hz); `steering_raw` and `speed` are given per log sample."""
    (root / "camera").mkdir(parents=True, exist_ok=True)
    (root / "log").mkdir(exist_ok=True)
    with h5py.File(root / "camera" / f"{name}.h5", "w") as f:
        f["X"] = np.stack([img.transpose(2, 0, 1) for img in frames]).astype(np.uint8)
    n = 5 * len(frames)
    with h5py.File(root / "log" / f"{name}.h5", "w") as f:
        f["cam1_ptr"] = (np.arange(n) // 5).astype(np.float64)
        f["steering_angle"] = np.asarray(steering_raw, np.float64)
        f["speed"] = np.asarray(speed, np.float64)
        f["speed_abs"] = np.abs(np.asarray(speed, np.float64))
        f["times"] = t0 + np.arange(n) / 100.0
        f["gas"] = np.zeros(n)
        f["brake"] = np.zeros(n)


def lfs_pointer(path: Path, content: bytes = b"the real file") -> None:
    """What a Git LFS checkout without `git lfs pull` leaves in place of a large file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(content).hexdigest()}\n"
                    f"size {len(content)}\n")

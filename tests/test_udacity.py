"""Udacity ingest: every source format fabricated small (a real ROS1 bag via rosbags), and every bad input."""
from __future__ import annotations

import argparse
import csv
import math
import shutil
from datetime import datetime

import cv2
import h5py
import numpy as np
import pytest
from vbp_rt.data import cli as data_cli
from vbp_rt.data.preprocess import VIEWS, prepare
from vbp_rt.data.store import StoreReader
from vbp_rt.data.udacity import STEERING_MSG, STEERING_TYPE, open_source

T0 = 1479425440.0  # s


def frame(i: int, w: int = 640, h: int = 480) -> np.ndarray:
    """A distinct BGR frame: gradients plus a per-frame level."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // w), (y * 255 // h), np.full_like(x, 20 + 9 * i)], -1)
    return img.astype(np.uint8)


def jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def steering(t):
    """Angle (rad) and speed (m/s) along time: slow for the first 0.15 s."""
    t = np.asarray(t, float)
    return 0.2 * np.sin(3 * (t - T0)), np.where(t - T0 < 0.15, 3.0, 9.0 + (t - T0))


def bag_steering(times):
    """What the bag's 50 Hz float32 steering reports give when linearly interpolated at `times`."""
    st = np.arange(T0 - 0.1, T0 + 1.0, 0.02)
    a, v = (x.astype(np.float32).astype(float) for x in steering(st))
    return np.interp(times, st, a), np.interp(times, st, v)


def run(source, out, **kw):
    args = argparse.Namespace(source=str(source), out=str(out), views=["svf", "hvf"], height=135, min_speed=5.0,
                              angle_unit="rad", sim_max_angle=25.0)
    vars(args).update(kw)
    return data_cli.run_udacity(args)


def check_store(out, times, expect_angle_deg, expect_speed, images):
    with StoreReader(out) as r:
        assert len(r) == len(times) and r.views == ["hvf", "svf"]
        np.testing.assert_allclose(r.timestamp, times, atol=1e-6)
        np.testing.assert_allclose(r.angle, expect_angle_deg, atol=1e-3)
        np.testing.assert_allclose(r.speed, expect_speed, atol=1e-3)
        for name in ("svf", "hvf"):
            for i, img in enumerate(images):
                np.testing.assert_array_equal(r.images(name)[i], prepare(img, VIEWS[name]))
        return r.attrs


# ------------------------------------------------------------------ ROS1 bags


def write_bag(path, frames, steer=True, raw_encoding=None, junk_frames=()):
    """frames: list of (t seconds, BGR image). Writes a real ROS1 bag with rosbags."""
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(Stores.ROS1_NOETIC)
    ts.register(get_types_from_msg(STEERING_MSG, STEERING_TYPE))
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]

    def header(t, seq, fid):
        return Header(seq=seq, stamp=Time(sec=int(t), nanosec=int(round((t - int(t)) * 1e9))), frame_id=fid)

    with Writer(path) as w:
        left = w.add_connection("/left_camera/image_color/compressed", "sensor_msgs/msg/CompressedImage", typestore=ts)
        if raw_encoding:
            cam = w.add_connection("/center_camera/image_color", "sensor_msgs/msg/Image", typestore=ts)
        else:
            cam = w.add_connection("/center_camera/image_color/compressed", "sensor_msgs/msg/CompressedImage",
                                   typestore=ts)
        rep = w.add_connection("/vehicle/steering_report", STEERING_TYPE, typestore=ts) if steer else None
        msgs = []
        if steer:
            for k, t in enumerate(np.arange(T0 - 0.1, T0 + 1.0, 0.02)):  # see bag_steering
                a, v = steering(t)
                m = ts.types[STEERING_TYPE](
                    header=header(t, k, ""), steering_wheel_angle=float(a), steering_wheel_angle_cmd=0.0,
                    steering_wheel_torque=0.0, speed=float(v), enabled=True, override=False, driver=False,
                    fault_wdc=False, fault_bus1=False, fault_bus2=False, fault_calibration=False,
                    fault_connector=False)
                msgs.append((t, rep, ts.serialize_ros1(m, STEERING_TYPE)))
        for k, (t, img) in enumerate(frames):
            if raw_encoding:
                data = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if raw_encoding == "rgb8" else img
                m = ts.types["sensor_msgs/msg/Image"](
                    header=header(t, k, "center_camera"), height=img.shape[0], width=img.shape[1],
                    encoding=raw_encoding, is_bigendian=0, step=img.shape[1] * 3, data=data.reshape(-1).copy())
                msgs.append((t, cam, ts.serialize_ros1(m, "sensor_msgs/msg/Image")))
            else:
                data = jpeg(img)[:3000] if k in junk_frames else jpeg(img)
                m = ts.types["sensor_msgs/msg/CompressedImage"](
                    header=header(t, k, "center_camera"), format="jpeg", data=np.frombuffer(data, np.uint8).copy())
                msgs.append((t, cam, ts.serialize_ros1(m, "sensor_msgs/msg/CompressedImage")))
                m2 = ts.types["sensor_msgs/msg/CompressedImage"](
                    header=header(t, k, "left_camera"), format="jpeg", data=np.frombuffer(jpeg(img * 0), np.uint8).copy())
                msgs.append((t, left, ts.serialize_ros1(m2, "sensor_msgs/msg/CompressedImage")))
        for t, conn, raw in sorted(msgs, key=lambda x: x[0]):
            w.write(conn, int(round(t * 1e9)), raw)


def test_bag_with_compressed_images(tmp_path):
    times = T0 + np.arange(12) * 0.05
    frames = [(t, frame(i)) for i, t in enumerate(times)]
    write_bag(tmp_path / "drive.bag", frames, junk_frames={7})
    out = tmp_path / "out.h5"
    assert run(tmp_path / "drive.bag", out) == 0
    keep = [i for i in range(12) if times[i] - T0 >= 0.15 and i != 7]
    a, v = bag_steering(times[keep])
    decoded = [cv2.imdecode(np.frombuffer(jpeg(frames[i][1]), np.uint8), cv2.IMREAD_COLOR) for i in keep]
    attrs = check_store(out, times[keep], np.degrees(a), v, decoded)
    assert attrs["bad_frames"] == 1 and "truncated JPEG" in attrs["bad_reasons"][0]
    assert "drive.bag#7" in attrs["bad_reasons"][0]
    assert attrs["preprocess"]["ingest"] == "ros1-bag"
    with StoreReader(out) as r:
        np.testing.assert_array_equal(r.frame_id, keep)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_bag_with_raw_images_from_a_folder_of_bags(tmp_path, encoding):
    times = T0 + 0.2 + np.arange(4) * 0.05
    write_bag(tmp_path / "a.bag", [(t, frame(i)) for i, t in enumerate(times[:2])], raw_encoding=encoding)
    write_bag(tmp_path / "b.bag", [(t, frame(i + 2)) for i, t in enumerate(times[2:])], raw_encoding=encoding)
    out = tmp_path / "out.h5"
    assert run(tmp_path, out) == 0
    a, v = bag_steering(times)
    check_store(out, times, np.degrees(a), v, [frame(i) for i in range(4)])


def test_bag_without_steering_topic(tmp_path):
    write_bag(tmp_path / "nosteer.bag", [(T0 + 0.2, frame(0))], steer=False)
    with pytest.raises(ValueError, match=r"nosteer.bag has no /vehicle/steering_report topic"):
        run(tmp_path / "nosteer.bag", tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_not_a_bag(tmp_path):
    (tmp_path / "junk.bag").write_bytes(b"#ROSBAG V2.0\nnot really")
    with pytest.raises(ValueError, match=r"junk.bag is not a readable ROS1 bag"):
        run(tmp_path / "junk.bag", tmp_path / "out.h5")


# ------------------------------------------------------------------ bagdump folders


def write_rows(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)


def test_bagdump_interpolated_csv_with_bad_rows(tmp_path):
    (tmp_path / "center").mkdir()
    times = T0 + 0.2 + np.arange(8) * 0.05
    a, v = steering(times)
    header = ["index", "timestamp", "width", "height", "frame_id", "filename", "angle", "torque", "speed",
              "lat", "long", "alt"]
    rows, images = [], []
    for i, t in enumerate(times):
        ns = int(round(t * 1e9))
        name = f"center/{ns}.jpg"
        img = frame(i, 320, 240) if i == 3 else frame(i)  # frame 3: wrong size
        if i != 5:  # frame 5: file missing
            (tmp_path / name).write_bytes(jpeg(img))
        angle = "abc" if i == 6 else f"{a[i]:.9f}"  # frame 6: not a number
        rows.append([i, ns, 640, 480, "center_camera", name, angle, 0, f"{v[i]:.6f}", 0, 0, 0])
        rows.append([i, ns, 640, 480, "left_camera", f"left/{ns}.jpg", angle, 0, v[i], 0, 0, 0])
        if i not in (3, 5, 6):
            images.append(cv2.imdecode(np.frombuffer(jpeg(img), np.uint8), cv2.IMREAD_COLOR))
    write_rows(tmp_path / "interpolated.csv", header, rows)
    out = tmp_path / "out.h5"
    assert run(tmp_path, out) == 0
    keep = [0, 1, 2, 4, 7]
    attrs = check_store(out, times[keep], np.degrees(a[keep]), v[keep], images)
    reasons = " | ".join(attrs["bad_reasons"])
    assert attrs["bad_frames"] == 3
    assert "image is 320x240, the source says 640x480" in reasons
    assert "interpolated.csv line 14: angle 'abc' is not a number" in reasons
    assert "cannot be read" in reasons and f"{int(round(times[5] * 1e9))}.jpg" in reasons


def test_bagdump_missing_columns(tmp_path):
    write_rows(tmp_path / "interpolated.csv", ["index", "timestamp", "filename", "angle"], [[0, 1, "a.jpg", 0]])
    with pytest.raises(ValueError, match=r"interpolated.csv: missing column\(s\) width, height, frame_id, speed"):
        run(tmp_path / "interpolated.csv", tmp_path / "out.h5")


def test_bagdump_camera_and_steering_csv(tmp_path):
    (tmp_path / "center").mkdir()
    times = T0 + 0.2 + np.arange(5) * 0.05
    cam_rows = []
    for i, t in enumerate(times):
        name = f"center/{int(round(t * 1e9))}.jpg"
        (tmp_path / name).write_bytes(jpeg(frame(i)))
        cam_rows.append([int(round(t * 1e9)), 640, 480, "center_camera", name])
    cam_rows.append([int(round((T0 + 5.0) * 1e9)), 640, 480, "center_camera", "center/late.jpg"])  # no steering
    write_rows(tmp_path / "camera.csv", ["timestamp", "width", "height", "frame_id", "filename"], cam_rows)
    st = np.arange(T0, T0 + 1.0, 0.03)  # measurements not aligned with the frames: interpolated
    sa, sv = steering(st)
    write_rows(tmp_path / "steering.csv", ["timestamp", "angle", "torque", "speed"],
               [[int(round(t * 1e9)), f"{x:.9f}", 0, f"{y:.6f}"] for t, x, y in zip(st, sa, sv)])
    out = tmp_path / "out.h5"
    assert run(tmp_path, out) == 0
    expect_a = np.degrees(np.interp(times, st, sa))
    decoded = [cv2.imdecode(np.frombuffer(jpeg(frame(i)), np.uint8), cv2.IMREAD_COLOR) for i in range(5)]
    attrs = check_store(out, times, expect_a, np.interp(times, st, sv), decoded)
    assert attrs["bad_frames"] == 1 and "no steering measurement" in attrs["bad_reasons"][0]


def test_camera_csv_without_steering_csv(tmp_path):
    write_rows(tmp_path / "camera.csv", ["timestamp", "width", "height", "frame_id", "filename"], [])
    with pytest.raises(ValueError, match="has camera.csv but no steering.csv"):
        run(tmp_path, tmp_path / "out.h5")


# ------------------------------------------------------------------ simulator


@pytest.mark.parametrize("with_header", [True, False])
def test_simulator_driving_log(tmp_path, with_header):
    (tmp_path / "IMG").mkdir()
    rows, images = [], []
    steer = [0.0, 0.5, -0.25, 1.0, 0.1]
    mph = [30.0, 30.0, 8.0, 20.0, 25.0]  # 8 mph = 3.6 m/s: dropped
    for i in range(5):
        name = f"center_2016_12_01_13_30_48_{100 * i:03d}.jpg"
        img = frame(i, 320, 160)
        (tmp_path / "IMG" / name).write_bytes(jpeg(img))
        rows.append([f"C:\\Users\\me\\data\\IMG\\{name}", f"IMG/left_{i}.jpg", f"IMG/right_{i}.jpg", steer[i], 0.5, 0,
                     mph[i]])
        if i != 2:
            images.append(cv2.imdecode(np.frombuffer(jpeg(img), np.uint8), cv2.IMREAD_COLOR))
    header = ["center", "left", "right", "steering", "throttle", "brake", "speed"] if with_header else None
    write_rows(tmp_path / "driving_log.csv", header, rows)
    out = tmp_path / "out.h5"
    assert run(tmp_path / "driving_log.csv", out) == 0
    keep = [0, 1, 3, 4]
    base = datetime(2016, 12, 1, 13, 30, 48).timestamp()  # from the image names, local time
    times = [base + 0.1 * i for i in keep]
    angle = [-steer[i] * 25.0 * 14.8 for i in keep]  # positive steering is to the right in the simulator
    attrs = check_store(out, times, angle, [mph[i] * 0.44704 for i in keep], images)
    assert attrs["preprocess"]["sim_max_angle_deg"] == 25.0 and attrs["bad_frames"] == 0


def test_simulator_log_with_too_few_columns(tmp_path):
    write_rows(tmp_path / "driving_log.csv", None, [["IMG/a.jpg", "0.1", "3"]])
    with pytest.raises(ValueError, match=r"driving_log.csv: 3 columns, expected 7"):
        run(tmp_path, tmp_path / "out.h5")


# ------------------------------------------------------------------ comma.ai


def test_comma_layout(tmp_path):
    (tmp_path / "camera").mkdir()
    (tmp_path / "log").mkdir()
    x = np.stack([cv2.cvtColor(frame(i, 320, 160), cv2.COLOR_BGR2RGB).transpose(2, 0, 1) for i in range(4)])
    with h5py.File(tmp_path / "camera" / "2016-01-30--11-24-51.h5", "w") as f:
        f["X"] = x
    ptr = np.repeat(np.arange(4), 5)
    steer = np.linspace(-10, 10, 20)
    speed = np.where(ptr == 1, 2.0, 12.0)
    with h5py.File(tmp_path / "log" / "2016-01-30--11-24-51.h5", "w") as f:
        f["cam1_ptr"] = ptr.astype(float)
        f["steering_angle"] = steer
        f["speed"] = speed
        f["times"] = 100 + np.arange(20) / 100.0
    out = tmp_path / "out.h5"
    assert run(tmp_path, out) == 0
    keep = [0, 2, 3]
    check_store(out, [100 + np.arange(20)[ptr == i].mean() / 100 for i in keep],
                [steer[ptr == i].mean() for i in keep], [12.0] * 3, [frame(i, 320, 160) for i in keep])


# ------------------------------------------------------------------ bad sources


def test_missing_empty_and_unknown_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        open_source(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty is empty"):
        open_source(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="holds no known Udacity source"):
        open_source(tmp_path / "other")


def test_nothing_usable_exits_non_zero_and_writes_nothing(tmp_path, capsys):
    from vbp_rt.cli import main

    (tmp_path / "center").mkdir()
    rows = []
    for i in range(3):
        name = f"center/{i}.jpg"
        (tmp_path / name).write_bytes(b"\xff\xd8 not a jpeg \xff\xd9")
        rows.append([i, int(T0 * 1e9) + i, 640, 480, "center_camera", name, 0.0, 0, 10.0])
    write_rows(tmp_path / "interpolated.csv",
               ["index", "timestamp", "width", "height", "frame_id", "filename", "angle", "torque", "speed"], rows)
    code = main(["data", "udacity", str(tmp_path), "--out", str(tmp_path / "out.h5")])
    err = capsys.readouterr().err
    assert code != 0
    assert "cannot be decoded as an image" in err and "center/0.jpg" in err
    assert "no usable frames" in err and "3 bad" in err
    assert not any(p.name.startswith("out.h5") for p in tmp_path.iterdir())


def test_real_highway_frames_in_a_bagdump_folder(tmp_path, real_data_dir):
    """Frames this project did not make (960x540): cropped to 4:3, resized and stored."""
    src = sorted((real_data_dir / "lanelines" / "test_images").glob("*.jpg"))[:3]
    if not src:
        pytest.skip("no lanelines/test_images in the shared footage")
    (tmp_path / "center").mkdir()
    rows = []
    for i, p in enumerate(src):
        shutil.copy(p, tmp_path / "center" / p.name)
        img = cv2.imread(str(p))
        rows.append([i, int((T0 + i * 0.05) * 1e9), img.shape[1], img.shape[0], "center_camera",
                     f"center/{p.name}", 0.01 * i, 0, 20.0])
    write_rows(tmp_path / "interpolated.csv",
               ["index", "timestamp", "width", "height", "frame_id", "filename", "angle", "torque", "speed"], rows)
    out = tmp_path / "out.h5"
    assert run(tmp_path, out) == 0
    with StoreReader(out) as r:
        assert len(r) == len(src)
        np.testing.assert_allclose(r.angle, [math.degrees(0.01 * i) for i in range(len(src))], atol=1e-4)
        np.testing.assert_array_equal(r.images("svf")[0], prepare(cv2.imread(str(src[0])), VIEWS["svf"]))

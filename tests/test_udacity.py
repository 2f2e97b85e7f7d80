"""Udacity ingest: every format in the shape its recording tool writes (tests/udacity_fixtures.py; a real ROS1 bag
via rosbags), every known defect of real logs, and every bad input."""
from __future__ import annotations

import argparse
import math
import shutil
import time
from datetime import datetime, timedelta, timezone

import cv2
import h5py
import numpy as np
import pytest
from vbp_rt.data import cli as data_cli
from vbp_rt.data.preprocess import VIEWS, prepare
from vbp_rt.data.store import StoreReader
from vbp_rt.data.udacity import STEERING_MSG, STEERING_TYPE, Measurements
from vbp_rt.data.udacity_ingest import open_source

from .udacity_fixtures import (REAL_INTERPOLATED_ROW, REAL_T0_NS, append_rows, bagdump, comma_log, frame, lfs_pointer,
                               sim_log, sim_name, sim_row)

T0 = 1479425440.0  # s


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
                              angle_unit="rad", sim_max_angle=25.0, format="auto", camera=None)
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
    assert attrs["preprocess"]["ingest"] == "bag"
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


def test_bag_camera_option(tmp_path, capsys):
    times = T0 + 0.2 + np.arange(4) * 0.05
    write_bag(tmp_path / "drive.bag", [(t, frame(i)) for i, t in enumerate(times)])
    assert run(tmp_path / "drive.bag", tmp_path / "left.h5", camera="left_camera") == 0
    assert "4 dropped by camera (/center_camera/image_color/compressed (4))" in capsys.readouterr().out
    with StoreReader(tmp_path / "left.h5") as r:
        assert len(r) == 4 and r.attrs["preprocess"]["camera_topics"] == ["/left_camera/image_color/compressed"]
    with pytest.raises(ValueError, match=r"no topic of camera 'rear'.*image topics: "
                                         r"/center_camera/image_color/compressed \(4\), "
                                         r"/left_camera/image_color/compressed \(4\)"):
        run(tmp_path / "drive.bag", tmp_path / "rear.h5", camera="rear")


def test_lfs_pointer_given_as_a_bag(tmp_path):
    lfs_pointer(tmp_path / "drive.bag")
    with pytest.raises(ValueError, match=r"drive.bag is a Git LFS pointer, not the ROS1 bag itself"):
        run(tmp_path / "drive.bag", tmp_path / "out.h5")
    with pytest.raises(ValueError, match=r"drive.bag is a Git LFS pointer"):  # in a folder of bags too
        run(tmp_path, tmp_path / "out.h5")


def test_lfs_pointers_for_csv_h5_and_images(tmp_path):
    lfs_pointer(tmp_path / "a" / "driving_log.csv")
    with pytest.raises(ValueError, match=r"driving_log.csv is a Git LFS pointer, not the CSV file itself"):
        run(tmp_path / "a" / "driving_log.csv", tmp_path / "out.h5")
    with pytest.raises(ValueError, match=r"driving_log.csv is a Git LFS pointer"):
        run(tmp_path / "a", tmp_path / "out.h5")
    comma_log(tmp_path / "c", "2016-01-30--11-24-51", [frame(0, 320, 160)], [0.0] * 5, [20.0] * 5)
    lfs_pointer(tmp_path / "c" / "camera" / "2016-01-30--11-24-51.h5")
    with pytest.raises(ValueError, match=r"2016-01-30--11-24-51.h5 is a Git LFS pointer"):
        run(tmp_path / "c", tmp_path / "out.h5")
    imgs = bagdump(tmp_path / "d", dump_times(6), dump_angle, dump_speed, dump_steer_ns(6))
    lfs_pointer(tmp_path / "d" / imgs["center_camera"][3][1])
    assert run(tmp_path / "d", tmp_path / "out.h5") == 0
    with StoreReader(tmp_path / "out.h5") as r:
        assert r.attrs["bad_frames"] == 1 and "a Git LFS pointer, not the image" in r.attrs["bad_reasons"][0]


# ------------------------------------------------------------------ bagdump folders


T0_NS = REAL_T0_NS + 100_000_000  # the fixtures' frames follow the real first row


def dump_times(n: int) -> list[int]:
    return [T0_NS + i * 50_000_000 for i in range(n)]  # 20 frames/s


def dump_steer_ns(n: int) -> list[int]:
    return list(range(T0_NS - 100_000_000, T0_NS + n * 50_000_000 + 200_000_000, 20_000_000))  # 50 Hz reports


def dump_angle(t: float) -> float:
    return 0.2 * math.sin(3 * (t - T0_NS * 1e-9))


def dump_speed(t: float) -> float:
    return 3.0 if t - T0_NS * 1e-9 < 0.07 else 9.0 + (t - T0_NS * 1e-9)  # frames 0 and 1 are slow


def dump_expected(images, n: int, skip=()):
    """Timestamps, angles (degrees), speeds and images of the centre frames faster than 5 m/s but `skip`."""
    st = np.array(dump_steer_ns(n), np.int64)
    a = np.array([dump_angle(t * 1e-9) for t in st])
    v = np.array([dump_speed(t * 1e-9) for t in st])
    rows = [(ns * 1e-9, math.degrees(np.interp(ns, st, a)), np.interp(ns, st, v), img)
            for i, (ns, _, img) in enumerate(images["center_camera"]) if i not in skip]
    rows = [r for r in rows if r[2] > 5.0]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]


@pytest.mark.parametrize("date_only", [False, True])
def test_interpolated_csv_as_bagdump_writes_it(tmp_path, date_only):
    """The `index` column is a date-time ("2016-11-17 23:10:15.873184606", or "2016-10-25"); .png images."""
    images = bagdump(tmp_path, dump_times(8), dump_angle, dump_speed, dump_steer_ns(8), files=("interpolated",),
                     date_only_index=date_only)
    lines = (tmp_path / "interpolated.csv").read_text().splitlines()
    assert lines[1] == REAL_INTERPOLATED_ROW and lines[2].startswith("2016-11-17" if date_only else "2016-11-17 23:")
    out = tmp_path / "out.h5"
    assert run(tmp_path, out) == 0
    attrs = check_store(out, *dump_expected(images, 8))
    assert attrs["preprocess"]["ingest"] == "interpolated" and attrs["bad_frames"] == 0
    with StoreReader(out) as r:  # frame_id: the row of interpolated.csv (0 = the real left-camera row)
        np.testing.assert_array_equal(r.frame_id, [3 * i + 2 for i in range(8)][-len(r):])


def test_bagdump_interpolated_csv_with_bad_rows(tmp_path):
    images = bagdump(tmp_path, dump_times(8), dump_angle, dump_speed, dump_steer_ns(8), files=("interpolated",),
                     skip_images={("center_camera", 5)})
    cv2.imwrite(str(tmp_path / images["center_camera"][3][1]), frame(3, 320, 240))  # wrong size
    path = tmp_path / "interpolated.csv"
    lines = path.read_text().splitlines()
    row = 1 + 1 + 3 * 6 + 1  # header, real row, 6 frames of 3 cameras, then frame 6's centre row
    cells = lines[row].split(",")
    assert cells[4] == "center_camera"
    cells[6] = "abc"
    lines[row] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.h5"
    assert run(tmp_path, out) == 0
    attrs = check_store(out, *dump_expected(images, 8, skip=(3, 5, 6)))
    reasons = " | ".join(attrs["bad_reasons"])
    assert attrs["bad_frames"] == 3
    assert "image is 320x240, the source says 640x480" in reasons
    assert f"interpolated.csv line {row + 1}: angle 'abc' is not a number" in reasons
    assert "cannot be read" in reasons and images["center_camera"][5][1] in reasons


def test_bagdump_csv_cut_short(tmp_path):
    """A dump interrupted while writing: the last row has fewer cells than the header."""
    images = bagdump(tmp_path, dump_times(6), dump_angle, dump_speed, dump_steer_ns(6), files=("interpolated",))
    path = tmp_path / "interpolated.csv"
    text = path.read_text()
    path.write_text(text + text.splitlines()[-1][:60] + "\n")
    assert run(tmp_path, tmp_path / "out.h5") == 0
    attrs = check_store(tmp_path / "out.h5", *dump_expected(images, 6))
    assert attrs["bad_frames"] == 1 and "interpolated.csv line 21: 5 of 12 columns (cut short?)" in attrs["bad_reasons"]


def test_bagdump_missing_columns(tmp_path):
    (tmp_path / "interpolated.csv").write_text("index,timestamp,filename,angle\n2016-10-25,1,a.jpg,0\n")
    with pytest.raises(ValueError, match=r"interpolated.csv: missing column\(s\) width, height, frame_id, speed"):
        run(tmp_path / "interpolated.csv", tmp_path / "out.h5")


def test_bagdump_camera_and_steering_csv(tmp_path):
    images = bagdump(tmp_path, dump_times(6), dump_angle, dump_speed, dump_steer_ns(6), img_format="jpg",
                     files=("camera", "steering"))
    with open(tmp_path / "camera.csv", "a") as f:  # a frame long after the last steering report
        f.write(f"99,{T0_NS + 5 * 10**9},640,480,center_camera,center/late.jpg\n")
    out = tmp_path / "out.h5"
    assert run(tmp_path, out) == 0
    times, angles, speeds, _ = dump_expected(images, 6)
    decoded = [cv2.imread(str(tmp_path / name)) for ns, name, _ in images["center_camera"] if ns * 1e-9 in times]
    attrs = check_store(out, times, angles, speeds, decoded)
    assert attrs["bad_frames"] == 1 and "no steering measurement" in attrs["bad_reasons"][0]
    assert attrs["preprocess"]["ingest"] == "camera-steering"


def test_camera_csv_without_steering_csv(tmp_path):
    (tmp_path / "camera.csv").write_text("seq,timestamp,width,height,frame_id,filename\n")
    with pytest.raises(ValueError, match="has camera.csv but no steering.csv"):
        run(tmp_path, tmp_path / "out.h5")


def test_bagdump_folder_with_all_three_csvs(tmp_path, capsys):
    """bagdump writes camera.csv, steering.csv and interpolated.csv side by side: camera.csv + steering.csv
    are read first, interpolated.csv when asked or when the pair fails, and both give the same labels."""
    images = bagdump(tmp_path, dump_times(8), dump_angle, dump_speed, dump_steer_ns(8))
    expected = dump_expected(images, 8)
    assert run(tmp_path, tmp_path / "pair.h5") == 0
    assert check_store(tmp_path / "pair.h5", *expected)["preprocess"]["ingest"] == "camera-steering"
    assert run(tmp_path, tmp_path / "interp.h5", format="interpolated") == 0
    assert check_store(tmp_path / "interp.h5", *expected)["preprocess"]["ingest"] == "interpolated"
    (tmp_path / "steering.csv").write_text("seq,timestamp,angle,torque,speed\n")  # a broken pair
    capsys.readouterr()
    assert run(tmp_path, tmp_path / "fallback.h5") == 0
    out = capsys.readouterr().out
    assert "camera.csv + steering.csv" in out and "not used" in out and "no usable steering rows" in out
    assert check_store(tmp_path / "fallback.h5", *expected)["preprocess"]["ingest"] == "interpolated"
    with pytest.raises(ValueError, match="no usable steering rows"):
        run(tmp_path, tmp_path / "pair_only.h5", format="camera-steering")
    with pytest.raises(ValueError, match=r"no comma source \(found: camera-steering, interpolated\)"):
        run(tmp_path, tmp_path / "x.h5", format="comma")


def test_camera_option_and_the_frame_ids_present(tmp_path, capsys):
    """A robot recorded with the same reader: its only camera is openmv_cam/camera__link."""
    fid = "openmv_cam/camera__link"
    images = bagdump(tmp_path, dump_times(5), dump_angle, dump_speed, dump_steer_ns(5), cameras=(fid,),
                     camera_size=(320, 240))
    with pytest.raises(ValueError, match=r"no rows of the centre camera.*frame ids present: "
                                         r"openmv_cam/camera__link \(5\).*--camera"):
        run(tmp_path, tmp_path / "out.h5")
    assert "not used" in capsys.readouterr().err
    assert run(tmp_path, tmp_path / "out.h5", camera=fid) == 0
    with StoreReader(tmp_path / "out.h5") as r:
        assert len(r) == len([1 for ns, _, _ in images[fid] if dump_speed(ns * 1e-9) > 5])
        assert r.attrs["preprocess"]["camera"] == fid
    with pytest.raises(ValueError, match=r"no rows of camera 'right_camera'.*openmv_cam/camera__link \(5\)"):
        run(tmp_path, tmp_path / "other.h5", camera="right_camera")


def test_summary_printed_and_stored(tmp_path, capsys):
    from vbp_rt.cli import main

    n = 6
    images = bagdump(tmp_path, dump_times(n), dump_angle, dump_speed, dump_steer_ns(n), files=("interpolated",),
                     skip_images={("center_camera", 4)})
    out = tmp_path / "out.h5"
    assert main(["data", "udacity", str(tmp_path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    slow = sum(dump_speed(ns * 1e-9) <= 5 for ns, _, _ in images["center_camera"])
    kept = n - slow - 1
    assert (f"bagdump interpolated.csv ({tmp_path / 'interpolated.csv'}): {3 * n + 1} rows read, {kept} frames kept, "
            f"{slow} dropped by speed, {2 * n + 1} dropped by camera (left_camera ({n + 1}), right_camera ({n})), "
            f"1 bad, 1 session(s)") in text
    assert "first bad: interpolated.csv line" in text and images["center_camera"][4][1] in text
    with StoreReader(out) as r:
        s = r.attrs["preprocess"]["summary"]
    assert (s["rows"], s["kept"], s["dropped_speed"], s["bad"], s["sessions"]) == (3 * n + 1, kept, slow, 1, 1)
    assert s["dropped_camera"] == {"left_camera": n + 1, "right_camera": n}
    assert images["center_camera"][4][1] in s["bad_reasons"][0]
    assert s["session_spans"][0]["first_frame"] == 0 and s["session_spans"][0]["kept"] == kept


def test_detection_by_content_not_by_name(tmp_path):
    sim = tmp_path / "sim"
    sim_log(sim / "driving_log_initial.csv", [(datetime(2017, 1, 3, 9, 0, 0, 100000 * k), 0.1, 0.5, 0, 20.0,
                                               frame(k, 320, 160)) for k in range(3)])
    assert run(sim / "driving_log_initial.csv", tmp_path / "a.h5") == 0
    assert run(sim, tmp_path / "b.h5") == 0
    dump = tmp_path / "dump"
    bagdump(dump, dump_times(4), dump_angle, dump_speed, dump_steer_ns(4), files=("interpolated",))
    (dump / "interpolated.csv").rename(dump / "HMB_1_interp.csv")
    assert run(dump / "HMB_1_interp.csv", tmp_path / "c.h5") == 0
    assert run(dump, tmp_path / "d.h5") == 0
    (tmp_path / "notes.csv").write_text("name,value\nx,1\n")
    with pytest.raises(ValueError, match=r"notes.csv: not a known Udacity source \(its first line: 'name,value'\)"):
        run(tmp_path / "notes.csv", tmp_path / "e.h5")
    shutil.copy(sim / "driving_log_initial.csv", sim / "driving_log.csv")
    with pytest.raises(ValueError, match=r"several simulator logs \(driving_log.csv, driving_log_initial.csv\)"):
        run(sim, tmp_path / "f.h5")


# ------------------------------------------------------------------ simulator


@pytest.mark.parametrize("style", ["windows", "sample-data"])
def test_simulator_driving_log(tmp_path, style):
    """Header-less rows with Windows absolute paths (the simulator), or Udacity's sample data: a header, ", "
    separators and relative IMG/ paths."""
    steer = [0.0, 0.5, -0.25, 1.0, 0.1]
    mph = [30.0, 30.19097, 8.0, 20.0, 25.0]  # 8 mph = 3.6 m/s: dropped
    start = datetime(2016, 12, 1, 13, 30, 48, 287000)
    samples = [(start.replace(microsecond=287000 + 66000 * i), steer[i], 0.5, 0, mph[i], frame(i, 320, 160))
               for i in range(5)]
    kw = {"windows": {}, "sample-data": {"header": True, "separator": ", ", "paths": ""}}[style]
    written = sim_log(tmp_path / "driving_log.csv", samples, **kw)
    first = (tmp_path / "driving_log.csv").read_text().splitlines()[0]
    assert first.startswith("center,left,right" if kw else r"C:\Users\John Doe\Desktop\sim data\IMG\center_2016_")
    assert written[0].endswith("center_2016_12_01_13_30_48_287.jpg")
    out = tmp_path / "out.h5"
    assert run(tmp_path / "driving_log.csv", out) == 0
    keep = [0, 1, 3, 4]
    times = [sim_utc(samples[i][0]) for i in keep]
    angle = [-steer[i] * 25.0 * 14.8 for i in keep]  # positive steering is to the right in the simulator
    decoded = [cv2.imread(str(tmp_path / "IMG" / sim_name(samples[i][0]))) for i in keep]
    attrs = check_store(out, times, angle, [mph[i] * 0.44704 for i in keep], decoded)
    assert attrs["preprocess"]["sim_max_angle_deg"] == 25.0 and attrs["bad_frames"] == 0


def sim_utc(when: datetime) -> float:
    return when.replace(tzinfo=timezone.utc).timestamp()


def test_simulator_image_paths_resolved_in_order(tmp_path):
    """As written (either separator, relative to the log), the log's folder + the last two components, IMG/ +
    the base name; the log's own text in the error."""
    t = [datetime(2018, 2, 1, 10, 0, 0, 66000 * k) for k in range(6)]
    names = [sim_name(x) for x in t]
    for sub, k in (("IMG", 0), ("IMG_Ori", 1), ("elsewhere/run", 2), ("IMG_Ori", 3), ("IMG", 5)):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / sub / names[k]), frame(k, 320, 160))
    cv2.imwrite(str(tmp_path / "IMG" / names[1]), frame(9, 320, 160))  # a stale copy: the path as written wins
    rows = [rf"C:\Users\John Doe\Desktop\sim data\IMG\{names[0]}",  # -> IMG/ + base name
            rf"IMG_Ori\{names[1]}",  # relative, Windows separator -> as written
            str(tmp_path / "elsewhere" / "run" / names[2]),  # absolute and present -> as written
            rf"D:\old runs\IMG_Ori\{names[3]}",  # -> the log's folder + IMG_Ori\name
            rf"IMG\{names[4]}",  # missing
            f"/home/someone/track1/IMG/{names[5]}"]  # POSIX absolute, moved -> IMG/ + base name
    append_rows(tmp_path / "driving_log.csv", [sim_row(r, "l.jpg", "r.jpg", 0.1, 0.5, 0, 30.0) for r in rows])
    out = tmp_path / "out.h5"
    assert run(tmp_path / "driving_log.csv", out) == 0
    keep = [0, 1, 2, 3, 5]
    where = ["IMG", "IMG_Ori", "elsewhere/run", "IMG_Ori", None, "IMG"]
    attrs = check_store(out, [sim_utc(t[k]) for k in keep], [-0.1 * 25 * 14.8] * 5, [30 * 0.44704] * 5,
                        [cv2.imread(str(tmp_path / where[k] / names[k])) for k in keep])
    assert attrs["bad_frames"] == 1
    reason = attrs["bad_reasons"][0]
    assert reason.startswith(f"driving_log.csv line 5: image 'IMG\\{names[4]}' not found (looked for {tmp_path}")


def test_simulator_times_do_not_depend_on_the_time_zone(tmp_path, monkeypatch):
    t = [datetime(2016, 12, 1, 13, 30, 48, 287000), datetime(2016, 12, 1, 13, 30, 48, 354000)]
    sim_log(tmp_path / "driving_log.csv", [(x, 0.0, 0.5, 0, 30.0, None) for x in t])
    stamps = {}
    try:
        for tz in ("UTC", "America/Los_Angeles"):
            monkeypatch.setenv("TZ", tz)
            time.tzset()
            stamps[tz] = [s.timestamp for s in open_source(tmp_path / "driving_log.csv").samples]
    finally:
        monkeypatch.undo()
        time.tzset()
    assert stamps["UTC"] == stamps["America/Los_Angeles"] == [sim_utc(x) for x in t]


def test_session_jump_keeps_file_order(tmp_path):
    """A log that appends a 2018 recording after a 2024 one: kept in file order, two sessions."""
    new = [datetime(2024, 5, 2, 10, 0, 0) + timedelta(seconds=k / 15) for k in range(4)]
    old = [datetime(2018, 3, 1, 16, 20, 5) + timedelta(seconds=k / 15) for k in range(3)]
    sim_log(tmp_path / "driving_log.csv", [(x, 0.2, 0.5, 0, 25.0, frame(k, 320, 160)) for k, x in enumerate(new)])
    sim_log(tmp_path / "driving_log.csv", [(x, -0.2, 0.5, 0, 25.0, frame(k, 320, 160)) for k, x in enumerate(old)])
    out = tmp_path / "out.h5"
    assert run(tmp_path, out) == 0
    with StoreReader(out) as r:
        np.testing.assert_allclose(r.timestamp, [sim_utc(x) for x in new + old], atol=1e-6)
        s = r.attrs["preprocess"]["summary"]
        assert r.attrs["fps"] == pytest.approx(15, rel=0.05)
    assert s["sessions"] == 2 and [x["first_frame"] for x in s["session_spans"]] == [0, 4]
    assert [x["kept"] for x in s["session_spans"]] == [4, 3]


def test_steering_is_not_interpolated_across_a_gap():
    """Measurements of two sessions 10 s apart: a frame near the end of the first takes its last value."""
    m = Measurements(np.array([0.0, 0.02, 0.04, 10.0, 10.02]), np.array([1.0, 1.0, 1.0, 50.0, 50.0]),
                     np.array([9.0, 9.0, 9.0, 20.0, 20.0]))
    assert m.at(0.03) == (1.0, 9.0)
    assert m.at(0.2) == (1.0, 9.0)
    assert m.at(9.9) == (50.0, 20.0)
    assert m.at(5.0) is None


def test_simulator_log_with_too_few_columns(tmp_path):
    append_rows(tmp_path / "driving_log.csv", ["IMG/a.jpg,0.1,3"])
    with pytest.raises(ValueError, match=r"driving_log.csv: 3 columns, expected 7"):
        run(tmp_path, tmp_path / "out.h5")


# ------------------------------------------------------------------ comma.ai


def test_comma_steering_angle_is_tenths_of_a_degree_positive_right(tmp_path):
    """Raw steering_angle over its documented range (about +-5000) becomes +-500 steering wheel degrees with
    positive to the left, as comma's viewer draws it (-steering_angle / 10)."""
    rgb = [cv2.cvtColor(frame(i, 320, 160), cv2.COLOR_BGR2RGB) for i in range(4)]
    raw = np.linspace(-5000, 5000, 20)
    speed = np.where(np.arange(20) // 5 == 1, 2.0, 12.0)
    comma_log(tmp_path, "2016-01-30--11-24-51", rgb, raw, speed, t0=100.0)
    out = tmp_path / "out.h5"
    assert run(tmp_path, out) == 0
    keep = [0, 2, 3]
    expect = [-raw[5 * i:5 * i + 5].mean() / 10 for i in keep]
    attrs = check_store(out, [100 + (5 * i + 2) / 100 for i in keep], expect, [12.0] * 3,
                        [frame(i, 320, 160) for i in keep])
    assert expect[0] == pytest.approx(394.737, abs=1e-3) and expect[-1] < -390  # raw -3947 -> 394.7 deg left
    with StoreReader(out) as r:
        assert np.abs(r.angle).max() <= 500
    assert attrs["preprocess"]["ingest"] == "comma"


def test_one_comma_file_given(tmp_path):
    rgb = [cv2.cvtColor(frame(i, 320, 160), cv2.COLOR_BGR2RGB) for i in range(2)]
    comma_log(tmp_path, "a", rgb, [100.0] * 10, [20.0] * 10)
    comma_log(tmp_path, "b", rgb, [-100.0] * 10, [20.0] * 10)
    assert run(tmp_path / "log" / "b.h5", tmp_path / "out.h5") == 0
    with StoreReader(tmp_path / "out.h5") as r:
        np.testing.assert_allclose(r.angle, [10.0, 10.0])


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
    with pytest.raises(ValueError, match="unknown format 'rosbag'"):
        open_source(tmp_path / "other", fmt="rosbag")


def test_nothing_usable_exits_non_zero_and_writes_nothing(tmp_path, capsys):
    from vbp_rt.cli import main

    images = bagdump(tmp_path, dump_times(3), lambda t: 0.0, lambda t: 10.0, dump_steer_ns(3), img_format="jpg",
                     files=("interpolated",))
    for _, name, _ in images["center_camera"]:
        (tmp_path / name).write_bytes(b"\xff\xd8 not a jpeg \xff\xd9")
    code = main(["data", "udacity", str(tmp_path), "--out", str(tmp_path / "out.h5")])
    err = capsys.readouterr().err
    assert code != 0
    assert "cannot be decoded as an image" in err and images["center_camera"][0][1] in err
    assert "no usable frames" in err and "3 bad" in err
    assert not any(p.name.startswith("out.h5") for p in tmp_path.iterdir())


def test_real_highway_frames_in_a_bagdump_folder(tmp_path, real_data_dir):
    """Frames this project did not make (960x540): cropped to 4:3, resized and stored."""
    src = sorted((real_data_dir / "lanelines" / "test_images").glob("*.jpg"))[:3]
    if not src:
        pytest.skip("no lanelines/test_images in the shared footage")
    (tmp_path / "center").mkdir()
    lines = ["index,timestamp,width,height,frame_id,filename,angle,torque,speed,lat,long,alt"]
    for i, p in enumerate(src):
        shutil.copy(p, tmp_path / "center" / p.name)
        img = cv2.imread(str(p))
        lines.append(f"2016-11-17 23:10:1{i}.000000000,{T0_NS + i * 10**9},{img.shape[1]},{img.shape[0]},"
                     f"center_camera,center/{p.name},{0.01 * i},0.0,20.0,0.0,0.0,0.0")
    (tmp_path / "interpolated.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.h5"
    assert run(tmp_path, out) == 0
    with StoreReader(out) as r:
        assert len(r) == len(src)
        np.testing.assert_allclose(r.angle, [math.degrees(0.01 * i) for i in range(len(src))], atol=1e-4)
        np.testing.assert_array_equal(r.images("svf")[0], prepare(cv2.imread(str(src[0])), VIEWS["svf"]))


# ------------------------------------------------------------------ end to end


def test_bagdump_to_store_to_training_to_explain(tmp_path):
    """A real-shaped bagdump folder -> `vbp data udacity` -> one epoch of `vbp train` -> `vbp explain`."""
    from vbp_rt.cli import main

    from .trainer_helpers import HEIGHT, train_args

    n = 16
    bagdump(tmp_path / "dump", dump_times(n), dump_angle, lambda t: 12.0, dump_steer_ns(n), img_format="jpg")
    store, run_dir, masks = tmp_path / "drive.h5", tmp_path / "run", tmp_path / "masks.h5"
    assert main(["data", "udacity", str(tmp_path / "dump"), "--out", str(store), "--views", "hvf",
                 "--height", str(HEIGHT)]) == 0
    with StoreReader(store) as r:
        assert len(r) == n
    assert main(["train", *train_args(store, run_dir, "--epochs", 1, "--snapshots", "", "--threads", 1)]) == 0
    assert main(["explain", str(run_dir / "last.pt"), str(store), "--out", str(masks)]) == 0
    with h5py.File(masks) as f:
        assert f["prediction"].shape == (n,) and f["mask"].shape[0] == n

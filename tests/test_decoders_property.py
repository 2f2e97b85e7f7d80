"""Property tests: random bytes and random rows never crash the decoders and CSV parsers with a traceback.

Images, videos, stores and Udacity logs built from random or damaged data may only give a decoded result, a
counted bad frame/row, or a clear ValueError/OSError naming the problem.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.udacity_fixtures import frame, sim_log, sim_name
from tests.viewer_helpers import camera_frame, write_drive, write_video
from vbp_rt.data.images import CorruptImage, decode_image
from vbp_rt.data.sources import iter_frames, open_source
from vbp_rt.data.udacity import BadFrame as BadSample
from vbp_rt.data.udacity_ingest import open_source as open_udacity

SETTINGS = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
JPEG = cv2.imencode(".jpg", camera_frame(3))[1].tobytes()
PNG = cv2.imencode(".png", camera_frame(4))[1].tobytes()


def cut(valid: bytes):
    """`valid` cut at a random length."""
    return st.integers(0, len(valid)).map(lambda n: valid[:n])


def damaged(valid: bytes):
    """`valid` cut at a random length, or with random bytes written over a random stretch."""
    overwrite = st.tuples(st.integers(0, len(valid) - 1), st.binary(min_size=1, max_size=64)).map(
        lambda t: valid[:t[0]] + t[1] + valid[t[0] + len(t[1]):])
    return cut(valid) | overwrite


@SETTINGS
@given(st.binary(max_size=512) | st.binary(max_size=512).map(lambda b: b"\xff\xd8" + b)
       | st.binary(max_size=512).map(lambda b: PNG[:8] + b) | damaged(JPEG) | damaged(PNG))
def test_image_bytes_decode_or_raise_corrupt_image(data):
    try:
        image = decode_image(data)
    except CorruptImage as e:
        assert str(e)
        return
    assert image.dtype == np.uint8 and image.size > 0


def _read_source(path, view="svf"):
    """All frames of a source; returns (good, bad) counts, or the clear error that refused it."""
    try:
        source = open_source(path, view)
    except (ValueError, OSError) as e:
        return str(e)
    good, bad = 0, []
    try:
        for f in iter_frames(source, on_bad=lambda i, why: bad.append(why)):
            assert f.image.dtype == np.uint8
            good += 1
    finally:
        source.close()
    return good, bad


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_damaged_videos_give_frames_bad_frames_or_a_clear_error(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("video")
    valid = write_video(folder / "ok.mp4", 12).read_bytes()
    path = folder / "x.mp4"
    path.write_bytes(data.draw(damaged(valid) | st.binary(max_size=2048)))
    result = _read_source(path)
    if isinstance(result, tuple):
        good, bad = result
        assert good + len(bad) <= 12 and all("x.mp4" in why for why in bad)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_cut_stores_give_frames_bad_frames_or_a_clear_error(tmp_path_factory, data):
    """A store cut short (a copy or download that stopped). Random bytes written over HDF5's own metadata
    can make the HDF5 library loop forever while opening the file, so that case is not drawn."""
    folder = tmp_path_factory.mktemp("store")
    valid = write_drive(folder / "ok.h5", 6).read_bytes()
    path = folder / "x.h5"
    path.write_bytes(data.draw(cut(valid)))
    result = _read_source(path)
    if isinstance(result, str):
        assert "x.h5" in result


CELL = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["", "nan", "inf", "-1e309", "0.5", "-0.25", "30", "IMG/missing.jpg", "x\x00y", '"', "\r"])


def _sim_folder(root: Path, rows, header: bool) -> Path:
    t0 = datetime(2016, 12, 1, 13, 30, 48)
    sim_log(root / "driving_log.csv",
            [(t0 + timedelta(seconds=i / 15), 0.1, 0.5, 0, 20.0, frame(i, 64, 48)) for i in range(2)], header=header)
    good = sim_name(t0)
    lines = [",".join(cells) for cells in rows] + [f"IMG/{good},l.jpg,r.jpg,0.1,0.5,0,20"]
    with open(root / "driving_log.csv", "a", encoding="utf-8", errors="surrogatepass", newline="") as f:
        f.write("\n".join(lines) + "\n")
    return root


@SETTINGS
@given(st.lists(st.lists(CELL, max_size=9), max_size=8), st.booleans())
def test_simulator_log_rows_are_counted_bad_or_read(tmp_path_factory, rows, header):
    """Random rows appended to a simulator driving log: each is read, counted bad, or the log refused."""
    _check_udacity(_sim_folder(tmp_path_factory.mktemp("sim"), rows, header))


@SETTINGS
@given(st.lists(st.lists(CELL, min_size=6, max_size=12), max_size=8))
def test_bagdump_interpolated_rows_are_counted_bad_or_read(tmp_path_factory, rows):
    """Random rows under bagdump's interpolated.csv header (shape from tests/udacity_fixtures.bagdump)."""
    root = tmp_path_factory.mktemp("bagdump")
    header = "index,timestamp,width,height,frame_id,filename,angle,torque,speed,lat,long,alt"
    with open(root / "interpolated.csv", "w", encoding="utf-8", errors="surrogatepass", newline="") as f:
        f.write("\n".join([header] + [",".join(r) for r in rows]) + "\n")
    _check_udacity(root)


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes_as_a_driving_log(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("bytes")
    (root / "driving_log.csv").write_bytes(data)
    _check_udacity(root)


def _check_udacity(root: Path) -> None:
    try:
        source = open_udacity(root)
    except (ValueError, OSError) as e:
        assert str(e)
        return
    assert all(isinstance(b, str) and b for b in source.bad)
    for sample in source.samples:
        try:
            image = sample.load()
        except BadSample as e:
            assert str(e)
            continue
        assert image.dtype == np.uint8 and image.ndim in (2, 3)

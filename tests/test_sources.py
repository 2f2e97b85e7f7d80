"""The frame sources shared by `vbp explain` and the viewer: damaged videos, truncated images, NaN pixels."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.viewer_helpers import camera_frame, write_video
from vbp_rt.data.images import CorruptImage, decode_image, read_image
from vbp_rt.data.sources import BadFrame, iter_frames, open_source


def _read_all(source):
    good, bad, ends = [], [], []
    for frame in iter_frames(source, on_bad=lambda i, why: bad.append((i, why)), on_end=ends.append):
        good.append(frame.index)
    return good, bad, ends


def _damage_middle(src, dst, size, seed=0):
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid:mid + size] = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def test_damaged_real_video_continues_past_unreadable_frames(real_data_dir, tmp_path):
    """300 KB of garbage in the middle of a 221-frame clip: the frames after it still decode."""
    clip = _damage_middle(real_data_dir / "lanelines" / "solidWhiteRight.mp4", tmp_path / "damaged.mp4", 300_000)
    good, bad, ends = _read_all(open_source(clip, "svf"))
    assert len(good) + len(bad) == 221 and not ends
    assert len(good) > 180 and max(good) == 220  # reading went on to the end of the file
    assert bad and all(f"damaged.mp4: frame {i} " in why for i, why in bad)
    assert sorted(good + [i for i, _ in bad]) == list(range(221))


def test_video_cut_short_warns_with_the_announced_count(real_data_dir, tmp_path):
    data = (real_data_dir / "lanelines" / "solidWhiteRight.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:len(data) // 2])
    good, bad, ends = _read_all(open_source(cut, "svf"))
    assert 90 < len(good) < 130 and good == list(range(len(good)))
    assert len(ends) == 1 and f"ends at frame {len(good) + len(bad)} although its header announces 221" in ends[0]


def test_video_random_access_matches_sequential_reading(tmp_path):
    video = open_source(write_video(tmp_path / "clip.mp4", 40), "svf")
    sequential = [f.image for f in iter_frames(video)]
    assert len(sequential) == 40
    for i in (31, 5, 5, 6, 39, 0, 20):
        np.testing.assert_array_equal(video.read(i).image, sequential[i])
    # the decoded frames are the written ones (mp4v is lossy: compare the mean brightness per frame)
    assert abs(float(sequential[7].mean()) - float(camera_frame(7).mean())) < 3


def test_truncated_jpeg_is_a_bad_frame(real_data_dir, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    src = real_data_dir / "lanelines" / "test_images" / "solidWhiteCurve.jpg"
    data = src.read_bytes()
    (folder / "a.jpg").write_bytes(data)
    (folder / "b.jpg").write_bytes(data[:len(data) * 2 // 3])  # libjpeg would only warn and fill with grey
    good, bad, _ = _read_all(open_source(folder, "svf"))
    assert good == [0] and len(bad) == 1 and "b.jpg" in bad[0][1] and "truncated JPEG" in bad[0][1]


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_and_inf_images_are_bad_frames_named(tmp_path, value):
    folder = tmp_path / "frames"
    folder.mkdir()
    ok = np.random.default_rng(0).random((48, 64), dtype=np.float32)
    cv2.imwrite(str(folder / "a.tiff"), ok)
    bad = ok.copy()
    bad[3, 4] = value
    cv2.imwrite(str(folder / "b.tiff"), bad)
    source = open_source(folder, "svf")
    assert source.read(0).image.dtype == np.uint8
    with pytest.raises(BadFrame, match="b.tiff.*NaN or infinite"):
        source.read(1)


def test_png_damage_is_found_by_its_checksums(tmp_path):
    ok, png = cv2.imencode(".png", camera_frame(3))
    png = png.tobytes()
    assert decode_image(png).shape == (240, 320, 3)
    with pytest.raises(CorruptImage, match="bad CRC"):
        decode_image(png[:60] + bytes([png[60] ^ 0xFF]) + png[61:])
    with pytest.raises(CorruptImage, match="truncated PNG"):
        decode_image(png[:-20])
    (tmp_path / "x.png").write_bytes(png[:-20])
    with pytest.raises(CorruptImage, match="x.png cannot be decoded"):
        read_image(tmp_path / "x.png")


def test_jpeg_walk_accepts_progressive_restart_markers_and_trailing_data():
    image = camera_frame(5)
    for params in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 2]):
        ok, jpg = cv2.imencode(".jpg", image, params)
        jpg = jpg.tobytes()
        assert decode_image(jpg + b"\x00\x00appended").shape == image.shape
        with pytest.raises(CorruptImage, match="truncated JPEG"):
            decode_image(jpg[:-2])

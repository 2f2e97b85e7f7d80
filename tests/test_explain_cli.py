"""`vbp explain` on checkpoints, images, folders and videos."""
from __future__ import annotations

import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest
import torch

import vbp_rt
from tests.conftest import randomize_bn
from vbp_rt import cli, models
from vbp_rt.overlay import overlay


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "svf.pt"
    models.save_checkpoint(path, randomize_bn(vbp_rt.build("netsvf")))
    return path


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"f{i}.png"), rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    return folder


def test_explain_folder_writes_masks_and_overlays(checkpoint, images, tmp_path):
    out, ov = tmp_path / "o.h5", tmp_path / "ov"
    assert cli.main(["explain", str(checkpoint), str(images), "--out", str(out), "--overlay-dir", str(ov)]) == 0
    with h5py.File(out) as f:
        assert f["prediction"].shape == (3,)
        assert f["mask"].shape == (3, 135, 640) and f["mask"].dtype == np.float32
        masks = f["mask"][:]
        assert f.attrs["method"] == "vbp" and f.attrs["bad_frames"] == 0
    model = models.load_model(checkpoint)
    first = cv2.imread(str(images / "f0.png"))
    from vbp_rt.data.preprocess import VIEWS, prepare
    x = torch.from_numpy(prepare(first, VIEWS["svf"])).float().div(255)[None, None]
    np.testing.assert_allclose(masks[0], vbp_rt.explain(model, x).mask[0].numpy(), atol=1e-6)
    assert len(list(ov.glob("*.png"))) == 3


def test_bad_image_is_skipped_and_counted(checkpoint, images, tmp_path, capsys):
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "o.h5"
    assert cli.main(["explain", str(checkpoint), str(images), "--method", "lrp", "--out", str(out)]) == 0
    assert "broken.jpg" in capsys.readouterr().err
    with h5py.File(out) as f:
        assert f["mask"].shape[0] == 3 and f.attrs["bad_frames"] == 1 and f.attrs["method"] == "lrp"


def test_nothing_usable_leaves_no_output(checkpoint, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    out = tmp_path / "o.h5"
    assert cli.main(["explain", str(checkpoint), str(bad), "--out", str(out)]) == 2
    assert not out.exists() and not list(tmp_path.glob(".o.h5*"))


def test_errors_name_the_problem(checkpoint, tmp_path, capsys):
    assert cli.main(["explain", str(checkpoint), str(tmp_path / "missing.png"), "--out", str(tmp_path / "o.h5")]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err
    assert cli.main(["explain", str(checkpoint), str(tmp_path), "--out", str(tmp_path / "o.h5")]) == 2
    assert "has no images" in capsys.readouterr().err
    assert cli.main(["explain", str(checkpoint), str(tmp_path), "--method", "nope", "--out", "o.h5"]) == 2
    assert "known methods" in capsys.readouterr().err


def test_real_highway_video_and_frames(checkpoint, real_data_dir, tmp_path):
    out = tmp_path / "real.h5"
    video = real_data_dir / "vehicle_detection" / "test_video.mp4"
    frames = real_data_dir / "advanced_lane_lines" / "test_images"
    assert cli.main(["explain", str(checkpoint), str(frames), str(video), "--out", str(out)]) == 0
    with h5py.File(out) as f:
        n_video = int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT))
        assert f["mask"].shape[0] == 8 + n_video
        assert np.isfinite(f["mask"][:]).all()


def test_overlay_is_red_where_the_mask_is_high():
    gray = np.full((10, 20), 100, np.uint8)
    mask = np.zeros((10, 20), np.float32)
    mask[:, 10:] = 1.0
    bgr = overlay(gray, mask, opacity=0.8)
    assert tuple(bgr[5, 2]) == (100, 100, 100)
    b, g, r = bgr[5, 15].astype(int)
    assert r > 200 and b < 40 and g < 40


@pytest.mark.parametrize("colormap", ["red", "jet"])
def test_overlay_matches_the_float_blend(colormap):
    """The uint8 blend equals image*(1-w) + colour*w with w = opacity*mask, to rounding."""
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    mask = rng.random((30, 40)).astype(np.float32)
    mask[0, :5] = [0.0, 1.0, 1.3, -0.2, 0.5]  # out-of-range values are clipped
    w = (np.clip(mask, 0, 1) * 0.6)[..., None]
    mask8 = np.round(np.clip(mask, 0, 1) * 255).astype(np.uint8)
    color = np.array([0, 0, 255.0]) if colormap == "red" else cv2.applyColorMap(mask8, cv2.COLORMAP_JET)
    expected = bgr * (1 - w) + color * w
    assert np.abs(overlay(bgr, mask, opacity=0.6, colormap=colormap) - expected).max() <= 1.5


def test_help_explains():
    out = subprocess.run([sys.executable, "-m", "vbp_rt.cli", "explain", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--overlay-dir" in out.stdout and "--method" in out.stdout


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_bad_values_are_refused_before_any_work(checkpoint, images, tmp_path, capsys):
    for size in ("0", "-3"):
        assert cli.main(["explain", str(checkpoint), str(images), "--out", str(tmp_path / "o.h5"),
                         "--batch-size", size]) == 2
        assert f"--batch-size must be at least 1, got {size}" in capsys.readouterr().err
    folder = tmp_path / "results"
    folder.mkdir()
    assert cli.main(["explain", str(checkpoint), str(images), "--out", str(folder)]) == 2
    assert "is a folder" in capsys.readouterr().err and not list(folder.iterdir())
    assert not (tmp_path / "o.h5").exists()


def test_nan_inf_and_truncated_images_are_skipped_by_name(checkpoint, images, tmp_path, capsys):
    field = np.random.default_rng(1).random((480, 640), dtype=np.float32)
    for name, value in (("nan.tiff", np.nan), ("inf.tiff", np.inf)):
        bad = field.copy()
        bad[10, 10] = value
        cv2.imwrite(str(images / name), bad)
    jpg = cv2.imencode(".jpg", cv2.imread(str(images / "f0.png")))[1].tobytes()
    (images / "short.jpg").write_bytes(jpg[:len(jpg) // 2])  # libjpeg alone would decode it with a grey bottom
    out = tmp_path / "o.h5"
    assert cli.main(["explain", str(checkpoint), str(images), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "nan.tiff" in err and "inf.tiff" in err and "short.jpg" in err and "truncated JPEG" in err
    with h5py.File(out) as f:
        assert f.attrs["frames"] == 3 and f.attrs["bad_frames"] == 3


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A NetSVF-shaped network with few channels: many frames explained quickly."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    models.save_checkpoint(path, vbp_rt.build("netsvf", channels=(4, 4, 8, 8), strides=(), fc=(16,)))
    return path


def test_damaged_video_goes_on_past_unreadable_frames(tiny_checkpoint, real_data_dir, tmp_path, capsys):
    data = bytearray((real_data_dir / "lanelines" / "solidWhiteRight.mp4").read_bytes())
    mid = len(data) // 2
    data[mid:mid + 300_000] = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    clip = tmp_path / "damaged.mp4"
    clip.write_bytes(bytes(data))
    out = tmp_path / "o.h5"
    assert cli.main(["explain", str(tiny_checkpoint), str(clip), "--out", str(out), "--batch-size", "32"]) == 0
    err = capsys.readouterr().err
    with h5py.File(out) as f:
        frames, bad = int(f.attrs["frames"]), int(f.attrs["bad_frames"])
        last = f["source"][-1].decode()
    assert frames > 180 and bad > 0 and frames + bad == 221 and last.endswith("#220")
    assert "damaged.mp4: frame" in err and "cannot be decoded" in err


def test_second_writer_of_the_same_output_is_refused(checkpoint, images, tmp_path, capsys):
    from vbp_rt.files import DestinationLock
    out = tmp_path / "o.h5"
    with DestinationLock(out, "vbp explain"):
        assert cli.main(["explain", str(checkpoint), str(images), "--out", str(out)]) == 2
    assert "another vbp explain is writing" in capsys.readouterr().err and not out.exists()
    assert cli.main(["explain", str(checkpoint), str(images), "--out", str(out)]) == 0
    assert not list(tmp_path.glob(".o.h5*"))  # neither the lock nor a temporary file is left


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_results_follow_the_umask(checkpoint, images, tmp_path, umask):
    import os
    old = os.umask(umask)
    try:
        assert cli.main(["explain", str(checkpoint), str(images), "--out", str(tmp_path / "o.h5"),
                         "--overlay-dir", str(tmp_path / "ov")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "o.h5").stat().st_mode & 0o777 == 0o666 & ~umask
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "ov").iterdir()} == {0o666 & ~umask}


def test_stale_partial_file_is_named_and_damaged_store_is_one_clear_error(checkpoint, images, tmp_path, capsys):
    stale = tmp_path / f".o.h5.{_dead_pid()}-0123abcd.partial"
    stale.write_bytes(b"left by a killed run")
    assert cli.main(["explain", str(checkpoint), str(images), "--out", str(tmp_path / "o.h5")]) == 0
    assert str(stale) in capsys.readouterr().err and stale.exists()
    from tests.viewer_helpers import write_drive
    drive = write_drive(tmp_path / "drive.h5", 4)
    data = drive.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[:len(data) // 2])
    assert cli.main(["explain", str(checkpoint), str(cut), "--out", str(tmp_path / "new" / "c.h5")]) == 2
    err = capsys.readouterr().err
    assert "cut.h5 is a truncated or corrupt HDF5 store" in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()

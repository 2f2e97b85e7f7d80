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

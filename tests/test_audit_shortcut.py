"""vbp data synth --shortcut: the cue's board and ground-truth mask, the rest of the drive unchanged, the side
following the coming turn where correlated and a coin flip per stretch elsewhere."""
from __future__ import annotations

import json

import cv2
import h5py
import numpy as np
import pytest

from vbp_rt.cli import main
from vbp_rt.data import shortcut
from vbp_rt.data.store import StoreReader

FRAMES = 160


@pytest.fixture(scope="module")
def drives(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    out = {}
    for name, extra in (("plain", []), ("train", ["--shortcut", "sign:train"])):
        path = d / f"{name}.h5"
        assert main(["data", "synth", "--frames", str(FRAMES), "--seed", "3", "--views", "svf", "--out", str(path),
                     *extra]) == 0
        out[name] = path
    return out


def test_cue_mask_and_the_rest_of_the_drive_unchanged(drives):
    with h5py.File(drives["train"]) as f, h5py.File(drives["plain"]) as g:
        side = f["cue_side"][()]
        mask = f["views/svf/cue_mask"][()]
        info = json.loads(f.attrs["shortcut"])
        assert info["mode"] == "train" and info["frames_with_cue"] == int((side != 0).sum()) > 0
        assert ((mask.reshape(FRAMES, -1).sum(1) > 0) == (side != 0)).all()  # a mask exactly where a board stands
        np.testing.assert_array_equal(f["angle"][()], g["angle"][()])  # the drive itself is the same
        a, b = f["views/svf/image"][()], g["views/svf/image"][()]
        for i in range(FRAMES):
            near = cv2.dilate(mask[i], np.ones((5, 5), np.uint8)) > 0
            assert np.array_equal(a[i][~near], b[i][~near]), i
            if side[i]:
                assert np.abs(a[i][mask[i] > 0].astype(int) - b[i][mask[i] > 0]).mean() > 10
                cols = np.flatnonzero(mask[i].any(0))
                assert (cols.mean() < 320) == (side[i] < 0)  # left board on the left
    with StoreReader(drives["train"]) as r:  # still a store every reader opens
        assert len(r) == FRAMES and r.has_ground_truth


def test_side_follows_the_coming_turn_where_correlated_and_not_elsewhere():
    class Road:  # bends left (kappa > 0) for the first 500 m, then right
        s = np.arange(0, 2000.0)
        kappa = np.where(s < 500, 0.01, -0.01)

    frames = 3000
    correlated = shortcut.Cue("sign:train", 0, frames, Road())
    sides = [correlated.board(i, s=i * 0.5) for i in range(frames)]
    on = [(i, b.side) for i, b in enumerate(sides) if b is not None]
    assert on and all(side == (-1 if i * 0.5 + 50 < 500 else 1) for i, side in on if abs(i * 0.5 + 50 - 500) > 25)
    coin = shortcut.Cue("sign:test", 0, frames, Road())
    stretch_sides = [coin.board(coin.start[k], s=0.0).side for k in range(len(coin.start))]
    assert set(stretch_sides) == {-1, 1}  # both sides, whatever the road does
    assert (coin.sides != 0).mean() < (correlated.sides != 0).mean()  # rarer where decorrelated


def test_unknown_shortcut_is_a_one_line_error(tmp_path, capsys):
    assert main(["data", "synth", "--frames", "5", "--out", str(tmp_path / "x.h5"), "--shortcut", "billboard"]) == 2
    assert "unknown shortcut 'billboard'" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()

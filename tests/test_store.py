"""The HDF5 store: layout, round trip, split, streaming, atomic writes and interrupted writers."""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from vbp_rt.data.preprocess import VIEWS, view_for
from vbp_rt.data.store import StoreReader, StoreWriter, split_slice

ROOT = Path(__file__).resolve().parents[1]


def _frames(n, view, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, view.height, view.width), dtype=np.uint8)


def _write(path, n=30, views=("svf", "hvf"), ground_truth=False, batch=7):
    vs = [VIEWS[v] for v in views]
    imgs = {v.name: _frames(n, v, i) for i, v in enumerate(vs)}
    lane = {v.name: (imgs[v.name] > 200).astype(np.uint8) for v in vs}
    dist = {v.name: (imgs[v.name] < 20).astype(np.uint8) for v in vs}
    angle = np.linspace(-30, 30, n, dtype=np.float32)
    with StoreWriter(path, vs, source="test", preprocess={"k": 1}, ground_truth=ground_truth, fps=20) as w:
        for s in range(0, n, batch):
            e = min(n, s + batch)
            w.append(images={k: a[s:e] for k, a in imgs.items()}, angle=angle[s:e], speed=np.full(e - s, 9.0),
                     timestamp=np.arange(s, e) / 20.0, frame_id=np.arange(s, e) + 100,
                     lane_mask={k: a[s:e] for k, a in lane.items()} if ground_truth else None,
                     distractor_mask={k: a[s:e] for k, a in dist.items()} if ground_truth else None)
        w.bad("frame 3: corrupt JPEG")
        w.bad(2)
    return imgs, lane, dist, angle


def test_round_trip_layout_and_attrs(tmp_path):
    path = tmp_path / "s.h5"
    imgs, lane, dist, angle = _write(path, ground_truth=True)
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]  # no temporary file left behind
    with StoreReader(path) as r:
        assert len(r) == 30 and r.views == ["hvf", "svf"]
        np.testing.assert_array_equal(r.images("svf")[:], imgs["svf"])
        np.testing.assert_array_equal(r.images("hvf")[:], imgs["hvf"])
        np.testing.assert_array_equal(r.lane_mask("svf")[:], lane["svf"])
        np.testing.assert_array_equal(r.distractor_mask("hvf")[:], dist["hvf"])
        np.testing.assert_array_equal(r.angle, angle)
        np.testing.assert_array_equal(r.frame_id, np.arange(30) + 100)
        np.testing.assert_allclose(r.timestamp, np.arange(30) / 20.0)
        assert r.speed.dtype == np.float32 and r.timestamp.dtype == np.float64 and r.frame_id.dtype == np.int64
        a = r.attrs
        assert a["format"] == "vbp-rt-store" and a["version"] == 1 and a["source"] == "test"
        assert a["bad_frames"] == 3 and a["bad_reasons"] == ["frame 3: corrupt JPEG"]
        assert a["preprocess"] == {"k": 1} and a["fps"] == 20.0 and a["frames"] == 30
        assert r.view("hvf") == VIEWS["hvf"]
    with h5py.File(path, "r") as f:  # the documented layout, read without our reader
        assert f["views/svf"].attrs["top"] == 255 and f["views/svf"].attrs["bottom"] == 390
        assert f["views/svf/image"].compression == "gzip" and f["views/svf/image"].chunks[0] >= 1
        assert f["angle"].dtype == np.float32 and json.loads(f.attrs["preprocess"]) == {"k": 1}


def test_no_ground_truth_means_no_masks(tmp_path):
    _write(tmp_path / "s.h5", n=5, views=("svf",))
    with StoreReader(tmp_path / "s.h5") as r:
        assert r.lane_mask("svf") is None and r.distractor_mask("svf") is None and not r.has_ground_truth
        with pytest.raises(ValueError, match="no view 'hvf'"):
            r.images("hvf")


def test_split_by_time_keeps_paper_proportion(tmp_path):
    assert split_slice(210_000, "train") == slice(0, 190_000)
    assert split_slice(210_000, "test") == slice(190_000, 210_000)
    assert split_slice(21, "train") == slice(0, 19)
    with pytest.raises(ValueError, match="unknown split"):
        split_slice(10, "val")
    _, _, _, angle = _write(tmp_path / "s.h5", n=30, views=("svf",))
    with StoreReader(tmp_path / "s.h5") as r:
        assert r.split("train") == slice(0, 27) and r.split("test") == slice(27, 30)
        batches = list(r.iter_batches("svf", 4, split="test"))
        assert [b[0] for b in batches] == [27]
        np.testing.assert_array_equal(batches[0][2], angle[27:])
        starts, got = zip(*[(s, im) for s, im, _ in r.iter_batches("svf", 8)])
        assert starts == (0, 8, 16, 24)
        np.testing.assert_array_equal(np.concatenate(got), r.images("svf")[:])


def test_bad_shapes_and_non_stores_are_rejected(tmp_path):
    with StoreWriter(tmp_path / "s.h5", [VIEWS["svf"]], source="t") as w:
        with pytest.raises(ValueError, match="image of view svf has shape"):
            w.append(images={"svf": np.zeros((2, 10, 10), np.uint8)}, angle=[0, 0], speed=[6, 6],
                     timestamp=[0, 1], frame_id=[0, 1])
        with pytest.raises(ValueError, match="missing image for view svf"):
            w.append(images={}, angle=[0], speed=[6], timestamp=[0], frame_id=[0])
        w.append(images={"svf": np.zeros((1, 135, 640), np.uint8)}, angle=0, speed=6, timestamp=0, frame_id=0)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(ValueError, match="other.h5 is not a vbp-rt store"):
        StoreReader(other)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="junk.h5 is not an HDF5 file"):
        StoreReader(tmp_path / "junk.h5")
    with pytest.raises(FileNotFoundError, match="missing.h5 does not exist"):
        StoreReader(tmp_path / "missing.h5")


def test_failed_write_leaves_no_output(tmp_path):
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "s.h5", [VIEWS["svf"]], source="t"):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_custom_height_view(tmp_path):
    v = view_for("hvf", 66)
    with StoreWriter(tmp_path / "s.h5", [v], source="t") as w:
        w.append(images={"hvf": _frames(3, v)}, angle=[1, 2, 3], speed=[6] * 3, timestamp=[0, 1, 2],
                 frame_id=[0, 1, 2])
    with StoreReader(tmp_path / "s.h5") as r:
        assert r.images("hvf").shape == (3, 66, 351) and r.view("hvf") == v


WRITER = """
import sys, numpy as np
from vbp_rt.data.preprocess import VIEWS
from vbp_rt.data.store import StoreWriter
w = StoreWriter(sys.argv[1], [VIEWS["svf"]], source="killed", chunk=4).__enter__()
print(w.tmp, flush=True)
i = 0
while True:
    img = np.full((2, 135, 640), i % 256, np.uint8)
    w.append(images={"svf": img}, angle=[i, i + 1], speed=[6, 6], timestamp=[i, i + 1], frame_id=[i, i + 1])
    i += 2
    if i == 40:
        print("ready", flush=True)
"""


def test_killed_writer_keeps_completed_frames(tmp_path):
    out = tmp_path / "s.h5"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        tmp = Path(proc.stdout.readline().strip())
        assert proc.stdout.readline().strip() == "ready"
        with StoreReader(tmp) as live:  # readable while the writer is appending; refresh() sees new frames
            first = len(live)
            assert first >= 40
            for _ in range(100):
                time.sleep(0.05)
                if live.refresh() > first:
                    break
            assert len(live) > first
            np.testing.assert_array_equal(live.angle, np.arange(len(live), dtype=np.float32))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists() and tmp.exists() and tmp.name.startswith("s.h5.")
    with StoreReader(tmp) as r:
        n = len(r)
        assert n >= 40
        angle = r.angle
        imgs = r.images("svf")[:n]
        np.testing.assert_array_equal(angle, np.arange(n, dtype=np.float32))
        np.testing.assert_array_equal(imgs[:, 0, 0], (np.arange(n) // 2 * 2) % 256)
        assert "frames" not in r.attrs  # the write never completed


def test_vbp_explain_reads_a_store(tmp_path):
    """`vbp explain MODEL STORE.h5` takes every frame of the model's view, in order."""
    from vbp_rt.cli.explain import add_parser
    from vbp_rt.models import build, save_checkpoint

    imgs, _, _, _ = _write(tmp_path / "s.h5", n=3, views=("hvf",))
    save_checkpoint(tmp_path / "m.pt", build("nethvf"))
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["explain", str(tmp_path / "m.pt"), str(tmp_path / "s.h5"), "--out", str(tmp_path / "o.h5")])
    assert args.func(args) == 0
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert f["mask"].shape == (3, 135, 351) and f["prediction"].shape == (3,)
        assert [s.decode() for s in f["source"][:]] == [f"{tmp_path / 's.h5'}#{i}" for i in range(3)]


@pytest.mark.parametrize("keep", [8, 9, 16, 47, 2000, -1])
def test_cut_store_is_one_clear_error(tmp_path, keep):
    """A store cut short, even inside its superblock (where the HDF5 library itself would loop forever)."""
    from tests.viewer_helpers import write_drive
    data = write_drive(tmp_path / "ok.h5", 4).read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[:keep])
    with pytest.raises(ValueError, match="cut.h5 is a truncated or corrupt HDF5 store"):
        StoreReader(cut)


@pytest.mark.parametrize("where", ["setup", "rename"])
def test_an_interruption_outside_the_with_block_leaves_nothing(tmp_path, monkeypatch, where):
    """Ctrl-C or SIGTERM (raised as KeyboardInterrupt) while the writer creates its file, before the `with` block
    runs, or while close() renames it, leaves neither a .partial file nor a half-written destination."""
    out = tmp_path / "s.h5"
    if where == "setup":
        def interrupted(*a, **k):
            raise KeyboardInterrupt
        monkeypatch.setattr(h5py.Group, "create_group", interrupted)
        with pytest.raises(KeyboardInterrupt):
            StoreWriter(out, [VIEWS["svf"]], source="t")
    else:
        w = StoreWriter(out, [VIEWS["svf"]], source="t", keep_partial=False)
        v = VIEWS["svf"]
        w.append({"svf": np.zeros((1, v.height, v.width), np.uint8)}, [0.0], [10.0], [0.0], [0])

        def interrupted(*a, **k):
            raise KeyboardInterrupt
        monkeypatch.setattr("vbp_rt.data.store.os.replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []

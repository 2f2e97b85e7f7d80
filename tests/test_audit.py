"""vbp audit: the per-frame statistics against direct formulas, the anomaly score and events on planted outliers,
attention modes on two known groups, and the command end to end on small drives (atomic chunk files, resume
without recomputation, refusing an existing folder, unreadable frames, a vanished source, virtual datasets)."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from tests.viewer_helpers import tiny_checkpoint, write_drive, write_folder
from vbp_rt.audit import anomaly, compute, modes, store
from vbp_rt.cli import main


def test_statistics_match_direct_formulas():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 32, 128)).astype(np.float32)
    masks[1] = 0
    masks[1, 5, 7] = 1.0  # all the mass in one pixel
    geometry = compute.Geometry(horizon=0.25, edge=0.125)
    truth = (rng.random((3, 32, 128)) > 0.7).astype(np.uint8)
    s = compute.frame_stats({"vbp": masks, "lrp": masks * 2 + 1}, "vbp", geometry, None, {"lane": truth, "cue": None})
    for n in range(3):
        p = masks[n] / masks[n].sum()
        ys, xs = np.mgrid[0:32, 0:128]
        assert s["centroid"][n] == pytest.approx([(p * (xs + 0.5) / 128).sum(), (p * (ys + 0.5) / 32).sum()], abs=1e-5)
        above = p[:8].sum()
        edges = p[8:, :16].sum() + p[8:, -16:].sum()
        assert s["regions"][n] == pytest.approx([1 - above - edges, above, edges], abs=1e-5)
        assert s["grid"][n].sum() == pytest.approx(1, abs=1e-5)
        assert s["grid"][n][0, 0] == pytest.approx(p[:11, :32].sum(), abs=1e-5)
        assert s["truth/lane"][n] == pytest.approx(p[truth[n] > 0].sum(), abs=1e-5)
        assert s["compact/vbp"][n].dtype == np.float16 and s["compact/vbp"][n].shape == compute.COMPACT
    assert s["entropy"][1] == pytest.approx(0, abs=1e-6)  # one compact cell holds everything
    assert 0.95 < s["entropy"][0] <= 1  # random noise is spread nearly uniformly
    assert s["change"][0] == 0  # a source's first frame
    pc = compute.distributions(s["compact/vbp"].astype(np.float32))
    assert s["change"][2] == pytest.approx(0.5 * np.abs(pc[2] - pc[1]).sum(), abs=1e-5)
    assert s["agreement"] == pytest.approx(np.ones(3), abs=1e-3)  # an affine copy correlates perfectly
    assert np.isnan(s["truth/cue"]).all()


def test_robust_z_and_planted_events():
    rng = np.random.default_rng(1)
    n = 600
    frames = {"entropy": rng.normal(0.6, 0.05, n), "centroid": rng.normal(0.5, 0.02, (n, 2)),
              "grid": rng.dirichlet(np.ones(12) * 50, n).reshape(n, 3, 4), "regions": rng.dirichlet([50, 1, 5], n),
              "change": np.abs(rng.normal(0.05, 0.01, n)), "source": np.zeros(n, int), "index": np.arange(n)}
    frames["centroid"][100:130, 0] = 0.1  # attention jumps to the left edge for 30 frames
    frames["entropy"][100:130] = 0.3
    frames["centroid"][400:405, 1] = 0.9  # a short excursion (ranks below the long one)
    frames["entropy"][400:405] = 0.3
    x, names = anomaly.features(frames)
    z = anomaly.robust_z(x)
    med = np.median(x[:, 0])
    assert z[0, 0] == pytest.approx((x[0, 0] - med) / (1.4826 * np.median(np.abs(x[:, 0] - med))))
    change = names.index("change")  # spread 0.01: the scale is held at MIN_SCALE
    med = np.median(x[:, change])
    assert z[7, change] == pytest.approx((x[7, change] - med) / anomaly.MIN_SCALE)
    found = anomaly.analyse(frames)
    first = found["events"][0]
    assert 95 <= first["start"] <= 100 and 130 <= first["stop"] <= 135  # noise may join at the ends
    assert any(e["start"] <= 400 and e["stop"] >= 405 for e in found["events"][1:])
    assert found["flagged"][100:130].all() and found["flagged"].mean() < 0.15


def test_modes_find_two_known_groups():
    rng = np.random.default_rng(2)
    left = np.zeros((40, *compute.COMPACT), np.float32)
    left[:, 8:12, 2:6] = 1
    right = np.zeros((25, *compute.COMPACT), np.float32)
    right[:, 8:12, 50:60] = 1
    x = np.concatenate([left, right]) + rng.random((65, *compute.COMPACT)).astype(np.float32) * 0.05
    m = modes.find_modes(x)
    assert list(m["count"]) == [40, 25]
    assert (m["label"][:40] == 0).all() and (m["label"][40:] == 1).all()
    assert m["center"][1][:, 50:60].sum() > 0.5
    assert all(0 <= e < 40 for e in m["examples"][0] if e >= 0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(tiny_checkpoint(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def drives(tmp_path_factory):
    d = tmp_path_factory.mktemp("drives")
    return [str(write_drive(d / "a.h5", 40)), str(write_drive(d / "b.h5", 23))]


def audit(out, sources, model, *extra):
    return main(["audit", *sources, "--model", model, "--out", str(out), "--backend", "torch-cpu",
                 "--chunk", "16", "--batch-size", "8", *extra])


def frames_of(out):
    with store.open_audit(out) as f:
        return store.read_frames(f), f.attrs["frames"]


def test_audit_end_to_end_resume_and_refusal(tmp_path, drives, model, capsys):
    out = tmp_path / "audit"
    assert audit(out, drives, model, "--methods", "vbp,lrp") == 0
    frames, count = frames_of(out)
    assert count == 63 and len(frames["index"]) == 63
    assert list(frames["index"][:40]) == list(range(40)) and list(frames["source"][40:]) == [1] * 23
    np.testing.assert_allclose(frames["label"][:40], 1.5 * np.arange(40))  # the drive's angles
    np.testing.assert_allclose(frames["error"], frames["prediction"] - frames["label"], atol=1e-5)
    assert frames["compact/vbp"].dtype == np.float16 and "agreement" in frames
    with h5py.File(out / "audit.h5") as f:
        assert f["frames/prediction"].is_virtual and f["frames/compact/lrp"].is_virtual
        assert len(f["frames/prediction"].virtual_sources()) == 3 + 2  # one per chunk file: 40 -> 3, 23 -> 2
        assert f["events/score"].shape == f["events/start"].shape
        assert f["modes/count"][()].sum() == 63
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    # a second audit into the same folder is refused
    assert audit(out, drives, model) == 2
    assert "already exists" in capsys.readouterr().err
    # resume after losing one chunk: only that chunk is recomputed, the others are not rewritten
    chunks = store.chunk_files(out)
    stamps = {p: p.stat().st_mtime_ns for p in chunks}
    lost = chunks[1]
    lost.unlink()
    (out / "audit.h5").unlink()
    assert audit(out, drives, model, "--methods", "vbp,lrp", "--resume") == 0
    assert lost.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != lost)
    again, _ = frames_of(out)
    for name in frames:
        np.testing.assert_array_equal(again[name], frames[name], err_msg=name)
    # resuming with other settings is refused
    assert audit(out, drives, model, "--resume") == 2
    assert "other settings" in capsys.readouterr().err


def test_unreadable_frames_are_counted_and_a_vanished_source_reported(tmp_path, drives, model, capsys):
    folder = write_folder(tmp_path / "frames", 6)
    (folder / "002.png").write_bytes(b"not a png")
    out = tmp_path / "audit"
    assert audit(out, [str(folder)], model) == 0
    frames, _ = frames_of(out)
    assert list(frames["index"]) == [0, 1, 3, 4, 5]
    assert np.isnan(frames["label"]).all()
    with h5py.File(out / "audit.h5") as f:
        assert f.attrs["bad_frames"] == 1
    assert "1 unreadable frames skipped" in capsys.readouterr().out
    # a source that disappears before its turn: the other is audited, the problem reported, exit status 1
    gone = tmp_path / "gone.h5"
    write_drive(gone, 10)
    out2 = tmp_path / "audit2"
    from vbp_rt.audit import runner

    original = runner.SourceAudit.run

    def vanish_then_run(self):
        if self.position == 1:
            gone.unlink()
        return original(self)

    runner.SourceAudit.run = vanish_then_run
    try:
        assert audit(out2, [drives[1], str(gone)], model) == 1
    finally:
        runner.SourceAudit.run = original
    assert "gone.h5" in capsys.readouterr().err
    frames, count = frames_of(out2)
    assert count == 23
    assert json.loads(h5py.File(out2 / "audit.h5").attrs["problems"])


def test_a_source_cut_mid_chunk_keeps_what_was_read(tmp_path, drives, model, monkeypatch):
    from vbp_rt.data.sources import SourceLost, StoreSource

    original = StoreSource.read

    def read(self, index):
        if index == 20:
            raise SourceLost("the disk went away")
        return original(self, index)

    monkeypatch.setattr(StoreSource, "read", read)
    out = tmp_path / "audit"
    assert audit(out, drives[:1], model) == 1
    frames, count = frames_of(out)
    assert list(frames["index"]) == list(range(20))  # the first chunk and the part of the second
    info = store.chunk_info(store.chunk_path(out, 0, 1))
    assert info["frames"] == 4 and not info["complete"]
    monkeypatch.setattr(StoreSource, "read", original)
    assert audit(out, drives[:1], model, "--resume") == 0  # the incomplete chunk is recomputed
    assert frames_of(out)[1] == 40


def test_bad_arguments_are_one_line_errors(tmp_path, drives, model, capsys):
    assert audit(tmp_path / "x", ["/nonexistent.h5"], model) == 2
    assert audit(tmp_path / "x", drives, model, "--methods", "lrp") == 2
    assert audit(tmp_path / "x", ["0"], model) == 2
    err = capsys.readouterr().err
    assert err.count("vbp audit: error:") == 3

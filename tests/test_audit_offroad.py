"""The anomaly score's off-road part: a network that watches the image edges diffusely in every frame, and in a
few frames a compact object at the edge, ranks those frames first; the drive-relative unusualness alone ranks
a long on-road excursion first, and that excursion stays flagged however much the network watches the edges.
Masks go through compute.frame_stats as in an audit. An audit whose audit.h5
predates the off-road part is brought up to date by --resume from its chunk files."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from tests.viewer_helpers import tiny_checkpoint, write_drive
from vbp_rt.audit import anomaly, compute, report, store
from vbp_rt.cli import main

H, W = 32, 128
ROAD_SHIFT = (100, 180)  # attention stays on the road but far from its usual place
BLOB = (400, 425)  # a compact object at the upper right edge holds 60 % of the mask


def drive(seed, n=600, edge_watch=(0.05, 0.35), blob=BLOB):
    """Per-frame statistics of a synthetic drive's masks: a road blob near the bottom centre, plus a diffuse
    share of the mass (uniform in `edge_watch`) spread over the edge bands, unevenly between left and right."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:H, 0:W]
    k = int(W * compute.EDGE)
    edges = (xs < k) | (xs >= W - k)
    box = ((xs >= W - 12) & (xs < W - 4) & (ys >= 4) & (ys < 12)).astype(float)
    masks = np.zeros((n, H, W), np.float32)
    for i in range(n):
        cx, cy = 64 + rng.normal(0, 4), 22 + rng.normal(0, 2)
        if ROAD_SHIFT[0] <= i < ROAD_SHIFT[1]:
            cx, cy = 24, 29
        road = np.exp(-((xs - cx) ** 2 / 60 + (ys - cy) ** 2 / 12)) * ~edges
        w = rng.uniform(*edge_watch)
        side = rng.uniform(0.2, 0.8)
        diffuse = edges * np.where(xs < W / 2, side, 1 - side) * (1 + 0.3 * rng.random((H, W)))
        m = (1 - w) * road / road.sum() + w * diffuse / diffuse.sum()
        if blob and blob[0] <= i < blob[1]:
            m = 0.4 * m + 0.6 * box / box.sum()
        masks[i] = m
    stats = compute.frame_stats({"vbp": masks}, "vbp", compute.Geometry(), None)
    stats.update(source=np.zeros(n, int), index=np.arange(n))
    return stats


def ranked(rows_score, threshold):
    n = len(rows_score)
    events = anomaly._events(np.arange(n), rows_score, threshold, np.arange(n), anomaly.GAP, 0)
    return sorted(events, key=lambda e: -e["score"])


def test_score_is_the_larger_of_unusualness_and_offroad_mass():
    fr = drive(0)
    off = anomaly.offroad(fr)
    np.testing.assert_allclose(off, fr["regions"][:, 1] + fr["regions"][:, 2], atol=1e-6)
    assert off[BLOB[0]:BLOB[1]].min() > 0.6 and np.median(off) < 0.25
    x, _ = anomaly.features(fr)
    z = np.clip(np.abs(anomaly.robust_z(x)), 0, anomaly.Z_CLIP)
    u = np.sqrt((z * z).mean(1))
    o = off / anomaly.OFF_UNIT

    def thr(v):
        med = np.median(v)
        return max(med + 3 * 1.4826 * np.median(np.abs(v - med)), 2.0)

    t_u, t_o = thr(u), thr(o)
    expected = np.maximum(u, t_u + o - t_o)
    s, *ts = anomaly.score(x, off)
    np.testing.assert_allclose(s, expected)
    assert ts == pytest.approx([t_u, t_o])
    found = anomaly.analyse(fr)
    np.testing.assert_allclose(found["score"], expected, rtol=1e-6)
    np.testing.assert_allclose(found["offroad"], off, atol=1e-6)
    assert found["thresholds"][0] == pytest.approx(t_u)
    assert found["offroad_thresholds"][0] == pytest.approx(t_o * anomaly.OFF_UNIT)
    np.testing.assert_array_equal(found["flagged"], (u > t_u) | (o > t_o))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_an_offroad_object_ranks_first_where_unusualness_alone_does_not(seed):
    fr = drive(seed)
    found = anomaly.analyse(fr)
    first = found["events"][0]
    assert BLOB[0] - 2 <= first["start"] <= BLOB[0] + 2 and BLOB[1] - 2 <= first["stop"] <= BLOB[1] + 2
    assert found["flagged"][BLOB[0] + 2:BLOB[1] - 2].all()
    second = found["events"][1]  # the on-road excursion is still an event, below the object
    assert ROAD_SHIFT[0] - 2 <= second["start"] and second["stop"] <= ROAD_SHIFT[1] + 2
    # the drive-relative part alone: the long on-road excursion comes first
    x, _ = anomaly.features(fr)
    u = anomaly.unusualness(x)
    old = ranked(u, anomaly.threshold(u))
    assert ROAD_SHIFT[0] - 2 <= old[0]["start"] and old[0]["stop"] <= ROAD_SHIFT[1] + 2


def test_a_network_that_stays_on_the_road_gets_no_offroad_events():
    fr = drive(0, edge_watch=(0.0, 0.05), blob=None)
    found = anomaly.analyse(fr)
    assert (found["offroad"] < 0.1).all()
    assert not found["flagged"][:ROAD_SHIFT[0] - 5].any() and not found["flagged"][ROAD_SHIFT[1] + 5:].any()
    assert found["flagged"][ROAD_SHIFT[0] + 2:ROAD_SHIFT[1] - 2].mean() > 0.9  # its own excursion is found


def test_an_onroad_excursion_stays_flagged_where_the_edges_are_watched_a_lot():
    fr = drive(0, edge_watch=(0.0, 0.7), blob=None)  # off-road mass all over 0..0.7: its threshold is high
    found = anomaly.analyse(fr)
    assert found["offroad_thresholds"][0] > 0.7
    assert found["flagged"][ROAD_SHIFT[0] + 2:ROAD_SHIFT[1] - 2].mean() > 0.9
    first = found["events"][0]
    assert ROAD_SHIFT[0] - 2 <= first["start"] and first["stop"] <= ROAD_SHIFT[1] + 2


def test_report_names_offroad_attention_where_it_drives_the_score():
    fr = drive(0)
    x, names = anomaly.features(fr)
    z = anomaly.robust_z(x)
    off = anomaly.offroad(fr)
    leads = report.offroad_leads(x, off, fr["source"])
    assert leads[BLOB[0]:BLOB[1]].all() and not leads[ROAD_SHIFT[0]:ROAD_SHIFT[1]].any()
    peak = BLOB[0] + 5
    assert report.unusual(z[peak], names, float(off[peak]), leads[peak]).startswith("off the road ")
    row = ROAD_SHIFT[0] + 5
    assert not report.unusual(z[row], names, float(off[row]), leads[row]).startswith("off")


def test_resume_of_an_audit_from_before_the_offroad_part(tmp_path):
    model = str(tiny_checkpoint(tmp_path))
    drive = str(write_drive(tmp_path / "drive.h5", 20))
    out = tmp_path / "audit"
    args = ["audit", drive, "--model", model, "--out", str(out), "--backend", "torch-cpu", "--chunk", "8"]
    assert main(args) == 0
    with h5py.File(out / "audit.h5", "a") as f:  # audit.h5 as written before: no offroad, the old score
        expected = f["anomaly/score"][()]
        del f["anomaly/offroad"]
        for key in ("off_unit", "score"):
            del f["anomaly"].attrs[key]
        f["anomaly/score"][...] = 0
    stamps = {p: p.stat().st_mtime_ns for p in store.chunk_files(out)}
    assert main(args + ["--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in store.chunk_files(out)} == stamps  # no frame recomputed
    with store.open_audit(out) as f:
        frames = store.read_frames(f)
        np.testing.assert_allclose(f["anomaly/offroad"][()], anomaly.offroad(frames), atol=1e-6)
        np.testing.assert_array_equal(f["anomaly/score"][()], expected)
        assert f["anomaly"].attrs["off_unit"] == anomaly.OFF_UNIT

"""`vbp bench` start-up stage: a cold start exports and stores the graph, the warm one starts from it; the report's
medians and the warm-start target follow from the rows."""
from __future__ import annotations

import time

import pytest
from vbp_rt.bench import report
from vbp_rt.bench.startup import probe, view_first_overlay
from vbp_rt.viewer.headless import process_age


def test_cold_then_warm_probe(tmp_path):
    cold = probe("netsvf", "ort-cpu", ("vbp",), tmp_path)
    warm = probe("netsvf", "ort-cpu", ("vbp",), tmp_path)
    assert not cold["graph_cached"] and warm["graph_cached"]
    assert cold["export"] > 0 and warm["export"] < cold["export"] and warm["load"] < cold["load"]
    for r in (cold, warm):
        assert set(report.STARTUP_STAGES) <= set(r) and r["backend"] == "ort-cpu"
        assert r["total_ms"] >= sum(r[k] for k in report.STARTUP_STAGES) - 1.0


def test_summary_takes_medians_and_the_target_reads_warm_view_starts():
    rows = [{"kind": "startup", "what": "runtime", "start": s, "imports": v, "total_ms": v, "load_average": 1.0}
            for s, v in (("cold", 5.0), ("cold", 7.0), ("cold", 100.0), ("warm", 2.0))]
    rows += [{"kind": "startup", "what": "view", "start": s, "first_overlay_ms": ms, "total_ms": ms + 500.0,
              "load_average": 1.0} for s, ms in (("cold", 9000.0), ("warm", 2000.0), ("warm", 2600.0), ("warm", 2400.0))]
    summary = {(q["what"], q["start"]): q for q in report.startup_summary(rows)}
    assert summary[("runtime", "cold")]["imports"] == 7.0 and summary[("runtime", "cold")]["n"] == 3
    assert summary[("view", "warm")]["first_overlay_ms"] == 2400.0 and summary[("view", "warm")]["total_ms"] == 2900.0
    (t,) = [t for t in report.targets([], [], rows) if t["target"].startswith("warm start")]
    assert t["value"] == 2.4 and t["met"] is True
    (t,) = [t for t in report.targets([], [], rows[:4]) if t["target"].startswith("warm start")]
    assert t["value"] is None and t["met"] is None


def test_view_reports_when_its_first_overlay_was_written(tmp_path, real_data_dir):
    clip = real_data_dir / "lanelines" / "solidWhiteRight.mp4"
    if not clip.is_file():
        pytest.skip(f"no {clip}")
    first, total = view_first_overlay("netsvf", clip, tmp_path / "cache", tmp_path)
    assert 0.0 < first < total  # the process lives on after it: closing the video, exiting


def test_process_age_counts_from_the_process_start():
    age = process_age()
    assert age is None or 0.0 < age < time.monotonic()

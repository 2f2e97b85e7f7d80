"""vbp audit --ray local: two Ray workers, one task per source, each writing its own chunk files; the merged
audit.h5 (virtual datasets) equals the one-process audit frame for frame."""
from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.viewer_helpers import tiny_checkpoint, write_drive
from vbp_rt.audit import store
from vbp_rt.cli import main

pytest.importorskip("ray")


def test_ray_local_equals_one_process(tmp_path):
    model = str(tiny_checkpoint(tmp_path))
    sources = [str(write_drive(tmp_path / "a.h5", 37)), str(write_drive(tmp_path / "b.h5", 21))]
    common = ["--model", model, "--backend", "torch-cpu", "--threads", "1", "--chunk", "16", "--batch-size", "8",
              "--no-report"]
    assert main(["audit", *sources, "--out", str(tmp_path / "one"), *common]) == 0
    # in its own process with a time limit: a Ray start-up that stalls on a loaded machine fails the test, not the run
    try:
        done = subprocess.run([sys.executable, "-m", "vbp_rt.cli", "audit", *sources, "--out", str(tmp_path / "ray"),
                               "--ray", "local", "--workers", "2", *common], capture_output=True, text=True,
                              timeout=900)
    except subprocess.TimeoutExpired:
        pytest.fail("vbp audit --ray local did not finish within 900 s")
    assert done.returncode == 0, done.stderr[-3000:]
    with store.open_audit(tmp_path / "one") as f:
        one = store.read_frames(f)
        one_score = f["anomaly/score"][()]
    with store.open_audit(tmp_path / "ray") as f:
        assert f["frames/index"].is_virtual
        files = {s.file_name for s in f["frames/index"].virtual_sources()}
        assert files == {p.relative_to(tmp_path / "ray").as_posix() for p in store.chunk_files(tmp_path / "ray")}
        ray = store.read_frames(f)
        assert f["anomaly/score"][()] == pytest.approx(one_score)
    assert len(ray["index"]) == 58
    assert set(ray) == set(one)
    for name in one:
        np.testing.assert_array_equal(ray[name], one[name], err_msg=name)
    with h5py.File(tmp_path / "ray" / "audit.h5") as f:
        assert f.attrs["frames"] == 58

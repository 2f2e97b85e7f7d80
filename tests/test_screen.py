"""`vbp data screen`: labels simulated without rendering are the ones `vbp data synth` writes, and the
seeds it lists are the ones whose rendered drives meet the condition."""
from __future__ import annotations

import numpy as np
import pytest
from vbp_rt import cli
from vbp_rt.data.screen import drive_labels, screen
from vbp_rt.data.seeds import is_seed_list, parse_seeds
from vbp_rt.data.store import StoreReader
from vbp_rt.data.synth import SynthOptions, write_synth

FRAMES, BEYOND, MIN_FRAMES = 80, 8.0, 10


def _rendered_labels(tmp_path, seed):
    path = tmp_path / f"s{seed}.h5"
    write_synth(path, SynthOptions(frames=FRAMES, seed=seed), views=("svf",), progress=False)
    with StoreReader(path) as r:
        return np.asarray(r.angle, dtype=np.float64)


def test_listed_seeds_are_those_whose_rendered_drive_meets_the_condition(tmp_path):
    rows = screen(range(12), FRAMES, BEYOND, progress=False)
    chosen = [r.seed for r in rows if r.beyond >= MIN_FRAMES]
    rejected = [r.seed for r in rows if r.beyond < MIN_FRAMES]
    assert chosen and rejected  # the condition splits these seeds; otherwise the test proves nothing
    for seed, listed in ((chosen[0], True), (rejected[0], False)):
        labels = _rendered_labels(tmp_path, seed)
        np.testing.assert_allclose(drive_labels(SynthOptions(frames=FRAMES, seed=seed)), labels, atol=1e-3)
        assert (int(np.sum(np.abs(labels) > BEYOND)) >= MIN_FRAMES) == listed


def test_cli_prints_listed_seeds_and_honours_exclude(capsys):
    rows = {r.seed: r for r in screen(range(12), FRAMES, BEYOND, progress=False)}
    chosen = [s for s, r in rows.items() if r.beyond >= MIN_FRAMES]
    args = ["data", "screen", "--seeds", "0-11", "--frames", str(FRAMES), "--beyond", str(BEYOND),
            "--min-frames", str(MIN_FRAMES)]
    assert cli.main(args + ["--exclude", str(chosen[0])]) == 0
    out, err = capsys.readouterr()
    assert [int(s) for s in out.split()] == chosen[1:]
    assert f"{len(chosen) - 1} of 11 seeds" in err
    assert cli.main(args + ["--table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "seed,frames_beyond,mean_deg,peak_deg" and len(lines) == 13
    seed, beyond, _mean, peak = lines[1 + chosen[0]].split(",")
    assert int(seed) == chosen[0] and int(beyond) == rows[chosen[0]].beyond
    assert float(peak) == pytest.approx(rows[chosen[0]].peak, abs=0.01)


def test_cli_rejects_bad_seed_lists(capsys):
    assert cli.main(["data", "screen", "--seeds", "9-3"]) == 2
    assert "backwards" in capsys.readouterr().err


def test_seed_lists():
    assert parse_seeds("1001-1003,7") == [1001, 1002, 1003, 7]
    assert is_seed_list("11, 12") and not is_seed_list("drive.h5")
    with pytest.raises(ValueError, match="backwards"):
        parse_seeds("5-3")
    with pytest.raises(ValueError, match="seeds like"):
        parse_seeds("a-b")


def test_a_closed_pipe_stops_quietly(monkeypatch, capsys):
    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr("sys.stdout", Gone())
    assert cli.main(["data", "screen", "--seeds", "0-2", "--frames", "5", "--beyond", "0", "--table"]) == 141
    assert "error" not in capsys.readouterr().err

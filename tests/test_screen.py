"""`vbp data screen`: labels simulated without rendering are the ones `vbp data synth` writes, and the
seeds it lists are the ones whose rendered drives meet the condition."""
from __future__ import annotations

import numpy as np
import pytest
from vbp_rt import cli
from vbp_rt.data.screen import drive_labels, drive_layout, screen
from vbp_rt.data.seeds import is_seed_list, parse_seeds
from vbp_rt.data.store import StoreReader
from vbp_rt.data.synth import Drive, SynthOptions, write_synth

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


def test_layout_is_the_sections_the_rendered_frames_are_drawn_on():
    options = SynthOptions(frames=180, seed=22)  # its road changes section at frame 166
    drive = Drive(options)
    drawn = []
    for i in range(options.frames):
        drive.render(i)
        drawn.append(drive.road.section(drive.driver.state.s))
    assert len({s.start for s in drawn}) == 2  # a frame early or late would change the averages
    layout = drive_layout(options)
    assert layout["lane_width"] == pytest.approx(np.mean([s.lane_width for s in drawn]))
    assert layout["lanes_left"] == pytest.approx(np.mean([s.lanes_left for s in drawn]))
    assert layout["asphalt_gray"] == pytest.approx(np.mean([np.mean(s.asphalt) for s in drawn]))


def test_layout_follows_forced_attributes_and_varies_between_seeds():
    narrow, wide = (drive_layout(SynthOptions(frames=60, seed=3, appearance={"lane_width": w, "line_width": 0.3}))
                    for w in (3.3, 3.85))
    assert narrow["lane_width"] == pytest.approx(3.3) and wide["lane_width"] == pytest.approx(3.85)
    assert narrow["line_width"] == pytest.approx(0.3)
    assert {k: v for k, v in narrow.items() if k != "lane_width"} == \
        {k: v for k, v in wide.items() if k != "lane_width"}  # the width alone changed
    free = [drive_layout(SynthOptions(frames=60, seed=s)) for s in (0, 1, 2, 3)]
    assert all(3.2 <= f["lane_width"] <= 3.9 and 0 <= f["middle_lane"] <= 1 for f in free)
    assert len({round(f["lane_width"], 6) for f in free}) > 1 and len({round(f["asphalt_gray"], 6) for f in free}) > 1


def test_cli_layout_columns(capsys):
    args = ["data", "screen", "--seeds", "4,5", "--frames", "30", "--table", "--layout"]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split(",")
    assert header[:4] == ["seed", "frames_beyond", "mean_deg", "peak_deg"] and "lane_width" in header
    row = dict(zip(header, lines[2].split(",")))
    assert int(row["seed"]) == 5
    assert float(row["lane_width"]) == pytest.approx(drive_layout(SynthOptions(frames=30, seed=5))["lane_width"],
                                                     rel=1e-3)
    assert cli.main(["data", "screen", "--seeds", "4", "--layout"]) == 2
    assert "--table" in capsys.readouterr().err


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

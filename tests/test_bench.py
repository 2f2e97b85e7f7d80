"""`vbp bench`: a quick run on a tiny network writes a table, JSON, CSV and PNG that agree with each other;
the timing statistics against numpy; the peer adapters against vbp-rt's own methods. No timing asserts."""
from __future__ import annotations

import csv
import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
from vbp_rt.bench import peers, timing
from vbp_rt.bench.latency import ModelSpec, Results

import vbp_rt
from tests.conftest import randomize_bn
from vbp_rt.cli import main
from vbp_rt.models import NetConfig, build, save_checkpoint

TINY = dict(arch="tiny", height=40, width=96, channels=(4, 4, 6, 6, 8, 8), fc=(16,), view="tiny")


def tiny_net(seed=0, **kw):
    torch.manual_seed(seed)
    return randomize_bn(build(NetConfig(**{**TINY, **kw})), seed)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `vbp bench --quick`-like run on a tiny checkpoint, both CPU backends, with peers and the pipeline."""
    tmp = tmp_path_factory.mktemp("bench")
    ckpt = tmp / "tiny.pt"
    save_checkpoint(ckpt, tiny_net())
    out = tmp / "out"
    argv = ["bench", "--quick", "--models", str(ckpt), "--backends", "ort-cpu,torch-cpu", "--methods",
            "vbp,lrp,saliency", "--seconds", "0.2", "--min-runs", "3", "--frames", "4", "--out", str(out)]
    assert main(argv) == 0
    return out, json.loads((out / "bench.json").read_text())


def test_quick_run_measures_every_backend_and_method(quick_run):
    _, doc = quick_run
    got = {(r["backend"], r["method"]) for r in doc["latency"]}
    for backend in ("ort-cpu", "torch-cpu"):
        assert {(backend, "forward"), (backend, "vbp"), (backend, "lrp")} <= got
    assert ("torch-cpu", "saliency") in got
    assert ("ort-cpu", "saliency") not in got  # no onnxruntime head: reported, not faked
    assert any(n.startswith("ort-cpu: saliency not measured") for n in doc["notes"])
    for r in doc["latency"] + doc["peers"]:
        assert r["n"] >= 3 and 0 < r["min"] <= r["median"] <= r["p95"] and r["iqr"] >= 0
        assert r["ci_low"] <= r["median"] <= r["ci_high"]
    assert doc["settings"]["quick"] and doc["environment"]["usable_cores"] >= 1


def test_extras_and_ratios_follow_from_the_medians(quick_run):
    _, doc = quick_run
    rows = doc["latency"] + doc["peers"]
    for r in rows:
        fwd = [q for q in rows if (q["kind"], q["backend"], q["batch"], q["method"]) ==
               (r["kind"], r["backend"], r["batch"], "forward")]
        assert len(fwd) == 1
        assert r["forward_ms"] == fwd[0]["median"]
        assert r["extra_ms"] == pytest.approx(r["median"] - fwd[0]["median"])
        assert r["extra_over_forward"] == pytest.approx(r["extra_ms"] / fwd[0]["median"])
        assert r["per_image_ms"] == pytest.approx(r["median"] / r["batch"])
    for q in doc["ratios"]:
        vbp = next(r for r in rows if (r["kind"], r["backend"], r["library"], r["method"]) ==
                   (q["kind"], q["backend"], "vbp-rt", "vbp"))
        lrp = next(r for r in rows if (r["kind"], r["backend"], r["library"], r["method"]) ==
                   (q["kind"], q["backend"], "vbp-rt", "lrp"))
        assert q["vbp_extra_over_forward"] == pytest.approx(vbp["extra_ms"] / vbp["forward_ms"])
        if vbp["extra_ms"] > 0:
            assert q["lrp_extra_over_vbp_extra"] == pytest.approx(lrp["extra_ms"] / vbp["extra_ms"])
    assert {(q["kind"], q["backend"]) for q in doc["ratios"]} >= {("latency", "ort-cpu"), ("latency", "torch-cpu")}
    # the targets are about NetSVF: a run on another model reports them as not measured
    assert len(doc["targets"]) == 6 and all(t["value"] is None and t["met"] is None for t in doc["targets"])


def test_csv_and_json_agree(quick_run):
    out, doc = quick_run
    with open(out / "latency.csv", newline="") as f:
        table = list(csv.DictReader(f))
    rows = doc["latency"] + doc["peers"]
    assert len(table) == len(rows)
    for line, r in zip(table, rows):
        assert (line["backend"], line["library"], line["method"], int(line["batch"])) == \
               (r["backend"], r["library"], r["method"], r["batch"])
        for k in ("median", "p95", "iqr", "extra_ms"):
            assert float(line[k]) == pytest.approx(r[k])
        assert int(line["n"]) == r["n"]
    with open(out / "pipeline.csv", newline="") as f:
        pipe = list(csv.DictReader(f))
    assert [(p["backend"], p["methods"]) for p in pipe] == [(p["backend"], p["methods"]) for p in doc["pipeline"]]
    assert [float(p["fps"]) for p in pipe] == pytest.approx([p["fps"] for p in doc["pipeline"]])


def test_png_is_a_picture(quick_run):
    import matplotlib.image
    out, _ = quick_run
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(out / "bench.png")
    assert img.shape[0] > 300 and img.shape[1] > 300 and img.std() > 0


def test_pipeline_rows(quick_run):
    _, doc = quick_run
    got = {(p["backend"], p["methods"]): p for p in doc["pipeline"]}
    assert set(got) == {(b, m) for b in ("ort-cpu", "torch-cpu") for m in ("forward", "vbp")}
    for (backend, methods), p in got.items():
        assert p["fps"] > 0 and p["frames"] >= 3
        assert set(p["stages_ms"]) == {"decode", "preprocess", "engine", "overlay"}
        assert p["fps_over_forward"] == pytest.approx(p["fps"] / got[(backend, "forward")]["fps"])


def test_peers_measured_or_skipped_with_a_note(quick_run):
    _, doc = quick_run
    libs = {(r["library"], r["method"]) for r in doc["peers"]}
    assert {("torch", "forward"), ("vbp-rt", "vbp"), ("vbp-rt", "lrp"), ("vbp-rt", "saliency")} <= libs
    for peer in peers.PEERS:
        if peer.method not in ("vbp", "lrp", "saliency"):
            continue
        measured = (peer.library, peer.method) in libs
        noted = any(n.startswith(f"peer {peer.library} {peer.method}") for n in doc["notes"])
        assert measured != noted, (peer, doc["notes"])
    if importlib.util.find_spec("captum") is not None:
        assert {("captum", "lrp"), ("captum", "saliency")} <= libs


def test_table_is_printed(quick_run):
    from vbp_rt.bench.report import table
    _, doc = quick_run
    text = table(doc)
    assert "engine: tiny (checkpoint weights), ort-cpu, batch 1" in text
    assert "targets" in text and "not measured" in text


def test_missing_peer_is_a_note(monkeypatch):
    def missing(_model, _x):
        raise ImportError("no module named nolib", name="nolib")
    monkeypatch.setattr(peers, "PEERS", (peers.Peer("nolib", "lrp", missing, "pip install nolib"),))
    net = tiny_net()
    spec = ModelSpec("tiny", net, "random", net, net.config.input_shape)
    results = Results()
    peers.peer_group(spec, 1, ("lrp",), timing.Budget(warmup=1, warmup_s=0, min_runs=3, max_s=0.01), results)
    assert {r.library for r in results.rows} == {"torch", "vbp-rt"}
    assert any("nolib" in n and "pip install nolib" in n for n in results.notes)


def test_summarize_against_numpy():
    rng = np.random.default_rng(0)
    s = rng.lognormal(1.0, 0.3, size=101)
    st = timing.summarize(s)
    assert st.median == pytest.approx(np.median(s))
    assert st.p95 == pytest.approx(np.percentile(s, 95))
    assert st.iqr == pytest.approx(np.percentile(s, 75) - np.percentile(s, 25))
    assert st.n == 101 and st.min == s.min()
    srt = np.sort(s)  # order statistics 50 -/+ 1.96*sqrt(101)/2 = 9.85
    assert (st.ci_low, st.ci_high) == (srt[40], srt[61])
    assert timing.summarize(np.full(20, 5.0)).stable
    assert not timing.summarize(np.r_[np.full(10, 1.0), np.full(10, 3.0)]).stable


def test_measure_group_interleaves_and_stops():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    stats = timing.measure_group(fns, timing.Budget(warmup=2, warmup_s=0, min_runs=6, max_runs=9, max_s=5.0))
    timed = calls[4:]
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up of each, not timed
    assert timed[: 2 * stats["a"].n] == ["a", "b"] * stats["a"].n  # then round-robin
    assert 6 <= stats["a"].n <= 9 and stats["a"].n == stats["b"].n


def test_zennit_adapter_is_epsilon_lrp():
    """Without BatchNorm, zennit's epsilon rule on Conv2d/Linear is exactly our epsilon-LRP."""
    net = tiny_net(batchnorm=False).double()
    with torch.no_grad():
        net.head[-1].weight.mul_(300.0)  # outputs in degrees, as the paper's eps=100 assumes
    x = torch.rand(2, 1, 40, 96, dtype=torch.float64)
    try:
        call, close, _ = peers.zennit_lrp(net, x)
    except ImportError:
        pytest.skip("zennit is not installed (pip install --no-deps zennit)")
    try:
        theirs = call().detach().sum(dim=1)
    finally:
        close()
    ours = vbp_rt.explain(net, x, "lrp", eps=peers.EPS).relevance
    assert ours.abs().max() > 0
    assert float((theirs - ours).abs().max() / ours.abs().max()) < 1e-6
    assert not any(isinstance(m, peers._PlaceholderModule) for m in list(sys.modules.values()))


def test_captum_adapters_match_our_methods():
    pytest.importorskip("captum")
    net = tiny_net(seed=2).double()
    x = torch.rand(2, 1, 40, 96, dtype=torch.float64)
    sal, _, _ = peers.captum_saliency(net, x)
    ours = vbp_rt.explain(net, x, "saliency").relevance.abs()  # one input channel: |gradient|
    assert torch.allclose(sal()[:, 0], ours, rtol=1e-9, atol=1e-12)
    lrp, _, _ = peers.captum_lrp(net, x)
    ref = vbp_rt.explain(net, x, "lrp", eps=peers.EPS, bn="affine").relevance
    got = lrp().detach().sum(dim=1)
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-6


def test_gradcam_adapter_agrees_with_our_gradcam():
    net = tiny_net(seed=3)
    with torch.no_grad():
        net.head[-1].bias.fill_(5.0)  # a positive prediction: both explain the output itself
    x = torch.rand(2, 1, 40, 96)
    try:
        call, close, _ = peers.gradcam_gradcam(net, x)
    except ImportError:
        pytest.skip("pytorch-grad-cam is not installed (pip install --no-deps grad-cam ttach)")
    try:
        theirs = np.asarray(call())
    finally:
        close()
    ours = vbp_rt.explain(net, x, "gradcam").mask.numpy()
    assert theirs.shape == ours.shape
    for a, b in zip(theirs, ours):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95


@pytest.mark.parametrize("argv, message", [
    (["--methods", "nosuch"], "unknown method"),
    (["--batch", "0"], "at least 1"),
    (["--backends", "tpu"], "do not run on this machine"),
])
def test_bad_options_are_clear_errors(argv, message, capsys, tmp_path):
    assert main(["bench", "--quick", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_cpu_clock_counts_work_not_waiting():
    """Sleeping costs elapsed time but no CPU time: the two clocks must tell them apart."""
    import time
    budget = dict(warmup=1, warmup_s=0, min_runs=3, max_runs=3, max_s=1.0)
    wall = timing.measure_group({"sleep": lambda: time.sleep(0.05)}, timing.Budget(**budget))["sleep"]
    cpu = timing.measure_group({"sleep": lambda: time.sleep(0.05)}, timing.Budget(**budget, clock="cpu"))["sleep"]
    assert wall.median >= 50.0 and cpu.median < 25.0


def test_cpu_clock_run(tmp_path):
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, tiny_net())
    argv = ["bench", "--quick", "--clock", "cpu", "--threads", "1", "--models", str(ckpt), "--backends", "ort-cpu",
            "--no-peers", "--seconds", "0.2", "--min-runs", "3", "--frames", "4", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert doc["settings"]["clock"] == "cpu" and doc["settings"]["threads"] == 1
    assert {r["method"] for r in doc["latency"]} == {"forward", "vbp", "lrp"}
    assert all(p["clock"] == "cpu" and p["fps"] > 0 and p["wall_fps"] > 0 for p in doc["pipeline"])

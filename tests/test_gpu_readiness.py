"""The GPU path before its first GPU: one onnxruntime distribution per install, Runtime leaves the caller's
module alone, float32 precision per use, bench without torch.cuda on a CPU torch, one GPU per training
process, node placement and CUDA provider options. CPU-checkable parts run here; GPU parts skip cleanly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from email.parser import Parser
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement
from vbp_rt.bench import timing
from vbp_rt.trainer import distributed

from tests.conftest import randomize_bn
from vbp_rt import explain, ort_install, precision, sessions
from vbp_rt.cli import main
from vbp_rt.models import build, save_checkpoint
from vbp_rt.runtime import Runtime, output_devices
from vbp_rt.runtime_torch import private_copy

ROOT = Path(__file__).resolve().parents[1]
ORT_DISTRIBUTIONS = {"onnxruntime", "onnxruntime-gpu"}
EPS = 0.01
# GPU against CPU: exact float32 differs by summation order only; TF32 rounds the inputs of every
# convolution to 10 mantissa bits (relative 2^-11 per operand), which grows over six layers. LRP's
# relevance walk amplifies it further: under TF32 only VBP is held to a tolerance (vbp doctor --gpu
# reports the measured VBP difference on real frames).
EXACT = {"pred_rtol": 1e-4, "pred_atol": 1e-5, "mask_atol": 1e-4}
TF32 = {"pred_rtol": 2e-2, "pred_atol": 1e-3, "mask_atol": 2e-2}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(3)
    return randomize_bn(build("netsvf", height=41, width=77, channels=(4, 4, 6, 6, 8, 8),
                              strides=(1, 2, 1, 2, 1, 2), fc=(16,), view=""), seed=3)


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(5).integers(0, 256, (3, 41, 77), dtype=np.uint8)


# ---- one onnxruntime distribution ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def requires_dist(tmp_path_factory) -> list:
    """Requires-Dist of vbp-rt's wheel metadata, made by setuptools' PEP 517 hook (what pip reads before it
    resolves an install)."""
    out = tmp_path_factory.mktemp("meta")
    code = ("import sys, setuptools.build_meta as b; "
            "print(b.prepare_metadata_for_build_wheel(sys.argv[1]))")
    p = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    meta = Parser().parsestr((out / p.stdout.strip().splitlines()[-1] / "METADATA").read_text())
    return [Requirement(r) for r in meta.get_all("Requires-Dist")]


def _install(requires: list, extras) -> set:
    """The distributions `pip install vbp-rt[extras]` asks for (names)."""
    wanted = set()
    for r in requires:
        if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras or [""]):
            wanted.add(r.name.lower())
    return wanted


@pytest.mark.parametrize("extras,expected", [
    (["cpu"], {"onnxruntime"}), (["gpu"], {"onnxruntime-gpu"}),
    (["test", "cpu"], {"onnxruntime"}), (["test", "gpu"], {"onnxruntime-gpu"}),
    (["all", "gpu"], {"onnxruntime-gpu"}), (["viewer", "report", "ingest", "gpu"], {"onnxruntime-gpu"}),
    ([], set()), (["all"], set()), (["test"], set())])
def test_an_install_holds_at_most_one_onnxruntime(requires_dist, extras, expected):
    assert _install(requires_dist, extras) & ORT_DISTRIBUTIONS == expected


def test_bootstrap_choice_and_cleanup(monkeypatch, tmp_path):
    monkeypatch.delenv("VBP_ORT", raising=False)
    assert ort_install.wanted_extra(gpu=True) == "gpu" and ort_install.wanted_extra(gpu=False) == "cpu"
    monkeypatch.setenv("VBP_ORT", "cpu")
    assert ort_install.wanted_extra(gpu=True) == "cpu"
    monkeypatch.setenv("VBP_ORT", "cuda")
    with pytest.raises(ValueError, match="cpu or gpu"):
        ort_install.wanted_extra()
    venv, system = str(tmp_path / "venv" / "site"), "/usr/lib/python3/dist-packages"
    both = [("onnxruntime", "1.20", venv), ("onnxruntime-gpu", "1.20", venv)]
    assert ort_install.to_uninstall("gpu", both, tmp_path / "venv") == ["onnxruntime", "onnxruntime-gpu"]
    assert ort_install.to_uninstall("cpu", both[:1], tmp_path / "venv") == []
    assert ort_install.to_uninstall("gpu", both[:1], tmp_path / "venv") == ["onnxruntime"]
    assert ort_install.to_uninstall("gpu", [("onnxruntime", "1.20", system)], tmp_path / "venv") == []
    assert ort_install.clashes(both) == {venv: ["onnxruntime", "onnxruntime-gpu"]}
    assert ort_install.clashes([both[0], ("onnxruntime-gpu", "1.20", system)]) == {}


def test_this_environment_has_one_onnxruntime():
    dists = ort_install.installed()
    assert len([d for d in dists if d[0] in ORT_DISTRIBUTIONS]) >= 1 and not ort_install.clashes(dists)
    p = subprocess.run([sys.executable, str(ROOT / "vbp_rt" / "ort_install.py")], capture_output=True, text=True,
                       check=False, env={k: v for k, v in os.environ.items() if k != "VBP_ORT"})
    assert p.returncode == 0 and p.stdout.split()[0] in ("cpu", "gpu")


def test_missing_onnxruntime_names_the_extras():
    code = "import sys; sys.modules['onnxruntime'] = None; import vbp_rt.runtime"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert p.returncode != 0
    assert "vbp-rt[cpu]" in p.stderr and "vbp-rt[gpu]" in p.stderr and "MissingExtra" in p.stderr


# ---- the caller's module ---------------------------------------------------------------------------------

def test_private_copy_leaves_the_module_where_it_was(net):
    net.train()
    try:
        moved = private_copy(net, "meta")
        assert moved is not net and not moved.training and net.training
        assert all(p.device.type == "meta" for p in moved.parameters())
        assert all(p.device.type == "cpu" for p in net.parameters())
        same = private_copy(net)
        assert all(a.data_ptr() != b.data_ptr() for a, b in zip(same.parameters(), net.parameters()))
    finally:
        net.eval()


def test_runtime_does_not_alter_the_callers_module(net, frames):
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    try:
        rt = Runtime(net, "torch-cpu", methods=("vbp",))
        rt.run(frames)
        assert net.training, "the Runtime switched the caller's module to eval mode"
        assert rt.engine.model is not net
        assert not {p.data_ptr() for p in rt.engine.model.parameters()} & {p.data_ptr() for p in net.parameters()}
        for k, v in net.state_dict().items():
            assert torch.equal(v, before[k]) and v.device.type == "cpu"
    finally:
        net.eval()


# ---- engine internals ------------------------------------------------------------------------------------

def test_outputs_later_stages_read_stay_on_the_device():
    inputs = {"forward": ["x"], "vbp": ["m0", "m1"], "lrp": ["x", "pred", "a0"]}
    outputs = {"forward": ["pred", "m0", "m1", "a0"], "vbp": ["vbp_mask"], "lrp": ["lrp_mask"]}
    got = output_devices(inputs, outputs, {"pred", "vbp_mask", "lrp_mask"}, "cuda")
    assert got == {"pred": "cuda", "m0": "cuda", "m1": "cuda", "a0": "cuda", "vbp_mask": "cpu", "lrp_mask": "cpu"}
    assert set(output_devices(inputs, outputs, {"pred"}, "cpu").values()) == {"cpu"}


def test_the_lrp_head_reads_the_prediction(net):
    """Why the prediction is bound on the device: the LRP head takes it as an input."""
    rt = Runtime(net, "ort-cpu", methods=("vbp", "lrp"), eps=EPS)
    engine = rt.engine
    assert engine.prediction in engine.stages["lrp"].inputs
    assert rt.placement == {}


def test_cuda_provider_options():
    opts = sessions.cuda_provider_options()
    assert opts == {"device_id": "0", "use_tf32": "0", "enable_cuda_graph": "0", "cudnn_conv_algo_search": "HEURISTIC"}
    assert sessions.cuda_provider_options(tf32=True, cuda_graph=True)["use_tf32"] == "1"
    with pytest.raises(ValueError, match="HEURISTIC"):
        sessions.cuda_provider_options(conv_algo_search="FAST")


def test_node_placement_read_from_onnxruntimes_log(net, frames):
    p = sessions.node_placement(sessions._probe_model(), ["CPUExecutionProvider"])
    assert p.counts == {"CPUExecutionProvider": 1} and p.nodes == {}
    # the multi-provider form, as onnxruntime's session_state.cc (VerifyEachNodeIsAssignedToAnEp) logs it
    log = "\n".join([
        "2026-11-30 10:00:00.1 [V:onnxruntime:, session_state.cc:1598 VerifyEachNodeIsAssignedToAnEp] Node placements",
        "2026-11-30 10:00:00.1 [V:onnxruntime:, session_state.cc:1607 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed "
        "on [CPUExecutionProvider]. Number of nodes: 2",
        "2026-11-30 10:00:00.1 [V:onnxruntime:, session_state.cc:1609 VerifyEachNodeIsAssignedToAnEp]   Shape (s0)",
        "2026-11-30 10:00:00.1 [V:onnxruntime:, session_state.cc:1609 VerifyEachNodeIsAssignedToAnEp]   Gather (g0)",
        "2026-11-30 10:00:00.1 [V:onnxruntime:, session_state.cc:1607 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed "
        "on [CUDAExecutionProvider]. Number of nodes: 1",
        "2026-11-30 10:00:00.1 [V:onnxruntime:, session_state.cc:1609 VerifyEachNodeIsAssignedToAnEp]   Conv (c0)",
        "2026-11-30 10:00:00.2 [I:onnxruntime:, inference_session.cc:3424 operator()] Session successfully initialized."])
    p = sessions.parse_placement(log)
    assert p.counts == {"CPUExecutionProvider": 2, "CUDAExecutionProvider": 1}
    assert p.nodes == {"CPUExecutionProvider": ["Shape (s0)", "Gather (g0)"], "CUDAExecutionProvider": ["Conv (c0)"]}
    assert sessions.parse_placement("no placement here") is None


def test_cuda_graph_is_never_dropped(net):
    for backend in ("torch-cpu", "ort-cpu", "torch-cuda"):
        with pytest.raises(ValueError, match="ort-cuda"):
            Runtime(net, backend, cuda_graph=True)
    if sessions.ort_cuda_works():
        pytest.skip("onnxruntime runs CUDA here: auto with cuda_graph starts ort-cuda")
    with pytest.raises(ValueError, match="ort-cuda"):
        Runtime(net, "auto", cuda_graph=True)


def test_torch_fp32_switches_are_restored():
    before = precision.torch_fp32_state()
    with precision.torch_fp32(False):
        assert precision.torch_fp32_state() == ("ieee", "ieee", "ieee")
    assert precision.torch_fp32_state() == before
    with precision.torch_fp32(True):
        assert precision.torch_fp32_state() == ("tf32", "tf32", "tf32")
    assert precision.torch_fp32_state() == before


# ---- vbp bench with a CPU torch beside onnxruntime-gpu ---------------------------------------------------

def test_bench_times_ort_cuda_without_torch_cuda(monkeypatch, tmp_path, net):
    """The layout the bootstrap makes on a GPU machine whose torch is a CPU build: onnxruntime runs CUDA,
    torch.cuda asserts. Here an ort-cpu Runtime stands in for ort-cuda."""
    from vbp_rt import runtime

    def no_cuda(*a, **k):
        raise AssertionError("Torch not compiled with CUDA enabled")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("synchronize", "Event", "get_device_name"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)

    class StandIn(Runtime):
        def __init__(self, model, backend="auto", **kw):
            super().__init__(model, "ort-cpu" if backend == "ort-cuda" else backend, **kw)
            self.backend = backend
    monkeypatch.setattr(runtime, "Runtime", StandIn)
    monkeypatch.setattr(runtime, "available_backends", lambda: ["ort-cuda", "ort-cpu", "torch-cpu"])
    assert timing.engine_timer("ort-cuda") is timing.wall_ms and timing.engine_timer("torch-cuda") is timing.synchronized
    save_checkpoint(tmp_path / "n.pt", net)
    out = tmp_path / "bench"
    argv = ["bench", "--quick", "--models", str(tmp_path / "n.pt"), "--backends", "ort-cuda", "--methods", "vbp",
            "--no-peers", "--no-pipeline", "--seconds", "0.2", "--min-runs", "3", "--out", str(out)]
    assert main(argv) == 0
    rows = json.loads((out / "bench.json").read_text())["latency"]
    assert {r["backend"] for r in rows} == {"ort-cuda"} and {r["method"] for r in rows} == {"forward", "vbp"}


# ---- training processes and GPUs -------------------------------------------------------------------------

def test_one_gpu_per_training_process():
    assert distributed.pick_device("auto", gpus=0) == torch.device("cpu")
    assert distributed.pick_device("auto", 0, 1, gpus=1) == torch.device("cuda", 0)
    assert [distributed.pick_device("cuda", r, 2, gpus=2) for r in (0, 1)] == [torch.device("cuda", 0),
                                                                               torch.device("cuda", 1)]
    with pytest.raises(ValueError, match="NCCL refuses two processes on one GPU.*nproc_per_node 1"):
        distributed.pick_device("cuda", 1, 2, gpus=1)
    with pytest.raises(ValueError, match="NCCL"):
        distributed.pick_device("auto", 0, 3, gpus=2)
    assert [distributed.pick_device("cuda", r, 2, gpus=1, backend="gloo") for r in (0, 1)] == [torch.device("cuda", 0)] * 2
    with pytest.raises(ValueError, match="no CUDA GPU"):
        distributed.pick_device("cuda", gpus=0)
    assert distributed.process_group_backend(torch.device("cuda", 0)) == "nccl"
    assert distributed.process_group_backend(torch.device("cpu")) == "gloo"
    assert distributed.process_group_backend(torch.device("cuda", 0), "gloo") == "gloo"
    for bad, dev in (("mpi", "cuda"), ("nccl", "cpu")):
        with pytest.raises(ValueError, match="VBP_DIST_BACKEND"):
            distributed.process_group_backend(torch.device(dev), bad)


# ---- on a GPU --------------------------------------------------------------------------------------------

def _reference(net, frames, method):
    x = torch.from_numpy(frames).float().mul(1 / 255).unsqueeze(1)
    return explain(net, x, method, **({"eps": EPS} if method == "lrp" else {}))


def _close(result, net, frames, methods, tol):
    for m in methods:
        want = _reference(net, frames, m)
        np.testing.assert_allclose(result.prediction, want.prediction.numpy(), rtol=tol["pred_rtol"],
                                   atol=tol["pred_atol"])
        np.testing.assert_allclose(result.masks[m], want.mask.numpy(), atol=tol["mask_atol"])


@pytest.mark.gpu
@pytest.mark.parametrize("tf32", [False, True])
def test_torch_cuda_leaves_the_module_on_the_cpu(net, frames, cuda, tf32):
    rt = Runtime(net, "torch-cuda", methods=("vbp", "lrp"), eps=EPS, tf32=tf32)
    result = rt.run(frames)
    assert all(p.device.type == "cpu" for p in net.parameters())
    _close(result, net, frames, ("vbp",) if tf32 else ("vbp", "lrp"), TF32 if tf32 else EXACT)


@pytest.mark.gpu
@pytest.mark.parametrize("tf32", [False, True])
def test_ort_cuda_options_placement_and_precision(net, frames, tf32):
    ok, why = sessions.ort_cuda_status()
    if not ok:
        pytest.skip(f"onnxruntime cannot run CUDA here: {why}")
    rt = Runtime(net, "ort-cuda", methods=("vbp", "lrp"), eps=EPS, tf32=tf32)
    opts = rt.engine.stages["forward"].session.get_provider_options()["CUDAExecutionProvider"]
    assert opts["use_tf32"] == ("1" if tf32 else "0") and opts["cudnn_conv_algo_search"] == "HEURISTIC"
    assert set(rt.placement) == {"forward", "vbp", "lrp"}
    assert all(p is not None and p.on("CUDAExecutionProvider") > 0 for p in rt.placement.values())
    assert rt.engine.output_device[rt.engine.prediction] == "cuda"
    _close(rt.run(frames), net, frames, ("vbp",) if tf32 else ("vbp", "lrp"), TF32 if tf32 else EXACT)


@pytest.mark.gpu
def test_two_training_processes_share_one_gpu_over_gloo(tmp_path, cuda):
    """The DDP + SyncBatchNorm path on a single-GPU machine: two processes on one GPU over gloo."""
    from .trainer_helpers import ROOT as TROOT
    from .trainer_helpers import env, make_store, train_args
    store = make_store(tmp_path / "drive.h5", frames=60)
    args = train_args(store, tmp_path / "run", "--epochs", 1, "--snapshots", "", "--device", "cuda")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vbp_rt.cli",
           "train", *args]
    if torch.cuda.device_count() < 2:
        refused = subprocess.run(cmd, env=env(), cwd=TROOT, capture_output=True, text=True, timeout=300, check=False)
        assert refused.returncode != 0 and "NCCL refuses" in refused.stderr
    p = subprocess.run(cmd, env=dict(env(), VBP_DIST_BACKEND="gloo"), cwd=TROOT, capture_output=True, text=True,
                       timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "run" / "last.pt").is_file()


# ---- vbp doctor ------------------------------------------------------------------------------------------

def _facts(**change) -> dict:
    """A GPU machine where everything works; `change` overrides onnxruntime/torch/machine facts."""
    facts = {"nvidia_gpu": True, "nvidia_smi": ["NVIDIA GeForce GTX 970M, 550.54, 3072 MiB"],
             "onnxruntime": {"version": "1.20.1", "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                             "clashes": {}, "cuda_works": True, "cuda_problem": ""},
             "torch": {"version": "2.13.0+cu128", "cuda_build": "12.8", "cuda_available": True}}
    for key, value in change.items():
        part, _, name = key.partition("__")
        if name:
            facts[part][name] = value
        else:
            facts[part] = value
    return facts


def test_doctor_names_each_cause_in_one_line():
    from vbp_rt.cli.doctor import causes
    assert causes(_facts()) == []
    cases = {
        "no NVIDIA GPU": _facts(nvidia_gpu=False, torch__cuda_available=False, torch__cuda_build=None),
        "two onnxruntime distributions": _facts(onnxruntime__clashes={"/site": ["onnxruntime", "onnxruntime-gpu"]},
                                                onnxruntime__providers=["CPUExecutionProvider"]),
        "is a CPU build (providers": _facts(onnxruntime__providers=["AzureExecutionProvider", "CPUExecutionProvider"],
                                            onnxruntime__cuda_works=False),
        "libcudnn.so.9": _facts(onnxruntime__cuda_works=False, onnxruntime__cuda_problem="Failed to load library "
                                "libonnxruntime_providers_cuda.so with error: libcudnn.so.9: cannot open shared object file"),
        "torch 2.13.0+cpu is a CPU build": _facts(torch__version="2.13.0+cpu", torch__cuda_build=None,
                                                  torch__cuda_available=False),
        "sees no GPU": _facts(torch__cuda_available=False),
    }
    for expected, facts in cases.items():
        found = causes(facts)
        assert len(found) == 1 and expected in found[0] and "\n" not in found[0], (expected, found)
    placement = {"forward": {"counts": {"CUDAExecutionProvider": 30, "CPUExecutionProvider": 2},
                             "nodes": {"CPUExecutionProvider": ["Shape (s0)", "Gather (g0)"]}},
                 "vbp": {"counts": {"CUDAExecutionProvider": 12}, "nodes": {}}}
    found = causes(_facts(), placement)
    assert len(found) == 1 and "2 node(s) of NetSVF's forward stage" in found[0] and "Shape (s0), Gather (g0)" in found[0]


def test_doctor_on_this_machine(tmp_path, capsys):
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime:" in text and "torch:" in text
    if not torch.cuda.is_available() and not ort_install.nvidia_gpu():
        assert "cause: no NVIDIA GPU" in text
    out = tmp_path / "check.json"
    assert main(["doctor", "--gpu", "--no-tests", "--no-bench", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["facts"]["onnxruntime"]["distributions"] and report["causes"] == causes_here(report)
    cpu = report["precision"]["ort-cpu"]
    assert cpu["mask_max_abs_diff"]["n"] == 8 and cpu["mask_max_abs_diff"]["max"] < 1e-4
    assert main(["doctor", "--gpu", "--out", str(out)]) == 2  # an earlier report is not overwritten
    assert "exists" in capsys.readouterr().err


def causes_here(report):
    from vbp_rt.cli.doctor import causes
    return causes(report["facts"], (report.get("cuda_graph") or {}).get("placement"))


def test_cuda_libraries_preloaded_only_without_torch(monkeypatch):
    """A cached graph starts without importing torch, so nothing has loaded CUDA/cuDNN for the CUDA provider:
    the status check calls onnxruntime's preload_dlls first, and only then (torch loads its own otherwise)."""
    calls = []
    monkeypatch.setattr(sessions.ort, "preload_dlls", lambda *a, **k: calls.append((a, k)), raising=False)
    monkeypatch.setattr(sessions.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.delitem(sys.modules, "torch")
    sessions.ort_cuda_status.cache_clear()
    try:
        sessions.ort_cuda_status()
    finally:
        sessions.ort_cuda_status.cache_clear()
    assert calls == [((), {})]
    monkeypatch.setitem(sys.modules, "torch", torch)
    assert sessions.preload_cuda_libraries() is False and len(calls) == 1
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delattr(sessions.ort, "preload_dlls")  # onnxruntime older than 1.21
    assert sessions.preload_cuda_libraries() is False

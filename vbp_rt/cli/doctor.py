"""`vbp doctor [--gpu]`: which onnxruntime and torch builds run here, whether CUDA is used, and if not, why.

Without --gpu it only looks (seconds; where onnxruntime runs CUDA, it also builds NetSVF on ort-cuda to see
where its nodes land). With --gpu it is the first-GPU check: the GPU tests, a
CUDA-graph run of NetSVF with the node placement, the GPU-vs-CPU mask difference with and without TF32, and
`vbp bench --quick` on ort-cuda and torch-cuda; everything goes to one JSON file. Without a GPU it says
so, runs the CPU parts (the tests, which skip, and the CPU reference masks) and exits 0.

torch, onnxruntime and the runtime are imported where they are used (heavy imports: `vbp doctor --help`
stays fast, and a missing onnxruntime is reported instead of ending the command).
"""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vbp_rt import ort_install
from vbp_rt.extras import MissingExtra
from vbp_rt.files import atomic_write

ROOT = Path(__file__).resolve().parents[2]
FRAME_SEED, FRAME_INDICES = 1000, tuple(range(0, 200, 25))  # 8 held-out synthetic frames, chosen beforehand
MODEL = "netsvf"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "doctor", help="why CUDA is (not) used: installed onnxruntime/torch builds, providers, causes; --gpu: GPU check",
        description="Print the installed onnxruntime and torch builds and what they can run, and name in one line "
                    "each why CUDA is not used (no GPU, two onnxruntime distributions, CPU builds, missing CUDA "
                    "libraries, nodes on the CPU). --gpu also runs the GPU tests, a CUDA-graph run of NetSVF with "
                    "its node placement, the GPU-vs-CPU mask difference with and without TF32, and "
                    "`vbp bench --quick` on ort-cuda and torch-cuda, and writes everything to one JSON file. "
                    "See bench/README.md (GPU check) for what the numbers mean.",
    )
    p.add_argument("--gpu", action="store_true", help="run the full GPU check (minutes; the CPU parts without a GPU)")
    p.add_argument("--out", help="JSON file to write (default with --gpu: out/gpu-check/gpu-check-TIME.json)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--no-tests", action="store_true", help="with --gpu: skip the test suite's GPU tests")
    p.add_argument("--no-bench", action="store_true", help="with --gpu: skip `vbp bench --quick`")
    p.set_defaults(func=run)


# ---- what is installed -----------------------------------------------------------------------------------

def _nvidia_smi() -> list:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        p = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in p.stdout.splitlines() if line.strip()] if p.returncode == 0 else []


def _onnxruntime(dists: list) -> dict:
    facts = {"distributions": [{"name": n, "version": v, "folder": f} for n, v, f in dists],
             "clashes": ort_install.clashes(dists)}
    try:
        from vbp_rt.sessions import ort, ort_cuda_status
    except MissingExtra as e:
        return {**facts, "missing": str(e), "version": None, "device": None, "file": None, "providers": [],
                "cuda_works": False, "cuda_problem": str(e)}
    cuda_ok, cuda_why = ort_cuda_status()
    return {**facts, "version": ort.__version__, "device": ort.get_device(), "file": ort.__file__,
            "providers": ort.get_available_providers(), "cuda_works": cuda_ok, "cuda_problem": cuda_why}


def gather() -> dict:
    """Facts about this machine's GPU, onnxruntime and torch."""
    import torch

    from vbp_rt.precision import torch_fp32_state
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            gpus.append({"name": torch.cuda.get_device_name(i), "capability": f"{cap[0]}.{cap[1]}",
                         "tf32_hardware": cap[0] >= 8})
    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "nvidia_gpu": ort_install.nvidia_gpu(), "nvidia_smi": _nvidia_smi(),
        "onnxruntime": _onnxruntime(ort_install.installed()),
        "torch": {"version": torch.__version__, "cuda_build": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version() if torch.version.cuda else None,
                  "cuda_available": torch.cuda.is_available(), "gpus": gpus,
                  "fp32_precision": dict(zip(("cudnn.conv", "cudnn.rnn", "cuda.matmul"), torch_fp32_state()))},
    }


def causes(facts: dict, placement: dict | None = None) -> list:
    """Why CUDA is not used (or not everywhere), one line each, with what to do; empty when it is."""
    o, t = facts["onnxruntime"], facts["torch"]
    gpu = facts["nvidia_gpu"] or t["cuda_available"]
    found = [o["missing"]] if o.get("missing") else []
    if not gpu:
        found.append("no NVIDIA GPU: no driver lists one (/proc/driver/nvidia/gpus, nvidia-smi), so vbp-rt runs "
                     "on the CPU")
    for folder, names in o["clashes"].items():
        found.append(f"two onnxruntime distributions share {folder} ({', '.join(names)}): each overwrites the "
                     "other and CUDA goes missing; pip uninstall -y onnxruntime onnxruntime-gpu && "
                     "pip install 'vbp-rt[gpu]' (or rerun scripts/bootstrap.sh)")
    if gpu and o["version"] and "CUDAExecutionProvider" not in o["providers"] and not o["clashes"]:
        found.append(f"onnxruntime {o['version']} is a CPU build (providers: {', '.join(o['providers'])}): "
                     "pip uninstall -y onnxruntime && pip install 'vbp-rt[gpu]'")
    if gpu and "CUDAExecutionProvider" in o["providers"] and not o["cuda_works"]:
        found.append(f"onnxruntime-gpu cannot start CUDA, missing or mismatched CUDA/cuDNN libraries: "
                     f"{o['cuda_problem']} (onnxruntime-gpu 1.19+ wants CUDA 12 and cuDNN 9; a CUDA build of "
                     "torch brings both, or pip install nvidia-cudnn-cu12 nvidia-cublas-cu12)")
    if gpu and not t["cuda_build"]:
        found.append(f"torch {t['version']} is a CPU build: torch-cuda and the trainer on CUDA need a CUDA build "
                     "of torch (pytorch.org, Get Started)")
    elif gpu and not t["cuda_available"]:
        found.append(f"torch {t['version']} (CUDA {t['cuda_build']}) sees no GPU: the driver is older than CUDA "
                     f"{t['cuda_build']} needs, or CUDA_VISIBLE_DEVICES hides it")
    for stage, p in (placement or {}).items():
        cpu = (p or {}).get("counts", {}).get("CPUExecutionProvider", 0)
        if cpu:
            listed = ", ".join((p.get("nodes", {}).get("CPUExecutionProvider") or [])[:6]) or "all of them"
            found.append(f"{cpu} node(s) of NetSVF's {stage} stage run on the CPU under ort-cuda ({listed}): "
                         "copies between host and device where they touch tensors; CUDA graphs accept them only "
                         "where they compute shapes")
    return found


def print_facts(facts: dict, found: list) -> None:
    o, t = facts["onnxruntime"], facts["torch"]
    dists = ", ".join(f"{d['name']} {d['version']}" for d in o["distributions"]) or "none"
    print(f"GPU:          {'; '.join(facts['nvidia_smi']) or ('NVIDIA driver present' if facts['nvidia_gpu'] else 'none')}")
    print(f"onnxruntime:  {o['version']} ({o['device']} build; distributions: {dists})")
    print(f"  providers:  {', '.join(o['providers'])}; CUDA {'works' if o['cuda_works'] else 'does not run'}")
    cuda = f"CUDA {t['cuda_build']}, cuDNN {t['cudnn']}" if t["cuda_build"] else "CPU build"
    gpus = ", ".join(f"{g['name']} (sm {g['capability']})" for g in t["gpus"]) or "no GPU visible"
    print(f"torch:        {t['version']} ({cuda}); {gpus}")
    if not found:
        print("CUDA: used by onnxruntime and torch")
    for line in found:
        print(f"cause: {line}")


# ---- the GPU check ---------------------------------------------------------------------------------------

def held_out_views(rt) -> np.ndarray:
    """The model's view images of 8 frames of one synthetic drive (seed and frames fixed in advance)."""
    from vbp_rt.data.synth import Drive, SynthOptions
    drive = Drive(SynthOptions(frames=max(FRAME_INDICES) + 1, seed=FRAME_SEED))
    return np.stack([rt.prepare(drive.render(i).image) for i in FRAME_INDICES])


def _spread(values) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}


def compare(result, reference) -> dict:
    """Largest absolute mask difference per frame (masks in [0,1]) and prediction difference (degrees)."""
    masks = np.abs(result.masks["vbp"] - reference.masks["vbp"]).reshape(len(reference.prediction), -1).max(1)
    preds = np.abs(result.prediction - reference.prediction).reshape(len(reference.prediction), -1).max(1)
    return {"mask_max_abs_diff": _spread(masks), "prediction_abs_diff_deg": _spread(preds)}


def precision_check(backends: list) -> dict:
    """Masks of every backend, exact float32 and TF32, against the CPU reference (torch-cpu, float32)."""
    from vbp_rt.runtime import Runtime
    reference_rt = Runtime(MODEL, "torch-cpu")
    views = held_out_views(reference_rt)
    reference = reference_rt.run(views)
    out = {"frames": f"synthetic drive seed {FRAME_SEED}, frames {list(FRAME_INDICES)}", "reference": "torch-cpu"}
    for backend in ["ort-cpu", *backends]:
        for tf32 in ((False, True) if backend.endswith("cuda") else (False,)):
            key = f"{backend}{' tf32' if tf32 else ''}"
            try:
                out[key] = compare(Runtime(MODEL, backend, tf32=tf32).run(views), reference)
            except (ValueError, RuntimeError) as e:
                out[key] = {"error": str(e)}
    return out


def cuda_graph_run(frames: int = 50) -> dict:
    """NetSVF on ort-cuda with CUDA graphs: node placement per stage, per-call times, masks against the
    same engine without CUDA graphs."""
    from vbp_rt.runtime import Runtime
    try:
        rt = Runtime(MODEL, "ort-cuda", methods=("vbp",), cuda_graph=True)
    except ValueError as e:
        return {"error": str(e)}
    views = held_out_views(rt)[:1]
    plain = Runtime(MODEL, "ort-cuda", methods=("vbp",)).run(views)
    times, result = [], None
    for _ in range(frames):
        t0 = time.perf_counter()
        result = rt.run(views)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"placement": {k: (p.to_dict() if p else None) for k, p in rt.placement.items()},
            "call_ms": _spread(times[3:]), "first_calls_ms": times[:3],
            "mask_max_abs_diff_vs_without_graph": float(np.abs(result.masks["vbp"] - plain.masks["vbp"]).max())}


def conv_search_run(batches=(1, 8), calls: int = 30) -> dict:
    """NetSVF with VBP in the graph on onnxruntime's CUDA provider, with each cuDNN algorithm search: the
    first call at each batch size (where EXHAUSTIVE benchmarks) and the median of the following calls (ms)."""
    from vbp_rt import onnx_io
    from vbp_rt.models import load_model
    from vbp_rt.sessions import cuda_provider_options, ort
    model = onnx_io.export_vbp(load_model(MODEL)).SerializeToString()
    rng = np.random.default_rng(0)
    out = {}
    for search in ("HEURISTIC", "EXHAUSTIVE"):
        session = ort.InferenceSession(model, providers=[
            ("CUDAExecutionProvider", cuda_provider_options(conv_algo_search=search)), "CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for batch in batches:
            x = rng.random((batch, 1, 135, 640), dtype=np.float32)
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                session.run(None, {name: x})
                times.append((time.perf_counter() - t0) * 1e3)
            out[f"{search} batch {batch}"] = {"first_call_ms": times[0], "then_median_ms": float(np.median(times[1:]))}
    return out


def netsvf_placement() -> dict:
    """Where onnxruntime puts NetSVF's nodes (forward stage, VBP and LRP heads) on CUDA."""
    from vbp_rt.runtime import Runtime
    try:
        rt = Runtime(MODEL, "ort-cuda", methods=("vbp", "lrp"))
    except ValueError as e:
        return {"error": str(e)}
    return {k: (p.to_dict() if p else None) for k, p in rt.placement.items()}


def gpu_tests() -> dict:
    """The test suite's GPU tests (pytest -m gpu); they skip cleanly without a GPU."""
    tests = ROOT / "tests"
    if not tests.is_dir():
        return {"error": f"no test suite at {tests} (an installed copy without the source tree)"}
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", str(tests)],
                       cwd=ROOT, capture_output=True, text=True, check=False)
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    return {"returncode": p.returncode, "summary": lines[-1] if lines else "",
            "skipped": [ln for ln in lines if ln.startswith("SKIPPED")], "failures": [
                ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]}


def bench_quick(backend: str, out: Path) -> dict:
    """`vbp bench --quick` on one backend; the medians of its rows (ms)."""
    folder = out.parent / f"{out.stem}-bench-{backend}"
    p = subprocess.run([sys.executable, "-m", "vbp_rt.cli", "bench", "--quick", "--backends", backend,
                        "--out", str(folder)], cwd=ROOT, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["vbp bench failed"])[-1]}
    doc = json.loads((folder / "bench.json").read_text())
    return {"folder": str(folder), "latency_ms": {f"{r['method']} batch {r['batch']}": r["median"]
                                                  for r in doc["latency"] if r["backend"] == backend},
            "peers_ms": {f"{r['library']} {r['method']} {r['backend']}": r["median"] for r in doc["peers"]}}


def _default_out() -> Path:
    return Path("out") / "gpu-check" / time.strftime("gpu-check-%Y%m%d-%H%M%S.json")


def run(args) -> int:
    out = Path(args.out) if args.out else (_default_out() if args.gpu else None)
    if out is not None and out.exists() and not args.force:
        raise FileExistsError(f"{out} exists: give another --out or --force to overwrite it")
    facts = gather()
    if facts["onnxruntime"].get("missing"):
        print_facts(facts, causes(facts))
        return 1
    from vbp_rt.runtime import available_backends
    gpu_backends = [b for b in available_backends() if b.endswith("cuda")]
    report = {"facts": facts, "backends": available_backends()}
    placement = None
    if args.gpu and "ort-cuda" in gpu_backends:
        print("GPU check: CUDA-graph run of NetSVF on ort-cuda ...", file=sys.stderr)
        report["cuda_graph"] = cuda_graph_run()
        placement = report["cuda_graph"].get("placement")
        print("GPU check: cuDNN algorithm search, HEURISTIC against EXHAUSTIVE ...", file=sys.stderr)
        report["conv_algo_search"] = conv_search_run()
    if "ort-cuda" in gpu_backends:
        report["placement"] = netsvf_placement()
        placement = {**(placement or {}), **{k: v for k, v in report["placement"].items() if k != "error"}}
    report["causes"] = causes(facts, placement)
    print_facts(facts, report["causes"])
    if args.gpu:
        if not gpu_backends:
            print("GPU check: no GPU backend runs here (see the causes above); running the CPU parts only")
        if not args.no_tests:
            print("GPU check: pytest -m gpu ...", file=sys.stderr)
            report["gpu_tests"] = gpu_tests()
            print(f"GPU tests: {report['gpu_tests'].get('summary') or report['gpu_tests'].get('error')}")
        print("GPU check: masks against the CPU reference, exact float32 and TF32 ...", file=sys.stderr)
        report["precision"] = precision_check(gpu_backends)
        for key, value in report["precision"].items():
            if isinstance(value, dict) and "mask_max_abs_diff" in value:
                d = value["mask_max_abs_diff"]
                print(f"mask vs torch-cpu, {key:<16} max |diff| median {d['median']:.2e} (max {d['max']:.2e}, "
                      f"{d['n']} frames)")
            elif isinstance(value, dict):
                print(f"mask vs torch-cpu, {key:<16} {value.get('error')}")
        if "cuda_graph" in report:
            cg = report["cuda_graph"]
            text = cg.get("error") or f"median {cg['call_ms']['median']:.2f} ms per call"
            print(f"CUDA graph: {text}")
        if not args.no_bench:
            for backend in gpu_backends:
                print(f"GPU check: vbp bench --quick --backends {backend} ...", file=sys.stderr)
                report.setdefault("bench", {})[backend] = bench_quick(backend, out)
        if not gpu_backends:
            report["bench"] = "skipped: no GPU backend"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, json.dumps(report, indent=1, default=str).encode())
        print(f"vbp doctor: wrote {out}")
    failed = args.gpu and report.get("gpu_tests", {}).get("returncode", 0) not in (0, 5)
    return 1 if failed else 0

"""`vbp bench`: forward vs VBP vs LRP vs other libraries, on every backend this machine runs, and the
viewer's end-to-end frame rate. Writes a terminal table, bench.json, latency.csv, pipeline.csv, bench.png."""
from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

QUICK = {"models": "netsvf", "batch": "1", "methods": "vbp,lrp", "peer_batch": "1", "frames": 20, "rounds": 1,
         "seconds": 2.0, "min_runs": 5, "stage_frames": 8, "startup": 0}
FULL = {"models": "netsvf,nethvf", "batch": "1,8,32", "methods": None, "peer_batch": "1,8", "frames": 150,
        "rounds": 3, "seconds": 25.0, "min_runs": 15, "stage_frames": 40, "startup": 2}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="latency of forward, VBP, LRP and other libraries' methods; the viewer's frame rate",
        description="Measure, on this machine, what each attribution method costs beyond the forward pass "
                    "(median, p95, IQR, n), for every model, batch size, backend and method, next to captum, "
                    "zennit and pytorch-grad-cam on the same model and input, and the viewer's end-to-end "
                    "frames/s. Writes a table, JSON, CSV and a PNG plot. See bench/README.md.",
    )
    p.add_argument("--quick", action="store_true",
                   help="a short run (NetSVF, batch 1, vbp and lrp, the fastest backend, peers on torch, short "
                        "budgets): under a minute, for CI")
    p.add_argument("--models", help="comma-separated: netsvf, nethvf (shipped weights, else random ones), "
                                    "checkpoint .pt or .onnx files (default netsvf,nethvf; quick: netsvf)")
    p.add_argument("--batch", help="comma-separated batch sizes (default 1,8,32; quick: 1)")
    p.add_argument("--backends", help="comma-separated among ort-cpu, ort-cuda, torch-cpu, torch-cuda "
                                      "(default: all this machine runs; quick: the fastest)")
    p.add_argument("--methods", help="comma-separated attribution methods; the forward pass is always measured "
                                     "(default: every registered method; quick: vbp,lrp)")
    p.add_argument("--peer-batch", help="batch sizes for the other libraries (default 1,8; quick: 1)")
    p.add_argument("--no-peers", action="store_true", help="skip captum, zennit and pytorch-grad-cam")
    p.add_argument("--no-pipeline", action="store_true", help="skip the viewer pipeline frame rate")
    p.add_argument("--video", help="video for the pipeline (default: a generated 640x480 road clip)")
    p.add_argument("--frames", type=int, help="frames per pipeline measurement (default 150; quick: 20)")
    p.add_argument("--rounds", type=int, help="pipeline measurements per setting, alternating (default 3; quick: 1)")
    p.add_argument("--seconds", type=float, help="time budget of one group of timings (default 25; quick: 2)")
    p.add_argument("--min-runs", type=int, help="timed calls of each method at least (default 15; quick: 5)")
    p.add_argument("--startup", type=int, metavar="N",
                   help="start-up time of fresh processes, N cold/warm pairs: imports, model load, ONNX export, "
                        "sessions, first inference, and vbp view's first overlay (default 2; quick: 0 = skip)")
    p.add_argument("--threads", type=int, help="engine threads (default: the runtime's choice, one per core)")
    p.add_argument("--input-spec", help="input spec for .onnx models from elsewhere (key=value pairs or a .json "
                                        "file, as for vbp explain; see docs/byom.md)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time (default); cpu: CPU time of the process per call, which other "
                        "programs on a shared machine do not inflate (with --threads 1: single-core latency)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="tell glibc to keep freed buffers (as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=huge would)")
    p.add_argument("--out", default="out/bench", help="output folder (default out/bench)")
    p.set_defaults(func=run)


def _list(text: str, what: str) -> list:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError(f"--{what}: give at least one value")
    return items


def _ints(text: str, what: str) -> list:
    try:
        values = [int(v) for v in _list(text, what)]
    except ValueError:
        raise ValueError(f"--{what}: expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise ValueError(f"--{what}: sizes must be at least 1, got {text!r}")
    return values


def settings_from(args) -> dict:
    """The run's settings: explicit options over the quick or full defaults, validated."""
    from vbp_rt.methods import available
    from vbp_rt.runtime import available_backends
    d = QUICK if args.quick else FULL
    methods = _list(args.methods, "methods") if args.methods else (
        _list(d["methods"], "methods") if d["methods"] else available())
    unknown = [m for m in methods if m not in available()]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(available())}")
    have = available_backends()
    backends = _list(args.backends, "backends") if args.backends else (have[:1] if args.quick else have)
    missing = [b for b in backends if b not in have]
    if missing:
        raise ValueError(f"backend(s) {', '.join(missing)} do not run on this machine (available: {', '.join(have)})")
    s = {"quick": bool(args.quick), "models": _list(args.models or d["models"], "models"),
         "batch": _ints(args.batch or d["batch"], "batch"), "backends": backends, "methods": methods,
         "peers": not args.no_peers, "peer_batch": _ints(args.peer_batch or d["peer_batch"], "peer-batch"),
         "pipeline": not args.no_pipeline, "video": args.video, "frames": args.frames or d["frames"],
         "rounds": args.rounds or d["rounds"], "seconds": args.seconds or d["seconds"],
         "min_runs": args.min_runs or d["min_runs"], "stage_frames": d["stage_frames"], "threads": args.threads,
         "keep_freed_memory": bool(args.keep_freed_memory), "clock": args.clock,
         "input_spec": args.input_spec, "startup": d["startup"] if args.startup is None else args.startup}
    if s["clock"] == "cpu" and any(b.endswith("cuda") for b in backends):
        raise ValueError("--clock cpu measures CPU work; GPU backends are timed with the wall clock (drop --clock)")
    if s["video"] and not Path(s["video"]).is_file():
        raise FileNotFoundError(f"--video {s['video']} does not exist")
    if s["startup"] < 0:
        raise ValueError(f"--startup must be >= 0, got {s['startup']}")
    if s["frames"] < 2 or s["rounds"] < 1 or s["seconds"] <= 0 or s["min_runs"] < 3:
        raise ValueError("--frames must be >= 2, --rounds >= 1, --seconds > 0 and --min-runs >= 3")
    return s


def budget_for(s: dict):
    from .timing import Budget
    if s["quick"]:
        return Budget(warmup=1, warmup_s=0.0, min_runs=s["min_runs"], max_runs=100, max_s=s["seconds"],
                      clock=s["clock"])
    return Budget(warmup=2, warmup_s=0.3, min_runs=s["min_runs"], max_runs=300, max_s=s["seconds"], clock=s["clock"])


def run(args) -> int:
    s = settings_from(args)
    import torch
    from tqdm import tqdm

    from . import environment, report
    from .latency import Results, Runtimes, engine_group, resolve_model
    from .peers import peer_group
    from .pipeline import WARMUP_FRAMES, run_pipeline, synthetic_clip
    from .startup import run_startup

    torch.set_flush_denormal(True)
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    if s["keep_freed_memory"] and not environment.keep_freed_memory():
        raise OSError("--keep-freed-memory: this C library has no mallopt (glibc only)")
    env = environment.describe()
    started = time.time()
    budget = budget_for(s)
    results = Results()
    runtimes = Runtimes(s["threads"], s["input_spec"])
    specs = [resolve_model(m) for m in s["models"]]
    for spec in specs:
        if spec.weights == "random":
            results.note(f"{spec.label}: randomly initialized weights with randomized BatchNorm statistics "
                         "(no shipped model): timings do not depend on the weights")
    sets = [(), ("vbp",)] + ([] if s["quick"] or "lrp" not in s["methods"] else [("vbp", "lrp")])
    sets = [ms for ms in sets if all(m in s["methods"] for m in ms)]
    devices = ["cpu"] + (["cuda"] if "torch-cuda" in s["backends"] else [])
    tasks = []
    for i, spec in enumerate(specs):  # model by model: each model's engines are released before the next
        tasks += [("engine", spec, backend, b) for b in s["batch"] for backend in s["backends"]]
        tasks += [("peers", spec, d, b) for b in s["peer_batch"] for d in devices] if s["peers"] else []
        tasks += [("pipeline", spec, backend, 1) for backend in s["backends"]] if s["pipeline"] and i == 0 else []
    pipeline = []
    with tempfile.TemporaryDirectory(prefix="vbp-bench-") as tmp, \
            tqdm(tasks, desc="vbp bench", unit="group", file=sys.stderr, disable=None) as bar:
        video = s["video"]
        if s["pipeline"] and not video:
            video = synthetic_clip(Path(tmp) / "road.mp4", s["frames"] + WARMUP_FRAMES + 5)
            results.note("pipeline: a generated 640x480 mp4v road clip (give --video for real footage)")
        for k, (kind, spec, where, b) in enumerate(bar):
            bar.set_postfix_str(f"{kind} {spec.label} {where} batch {b}")
            if kind == "engine":
                engine_group(spec, where, b, s["methods"], budget, results, runtimes)
            elif kind == "peers":
                peer_group(spec, b, s["methods"], budget, results, where)
            else:
                pipeline += run_pipeline(spec, where, sets, video, runtimes, results, s["frames"], s["rounds"],
                                         s["stage_frames"], s["clock"])
            if k + 1 == len(tasks) or tasks[k + 1][1] is not spec:
                runtimes.clear()
        startup = []
        if s["startup"]:
            bar.set_postfix_str(f"start-up {s['models'][0]}")
            ort = [b for b in s["backends"] if b.startswith("ort")]
            startup = run_startup(s["models"][0], (ort or s["backends"])[0], video, s["threads"], s["startup"])
    env["load_average_end"] = environment.load_average()
    env["seconds"] = round(time.time() - started, 1)
    settings = {**s, "budget": dataclasses.asdict(budget)}
    doc = report.document(settings, env, [r.to_dict() for r in results.rows], pipeline, results.notes, startup)
    paths = report.write(doc, args.out)
    print(report.table(doc))
    print("\nvbp bench: wrote " + ", ".join(str(p) for p in paths.values()))
    return 0

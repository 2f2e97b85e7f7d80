"""`vbp audit SOURCE... --model M --out AUDIT_DIR`: attention statistics for every frame of long drives, the frames
and stretches where the network looks somewhere unusual, its attention modes, and a report (docs/audit.md)."""
from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from vbp_rt.data.sources import open_source
from vbp_rt.methods import parse_methods

from . import distributed, report, runner, store
from .compute import EDGE

DEFAULTS = {"chunk": 256, "batch": 16}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "audit", help="find the frames where a network looks at the wrong thing, across hours of driving",
        description="Run a steering network with VisualBackProp over every frame of drives, videos or image "
                    "folders and write per-frame attention statistics (AUDIT_DIR/audit.h5), the frames and "
                    "stretches whose attention is unusual for their drive (ranked events), the attention modes "
                    "(clusters of masks) and a report (AUDIT_DIR/report.html, report.md). An interrupted audit "
                    "continues with --resume without recomputing finished chunks.",
        epilog="example: vbp audit drive1.h5 drive2.mp4 --model netsvf --out audits/today; "
               "then: vbp view drive1.h5 --audit audits/today")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="HDF5 drives from `vbp data`, videos, image folders or images (as for `vbp view`)")
    p.add_argument("--model", default="netsvf", help="shipped model name or checkpoint/ONNX path (default netsvf)")
    p.add_argument("--out", required=True, help="audit folder to create (refused if it exists, unless --resume)")
    p.add_argument("--methods", default="vbp",
                   help="vbp, or vbp,lrp to also store LRP's compact mask and the VBP-LRP agreement (default vbp)")
    p.add_argument("--backend", default="ort-cpu",
                   help="engine backend: ort-cpu (default), ort-cuda, torch-cpu, torch-cuda or auto")
    p.add_argument("--resume", action="store_true", help="continue the audit in --out; finished chunks are kept")
    p.add_argument("--chunk", type=int, default=DEFAULTS["chunk"],
                   help=f"frames per chunk file, the unit of resuming (default {DEFAULTS['chunk']})")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch"], help="frames per engine call (default 16)")
    p.add_argument("--threads", type=int, help="engine threads (default: the backend's choice, all cores)")
    p.add_argument("--horizon", type=float,
                   help="horizon as a fraction of the view's height from the top (default: from the model's view "
                        "of the 640x480 camera; 0 for the svf view, which starts below it)")
    p.add_argument("--edge", type=float, default=EDGE, help=f"width of each edge band, fraction (default {EDGE})")
    p.add_argument("--modes", type=int, help="number of attention modes (default: chosen by silhouette, 2-8)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="fan the sources out over a Ray cluster (ADDRESS as for ray.init, e.g. auto or "
                        "ray://head:10001), or 'local' for a Ray instance on this machine")
    p.add_argument("--workers", type=int, default=2, help="with --ray local: worker processes (default 2)")
    p.add_argument("--no-report", action="store_true", help="write audit.h5 only")
    p.set_defaults(func=run)


def config_from(args) -> dict:
    specs = parse_methods(args.methods)
    methods = [m for m, _ in specs.values()]
    if methods[0] != "vbp" or not set(methods) <= {"vbp", "lrp"} or len(set(methods)) != len(methods):
        raise ValueError(f"--methods must be vbp or vbp,lrp, got {args.methods!r}")
    if args.chunk < 1 or args.batch_size < 1:
        raise ValueError("--chunk and --batch-size must be at least 1")
    if args.horizon is not None and not 0 <= args.horizon <= 1:
        raise ValueError(f"--horizon is a fraction of the view's height (0..1), got {args.horizon}")
    if not 0 <= args.edge < 0.5:
        raise ValueError(f"--edge must be within 0..0.5, got {args.edge}")
    sources = []
    for s in args.sources:
        if s.isdigit():
            raise ValueError(f"source {s}: a live camera has no end to audit; record it first")
        path = Path(s)
        if not path.exists():
            raise FileNotFoundError(f"source {path} does not exist")
        sources.append(str(path.resolve()))
    model = args.model if not Path(args.model).exists() else str(Path(args.model).resolve())
    return {"model": model, "methods": methods, "backend": args.backend, "sources": sources,
            "chunk": args.chunk, "batch": args.batch_size, "horizon": args.horizon, "edge": args.edge,
            "modes": args.modes}


def audit_here(config: dict, out, threads=None, progress: bool = True) -> tuple:
    """Every source in this process, one Runtime; returns (outcomes, engine facts for audit.h5)."""
    runtime = runner.make_runtime(config, threads)
    lengths = []
    for spec in config["sources"]:
        lengths.append(_length(spec, runtime.config.view))
    total = sum(lengths) if all(n is not None for n in lengths) else None
    outcomes = []
    with tqdm(total=total, unit="frame", desc="vbp audit", disable=None if progress else True) as bar:
        for position, spec in enumerate(config["sources"]):
            audit = runner.SourceAudit(position, spec, runtime, config, out, progress=bar.update)
            outcomes.append(audit.run())
    return outcomes, runner.engine_facts(runtime)


def _length(spec, view):
    try:
        source = open_source(spec, view)
    except (ValueError, OSError):
        return None
    try:
        return source.length
    finally:
        source.close()


def run(args) -> int:
    config = config_from(args)
    out = store.prepare_dir(args.out, config, args.resume)
    if args.ray:
        outcomes, engine = distributed.audit_ray(config, out, args.ray, workers=args.workers)
    else:
        outcomes, engine = audit_here(config, out, threads=args.threads)
    for o in outcomes:
        for problem in o.problems:
            print(f"vbp audit: {problem}", file=sys.stderr)
    path = runner.finish(out, config, outcomes, engine)
    frames = sum(o.frames for o in outcomes)
    bad = sum(o.bad for o in outcomes)
    print(f"vbp audit: {frames} frames -> {path}" + (f" ({bad} unreadable frames skipped)" if bad else ""))
    if not args.no_report:
        html, md = report.write(out)
        print(f"vbp audit: report -> {html} and {md}")
    return 1 if any(o.problems for o in outcomes) else 0

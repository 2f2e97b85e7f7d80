"""`vbp view [SOURCE]`: the live viewer, or `--headless --out overlay.mp4` without a window."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from vbp_rt.data.sources import open_source

from vbp_rt.extras import MissingExtra, require
from vbp_rt.files import refuse_existing
from vbp_rt.input_spec import SPEC_HELP, announce
from vbp_rt.methods import parse_methods
from vbp_rt.overlay import COLORMAPS

DEFAULT_METHODS = "vbp,lrp"
DEMO_FRAMES = 400  # 20 s of driving at 20 frames/s
DEMO_SEED = 7


def add_parser(sub) -> None:
    p = sub.add_parser(
        "view", help="watch what a driving network looks at: video, camera, drive or image folder, live",
        description="Play a source through a steering network and show, frame by frame, the VisualBackProp and "
                    "LRP masks, the predicted (and true) steering angle and the time each stage takes. "
                    "Keys: Space play/pause, Left/Right step, F1 help. Without a display use --headless.",
    )
    p.add_argument("source", nargs="?",
                   help="a video file, a camera index (0), an HDF5 drive from `vbp data`, or an image folder; "
                        "default: the embedded synthetic drive (generated on first use into $VBP_RT_CACHE, "
                        "default ~/.cache/vbp-rt)")
    p.add_argument("--model", default="netsvf", help="shipped model name or checkpoint/ONNX path (default netsvf)")
    p.add_argument("--backend", default="auto", help="ort-cpu, ort-cuda, torch-cpu, torch-cuda or auto (default)")
    p.add_argument("--methods", help="comma-separated attribution methods, lrp:eps=E sets LRP's epsilon (default vbp,lrp; "
                                     "vbp alone when the model's LRP cannot start)")
    p.add_argument("--input-spec", help=SPEC_HELP)
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=None,
                      help="play files at their frame rate, dropping frames inference cannot keep up with "
                           "(default in the window)")
    pace.add_argument("--fast", dest="realtime", action="store_false",
                      help="process every frame as fast as possible (default with --headless)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="playback speed factor in real-time mode (default 1; the window offers 0.25 to 4)")
    p.add_argument("--opacity", type=float, default=0.7, help="mask overlay opacity, 0..1 (default 0.7)")
    p.add_argument("--colormap", default="red", choices=sorted(COLORMAPS), help="mask colours (default red)")
    p.add_argument("--headless", action="store_true", help="no window: write the overlaid video and a timing summary")
    p.add_argument("--out", help="with --headless: the overlaid video to write (.mp4, mp4v)")
    p.add_argument("--summary", help="with --headless: timing summary JSON (default: OUT with .json)")
    p.add_argument("--overwrite", action="store_true", help="replace a video or summary that already exists (default: refuse)")
    p.add_argument("--frames", type=int, help="with --headless: stop after this many frames (needed for a camera)")
    p.add_argument("--save-dir", default=".", help="folder for snapshots and recordings (default: current folder)")
    p.add_argument("--monitor", metavar="RUN_DIR", help="also open the training monitor on a `vbp train` run folder")
    p.add_argument("--threads", type=int, help="engine threads (default: the backend's choice)")
    p.add_argument("--audit", metavar="AUDIT_DIR", help="show the timeline of a `vbp audit` of SOURCE under the "
                                                       "frame; keys N / P jump to the next / previous event")
    p.set_defaults(func=run)


def viewer_methods(text: str) -> tuple:
    """--methods for the viewer: (method names, LRP's eps or None), read with the common method-list grammar."""
    specs = parse_methods(text)
    extra = [label for label, (m, opts) in specs.items() if set(opts) - ({"eps"} if m == "lrp" else set())]
    if extra:
        raise ValueError(f"vbp view runs methods with their default options (only lrp:eps=E can be set); "
                         f"got {', '.join(extra)}")
    eps = next((opts["eps"] for m, opts in specs.values() if m == "lrp" and "eps" in opts), None)
    return tuple(dict.fromkeys(m for m, _ in specs.values())), eps


def default_drive() -> Path:
    """The embedded synthetic drive (with its camera video), made by `vbp data synth` the first time it is asked for."""
    cache = Path(os.environ.get("VBP_RT_CACHE") or Path.home() / ".cache" / "vbp-rt")
    path = cache / "demo_drive.h5"
    if not path.exists():
        print(f"vbp view: generating the synthetic demo drive ({DEMO_FRAMES} frames) into {path} (once)...",
              file=sys.stderr)
        cmd = [sys.executable, "-m", "vbp_rt.cli", "data", "synth", "--frames", str(DEMO_FRAMES),
               "--seed", str(DEMO_SEED), "--out", str(path), "--video", str(path.with_suffix(".mp4"))]
        if subprocess.call(cmd) != 0 or not path.exists():
            raise OSError(f"could not generate the demo drive {path} (command: {' '.join(cmd)})")
    return path


def runtime_factory(model, threads=None, eps=None, spec=None):
    """(backend, methods) -> Runtime for `model` (`spec`: --input-spec)."""
    from vbp_rt.runtime import Runtime  # onnxruntime (and torch, unless the graph is cached): once a model is needed

    def make(backend, methods):
        return Runtime(model, backend=backend, methods=tuple(methods), threads=threads, eps=eps, spec=spec)
    return make


def _started(make, backend, methods):
    """A Runtime that has run its methods once, on a blank frame: a method that cannot run on this model fails
    here, before the first frame of the source."""
    runtime = make(backend, methods)
    runtime.run(runtime.prepare(np.zeros((480, 640, 3), np.uint8)))
    return runtime


def has_display() -> bool:
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform and platform not in ("xcb", "wayland"):
        return True  # offscreen, vnc, eglfs...: Qt draws without an X/Wayland server
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run(args) -> int:
    methods, eps = viewer_methods(args.methods or DEFAULT_METHODS)
    if not 0.0 <= args.opacity <= 1.0:
        raise ValueError(f"--opacity must be within 0..1, got {args.opacity}")
    if args.speed <= 0:
        raise ValueError(f"--speed must be positive, got {args.speed}")
    if args.headless:
        if not args.out:
            raise ValueError("--headless needs --out FILE.mp4 for the overlaid video")
        refuse_existing([Path(args.out), Path(args.summary) if args.summary else Path(args.out).with_suffix(".json")],
                        args.overwrite)
        if args.monitor:
            raise ValueError("--monitor needs the window; it cannot run with --headless")
        if args.audit:
            raise ValueError("--audit needs the window; it cannot run with --headless")
    elif not has_display():
        raise ValueError("no display (DISPLAY is not set): run with --headless --out overlay.mp4, "
                         "or set QT_QPA_PLATFORM=offscreen")
    make = runtime_factory(args.model, args.threads, eps, args.input_spec)

    def start():
        """(Runtime that has run once, methods): vbp alone when LRP cannot start and --methods did not ask for it."""
        chosen = methods
        print(f"vbp view: preparing {args.model} for {', '.join(chosen)} (backend {args.backend})...", file=sys.stderr)
        try:
            runtime = _started(make, args.backend, chosen)
        except (ValueError, MissingExtra) as e:
            if args.methods or "lrp" not in chosen:
                raise
            print(f"vbp view: LRP does not run on this model ({e}); showing vbp only (choose with --methods)",
                  file=sys.stderr)
            chosen = tuple(m for m in chosen if m != "lrp")
            runtime = _started(make, args.backend, chosen)
        announce(runtime.spec, args.model, "vbp view")
        print(f"vbp view: running on {runtime.backend}", file=sys.stderr)
        return runtime, chosen

    source_spec = args.source or default_drive()
    if args.headless:
        from .headless import run_headless
        runtime, methods = start()
        source = open_source(source_spec, runtime.config.view)
        summary = run_headless(source, runtime, args.out, methods=methods, realtime=bool(args.realtime),
                               speed=args.speed, frames=args.frames, opacity=args.opacity, colormap=args.colormap,
                               summary_path=args.summary)
        return 1 if summary["errors"] or not summary["frames"] else 0
    require("PyQt5.QtWidgets", "viewer", "the vbp view window")
    require("pyqtgraph", "viewer", "the vbp view window")
    from .app import run_app  # Qt: imported only when a window is opened
    # the window comes up at once; the model (torch, export or the graph cache, sessions) is prepared on a thread
    return run_app(make, None, source_spec, methods=methods, backend=args.backend, realtime=args.realtime is not False,
                   speed=args.speed, opacity=args.opacity, colormap=args.colormap, save_dir=args.save_dir,
                   monitor=args.monitor, audit=args.audit, start=start)

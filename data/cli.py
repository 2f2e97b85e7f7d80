"""`vbp data synth`, `vbp data screen` and `vbp data udacity`: driving data for the HDF5 store (docs/data.md)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..files import refuse_existing


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="make HDF5 driving stores (synthetic drives, Udacity ingest)",
                       description="Write driving frames, steering angles (degrees) and speeds into the vbp-rt "
                                   "HDF5 store read by `vbp train`, `vbp explain` and the viewer.")
    dsub = p.add_subparsers(dest="data_command", metavar="SOURCE")
    dsub.required = True
    _add_synth(dsub)
    _add_screen(dsub)
    _add_udacity(dsub)
    p.set_defaults(func=lambda args: args.data_func(args))


def _views(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in ("svf", "hvf")]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"views must be svf and/or hvf, got {text!r}")
    return names


def _subcommand(dsub, name: str, help: str, description: str, **kw):
    """A `vbp data` subcommand whose --help shows every option's default."""
    return dsub.add_parser(name, help=help, description=description,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kw)


def _add_synth(dsub) -> None:
    p = _subcommand(
        dsub, "synth", help="generate a synthetic drive with ground-truth lane/distractor masks",
        description="Drive a procedural road (straights, curves both ways, lane markings, stop lines, crosswalks, "
                    "shadows, other cars, lighting changes) with a forward 640x480 camera at 20 frames/s and write "
                    "each frame's views, steering wheel angle (degrees, + left), speed and ground-truth masks "
                    "(lane_mask, distractor_mask). Deterministic for a seed.")
    p.add_argument("--frames", type=int, default=2000, help="number of frames")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same drive)")
    p.add_argument("--out", required=True, help="output store (.h5)")
    p.add_argument("--video", help="also write the drive as an mp4v video (640x480, 20 fps)")
    p.add_argument("--overwrite", action="store_true", help="replace a store or video that already exists (default: refuse)")
    p.add_argument("--views", type=_views, default="svf,hvf", help="comma-separated views to store")
    p.add_argument("--height", type=int, default=135, help="view height in rows")
    p.add_argument("--shadows", type=float, default=1.0, help="shadow density (0: no shadows)")
    p.add_argument("--cars", type=float, default=1.0, help="traffic density (0: no other cars)")
    p.add_argument("--crossings-per-km", type=float, default=3.0,
                   help="stop lines and crosswalks per km (0: none)")
    p.add_argument("--lighting", type=float, default=1.0, help="strength of exposure and colour changes (0: none)")
    p.add_argument("--noise", type=float, default=1.0, help="sensor noise strength (0: none)")
    p.add_argument("--shortcut", metavar="KIND[:MODE]", default="",
                   help="add a shortcut cue: 'sign' puts a roadside board on the side of the coming turn in the "
                        "train split and on a random side in the test split (:train correlated everywhere, "
                        ":test nowhere); its mask is stored as cue_mask (docs/audit.md)")
    p.add_argument("--no-distractors", action="store_true",
                   help="shorthand for --shadows 0 --cars 0 --crossings-per-km 0")
    p.add_argument("--section", metavar="NAME=VALUE", action="append", default=[], type=_name_value,
                   help="force a road attribute on every section of the drive, e.g. lane_width=3.3 (m), line_width, "
                        "wear, paint, shoulder, shadows, sun (0-1), asphalt (gray 40-170), verge "
                        "(grass|dry|gravel|sidewalk); repeatable. Appearance only: the road's course, the driver "
                        "and the labels stay those of the seed, so a model can be measured on the same drive "
                        "with one thing changed (docs/data.md)")
    p.set_defaults(data_func=run_synth)


def _name_value(text: str) -> tuple:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def run_synth(args) -> int:
    from .shortcut import parse as parse_shortcut
    from .synth import SynthOptions, write_synth

    if args.frames < 1:
        raise ValueError(f"--frames must be at least 1, got {args.frames}")
    shortcut = getattr(args, "shortcut", "")  # callers that build their own Namespace may leave it out
    if shortcut:
        parse_shortcut(shortcut)  # one-line error before any frame is made
    if args.no_distractors:
        args.shadows = args.cars = args.crossings_per_km = 0.0
    options = SynthOptions(frames=args.frames, seed=args.seed, shadows=args.shadows, cars=args.cars,
                           crossings_per_km=args.crossings_per_km, lighting=args.lighting, noise=args.noise,
                           shortcut=shortcut, appearance=dict(getattr(args, "section", [])))
    refuse_existing([Path(args.out), Path(args.video) if args.video else None], getattr(args, "overwrite", False))
    summary = write_synth(Path(args.out), options, views=args.views, height=args.height, video=args.video)
    print(f"vbp data synth: {summary['frames']} frames -> {args.out}" + (f" and {args.video}" if args.video else "")
          + f" ({summary['fps']:.1f} frames/s)")
    return 0


def _add_screen(dsub) -> None:
    p = _subcommand(
        dsub, "screen", help="list synthetic drive seeds by their steering labels (e.g. those with sharp curves)",
        description="Simulate the road and driver of `vbp data synth --seed S --frames N` without rendering "
                    "(thousands of frames/s; the labels equal the store's) and print, one per line, the seeds "
                    "whose drive has at least --min-frames labels beyond +-DEGREES. A summary goes to stderr; "
                    "--table prints every seed's counts instead.",
        epilog="example: for s in $(vbp data screen --seeds 125-699 --frames 400 --beyond 40 --min-frames 60); "
               "do vbp data synth --frames 400 --seed $s --out sharp_s$s.h5; done")
    p.add_argument("--seeds", required=True, help="seeds to look at, e.g. 125-699 or 11,12,90417")
    p.add_argument("--frames", type=int, default=600, help="frames per drive (as for vbp data synth)")
    p.add_argument("--beyond", type=float, default=40.0, metavar="DEGREES", help="label threshold, degrees")
    p.add_argument("--min-frames", type=int, default=1, help="frames beyond the threshold a seed needs")
    p.add_argument("--exclude", default="", help="seeds never to list (e.g. validation and test drives)")
    p.add_argument("--table", action="store_true", help="print seed, frames beyond, mean and peak label of every seed")
    p.add_argument("--layout", action="store_true",
                   help="with --table, add each drive's road layout averaged over its frames: lane width (m), lanes "
                        "right and left of the ego lane, oncoming lanes, line width, paint, wear, shoulder, sun, "
                        "shadows, asphalt gray and the share of frames with same-direction lanes on both sides "
                        "(to set against a model's per-drive bias from `vbp train-eval`)")
    p.set_defaults(data_func=run_screen)


def run_screen(args) -> int:
    from .screen import screen
    from .seeds import parse_seeds

    if args.frames < 1 or args.min_frames < 0 or not args.beyond >= 0:
        raise ValueError("--frames must be >= 1, --min-frames >= 0 and --beyond >= 0")
    if args.layout and not args.table:
        raise ValueError("--layout adds columns to --table; give both")
    excluded = set(parse_seeds(args.exclude)) if args.exclude.strip() else set()
    seeds = [s for s in parse_seeds(args.seeds) if s not in excluded]
    rows = screen(seeds, args.frames, args.beyond, layout=args.layout)
    chosen = [r for r in rows if r.beyond >= args.min_frames]
    if args.table:
        layout_columns = list(rows[0].layout) if rows and rows[0].layout else []
        print(",".join(["seed", "frames_beyond", "mean_deg", "peak_deg", *layout_columns]))
        for r in rows:
            extra = "".join(f",{v:.4g}" for v in (r.layout or {}).values())
            print(f"{r.seed},{r.beyond},{r.mean:.2f},{r.peak:.2f}{extra}")
    else:
        for r in chosen:
            print(r.seed)
    print(f"vbp data screen: {len(chosen)} of {len(rows)} seeds have >= {args.min_frames} of {args.frames} "
          f"frames beyond +-{args.beyond:g} deg", file=sys.stderr)
    return 0


def _add_udacity(dsub) -> None:
    p = _subcommand(
        dsub, "udacity", help="ingest Udacity driving data (ROS1 bags, bagdump folders, simulator logs, comma.ai)",
        description="Synchronise one camera's frames (the centre camera by default) with steering and speed "
                    "(interpolated to each image's timestamp, never across a gap of more than 1 s), keep frames "
                    "faster than --min-speed, convert to gray, crop and scale to each view. SOURCE: a .bag file "
                    "or folder of bags (/center_camera/image_color[/compressed], /vehicle/steering_report), a "
                    "udacity-driving-reader bagdump folder (camera.csv + steering.csv and/or interpolated.csv, "
                    "images under center/), a simulator driving log (header optional) or its folder, or a "
                    "comma.ai folder (camera/*.h5 + log/*.h5). Files are recognised by their content, not their "
                    "names; when a folder holds several sources the first usable one is written (bags, "
                    "camera.csv + steering.csv, interpolated.csv, simulator, comma.ai) unless --format says. "
                    "Frames keep the source's order; a backward time jump or a gap of more than 1 s starts a new "
                    "session. Bad frames are reported, skipped and counted; a summary per source ends the run "
                    "and is kept in the store's preprocess attribute.")
    p.add_argument("source", help="bag file, folder, bagdump CSV, simulator log or comma.ai .h5 file")
    p.add_argument("--out", required=True, help="output store (.h5)")
    p.add_argument("--overwrite", action="store_true", help="replace a store that already exists (default: refuse)")
    p.add_argument("--format", default="auto",
                   help="which source to read when SOURCE holds several: bag, camera-steering, interpolated, "
                        "simulator or comma")
    p.add_argument("--camera", metavar="FRAME_ID",
                   help="camera to read: a bagdump frame_id (default center_camera), a bag camera name or "
                        "/topic, or the simulator column center/left/right")
    p.add_argument("--views", type=_views, default="svf,hvf", help="comma-separated views to store")
    p.add_argument("--height", type=int, default=135, help="view height in rows")
    p.add_argument("--min-speed", type=float, default=5.0, help="keep frames faster than this (m/s)")
    p.add_argument("--angle-unit", choices=["rad", "deg"], default="rad",
                   help="unit of the steering angle in bags and bagdump CSVs (stored as degrees)")
    p.add_argument("--sim-max-angle", type=float, default=25.0,
                   help="simulator: road wheel degrees at steering 1.0 (times the steering ratio 14.8)")
    p.set_defaults(data_func=run_udacity)


def run_udacity(args) -> int:
    from .preprocess import view_for
    from .udacity_ingest import NoUsableSource, ingest_path

    views = [view_for(v, args.height) for v in args.views]
    refuse_existing([Path(args.out)], getattr(args, "overwrite", False))
    try:
        tried = ingest_path(args.source, Path(args.out), views, fmt=args.format, min_speed=args.min_speed,
                            angle_unit=args.angle_unit, sim_max_angle=args.sim_max_angle, camera=args.camera)
    except NoUsableSource as e:
        for s in e.summaries:
            print(f"vbp data udacity: {s.text()}", file=sys.stderr)
        raise
    for s in tried:
        print(f"vbp data udacity: {s.text()}")
    s = tried[-1]
    print(f"vbp data udacity: {s.kept} frames -> {args.out} ({s.fps:.0f} source frames/s)")
    return 0

"""`vbp train-eval MODEL DRIVE... [--seeds 1001-1008 --frames 600] --out DIR`: steering accuracy per drive."""
from __future__ import annotations

import json
from pathlib import Path

FILES = ("steering.md", "steering.csv", "steering.json", "steering_frames.csv", "steering.png")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train-eval", help="steering accuracy of a model on several drives (table and plot)",
        description="Measure a steering model on several drives: per drive and over all of them the RMSE, the "
                    "RMSE of always predicting 0 and the ratio of the two, the mean error (bias, prediction minus "
                    "label), the correlation and the worst stretch of --window frames; and the mean error per label "
                    "bin (--label-bins), pooled and per drive, which shows under-steer in sharp curves that a "
                    "small drive-wide bias hides. Writes OUT/steering.md, "
                    ".csv, .json, every frame's label and prediction (steering_frames.csv) and a plot of "
                    "prediction against label over time (steering.png).",
        epilog="example: vbp train-eval netsvf --seeds 1001-1008 --frames 600 --out eval/netsvf")
    p.add_argument("model", help="model: netsvf, nethvf, a checkpoint (RUN_DIR/best.pt) or an ONNX file")
    p.add_argument("drives", nargs="*", metavar="DRIVE", help="stores with steering angles (.h5 from `vbp data`)")
    p.add_argument("--seeds", help="also synthetic drives of these seeds, e.g. 1001-1008 or 11,12,90417")
    p.add_argument("--frames", type=int, default=600, help="frames per synthetic drive (default 600)")
    p.add_argument("--drives-dir", default="drives", help="where synthetic drives named by seed are written and "
                                                          "reused (default ./drives)")
    p.add_argument("--out", required=True, help="output folder for the table and the plot")
    p.add_argument("--window", type=int, default=100, help="frames in a stretch (default 100, 5 s)")
    p.add_argument("--label-bins", default="10,25,40,55", metavar="DEGREES",
                   help="|label| edges of the mean-error-per-label table, mirrored for left and right "
                        "(default 10,25,40,55: bins below -55, -55 to -40, ..., 55 and above)")
    p.add_argument("--mirror", action="store_true",
                   help="also read every frame mirrored left-right (the prediction negated) and report each drive's "
                        "bias that way and for the mean of both readings: a bias that keeps its sign is a misreading "
                        "of the road, one that flips is an offset the mirror does not change (twice the time)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-plot", action="store_true", help="skip the plot (no matplotlib needed)")
    p.add_argument("--force", action="store_true", help="replace the results of an earlier run in OUT")
    p.set_defaults(func=run)


def run(args) -> int:
    from vbp_rt.data.seeds import parse_seeds
    from vbp_rt.files import atomic_write

    from . import drives, steering_eval

    out = Path(args.out)
    if args.frames < 1 or args.window < 1 or args.batch_size < 1:
        raise ValueError("--frames, --window and --batch-size must be positive")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    earlier = [f for f in FILES if (out / f).exists()]
    if earlier and not args.force:
        raise ValueError(f"{out} already holds {', '.join(earlier)}; use --force to replace them or choose another --out")
    try:
        edges = [float(x) for x in args.label_bins.split(",")]
    except ValueError:
        raise ValueError(f"--label-bins takes degrees separated by commas, e.g. 10,25,40,55; got {args.label_bins!r}") from None
    steering_eval.label_bins(edges)  # refuse bad edges before the drives are read
    items = list(args.drives) + ([args.seeds] if args.seeds else [])
    if args.seeds:
        parse_seeds(args.seeds)
    if not items:
        raise ValueError("give at least one DRIVE or --seeds")
    paths = drives.resolve(items, args.frames, args.drives_dir)
    result = steering_eval.evaluate(args.model, paths, args.batch_size, args.window, mirror=args.mirror)
    title = f"{args.model} on {len(paths)} drives"
    by_label = steering_eval.bias_by_label(result, edges)
    table = steering_eval.markdown(result, title=f"Steering accuracy of {args.model}", by_label=by_label)
    atomic_write(out / "steering.md", table.encode())
    atomic_write(out / "steering.csv", steering_eval.csv_text(result).encode())
    atomic_write(out / "steering.json", json.dumps({"model": str(args.model), "drives": result["drives"],
                                                    "all": result["all"],
                                                    "by_label": by_label},
                                                   indent=2).encode())
    atomic_write(out / "steering_frames.csv", steering_eval.frames_csv(result).encode())
    if not args.no_plot:
        tmp = out / ".steering.tmp.png"
        steering_eval.plot(result, tmp, title=title, window=args.window)
        tmp.replace(out / "steering.png")
    print(table, end="")
    return 0

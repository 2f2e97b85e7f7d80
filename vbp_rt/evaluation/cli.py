"""`vbp eval`: how faithful is each attribution method? A report anyone can regenerate.

On a held-out drive with ground-truth lane and distractor masks (default: a synthetic drive generated
with seed 3) and a steering model (default: the shipped NetSVF), every registered method is measured
with the metrics of `vbp_rt.evaluation`: lane pointing, region perturbation (AOPC), keep-top
fraction, sanity checks (cascading randomization, similarity to an edge map), temporal stability,
and the bias/score ratio per layer of the piece-wise affine decomposition; on the Table 2 sign
classifier, keep-top-30% top-5 agreement (vbp_rt.evaluation.signs). Writes report.md, one CSV per table
and PNG plots into --out.
"""
from __future__ import annotations

import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vbp_rt import methods as registry
from vbp_rt.data.store import StoreReader
from vbp_rt.data.synth import SynthOptions, write_synth
from vbp_rt.dispatch import explain
from vbp_rt.evaluation import metrics as ev
from vbp_rt.evaluation.report import Table, example_grid, line_plot, write_report
from vbp_rt.evaluation.signs import sign_table
from vbp_rt.graph import chain_for
from vbp_rt.methods import parse_methods
from vbp_rt.methods.affine import decompose
from vbp_rt.models import load_model, outputs, to_input

DEFAULTS = {"frames": 40, "pairs": 16, "perturb_frames": 8, "steps": 30, "region": 15, "keep": 0.3,
            "sanity_frames": 6, "drive_frames": 1000, "batch_size": 8, "sign_images": 430}
QUICK = {"frames": 3, "pairs": 2, "perturb_frames": 1, "steps": 4, "region": 15, "keep": 0.3,
         "sanity_frames": 1, "drive_frames": 6, "batch_size": 8, "sign_images": 4}
SANITY_EXCESS = 0.1  # a check passes when the randomized network's mask matches the trained one by less than this
# much more than the fully random network's mask of a noise image does (the architecture's own pattern)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="measure the faithfulness of every attribution method (Markdown/CSV/PNG report)",
        description="Evaluate attribution methods against ground truth and against the model itself: lane "
                    "pointing and ROC-AUC, region perturbation (AOPC vs random order), keep-top-30%, "
                    "cascading weight randomization and edge-map similarity, temporal stability, and the "
                    "bias/score ratio per layer (with and without BatchNorm), and on the sign classifier keep-top-30% "
                    "top-5 agreement (Chen et al.).",
        epilog="examples: vbp eval --out eval-report;  vbp eval --quick --out /tmp/eval;  "
               "vbp eval --model runs/svf/best.pt --store drive.h5 --split test --nobn-model nobn.pt",
    )
    p.add_argument("--model", default="netsvf", help="steering model: shipped name or checkpoint (default netsvf)")
    p.add_argument("--store", help="held-out store with lane/distractor masks (default: generate a synthetic "
                                   "drive with --seed into OUT)")
    p.add_argument("--split", default="all", choices=["all", "train", "test"],
                   help="part of --store to evaluate (default all)")
    p.add_argument("--seed", type=int, default=3, help="seed of the generated drive (default 3, never used "
                                                       "for training)")
    p.add_argument("--drive-frames", type=int, help=f"length of the generated drive (default "
                                                    f"{DEFAULTS['drive_frames']})")
    p.add_argument("--methods", help="comma-separated methods, each optionally with options: NAME[:KEY=VALUE[:...]], "
                                     "e.g. 'vbp,lrp,lrp:eps=0.01,gradcam:layer=5' (default: every registered "
                                     "method with its defaults)")
    p.add_argument("--frames", type=int, help=f"frames for pointing and keep-top, spread over the drive "
                                              f"(default {DEFAULTS['frames']})")
    p.add_argument("--pairs", type=int, help=f"consecutive-frame pairs for temporal stability "
                                             f"(default {DEFAULTS['pairs']})")
    p.add_argument("--perturb-frames", type=int, help=f"frames for region perturbation "
                                                      f"(default {DEFAULTS['perturb_frames']})")
    p.add_argument("--steps", type=int, help=f"regions removed per perturbation curve (default {DEFAULTS['steps']})")
    p.add_argument("--region", type=int, help=f"side of a perturbation region in pixels (default {DEFAULTS['region']})")
    p.add_argument("--keep", type=float, help="fraction of pixels kept in the keep-top test (default 0.3)")
    p.add_argument("--sanity-frames", type=int, help=f"frames for the randomization checks "
                                                     f"(default {DEFAULTS['sanity_frames']})")
    p.add_argument("--nobn-model", help="the same network trained without BatchNorm, for the bias/score "
                                        "comparison (see docs/evaluation.md for how it was made)")
    p.add_argument("--batch-size", type=int, help="frames per explain call (default 8)")
    p.add_argument("--sign-model", default="sign", help="43-class sign classifier for the keep-top-30%% top-5 "
                                                        "agreement table (vbp_rt.evaluation.signs; default the shipped "
                                                        "sign, 'none' skips the table)")
    p.add_argument("--sign-images", type=int, help=f"synthetic signs for that table (default "
                                                   f"{DEFAULTS['sign_images']})")
    p.add_argument("--out", default="eval-report", help="output folder (default eval-report)")
    p.add_argument("--quick", action="store_true", help="a few frames and steps: a smoke test for CI (seconds "
                                                        "to a minute), not a measurement")
    p.set_defaults(func=run)


@dataclass
class Frames:
    """The evaluated frames: store indices, uint8 images (N,H,W), the frames right after them, and
    ground truth (lane/distractor 0/1 masks or None, angles in degrees)."""

    index: np.ndarray
    image: np.ndarray
    next_image: np.ndarray
    lane: np.ndarray | None
    distractor: np.ndarray | None
    angle: np.ndarray


def load_frames(path, view: str, count: int, split: str = "all") -> Frames:
    with StoreReader(path) as r:
        if view not in r.views:
            raise ValueError(f"store {path} has no view {view!r} for this model (it has: {', '.join(r.views)})")
        part = r.split(split)
        first, stop = part.start or 0, part.stop if part.stop is not None else len(r)
        if stop - first < 2:
            raise ValueError(f"store {path}: the {split} split has {stop - first} frame(s); at least 2 are needed")
        idx = np.unique(np.linspace(first, stop - 2, min(count, stop - first - 1)).round().astype(int))
        images = r.images(view)
        lane, dist = r.lane_mask(view), r.distractor_mask(view)
        return Frames(idx, images[idx], images[idx + 1], None if lane is None else lane[idx],
                      None if dist is None else dist[idx], r.angle[idx])


def generate_drive(path: Path, seed: int, frames: int, view: str, height: int) -> Path:
    write_synth(path, SynthOptions(frames=frames, seed=seed), views=(view,), height=height)
    return path


class Model:
    """A steering model with its input scaling: masks per method, and predictions for image batches."""

    def __init__(self, net, batch_size: int, specs: dict):
        self.net = net.eval()
        self.batch = batch_size
        self.specs = specs  # label -> (registered method, options)

    def masks(self, images: np.ndarray, label: str, net=None) -> np.ndarray:
        net = self.net if net is None else net
        method, options = self.specs[label]
        out = [explain(net, to_input(images[s:s + self.batch], net.config), method, **options).mask.numpy()
               for s in range(0, len(images), self.batch)]
        return np.concatenate(out)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Steering angles for float or uint8 images in pixel units (N,H,W)."""
        return outputs(self.net, images, 2 * self.batch)[:, 0]


def _settings(args) -> dict:
    base = QUICK if args.quick else DEFAULTS
    s = {k: getattr(args, k) if getattr(args, k, None) is not None else v for k, v in base.items()}
    for k in ("frames", "pairs", "perturb_frames", "steps", "region", "sanity_frames", "drive_frames", "batch_size",
              "sign_images"):
        if s[k] < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be at least 1, got {s[k]}")
    if not 0 < s["keep"] <= 1:
        raise ValueError(f"--keep must be in (0, 1], got {s['keep']}")
    return s


def _bar(total, desc):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="step", disable=None, leave=False)


def run(args) -> int:
    s = _settings(args)
    t0 = time.time()
    net = load_model(args.model)
    cfg = net.config
    if cfg.outputs != 1:
        raise ValueError(f"vbp eval measures steering models with one output; {args.model} has {cfg.outputs}")
    specs = parse_methods(args.methods) if args.methods else {m: (m, {}) for m in registry.available()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.store:
        return evaluate(args, s, net, specs, Path(args.store), f"`{args.store}` ({args.split})", out, t0)
    with tempfile.TemporaryDirectory(prefix="vbp-eval-") as tmp:
        store = generate_drive(Path(tmp) / "drive.h5", args.seed, s["drive_frames"], cfg.view, cfg.height)
        return evaluate(args, s, net, specs, store, f"synthetic drive generated with seed {args.seed}, "
                        f"{s['drive_frames']} frames (`vbp data synth --seed {args.seed} --frames "
                        f"{s['drive_frames']}` makes the same drive)", out, t0)


def evaluate(args, s: dict, net, specs: dict, store: Path, store_label: str, out: Path, t0: float) -> int:
    """Every table and plot of the report for `net` on `store`; writes OUT/report.md and friends."""
    import torch

    cfg = net.config
    names = list(specs)
    torch.manual_seed(0)
    model = Model(net, s["batch_size"], specs)
    sign_name = getattr(args, "sign_model", "none") or "none"
    sign = None if sign_name.lower() == "none" else load_model(sign_name)  # fails before the long stages
    frames = load_frames(store, cfg.view, max(s["frames"], s["pairs"], s["perturb_frames"], s["sanity_frames"]),
                         args.split)
    n = min(s["frames"], len(frames.index))

    timings, clock = {}, time.time()

    def lap(label):
        nonlocal clock
        timings[label] = time.time() - clock
        clock = time.time()

    lap("drive and model")
    bar = _bar(len(names) * 2, "vbp eval: masks")
    masks, next_masks = {}, {}
    pairs = min(s["pairs"], len(frames.index))
    for name in names:
        masks[name] = model.masks(frames.image, name)
        bar.update()
        next_masks[name] = model.masks(frames.next_image[:pairs], name)
        bar.update()
    bar.close()
    edges = np.stack([ev.edge_map(im) for im in frames.image])
    lap("masks")
    tables = [pointing_table(frames, masks, edges, n)]
    lap("pointing")
    tables.append(perturbation_table(model, frames, masks, edges, s, out))
    lap("perturbation")
    tables.append(keep_top_table(model, frames, masks, edges, s, n))
    lap("keep-top")
    tables.append(temporal_table(frames, masks, next_masks, pairs))
    tables.append(sanity_table(model, frames, masks, edges, s, args.quick, out))
    lap("sanity")
    nobn = load_model(args.nobn_model) if args.nobn_model else None
    tables.append(bias_table(net, nobn, frames, n, s["batch_size"], out))
    lap("bias")
    if sign is not None:
        bar = _bar(len(names), "vbp eval: sign classifier")
        tables.append(sign_table(sign, specs, s["sign_images"], keep=s["keep"], batch_size=s["batch_size"],
                                 model_label=sign_name, bar=bar))
        bar.close()
        lap("signs")
    shown = [0, int(np.argmax(np.abs(frames.angle[:n]))) or n // 2]  # the first frame and the sharpest turn
    example_grid(out / "examples.png", frames.image[shown], None if frames.lane is None else frames.lane[shown],
                 {k: v[shown] for k, v in masks.items()})
    figures = [("examples.png", "masks of every method on the first frame and the sharpest turn (first row: lane ground "
                                "truth; masks stretched to their 99th percentile for display)"),
               ("perturbation.png", "region perturbation curves"), ("sanity.png", "cascading randomization"),
               ("bias_ratio.png", "bias/score ratio per layer")]
    header = _header(args, s, store_label, frames, n, pairs, t0) + "- seconds per stage: " + ", ".join(
        f"{k} {v:.0f}" for k, v in timings.items()) + "\n"
    write_report(out, header, tables, figures, FOOTER)
    print(f"vbp eval: {len(names)} methods on {n} frames -> {out / 'report.md'} "
          f"({time.time() - t0:.0f} s)")
    return 0


def pointing_table(frames: Frames, masks: dict, edges: np.ndarray, n: int) -> Table:
    t = Table("pointing", "Lane pointing: where the mask mass goes",
              ["method", "mass on lane", "mass on distractors", "lane ROC-AUC", "distractor ROC-AUC"])
    if frames.lane is None:
        t.note = "The store has no ground-truth masks: pointing was not measured."
        return t
    lane, dist = frames.lane[:n], frames.distractor[:n] if frames.distractor is not None else None

    def row(name, m):
        d = (_mean(ev.mass_share(m, dist)), _mean([ev.roc_auc(a, b) for a, b in zip(m, dist)]))\
            if dist is not None else (float("nan"), float("nan"))
        return [name, _mean(ev.mass_share(m, lane)), d[0],
                _mean([ev.roc_auc(a, b) for a, b in zip(m, lane)]), d[1]]

    t.rows = [row(k, v[:n]) for k, v in masks.items()]
    t.rows.append(row("edge map (baseline)", edges[:n]))
    t.rows.append(["uniform (chance)", float(ev.area_share(lane).mean()),
                   float(ev.area_share(dist).mean()) if dist is not None else float("nan"), 0.5, 0.5])
    t.note = (f"{n} frames. Mass: share of the mask's total on the ground-truth pixels (a uniform mask scores "
              "the area share). ROC-AUC: the mask as a per-pixel detector of the region (0.5 = chance). Higher on "
              "lanes and lower on distractors (shadows, cars, stop lines, crosswalks) is better.")
    return t


def perturbation_table(model: Model, frames: Frames, masks: dict, edges: np.ndarray, s: dict, out: Path) -> Table:
    k, steps, size = min(s["perturb_frames"], len(frames.index)), s["steps"], s["region"]
    rng = np.random.default_rng(0)
    orders = dict(masks, **{"edge map (baseline)": edges})
    curves = {name: [] for name in list(orders) + ["random order"]}
    bar = _bar(k * len(curves), "vbp eval: region perturbation")
    for i in range(k):
        image = frames.image[i].astype(np.float32)
        noise = rng.uniform(0, 255, image.shape).astype(np.float32)
        for name, m in orders.items():
            curves[name].append(ev.perturbation_curve(model.predict, image, m[i], steps, size, noise))
            bar.update()
        curves["random order"].append(ev.perturbation_curve(model.predict, image, rng.random(image.shape), steps,
                                                            size, noise))
        bar.update()
    bar.close()
    mean = {name: np.mean(c, axis=0) for name, c in curves.items()}
    rand = ev.aopc(mean["random order"])
    t = Table("perturbation", "Region perturbation (most relevant first)",
              ["method", "AOPC (deg)", "AOPC / random", "change after all steps (deg)"])
    t.rows = [[name, ev.aopc(c), ev.aopc(c) / rand if rand > 0 else float("nan"), float(c[-1])]
              for name, c in mean.items()]
    t.note = (f"{k} frames; {steps} regions of {size}x{size} px replaced by uniform noise, one per step, in the "
              "order of the method's mask; AOPC = mean |angle change| over steps 0..L (Samek et al. 2017). Higher "
              "means the mask found what the prediction depends on; the random order is the baseline.")
    line_plot(out / "perturbation.png", np.arange(steps + 1),
              {name: (c, "k--" if name == "random order" else "-") for name, c in mean.items()},
              "regions replaced", "mean |angle change| (deg)", "Region perturbation, most relevant first")
    return t


def keep_top_table(model: Model, frames: Frames, masks: dict, edges: np.ndarray, s: dict, n: int) -> Table:
    frac = s["keep"]
    base = model.predict(frames.image[:n])
    rng = np.random.default_rng(1)
    orders = dict(masks, **{"edge map (baseline)": edges[:n], "random pixels": rng.random(frames.image[:n].shape)})
    t = Table("keep_top", f"Keep the top {frac:.0%}: how far the angle moves",
              ["method", "mean abs. angle change (deg)", "median (deg)"])
    for name, m in orders.items():
        kept = np.stack([ev.keep_top(im, mm, frac) for im, mm in zip(frames.image[:n], m[:n])])
        d = np.abs(model.predict(kept) - base)
        t.rows.append([name, float(d.mean()), float(np.median(d))])
    t.note = (f"{n} frames; every pixel outside the {frac:.0%} most relevant set to black (Chen et al.'s fidelity "
              f"test, done on the steering angle). Lower is better. Mean |angle| of the model on these frames: "
              f"{float(np.abs(base).mean()):.2f} deg.")
    return t


def temporal_table(frames: Frames, masks: dict, next_masks: dict, pairs: int) -> Table:
    t = Table("temporal", "Temporal stability on consecutive frames", ["method", "mask correlation t, t+1"])
    t.rows = [[name, _mean(ev.consecutive_correlation(masks[name][:pairs], next_masks[name]))]
              for name in masks]
    t.rows.append(["input images (reference)", _mean(ev.consecutive_correlation(
        frames.image[:pairs], frames.next_image[:pairs]))])
    t.note = (f"{pairs} pairs of consecutive frames; Pearson correlation of the masks. A debugging overlay that "
              "flickers while the image barely changes is hard to read; the input images' own correlation is the "
              "reference.")
    return t


def sanity_table(model: Model, frames: Frames, masks: dict, edges: np.ndarray, s: dict, quick: bool,
                 out: Path) -> Table:
    k = min(s["sanity_frames"], len(frames.index))
    images = frames.image[:k]
    steps = ev.randomization_steps(model.net)
    keep = {0, len(steps) - 1} if quick else set(range(len(steps)))
    labels, corr, last = [], {name: [] for name in masks}, {}
    bar = _bar((len(keep) + 1) * len(masks), "vbp eval: cascading randomization")
    for i, (label, rand) in enumerate(ev.cascading_randomization(model.net, seed=0)):
        if i not in keep:
            continue
        labels.append(label)
        for name in masks:
            m = model.masks(images, name, net=rand)
            corr[name].append(_mean([ev.spearman(a, b) for a, b in zip(masks[name][:k], m)]))
            last[name] = m
            bar.update()
    noise = np.random.default_rng(2).uniform(0, 255, images.shape).astype(np.float32)
    t = Table("sanity", "Sanity checks: cascading weight randomization and image recovery",
              ["method", "rank corr. after head randomized", "rank corr. after all randomized",
               "architecture reference", "passes: head", "passes: all", "edge-map similarity (trained)",
               "edge-map similarity (random weights)"])
    for name in masks:
        geometry = _mean([ev.spearman(a, b) for a, b in zip(masks[name][:k], model.masks(noise, name, net=rand))])
        bar.update()
        trained_edges = _mean([ev.spearman(a, b) for a, b in zip(masks[name][:k], edges[:k])])
        random_edges = _mean([ev.spearman(a, b) for a, b in zip(last[name], edges[:k])])
        verdict = ["yes" if c - geometry < SANITY_EXCESS else "no" for c in (corr[name][0], corr[name][-1])]
        t.rows.append([name, corr[name][0], corr[name][-1], geometry, *verdict, trained_edges, random_edges])
    bar.close()
    t.note = (f"{k} frames. Layers re-initialized top down (Adebayo et al.): first the fully connected head, then "
              "each convolution. Rank corr.: Spearman correlation between the trained model's mask and the "
              "randomized model's mask of the same frame. Unpadded convolutions give every method a pattern of the "
              "architecture alone (pixels near the border reach fewer outputs), whatever the weights; the "
              "architecture reference is the correlation of the trained mask with the fully randomized network's mask "
              "of a uniform-noise image. A check passes when the rank correlation exceeds that reference by less "
              f"than {SANITY_EXCESS}: nothing specific to the frame survives the loss of the learned head (the "
              "decision) or of all learned weights. The edge-map columns are the rank correlation with a Sobel edge map of the frame "
              "(Nie et al.: a method that matches the edges with random weights recovers the image).")
    line_plot(out / "sanity.png", np.arange(len(labels)), corr, "layers randomized (cumulative, top down)",
              "rank correlation with trained mask", "Cascading randomization", xticks=labels)
    return t


def bias_table(net, nobn, frames: Frames, n: int, batch: int, out: Path) -> Table:
    models = {"with BatchNorm": net}
    if nobn is not None:
        models["without BatchNorm"] = nobn
    ratios, rmse = {}, {}
    for label, m in models.items():
        m.eval()
        x_all = frames.image[:n]
        layers = ["input"] + list(range(len(chain_for(m, (1, *x_all.shape[1:])).links)))
        per, preds = [], []
        for s0 in range(0, n, batch):
            pred, ds = decompose(m, to_input(x_all[s0:s0 + batch], m.config), layers)
            preds.append(pred[:, 0].numpy())
            per.append(np.stack([ev.bias_score_ratio(d.bias.numpy(), d.score.numpy()) for d in ds], axis=1))
        ratios[label] = np.concatenate(per)
        rmse[label] = float(np.sqrt(np.mean((np.concatenate(preds) - frames.angle[:n]) ** 2)))
    depth = ["input"] + [f"conv{i + 1}" for i in range(next(iter(ratios.values())).shape[1] - 1)]
    t = Table("bias_ratio", "Bias/score ratio per layer (piece-wise affine decomposition)",
              ["layer"] + [f"median b/F, {k}" for k in ratios])
    for j, name in enumerate(depth):
        t.rows.append([name] + [float(np.nanmedian(r[:, j])) for r in ratios.values()])
    t.note = (f"{n} frames. F = W·a + b exactly at each post-ReLU conv map a (and at the input); the table gives the "
              "median over frames of b/F, F being the explained score (|angle|). Chen et al. (Fig. 3) found the bias "
              "share larger, and falling more abruptly towards the output, with BatchNorm. Steering RMSE on these "
              "frames: " + ", ".join(f"{k} {v:.2f} deg" for k, v in rmse.items())
              + f" (always predicting 0: {float(np.sqrt(np.mean(frames.angle[:n] ** 2))):.2f} deg)."
              + ("" if nobn is not None else " No model without BatchNorm was given (--nobn-model): only the "
                 "shipped model is shown."))
    line_plot(out / "bias_ratio.png", np.arange(len(depth)),
              {k: np.nanmedian(r, axis=0) for k, r in ratios.items()}, "layer", "median bias / score",
              "Bias share of the score per layer", xticks=depth)
    return t


def _mean(values) -> float:
    """Mean over the finite values (NaN marks an all-zero or constant mask); NaN when none is finite."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _header(args, s, store_label, frames: Frames, n, pairs, t0) -> str:
    cmd = "vbp eval " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["eval"] else \
        "vbp eval (called from Python)"
    return (f"# vbp eval report\n\n`{cmd}`\n\n"
            f"- model: `{args.model}`; data: {store_label}; frames {int(frames.index[0])}..."
            f"{int(frames.index[-1])} ({len(frames.index)} picked, {n} for pointing/keep-top, {pairs} pairs)\n"
            f"- settings: {', '.join(f'{k}={v}' for k, v in s.items())}"
            f"{'; QUICK MODE (smoke test, not a measurement)' if args.quick else ''}\n"
            f"- started {time.strftime('%Y-%m-%d %H:%M', time.localtime(t0))}\n")


FOOTER = ("Masks are compared as displayed (each method's `mask`, in [0,1]). The sign-classifier table (Chen et "
          "al.'s top-5 agreement) uses its own synthetic signs and model (`--sign-model`, `--sign-images`; "
          "vbp_rt/evaluation/signs.py).\n")

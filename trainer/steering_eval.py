"""Steering accuracy of a model on several drives: per drive and over all of them.

Per drive: RMSE, RMSE of always predicting 0 and their ratio, mean error (bias, prediction minus
label), correlation, mean label and prediction, and the worst stretch of `window` consecutive frames
(highest RMSE). Over all drives: the same on the pooled frames, plus the median and worst per-drive
ratio, the largest |bias| and the per-drive bias's mean and spread (sample standard deviation over
drives: how far one more drive of the same kind may land from the rest). Per label bin (pooled and per
drive): the mean error, which shows a model that under-steers sharp curves while its drive-wide bias
looks small. `vbp train-eval` writes them as Markdown and CSV and plots prediction against label over
time.
"""
from __future__ import annotations

import csv
import io
import math

import numpy as np
import torch
from tqdm import tqdm

from vbp_rt.data.store import StoreReader
from vbp_rt.models import load_model, to_input

from .drives import drive_name

WINDOW = 100  # frames in a "stretch" (5 s at 20 frames/s)
LABEL_EDGES = (10.0, 25.0, 40.0, 55.0)  # |label| bin edges in degrees, mirrored for negative labels


@torch.no_grad()
def predict(model, store, batch_size: int = 32, split: str = "all", mirror: bool = False) -> tuple:
    """(predictions, labels) in degrees, float64, for every frame of a split of a store; with `mirror`, the
    predictions for the frames mirrored left-right, negated (the angle the model reads from the mirror image)."""
    cfg = model.config
    model.eval()
    with StoreReader(store) as r:
        if cfg.view not in r.views:
            raise ValueError(f"store {store} has no view {cfg.view!r} for {cfg.arch} "
                             f"(it has {', '.join(r.views) or 'none'})")
        v = r.view(cfg.view)
        if (v.height, v.width) != (cfg.height, cfg.width):
            raise ValueError(f"store {store}: view {cfg.view!r} is {v.width}x{v.height}, "
                             f"{cfg.arch} expects {cfg.width}x{cfg.height}")
        s = r.split(split)
        images = r.images(cfg.view)
        read = (lambda x: -model(x.flip(-1))) if mirror else model
        preds = [read(to_input(images[i:min(i + batch_size, s.stop)], cfg))[:, 0].double().numpy()
                 for i in tqdm(range(s.start, s.stop, batch_size), desc=drive_name(store), unit="batch",
                               leave=False)]
        angle = r.angle[s].astype(np.float64)
    return (np.concatenate(preds) if preds else np.zeros(0)), angle


def worst_stretch(pred, label, window: int = WINDOW) -> dict:
    """The `window` consecutive frames with the highest RMSE: start, stop (exclusive), rmse, zero_rmse."""
    err2, lab2 = (np.asarray(pred) - label) ** 2, np.asarray(label) ** 2
    w = min(window, len(err2))
    if w == 0:
        return {"start": 0, "stop": 0, "rmse": math.nan, "zero_rmse": math.nan}
    sums = np.convolve(err2, np.ones(w), "valid")
    i = int(np.argmax(sums))
    return {"start": i, "stop": i + w, "rmse": float(np.sqrt(sums[i] / w)),
            "zero_rmse": float(np.sqrt(lab2[i:i + w].mean()))}


def metrics(pred, label, window: int = WINDOW) -> dict:
    """Steering metrics of predictions against labels (degrees)."""
    pred, label = np.asarray(pred, np.float64), np.asarray(label, np.float64)
    if len(pred) != len(label) or len(pred) == 0:
        raise ValueError(f"need equal, non-zero numbers of predictions and labels, got {len(pred)}, {len(label)}")
    err = pred - label
    rmse, zero = float(np.sqrt(np.mean(err ** 2))), float(np.sqrt(np.mean(label ** 2)))
    corr = float(np.corrcoef(pred, label)[0, 1]) if pred.std() > 0 and label.std() > 0 else math.nan
    worst = worst_stretch(pred, label, window)
    return {"frames": len(pred), "rmse": rmse, "zero_rmse": zero, "ratio": rmse / zero if zero else math.inf,
            "bias": float(err.mean()), "corr": corr, "mean_label": float(label.mean()),
            "mean_pred": float(pred.mean()), "worst_start": worst["start"], "worst_rmse": worst["rmse"],
            "worst_ratio": worst["rmse"] / worst["zero_rmse"] if worst["zero_rmse"] else math.inf}


def evaluate(model, stores, batch_size: int = 32, window: int = WINDOW, mirror: bool = False) -> dict:
    """{"drives": [{name, path, metrics...}], "all": pooled metrics + median/max ratio, max |bias|, per-drive
    bias mean and sample sd (None for one drive),
    "series": {name: (pred, label)}} for a model (name, path or module) on several stores.

    With `mirror`, each drive is also read mirrored left-right (`predict(mirror=True)`) and its row gets
    "mirror_bias" (the bias of the negated predictions on the mirrored frames) and "mirror_mean_bias" (of the
    mean of both). A model with a fixed offset b on top of an exact left-right reading has bias r + b,
    mirrored bias r - b and mean r: the mean keeps only what turns with the mirror."""
    model = load_model(model) if not isinstance(model, torch.nn.Module) else model
    rows, series, mirrors = [], {}, []
    for path in tqdm(stores, desc="drives", unit="drive", disable=len(stores) < 2):
        pred, label = predict(model, path, batch_size)
        name = drive_name(path)
        series[name] = (pred, label)
        rows.append({"drive": name, "path": str(path), **metrics(pred, label, window)})
        if mirror:
            mirrors.append(predict(model, path, batch_size, mirror=True)[0])
            rows[-1].update(mirror_biases(pred, mirrors[-1], label))
    preds, labels = (np.concatenate(a) for a in zip(*series.values()))
    pooled = metrics(preds, labels, window)
    ratios, biases = np.array([r["ratio"] for r in rows]), np.array([r["bias"] for r in rows])
    pooled.update(median_ratio=float(np.median(ratios)), max_ratio=float(ratios.max()),
                  max_abs_bias=float(np.abs(biases).max()), drive_bias_mean=float(biases.mean()),
                  drive_bias_sd=float(biases.std(ddof=1)) if len(rows) > 1 else None, drives=len(rows))
    if mirror:
        pooled.update(mirror_biases(preds, np.concatenate(mirrors), labels))
        for key in ("mirror_bias", "mirror_mean_bias"):
            b = np.array([r[key] for r in rows])
            pooled.update({f"{key}_max_abs": float(np.abs(b).max()),
                           f"{key}_sd": float(b.std(ddof=1)) if len(rows) > 1 else None})
    return {"drives": rows, "all": pooled, "series": series}


def mirror_biases(pred, mirrored, label) -> dict:
    """Mean error of the mirrored reading and of the mean of both readings (see `evaluate`)."""
    return {"mirror_bias": float(np.mean(mirrored - label)),
            "mirror_mean_bias": float(np.mean((pred + mirrored) / 2 - label))}


def label_bins(edges=LABEL_EDGES) -> list:
    """(lo, hi) label bins in degrees from positive |label| edges, mirrored and open at both ends: edges
    10, 55 give (-inf, -55), [-55, -10), [-10, 10), [10, 55), [55, inf)."""
    e = [float(x) for x in edges]
    if not e or any(x <= 0 or not math.isfinite(x) for x in e) or any(b <= a for a, b in zip(e, e[1:])):
        raise ValueError(f"label bin edges must be positive and increasing, got {edges}")
    bounds = [-math.inf] + [-x for x in reversed(e)] + e + [math.inf]
    return list(zip(bounds[:-1], bounds[1:]))


def bias_by_label(result: dict, edges=LABEL_EDGES) -> list:
    """Mean error (prediction - label) per label bin, pooled and per drive: [{"lo", "hi", "frames", "bias",
    "drives": {name: {"frames", "bias"}}}]; "lo"/"hi" are None where the bin is open, "bias" None where
    it holds no frame, and a drive is listed only in the bins where it has frames."""
    rows = []
    for lo, hi in label_bins(edges):
        row = {"lo": None if math.isinf(lo) else lo, "hi": None if math.isinf(hi) else hi, "drives": {}}
        errs = []
        for name, (pred, label) in result["series"].items():
            label = np.asarray(label, np.float64)
            m = (label >= lo) & (label < hi)
            if m.any():
                err = np.asarray(pred, np.float64)[m] - label[m]
                row["drives"][name] = {"frames": int(m.sum()), "bias": float(err.mean())}
                errs.append(err)
        pooled = np.concatenate(errs) if errs else np.zeros(0)
        row.update(frames=len(pooled), bias=float(pooled.mean()) if len(pooled) else None)
        rows.append(row)
    return rows


def _bin_name(row) -> str:
    lo = "" if row["lo"] is None else f"{row['lo']:+g}"
    hi = "" if row["hi"] is None else f"{row['hi']:+g}"
    return f"< {hi}" if not lo else f">= {lo}" if not hi else f"{lo} to {hi}"


def by_label_markdown(rows: list, drives: list) -> str:
    """The per-bin mean error as a Markdown table: "mean error (frames)" per drive and pooled."""
    def cell(d):
        return f"{d['bias']:+.2f} ({d['frames']})" if d else ""

    lines = ["| label (deg) | " + " | ".join(drives) + " | all |", "|" + "---|" * (len(drives) + 2)]
    for row in rows:
        if row["frames"]:
            lines.append(f"| {_bin_name(row)} | " + " | ".join(cell(row["drives"].get(d)) for d in drives)
                         + f" | {cell(row)} |")
    return "\n".join(lines) + "\n"


COLUMNS = (("drive", "drive", "{}"), ("frames", "frames", "{}"), ("rmse", "RMSE (deg)", "{:.2f}"),
           ("zero_rmse", "zero predictor (deg)", "{:.2f}"), ("ratio", "ratio", "{:.3f}"),
           ("bias", "bias (deg)", "{:+.2f}"), ("corr", "correlation", "{:.3f}"),
           ("mean_label", "mean label", "{:+.2f}"), ("mean_pred", "mean prediction", "{:+.2f}"),
           ("worst_start", "worst stretch from", "{}"), ("worst_rmse", "worst stretch RMSE", "{:.2f}"),
           ("worst_ratio", "worst stretch ratio", "{:.3f}"))


MIRROR_COLUMNS = (("mirror_bias", "mirrored bias (deg)", "{:+.2f}"),
                  ("mirror_mean_bias", "mirror-mean bias (deg)", "{:+.2f}"))


def columns(result: dict) -> tuple:
    """COLUMNS, and MIRROR_COLUMNS when the drives were also read mirrored."""
    return COLUMNS + (MIRROR_COLUMNS if "mirror_bias" in result["drives"][0] else ())


def table_rows(result: dict) -> list:
    """Per-drive rows and a final "all" row (pooled frames)."""
    return result["drives"] + [{"drive": "all", **result["all"]}]


def markdown(result: dict, title: str = "", by_label: list | None = None) -> str:
    """The per-drive table, the summary line and the mean error per label bin (`bias_by_label` rows; computed
    with the default edges when not given)."""
    cols = columns(result)
    head = "| " + " | ".join(h for _, h, _ in cols) + " |"
    lines = ([f"{title}", ""] if title else []) + [head, "|" + "---|" * len(cols)]
    for row in table_rows(result):
        lines.append("| " + " | ".join(f.format(row[k]) for k, _, f in cols) + " |")
    a = result["all"]
    lines += ["", f"{a['drives']} drives: median ratio {a['median_ratio']:.3f}, worst ratio {a['max_ratio']:.3f}, "
                  f"largest |bias| {a['max_abs_bias']:.2f} deg{_spread(a)} (the \"all\" row pools every frame).",
              *_mirror_line(a), "", "Mean error (prediction - label, deg) per label bin, with its frames:", ""]
    rows = bias_by_label(result) if by_label is None else by_label
    return "\n".join(lines) + "\n" + by_label_markdown(rows, [r["drive"] for r in result["drives"]])


def _spread(a: dict) -> str:
    sd = a.get("drive_bias_sd")
    return "" if sd is None else f", bias per drive {a['drive_bias_mean']:+.2f} +- {sd:.2f} deg (mean +- sd)"


def _mirror_line(a: dict) -> list:
    """The summary of the mirrored readings, when there are any."""
    if "mirror_bias" not in a:
        return []
    sd = "" if a["mirror_bias_sd"] is None else (f" (sd between drives {a['mirror_bias_sd']:.2f}, "
                                                 f"{a['mirror_mean_bias_sd']:.2f})")
    return ["", f"Read mirrored left-right (prediction negated): largest |bias| {a['mirror_bias_max_abs']:.2f} deg; "
                f"the mean of both readings: {a['mirror_mean_bias_max_abs']:.2f} deg{sd}. What the mean removes, half "
                f"of bias - mirrored bias, is an offset the mirror does not turn."]


def csv_text(result: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = columns(result)
    w.writerow([k for k, _, _ in cols])
    for row in table_rows(result):
        w.writerow([row[k] if isinstance(row[k], str) else f"{row[k]:.6g}" for k, _, _ in cols])
    return buf.getvalue()


def frames_csv(result: dict) -> str:
    """drive, frame, label, prediction: one line per frame."""
    lines = ["drive,frame,label,prediction"]
    for name, (pred, label) in result["series"].items():
        lines += [f"{name},{i},{lab:.4f},{p:.4f}" for i, (p, lab) in enumerate(zip(pred, label))]
    return "\n".join(lines) + "\n"


def plot(result: dict, path, title: str = "", window: int = WINDOW, fps: float = 20.0) -> None:
    """Prediction and label over time, one panel per drive, the worst stretch shaded."""
    from vbp_rt.extras import pyplot  # matplotlib is the optional [report] extra

    plt = pyplot("plotting prediction against label")
    n = len(result["drives"])
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.9 * n + 0.6), squeeze=False, sharey=True)
    for ax, row in zip(axes[:, 0], result["drives"]):
        pred, label = result["series"][row["drive"]]
        t = np.arange(len(label)) / fps
        ax.plot(t, label, color="0.2", lw=1.0, label="label")
        ax.plot(t, pred, color="tab:red", lw=0.9, label="prediction")
        w0, w1 = row["worst_start"], min(row["worst_start"] + window, len(label))
        ax.axvspan(w0 / fps, w1 / fps, color="tab:orange", alpha=0.18, lw=0)
        ax.set_title(f"{row['drive']}: ratio {row['ratio']:.2f}, bias {row['bias']:+.1f} deg, "
                     f"r {row['corr']:.2f}", fontsize=8, loc="left")
        ax.set_ylabel("deg", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("time (s); shaded: worst stretch", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)

"""Keep-top-30% on the Table 2 sign classifier: Chen et al.'s top-5 agreement for every attribution method.

For held-out synthetic signs (data.signs, seed 2 by default: never used for training), each method
explains the predicted class; the 30% most relevant pixels of its mask are kept, the rest set to zero
(`evaluation.keep_top`), and the classifier is run again. Per method: the top-5 agreement
|top5(full) ∩ top5(kept)| / 5 (`evaluation.topk_agreement`; mean, standard error, bootstrap 95%
interval), the share of images whose top-1 class survives, the accuracy on the kept images and the
share of the mask's mass on the sign. Baselines: 30% of the pixels at random, a central disc, and the
sign itself (ground truth: pixels ranked by signed distance to the sign's outline, its centre first).
Ties in a mask (e.g. the zeros of Grad-CAM's positive part) are broken at random, not in raster order.

`vbp eval` adds this as one table (sign_keep_top.csv); alone:

    python -m vbp_rt.evaluation.signs --images 430 --out eval-signs
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from vbp_rt import methods as registry
from vbp_rt.data.signs import generate
from vbp_rt.dispatch import explain
from vbp_rt.evaluation import metrics as ev
from vbp_rt.evaluation.report import Table
from vbp_rt.files import atomic_write
from vbp_rt.methods import parse_methods
from vbp_rt.models import load_model, outputs, to_input

SEED = 2  # trainer.signs trains on seed 0 and validates on seed 1
TOP = 5
BOOTSTRAP = 2000


def ranked(mask: np.ndarray, rng) -> np.ndarray:
    """Ranks of the pixels of `mask` (higher = more relevant) with ties in random order."""
    flat = np.ravel(mask)
    order = np.lexsort((rng.random(flat.size), -flat))
    r = np.empty(flat.size, np.float64)
    r[order] = np.arange(flat.size, 0, -1)
    return r.reshape(mask.shape)


def sign_order(sign: np.ndarray) -> np.ndarray:
    """Signed distance to the sign's outline: inside positive (centre first), outside negative."""
    s = sign.astype(np.uint8)
    return cv2.distanceTransform(s, cv2.DIST_L2, 5) - cv2.distanceTransform(1 - s, cv2.DIST_L2, 5)


def mean_se_ci(values: np.ndarray, rng) -> tuple:
    v = np.asarray(values, np.float64)
    se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    boots = v[rng.integers(0, v.size, (BOOTSTRAP, v.size))].mean(axis=1)
    return float(v.mean()), se, float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def sign_table(net, specs: dict, count: int, seed: int = SEED, keep: float = 0.3, batch_size: int = 8,
               model_label: str = "sign", bar=None) -> Table:
    """The keep-top table for classifier `net` on `count` generated signs; `specs`: label -> (method, options)."""

    net.eval()
    if net.config.outputs < TOP:
        raise ValueError(f"the sign section needs a classifier with at least {TOP} outputs; "
                         f"{model_label} has {net.config.outputs}")
    if (net.config.in_channels, net.config.height, net.config.width) != (1, 125, 125):
        raise ValueError(f"the sign section needs a 1x125x125 classifier; {model_label} takes "
                         f"{net.config.in_channels}x{net.config.height}x{net.config.width}")
    images, labels, signs = generate(seed, count, masks=True)

    full = outputs(net, images, 2 * batch_size)
    pred = full.argmax(1)
    orders, failed = {}, {}
    for name, (method, options) in specs.items():
        try:  # options chosen for the steering model (e.g. gradcam:layer=9) may not fit the sign net
            orders[name] = np.concatenate([explain(net, to_input(images[s:s + batch_size], net.config), method, **options).mask.numpy()
                                           for s in range(0, count, batch_size)])
        except ValueError as e:
            orders[name], failed[name] = None, str(e)
        if bar is not None:
            bar.update()
    rng = np.random.default_rng(seed)
    orders["random 30% of pixels (baseline)"] = rng.random(images.shape)
    yy, xx = np.mgrid[0:images.shape[1], 0:images.shape[2]]
    centre = -np.hypot(yy - (images.shape[1] - 1) / 2, xx - (images.shape[2] - 1) / 2)
    orders["central disc (baseline)"] = np.broadcast_to(centre, images.shape)
    orders["the sign itself (ground truth)"] = np.stack([sign_order(s) for s in signs])
    cols = ["method", f"top-{TOP} agreement", "s.e.", "95% CI low", "95% CI high", "top-1 kept",
            "accuracy kept", "mask mass on sign", "constant masks"]
    t = Table("sign_keep_top", f"Sign classifier: keep the top {keep:.0%}, top-{TOP} agreement (Chen et al.)", cols)
    for name, m in orders.items():
        if m is None:
            t.rows.append([name] + [float("nan")] * (len(cols) - 2) + [0])
            continue
        tie = np.random.default_rng([seed, *name.encode()])  # per method, wherever it stands in the table
        kept = np.stack([ev.keep_top(im, ranked(mm, tie), keep) for im, mm in zip(images, m)])
        out = outputs(net, kept, 2 * batch_size)
        agree = ev.topk_agreement(full, out, TOP)
        mean, se, lo, hi = mean_se_ci(agree, np.random.default_rng(0))
        flat = m.reshape(len(m), -1)
        constant = int((flat.max(1) == flat.min(1)).sum())
        mass = float(np.nanmean(ev.mass_share(m, signs))) if name in specs else float("nan")
        t.rows.append([name, mean, se, lo, hi, float((out.argmax(1) == pred).mean()),
                       float((out.argmax(1) == labels).mean()), mass, constant])
    t.note = (f"{count} synthetic signs (`data.signs.generate({seed}, {count})`, a seed never used for training) and "
              f"classifier `{model_label}`; accuracy on the full images {float((pred == labels).mean()):.3f}. Each "
              f"method explains the predicted class; the {keep:.0%} most relevant pixels of its mask are kept and the "
              f"rest set to 0, then the top-{TOP} classes of the kept image are compared with those of the full image: "
              f"agreement = |top-{TOP} ∩ top-{TOP}| / {TOP}, averaged over images (Chen et al.: 35% for their "
              "decomposition, 17% for Grad-CAM, VGG-19 on Pascal VOC). s.e.: standard error; CI: bootstrap over "
              "images. Top-1 kept: share of images whose predicted class is unchanged; accuracy kept: against the "
              "true label. Mask mass on sign: share of the mask's total on the sign's pixels (the sign covers "
              f"{float(signs.mean()):.0%} of the frame on average: a uniform mask's share). Ties in a mask are broken "
              "at random (constant masks: how many masks were constant, so the kept pixels were random). Baselines: "
              "random pixels; a disc in the middle of the frame (a smooth mask that knows nothing of the image); "
              "the sign itself, pixels ranked by signed distance to its outline (its centre first)."
              + "".join(f" {name} failed on this model: {msg}." for name, msg in failed.items()))
    return t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vbp_rt.evaluation.signs",
                                description="Only the sign section of `vbp eval`: keep-top-30% top-5 agreement of "
                                            "every method on the sign classifier; writes OUT/sign_keep_top.csv "
                                            "and .md.")
    p.add_argument("--model", default="sign", help="classifier: shipped name or checkpoint (default sign)")
    p.add_argument("--images", type=int, default=430, help="generated signs (default 430, 10 per class)")
    p.add_argument("--seed", type=int, default=SEED, help=f"generator seed (default {SEED}, never used for training)")
    p.add_argument("--keep", type=float, default=0.3, help="fraction of pixels kept (default 0.3)")
    p.add_argument("--methods", help="as in vbp eval (default: every registered method)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default="eval-signs", help="output folder (default eval-signs)")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    specs = parse_methods(a.methods) if a.methods else {m: (m, {}) for m in registry.available()}
    t = sign_table(load_model(a.model), specs, a.images, a.seed, a.keep, model_label=a.model)
    out = Path(a.out)
    atomic_write(out / f"{t.name}.csv", t.csv_text().encode())
    atomic_write(out / f"{t.name}.md", t.markdown().encode())
    print(t.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())

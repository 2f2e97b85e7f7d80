"""Turn a training checkpoint into a shipped model, and measure a model on a drive with ground truth.

    python -m vbp_rt.trainer.ship runs/hvf/best.pt --to vbp_rt/weights/nethvf.pt --eval-store eval.h5

The shipped file is a half-precision `vbp_rt.models` checkpoint (weights, model config, and the run's
settings and metric history, without optimizer state). The evaluation reports the RMSE against the
RMSE of always predicting 0 and the spread of the labels, the mean error (bias), and where the VBP masks put
their mass: the share on ground-truth lane-marking pixels and on distractor pixels, next to the share
of the image those pixels cover (what a uniform mask would score).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from vbp_rt.data.store import StoreReader
from vbp_rt.trainer.steering_eval import metrics as steering_metrics

from vbp_rt.dispatch import explain
from vbp_rt.evaluation.metrics import area_share, mass_share
from vbp_rt.models import (
    load_model,
    model_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
    to_input,
)

KEPT = ("train_config", "history", "best_val_rmse", "epoch", "step")


def export(src, dst, **extra) -> Path:
    """Write `src` (a training checkpoint) as a half-precision model checkpoint at `dst` (atomic)."""
    ckpt = read_checkpoint(src)
    model = model_from_checkpoint(ckpt)
    save_checkpoint(dst, model, half=True, **{k: ckpt[k] for k in KEPT if k in ckpt}, **extra)
    return Path(dst)


def evaluate(model, store, batch_size: int = 16, split: str = "all") -> dict:
    """RMSE and VBP mask shares of `model` (name, path or module) on a store with lane/distractor masks."""
    model = load_model(model) if not isinstance(model, torch.nn.Module) else model.eval()
    cfg = model.config
    with StoreReader(store) as r:
        if cfg.view not in r.views or r.lane_mask(cfg.view) is None:
            raise ValueError(f"store {store} has no view {cfg.view!r} with lane/distractor masks "
                             f"(write one with `vbp data synth`)")
        s = r.split(split)
        images, lanes, dists = r.images(cfg.view), r.lane_mask(cfg.view), r.distractor_mask(cfg.view)
        preds, shares = [], {"lane": [], "distractor": [], "lane_area": [], "distractor_area": []}
        for start in tqdm(range(s.start, s.stop, batch_size), desc=f"evaluate {cfg.arch}", unit="batch"):
            stop = min(start + batch_size, s.stop)
            e = explain(model, to_input(images[start:stop], cfg), "vbp")
            preds.append(e.prediction[:, 0].double().numpy())
            mask, lane, dist = e.mask.numpy(), lanes[start:stop], dists[start:stop]
            shares["lane"].append(mass_share(mask, lane))
            shares["distractor"].append(mass_share(mask, dist))
            shares["lane_area"].append(area_share(lane))
            shares["distractor_area"].append(area_share(dist))
        angle = r.angle[s].astype(np.float64)
    pred = np.concatenate(preds)
    m = steering_metrics(pred, angle)
    out = {"frames": m["frames"], "rmse": m["rmse"], "zero_rmse": m["zero_rmse"], "std_angle": float(angle.std()),
           "rmse_vs_zero": m["ratio"], "bias": m["bias"]}
    for k, v in shares.items():
        out[f"mask_on_{k}" if not k.endswith("area") else k] = float(np.nanmean(np.concatenate(v)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vbp_rt.trainer.ship", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="training checkpoint (RUN_DIR/best.pt) or any model checkpoint")
    p.add_argument("--to", help="write the half-precision shipped checkpoint here")
    p.add_argument("--eval-store", nargs="+", help="stores with ground-truth masks (`vbp data synth`) to measure on; "
                                                   "with several, each is reported and then their mean and range")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    model = args.checkpoint
    if args.to:
        model = export(args.checkpoint, args.to)
        print(f"wrote {model} ({model.stat().st_size / 1e6:.1f} MB)")
    if args.eval_store:
        results = {store: evaluate(model, store, args.batch_size) for store in args.eval_store}
        if len(results) > 1:
            keys = [k for k, v in next(iter(results.values())).items() if isinstance(v, float)]
            results["summary"] = {k: {"mean": float(np.mean([r[k] for r in results.values()])),
                                      "min": min(r[k] for r in results.values()),
                                      "max": max(r[k] for r in results.values())} for k in keys}
        print(json.dumps(results if len(args.eval_store) > 1 else results[args.eval_store[0]], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the Table 2 traffic-sign classifier on synthetic signs (data.signs), as shipped in vbp_rt/weights/sign.pt.

    python -m vbp_rt.trainer.signs --out vbp_rt/weights/sign.pt            # the shipped net (see --help)

SGD with momentum and cross-entropy on the logits (the NLL of the paper's LogSoftmax), on a stream of
freshly generated signs: batch b holds images b*B .. (b+1)*B-1 of the training seed, so no image is
seen twice; the images and the initialization depend only on the seed (a rerun on one thread
should give the same net; bit-exact reruns were not checked). The learning rate warms up linearly,
then follows a cosine to zero. Accuracy is measured on images of a validation seed (the evaluation,
`vbp eval`, uses yet another seed). The model is written with the project's checkpoint writer in half
precision, with the settings, history and validation accuracy of the run (measured after the fp16
round trip).
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from vbp_rt.data.signs import generate

from vbp_rt.models import (
    build,
    checkpoint_dict,
    model_from_checkpoint,
    outputs,
    save_checkpoint,
    to_input,
)

TRAIN_SEED, VAL_SEED = 0, 1  # vbp eval's sign section uses seed 2 (vbp_rt.evaluation.signs.SEED); tests use 4


def accuracy(model, seed: int, count: int) -> float:
    """Top-1 accuracy of `model` on images 0..count-1 of `seed`."""
    images, labels = generate(seed, count)
    return float((outputs(model, images, 64).argmax(1) == labels).mean())


def train(out, samples: int = 32000, batch_size: int = 16, lr: float = 0.015, momentum: float = 0.9,
          weight_decay: float = 5e-4, warmup: int = 100, seed: int = TRAIN_SEED, val_seed: int = VAL_SEED,
          val_images: int = 430, evals: int = 8, log=print) -> dict:
    """Train, write the checkpoint to `out` (half precision) and return its metrics."""
    torch.manual_seed(seed)
    model = build("sign")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    steps = math.ceil(samples / batch_size)
    val_images_, val_labels = generate(val_seed, val_images)
    history, t_cpu, t0 = [], time.process_time(), time.time()
    check = {int(round(steps * (k + 1) / evals)) for k in range(evals)}
    run_loss = []
    for step in range(steps):
        rate = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = rate
        images, labels = generate(seed, batch_size, start=step * batch_size)
        model.train()
        loss = F.cross_entropy(model(to_input(images, model.config)), torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        run_loss.append(loss.item())
        if step + 1 in check:
            acc = float((outputs(model, val_images_, 64).argmax(1) == val_labels).mean())
            history.append({"step": step + 1, "samples": (step + 1) * batch_size,
                            "train_loss": float(np.mean(run_loss)), "val_accuracy": acc,
                            "cpu_s": time.process_time() - t_cpu})
            log(f"step {step + 1}/{steps}: train loss {np.mean(run_loss):.3f}, val accuracy {acc:.3f} "
                f"({time.process_time() - t_cpu:.0f} CPU-s, {time.time() - t0:.0f} s)")
            run_loss = []
    settings = dict(samples=samples, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    warmup=warmup, seed=seed, val_seed=val_seed, val_images=val_images)
    shipped = model_from_checkpoint(checkpoint_dict(model.eval(), half=True))  # the weights as written
    acc = float((outputs(shipped, val_images_, 64).argmax(1) == val_labels).mean())
    save_checkpoint(out, shipped, half=True, train_config=settings, history=history,
                    cpu_seconds=time.process_time() - t_cpu, val_accuracy=acc)
    log(f"wrote {out}: validation accuracy (seed {val_seed}, {val_images} images, fp16 weights) {acc:.3f}; "
        f"{time.process_time() - t_cpu:.0f} CPU-s")
    return {"val_accuracy": acc, "history": history, "cpu_seconds": time.process_time() - t_cpu}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vbp_rt.trainer.signs",
        description="Train the paper's Table 2 sign classifier (125x125 gray, 43 classes) on synthetic signs "
                    "(data.signs) with SGD + cross-entropy, and write it as a half-precision vbp-rt checkpoint.",
        epilog="the shipped net: python -m vbp_rt.trainer.signs --out vbp_rt/weights/sign.pt (defaults; one thread)")
    p.add_argument("--out", required=True, help="checkpoint to write (atomically)")
    p.add_argument("--samples", type=int, default=32000, help="training images, each generated once (default 32000)")
    p.add_argument("--batch-size", type=int, default=16, help="default 16")
    p.add_argument("--lr", type=float, default=0.015, help="peak learning rate (default 0.015; cosine to 0)")
    p.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="default 5e-4")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps (default 100)")
    p.add_argument("--seed", type=int, default=TRAIN_SEED,
                   help=f"training image stream and init (default {TRAIN_SEED})")
    p.add_argument("--val-seed", type=int, default=VAL_SEED, help=f"validation images (default {VAL_SEED})")
    p.add_argument("--val-images", type=int, default=430, help="default 430 (10 per class)")
    p.add_argument("--threads", type=int, default=1, help="torch/OpenCV threads (default 1)")
    a = p.parse_args(argv)
    if a.samples < 1 or a.batch_size < 1 or a.val_images < 1:
        p.error("--samples, --batch-size and --val-images must be positive")
    import cv2
    cv2.setNumThreads(a.threads)
    torch.set_num_threads(a.threads)
    train(a.out, a.samples, a.batch_size, a.lr, a.momentum, a.weight_decay, a.warmup, a.seed, a.val_seed,
          a.val_images)
    return 0


if __name__ == "__main__":
    sys.exit(main())

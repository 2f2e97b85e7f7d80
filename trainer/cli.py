"""`vbp train STORE.h5 --arch netsvf|nethvf --out RUN_DIR` and `vbp train --resume RUN_DIR`."""
from __future__ import annotations

import argparse
import json
import os

DEFAULTS = dict(epochs=32, batch_size=32, lr=5e-3, momentum=0.9, device="auto", workers=2, probes=8, seed=0,
                height=135, checkpoint_minutes=10.0, flip=0.0, bf16=False, optimizer="sgd", warmup=0.0,
                label_balance=0.0, freeze_features=False, keep_epochs=False, frame_step=1)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train NetSVF/NetHVF on an HDF5 store (or resume a run)",
        description="Train a steering network on a store written by `vbp data`: SGD with momentum (or Adam), MSE "
                    "on the steering wheel angle in degrees, validation RMSE each epoch. RUN_DIR receives config.json, "
                    "last.pt, best.pt (by validation RMSE) and runlog.h5 (probe-frame VBP masks and metrics, "
                    "readable while training runs). Several processes: launch the same command with "
                    "`torchrun --nproc_per_node N -m vbp_rt.cli train ...`.",
        epilog="example: vbp train drive.h5 --arch netsvf --out runs/svf --epochs 8; "
               "after a kill: vbp train --resume runs/svf")
    p.add_argument("store", nargs="*", help="training stores (.h5 from `vbp data`); the train split of each trains")
    p.add_argument("--arch", choices=["netsvf", "nethvf"], help="network: netsvf (640x135 view 'svf') or "
                                                                "nethvf (351x135 view 'hvf')")
    p.add_argument("--out", help="run directory to create (a folder holding a run is refused: see --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="train into --out even if it holds a run; the old run "
                                                            "is moved aside to OUT.old-DATE-TIME, not deleted")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt "
                                                       "(--epochs, --lr, --flip, --bf16, --device, --workers may be changed)")
    p.add_argument("--epochs", type=int, help=f"epochs to train (default {DEFAULTS['epochs']}, as in the paper)")
    p.add_argument("--batch-size", type=int, help=f"global batch size, split among processes "
                                                  f"(default {DEFAULTS['batch_size']})")
    p.add_argument("--lr", type=float, help=f"learning rate, for the standardized angle (default {DEFAULTS['lr']}; "
                                            "Adam wants about 1e-3)")
    p.add_argument("--momentum", type=float, help=f"SGD momentum (default {DEFAULTS['momentum']})")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="sgd: SGD with --momentum (default); adam: Adam with "
                                                                "torch's defaults besides --lr")
    p.add_argument("--warmup", type=float, metavar="EPOCHS", help="raise the learning rate linearly from ~0 to --lr "
                   "over this many (fractional) epochs of steps, e.g. 0.2 (default 0: none); helps a network "
                   "without BatchNorm start")
    p.add_argument("--val-store", help="validate on every frame of this store instead of the test split")
    p.add_argument("--val", nargs="+", metavar="DRIVE", help="validate on every frame of several drives, each reported "
                   "on its own (best.pt by their equally weighted RMSE): stores, or seeds such as 201-204 for "
                   "synthetic drives of --val-frames frames written to --drives-dir")
    p.add_argument("--val-frames", type=int, default=600, help="frames per synthetic validation drive (default 600)")
    p.add_argument("--drives-dir", default="drives", help="folder where synthetic drives named by seed are written "
                                                          "and reused (default ./drives)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present, else CPU")
    p.add_argument("--workers", type=int, help=f"background data-loading processes (default {DEFAULTS['workers']};"
                                               " 0 loads in the training process)")
    p.add_argument("--snapshots", help="fractional epochs at which to store probe masks, besides every epoch end "
                                       "(default 0.1,0.5,1,4,16,32; include 0 for the untrained network)")
    p.add_argument("--probes", type=int, help=f"probe frames from the validation frames (default {DEFAULTS['probes']})")
    p.add_argument("--seed", type=int, help="seed of the weights and of the frame order (default 0)")
    p.add_argument("--height", type=int, help="network input height; must match the store's views (default 135)")
    p.add_argument("--net", metavar="JSON", help="network config overrides, e.g. '{\"channels\": [8, 8, 16, 16], "
                                                 "\"fc\": [64]}' for a small experiment")
    p.add_argument("--checkpoint-minutes", type=float, help="also write last.pt mid-epoch this often (default 10)")
    p.add_argument("--flip", type=float, help="probability of mirroring a training frame left-right with its angle "
                                              "negated (default 0; 0.5 balances left and right curves)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="run the training forward pass under bfloat16 autocast: about twice the images/s on CPUs "
                        "with AMX or AVX-512 BF16 (validation stays float32; default off)")
    p.add_argument("--init", metavar="MODEL", help="start from this model's weights (a shipped name such as netsvf, or "
                                                   "a checkpoint of the same network) instead of random ones")
    p.add_argument("--label-balance", type=float, metavar="ALPHA",
                   help="weigh each frame's squared error by (share of training frames in its 5-degree |angle| bin)"
                        " ** -ALPHA, normalised to mean 1 and capped at 10, so sharp curves count against the many "
                        "straight frames (default 0: plain MSE; 0.5: square-root inverse frequency)")
    p.add_argument("--freeze-features", action="store_true", default=None,
                   help="train the head (the fully connected layers) only, on the conv layers of --init MODEL: they, "
                        "their BatchNorm statistics and so every VBP mask stay as they are; their outputs are "
                        "computed once per frame and orientation and kept in memory, so epochs after the first "
                        "two cost seconds to minutes (default off)")
    p.add_argument("--lr-drop", action="append", metavar="EPOCH:LR",
                   help="from EPOCH (1-based) on, train at LR, e.g. --lr-drop 13:1e-4 for a final low rate; may be "
                        "repeated (default: --lr throughout)")
    p.add_argument("--keep-epochs", action="store_true", default=None,
                   help="also write each epoch's weights to RUN_DIR/epochN.pt (model checkpoints for `vbp train-eval` "
                        "and selection by epoch; default: last.pt and best.pt only)")
    p.add_argument("--frame-step", type=int, metavar="N",
                   help="train on every Nth frame of each training drive: at 20 frames/s neighbouring frames are "
                        "near duplicates, so an epoch of N=3 sees every road in a third of the time (default 1)")
    p.add_argument("--threads", type=int, help="torch CPU threads per process (default: torch's choice)")
    p.set_defaults(func=run)


def _snapshots(text: str) -> tuple:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--snapshots expects comma-separated epochs like 0.1,0.5,1, got {text!r}") from None


def _lr_drop(text: str) -> list:
    try:
        epoch, lr = text.split(":")
        return [int(epoch), float(lr)]
    except ValueError:
        raise ValueError(f"--lr-drop expects EPOCH:LR like 13:1e-4, got {text!r}") from None


def run(args) -> int:
    import torch

    from . import drives
    from .train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resume:
        fixed = [o for o in ("store", "arch", "out", "batch_size", "momentum", "val_store", "val", "snapshots",
                             "probes", "seed", "height", "net", "checkpoint_minutes", "init", "optimizer", "warmup",
                             "label_balance", "freeze_features", "lr_drop", "keep_epochs", "frame_step")
                 if getattr(args, o) not in (None, [])]
        if args.overwrite:
            fixed.append("overwrite")
        if fixed:
            raise ValueError(f"--resume continues a run with its own settings; do not give "
                             f"{', '.join('--' + o.replace('_', '-') if o != 'store' else 'STORE' for o in fixed)}")
        result = train(resume_dir=args.resume, epochs=args.epochs, lr=args.lr, device=args.device,
                       workers=args.workers, flip=args.flip, bf16=args.bf16)
    else:
        if not (args.store and args.arch and args.out):
            raise ValueError("vbp train needs STORE, --arch and --out (or --resume RUN_DIR)")
        options = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
        if args.optimizer == "adam" and args.momentum is not None:
            raise ValueError("--momentum is SGD's; Adam keeps torch's default betas "
                             "(give --optimizer sgd or drop --momentum)")
        if args.init:
            options["init"] = args.init
        if args.val_store and args.val:
            raise ValueError("give --val or --val-store, not both")
        if args.val_store:
            options["val_store"] = args.val_store
        if args.val:
            if args.val_frames < 1:
                raise ValueError(f"--val-frames must be positive, got {args.val_frames}")
            options["val"] = drives.resolve(args.val, args.val_frames, args.drives_dir)
        if args.snapshots is not None:
            options["snapshots"] = _snapshots(args.snapshots)
        if args.lr_drop:
            options["lr_drops"] = [_lr_drop(text) for text in args.lr_drop]
        if args.net:
            try:
                options["net"] = json.loads(args.net)
            except json.JSONDecodeError as e:
                raise ValueError(f"--net expects a JSON object, got {args.net!r} ({e})") from None
        store = args.store[0] if len(args.store) == 1 else args.store
        result = train(TrainConfig(store=store, arch=args.arch, out=args.out, **options),
                       overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":
        print(f"best validation RMSE {result['best_val_rmse']:.3f} deg")
    return 0

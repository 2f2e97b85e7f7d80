"""The training loop: NetSVF/NetHVF on an HDF5 store, SGD with momentum or Adam, MSE of the steering angle.

The network learns standardized angles, (angle - mean) / std of the training split, so one learning
rate suits the convolutions and the head whatever the spread of the angles; every checkpoint holds the
network with that affine map folded into its last layer, i.e. a plain model predicting degrees.

A run directory holds config.json, last.pt, best.pt (by validation RMSE) and runlog.h5 (see
trainer.runlog). The order of training frames in epoch e is a permutation drawn from (seed, e), so a
checkpoint's position (epoch, batch) is enough to continue exactly where it was written; the learning
rate of a step follows from the step count (linear warm-up, `warmup_factor`), which the checkpoint holds too.
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from vbp_rt.data.store import StoreReader

from vbp_rt.dispatch import explain
from vbp_rt.models import ConvNet, build, read_checkpoint, resolve_model_path, save_checkpoint

from . import distributed
from .balance import LabelBalance
from .drives import drive_name
from .feature_cache import FeatureCache
from .runlog import RunLogReader, RunLogWriter

ARCHS = ("netsvf", "nethvf")
OPTIMIZERS = ("sgd", "adam")
RUN_FILES = ("config.json", "last.pt", "best.pt", "runlog.h5")


@dataclass
class TrainConfig:
    """Everything that defines a run (written to RUN_DIR/config.json and into every checkpoint)."""

    store: str | list  # one training store, or several (their train splits are concatenated)
    arch: str
    out: str
    epochs: int = 32
    batch_size: int = 32
    lr: float = 5e-3
    momentum: float = 0.9
    val_store: str | None = None
    device: str = "auto"
    workers: int = 2
    snapshots: tuple = (0.1, 0.5, 1, 4, 16, 32)
    probes: int = 8
    seed: int = 0
    height: int = 135
    net: dict = field(default_factory=dict)  # NetConfig overrides (channels, fc, ...)
    checkpoint_minutes: float = 10.0  # also write last.pt mid-epoch this often
    flip: float = 0.0  # probability of mirroring a training frame left-right (its angle negated)
    val: list = field(default_factory=list)  # validation stores (every frame of each), instead of val_store
    init: str | None = None  # start from this model's weights (shipped name or checkpoint) instead of random ones
    bf16: bool = False  # training forward pass under bfloat16 autocast (validation and snapshots stay float32)
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adam" (torch's defaults besides lr; momentum unused)
    warmup: float = 0.0  # epochs (fractional) over which the learning rate rises linearly from ~0 to lr
    label_balance: float = 0.0  # weigh each frame's squared error by its |label| bin's share ** -label_balance
    freeze_features: bool = False  # train the head only; the conv layers (and every VBP mask) stay as in `init`
    lr_drops: list = field(default_factory=list)  # [[epoch, lr], ...]: from that (1-based) epoch on, train at lr
    keep_epochs: bool = False  # also write each epoch's weights to RUN_DIR/epochN.pt
    frame_step: int = 1  # train on every frame_step-th frame of each store's train split

    def lr_at(self, epoch: int) -> float:
        """The learning rate of (0-based) epoch `epoch`: lr, or the last drop that has begun."""
        rate = self.lr
        for start, value in sorted(self.lr_drops):
            if epoch + 1 >= start:
                rate = value
        return rate

    @property
    def stores(self) -> list:
        return [self.store] if isinstance(self.store, str) else list(self.store)

    def validation_sets(self) -> list:
        """(store, split) of every validation drive: --val stores, --val-store, or the test split of each
        training store."""
        if self.val or self.val_store:
            return [(v, "all") for v in (self.val or [self.val_store])]
        return [(s, "test") for s in self.stores]

    def __post_init__(self):
        if not isinstance(self.store, str):
            self.store = [str(s) for s in self.store]
            if not self.store:
                raise ValueError("no training store given")
        self.val = [str(v) for v in self.val]
        if self.val and self.val_store:
            raise ValueError("give the validation drives either as val or as val_store, not both")
        self.snapshots = tuple(float(s) for s in self.snapshots)
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; vbp train knows {', '.join(ARCHS)}")
        for name in ("epochs", "batch_size", "probes", "frame_step"):
            if getattr(self, name) < (0 if name == "probes" else 1):
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not 0 <= self.flip <= 1:
            raise ValueError(f"--flip is a probability in [0, 1], got {self.flip}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; vbp train knows {', '.join(OPTIMIZERS)}")
        if not (math.isfinite(self.warmup) and self.warmup >= 0):
            raise ValueError(f"--warmup is a number of epochs >= 0, got {self.warmup}")
        if not (math.isfinite(self.label_balance) and 0 <= self.label_balance <= 1):
            raise ValueError(f"--label-balance is an exponent in [0, 1] (0.5: square-root inverse frequency), "
                             f"got {self.label_balance}")
        self.lr_drops = [[int(e), float(v)] for e, v in self.lr_drops]
        if any(e < 1 or not (math.isfinite(v) and v > 0) for e, v in self.lr_drops):
            raise ValueError(f"--lr-drop takes EPOCH:LR with EPOCH >= 1 and LR > 0, got {self.lr_drops}")
        if self.freeze_features and not self.init:
            raise ValueError("--freeze-features trains the head on the conv layers of --init MODEL; without --init "
                             "the conv layers would stay random")
        if self.lr <= 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"need lr > 0 and 0 <= momentum < 1, got lr={self.lr}, momentum={self.momentum}")


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """SGD with cfg.momentum, or Adam with torch's defaults (betas, eps, no weight decay), at cfg.lr."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)


def warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """Optimizer steps of a warm-up of `warmup_epochs` (fractional) epochs; 0 for none."""
    return math.ceil(warmup_epochs * steps_per_epoch - 1e-9) if warmup_epochs > 0 else 0


def warmup_factor(step: int, steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) as a share of the full rate: (step + 1) / steps
    during a warm-up of `steps` steps (the first step at 1/steps, step steps - 1 at the full rate), then 1."""
    return 1.0 if step + 1 >= steps else (step + 1) / steps


def store_offsets(paths) -> np.ndarray:
    """Where each store's frames start when several stores are indexed as one: (len(paths) + 1,) int64."""
    lengths = []
    for path in paths:
        with StoreReader(path) as r:
            lengths.append(len(r))
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


class FrameDataset(Dataset):
    """Batches of (uint8 images (B,H,W), angles (B,)) read by index lists from one store or from several
    indexed as one (frame i of store k is index offsets[k] + i).

    The HDF5 files are opened lazily in the process that reads (each DataLoader worker has its own).
    """

    def __init__(self, paths, view: str):
        self.paths = [str(paths)] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths]
        self.view = view
        self.offsets = store_offsets(self.paths)
        self._readers = None

    def __getstate__(self):
        return {**self.__dict__, "_readers": None}

    def angles(self, indices) -> np.ndarray:
        """The labels of frames (float64), without reading their images."""
        idx = np.asarray(indices, np.int64)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty(len(idx))
        for k in np.unique(which):
            with StoreReader(self.paths[k]) as r:
                out[which == k] = r.angle[:][idx[which == k] - self.offsets[k]]
        return out

    def __getitem__(self, indices):
        if self._readers is None:
            self._readers = [StoreReader(p) for p in self.paths]
        idx = np.asarray(indices, np.int64)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        images = np.empty((len(idx),) + self._readers[0].images(self.view).shape[1:], np.uint8)
        angles = np.empty(len(idx), np.float32)
        for k in np.unique(which):
            r, at = self._readers[k], np.flatnonzero(which == k)
            local = idx[at] - self.offsets[k]
            order = np.argsort(local)
            images[at[order]] = r.images(self.view)[local[order]]
            angles[at] = r.angle[local]
        return torch.from_numpy(images), torch.from_numpy(angles)


def loader(dataset: FrameDataset, batches: list, workers: int) -> DataLoader:
    """Background loading: `workers` processes read the batches ahead of the training step."""
    return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=workers,
                      prefetch_factor=4 if workers else None, pin_memory=torch.cuda.is_available())


def cached_batches(cache: FeatureCache | None, data: FrameDataset, batches: list, workers: int):
    """(images, angles) per batch; (None, angles) once `cache` holds the conv output of every frame."""
    if cache is not None and cache.complete:
        return iter([(None, torch.from_numpy(cache.labels[cache.rows(b)])) for b in batches])
    return iter(loader(data, batches, workers))


def mirrored(p: float, seed: int, epoch: int, batch: int, n: int) -> torch.Tensor:
    """Which of a batch's n frames `mirror` flips: (n,) bool, drawn from (seed, epoch, batch position)."""
    if p <= 0:
        return torch.zeros(n, dtype=torch.bool)
    return torch.from_numpy(np.random.default_rng([seed, epoch, batch, 17]).random(n) < p)


def mirror(images: torch.Tensor, angles: torch.Tensor, p: float, seed: int, epoch: int, batch: int):
    """Mirror each frame left-right with probability p and negate its angle (a road curving right seen in
    a mirror curves left). Drawn from (seed, epoch, batch position): a resumed run flips the same frames."""
    if p <= 0:
        return images, angles
    return flip_frames(images, angles, mirrored(p, seed, epoch, batch, len(angles)))


def flip_frames(images: torch.Tensor | None, angles: torch.Tensor, flip: torch.Tensor):
    """Mirror the frames where `flip` (n,) is set and negate their angles; `images` None (the feature cache
    holds both orientations) negates the angles alone."""
    if images is not None:
        images = torch.where(flip[:, None, None], images.flip(-1), images)
    return images, torch.where(flip, -angles, angles)


def epoch_batches(indices: np.ndarray, batch_size: int, seed: int, epoch: int) -> list:
    """The epoch's global batches: a permutation drawn from (seed, epoch), complete batches only."""
    perm = np.random.default_rng([seed, epoch]).permutation(indices)
    n = len(perm) // batch_size
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(n)]


def check_stores(paths, split: str, view: str, height: int, width: int, need: int, step: int = 1) -> np.ndarray:
    """Indices of `split` in several stores indexed as one (FrameDataset), each checked by check_store;
    every `step`-th frame of each store's split."""
    if isinstance(paths, (str, os.PathLike)):
        return check_store(paths, split, view, height, width, need, step)
    offsets = store_offsets(paths)
    idx = np.concatenate([check_store(p, split, view, height, width, 1, step) + o for p, o in zip(paths, offsets)])
    if len(idx) < need:
        raise ValueError(f"the {split} splits of {len(paths)} stores have {len(idx)} frames; need at least {need}")
    return idx


def check_store(path, split: str, view: str, height: int, width: int, need: int, step: int = 1) -> np.ndarray:
    """Indices of `split` in a store (every `step`-th), after checking the view size, the split size and
    the labels."""
    with StoreReader(path) as r:
        if view not in r.views:
            raise ValueError(f"store {path} has no view {view!r} (it has {', '.join(r.views) or 'none'}); "
                             f"write one with `vbp data ... --views {view}`")
        v = r.view(view)
        if (v.height, v.width) != (height, width):
            raise ValueError(f"store {path}: view {view!r} is {v.width}x{v.height}, the network expects "
                             f"{width}x{height} (width x height; set --height to match the store's views)")
        s = r.split(split)
        idx = np.arange(s.start, s.stop, step)
        if len(idx) < need:
            raise ValueError(f"store {path}: the {split} split has {len(idx)} frames of {len(r)}"
                             f"{f' taking every {step}th' if step > 1 else ''}; "
                             f"need at least {need}")
        bad = np.flatnonzero(~np.isfinite(r.angle[idx]))
        if len(bad):
            raise ValueError(f"store {path}: {len(bad)} NaN/inf steering angles in the {split} split "
                             f"(first at frame {idx[bad[0]]}); expected finite angles in degrees")
    return idx


def probe_frames(data: FrameDataset, indices: np.ndarray, count: int) -> dict:
    """Up to `count` frames spread evenly over the validation frames (indices into `data`)."""
    pick = indices[np.unique(np.linspace(0, len(indices) - 1, count).round().astype(int))]
    images, angles = data[pick]
    return {"image": images.numpy(), "angle": angles.numpy(), "index": pick}


def batch_on_device(images: torch.Tensor, model: ConvNet, device) -> torch.Tensor:
    """A uint8 image batch (N,H,W) from the loader -> the network's input (N,1,H,W) on `device`."""
    return images.to(device, non_blocking=True).unsqueeze(1).float() * model.config.input_scale


def _last_layer(model: ConvNet) -> str:
    return f"head.{len(model.head) - 1}"


def fold(model: ConvNet, target: dict) -> ConvNet:
    """A copy of `model` predicting degrees: angle = mean + std * output, absorbed by the last layer."""
    folded = copy.deepcopy(model)
    with torch.no_grad():
        folded.head[-1].weight.mul_(target["std"])
        folded.head[-1].bias.mul_(target["std"]).add_(target["mean"])
    return folded


def unfold(state_dict: dict, model: ConvNet, target: dict) -> dict:
    """The inverse of `fold` on a checkpoint's weights."""
    state, last = dict(state_dict), _last_layer(model)
    state[f"{last}.weight"] = state[f"{last}.weight"] / target["std"]
    state[f"{last}.bias"] = (state[f"{last}.bias"] - target["mean"]) / target["std"]
    return state


class Trainer:
    """One run: builds or restores the model, optimizer, data, run log, and trains to `cfg.epochs`."""

    def __init__(self, cfg: TrainConfig, ctx: distributed.Context, resume: dict | None = None):
        self.cfg, self.ctx = cfg, ctx
        self.run_dir = Path(cfg.out)
        torch.manual_seed(cfg.seed)
        overrides = dict(cfg.net)
        if "channels" in overrides:
            overrides.setdefault("strides", ())  # recomputed for the new depth
        self.model = build(cfg.arch, height=cfg.height, **overrides)
        view, height, width = self.model.config.view, self.model.config.height, self.model.config.width
        self.view = view
        if cfg.batch_size % ctx.world:
            raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {ctx.world} processes")
        self.train_idx = check_stores(cfg.store, "train", view, height, width, cfg.batch_size, cfg.frame_step)
        self.train_data = FrameDataset(cfg.stores, view)
        val_sets = cfg.validation_sets()
        self.val_data = FrameDataset([path for path, _ in val_sets], view)
        self.val_parts = [check_store(path, split, view, height, width, 1) + offset
                          for (path, split), offset in zip(val_sets, self.val_data.offsets)]
        self.val_idx = np.concatenate(self.val_parts)
        self.val_names = unique_names([drive_name(path) for path, _ in val_sets])
        angles = self.train_data.angles(self.train_idx) if resume is None or cfg.label_balance > 0 else None
        self.balance = LabelBalance(angles, cfg.label_balance) if cfg.label_balance > 0 else None
        if resume is None:
            self.target = {"mean": float(angles.mean()), "std": float(angles.std()) or 1.0}
            if cfg.init:
                self.model.load_state_dict(initial_weights(cfg.init, self.model, self.target))
        else:
            self.target = dict(resume["target"])
            state = unfold(resume["state_dict"], self.model, self.target)
            last = _last_layer(self.model)
            state.update({f"{last}.{k}": v for k, v in resume.get("head", {}).items()})  # exact where saved
            self.model.load_state_dict(state)
        # channels-last convolutions are markedly faster on CPU (oneDNN)
        self.model.to(ctx.device, memory_format=torch.channels_last if ctx.device.type == "cpu" else None)
        self.cache = self.val_cache = None
        if cfg.freeze_features:  # the head alone trains, on cached conv outputs
            self.model.features.requires_grad_(False)
            self.cache = FeatureCache(self.model.encode, self.train_idx, self.train_data.angles(self.train_idx))
            self.val_cache = FeatureCache(self.model.encode, self.val_idx, self.val_data.angles(self.val_idx),
                                          mirrored=False)
        self.net = distributed.wrap(self.model.head if self.cache else self.model, ctx)
        self.opt = make_optimizer(cfg, self.net.parameters())
        self.steps_per_epoch = len(self.train_idx) // cfg.batch_size
        self.warmup_steps = warmup_steps(cfg.warmup, self.steps_per_epoch)
        self.pos = {"epoch": 0, "batch": 0, "step": 0, "loss_sum": 0.0, "loss_count": 0}
        self.best = math.inf
        self.history = []
        if resume is not None:
            self.opt.load_state_dict(resume["optimizer"])
            for group in self.opt.param_groups:  # --lr may change on resume
                group["lr"] = cfg.lr
            self.pos = dict(resume["position"])
            self.best = resume["best_val_rmse"]
            self.history = list(resume["history"])
        self.runlog = None
        if ctx.main:
            self.runlog = self._open_runlog(resume is not None)

    def train_mode(self) -> None:
        """Training mode, except a frozen conv stack: its BatchNorm keeps the statistics of `init`."""
        self.model.train()
        if self.cache is not None:
            self.model.features.eval()

    # -- bookkeeping -------------------------------------------------------------------------------
    def progress(self) -> float:
        return self.pos["epoch"] + self.pos["batch"] / self.steps_per_epoch

    def _open_runlog(self, resuming: bool) -> RunLogWriter:
        path = self.run_dir / "runlog.h5"
        keep, probe = None, None
        if resuming and path.exists():
            with RunLogReader(path) as old:
                keep, probe = old.rows_until(self.progress()), old.probe()
        if probe is None:
            probe = probe_frames(self.val_data, self.val_idx, self.cfg.probes)
        attrs = {"arch": self.cfg.arch, "view": self.view,
                 "store": ", ".join(str(Path(s).resolve()) for s in self.cfg.stores), "epochs": self.cfg.epochs}
        return RunLogWriter(path, attrs, probe, keep=keep, drives=self.val_names)

    def _checkpoint_extra(self, optimizer: bool = True) -> dict:
        extra = {"train_config": asdict(self.cfg), "target": self.target, "position": dict(self.pos),
                 "epoch": self.progress(), "step": self.pos["step"], "best_val_rmse": self.best,
                 "history": list(self.history), "metrics": self.history[-1] if self.history else {}}
        if optimizer:  # resumable: also the last layer as trained (unfolding degrees would round it)
            extra["optimizer"] = self.opt.state_dict()
            extra["head"] = {k: v.detach().cpu().clone() for k, v in self.model.head[-1].state_dict().items()}
        return extra

    def save(self, best: bool = False) -> None:
        if self.runlog is not None:  # the log reaches at least as far as the checkpoint
            self.runlog.flush()
        extra = self._checkpoint_extra()
        model = fold(self.model, self.target)
        save_checkpoint(self.run_dir / "last.pt", model, **extra)
        if best:
            save_checkpoint(self.run_dir / "best.pt", model, **extra)

    def degrees(self, output: torch.Tensor) -> torch.Tensor:
        return output * self.target["std"] + self.target["mean"]

    # -- evaluation --------------------------------------------------------------------------------
    def validate(self) -> tuple:
        """(aggregate RMSE, per-drive rows) on the validation drives (eval mode; shared among processes).

        Each row holds a drive's RMSE, the RMSE of always predicting 0 and the mean error (bias), in
        degrees. The aggregate weighs every drive equally: the root of the mean of the drives' mean
        squared errors (for one drive, its RMSE); best.pt is chosen on it."""
        distributed.sync_buffers(self.net, self.ctx)
        self.model.eval()
        bs = self.cfg.batch_size
        batches, part = [], []
        for k, idx in enumerate(self.val_parts):
            mine = idx[self.ctx.rank::self.ctx.world]
            batches += [mine[i:i + bs] for i in range(0, len(mine), bs)]
            part += [k] * len(range(0, len(mine), bs))
        sums = np.zeros((len(self.val_parts), 4))  # per drive: squared error, count, error, squared label
        with torch.no_grad():
            for k, frames, (images, angles) in zip(part, batches, cached_batches(self.val_cache, self.val_data, batches,
                                                                                  self.cfg.workers)):
                x = None if images is None else batch_on_device(images, self.model, self.ctx.device)
                if self.val_cache is None:
                    out = self.model(x)
                else:
                    out = self.model.head(self.val_cache(x, frames, torch.zeros(len(frames), dtype=torch.bool),
                                                         self.ctx.device))
                err = self.degrees(out)[:, 0].cpu().double() - angles.double()
                sums[k] += [float((err ** 2).sum()), len(err), float(err.sum()), float((angles.double() ** 2).sum())]
        self.train_mode()
        sums = np.asarray(distributed.all_sum(sums.ravel().tolist(), self.ctx)).reshape(sums.shape)
        rows = [{"drive": name, "rmse": math.sqrt(sq / n), "zero_rmse": math.sqrt(lab / n), "bias": float(e / n)}
                for name, (sq, n, e, lab) in zip(self.val_names, sums.tolist())]
        return float(math.sqrt(np.mean([r["rmse"] ** 2 for r in rows]))), rows

    def snapshot(self) -> None:
        """VBP masks and predictions of the probe frames, at the current fractional epoch (rank 0)."""
        if self.runlog is None:
            return
        probe = self.runlog.file["probe"]["image"][()]
        if len(probe):
            self.model.eval()
            x = batch_on_device(torch.from_numpy(probe), self.model, self.ctx.device)
            e = explain(self.model, x, "vbp")
            self.train_mode()
            masks = e.mask.cpu().numpy().astype(np.float16)
            preds = self.degrees(e.prediction)[:, 0].cpu().numpy()
        else:
            masks, preds = np.zeros((0,) + probe.shape[1:], np.float16), np.zeros(0, np.float32)
        self.runlog.snapshot(self.progress(), masks, preds)

    # -- training ----------------------------------------------------------------------------------
    def pending_snapshots(self) -> list:
        """Snapshot points still ahead of the current position (fractions and every epoch end)."""
        points = {float(e) for e in range(1, self.cfg.epochs + 1)} | set(self.cfg.snapshots)
        return sorted(p for p in points if p > self.progress() + 1e-9 and p <= self.cfg.epochs)

    def run(self) -> dict:
        cfg, ctx = self.cfg, self.ctx
        if self.progress() == 0 and 0.0 in cfg.snapshots:
            self.snapshot()
        pending = self.pending_snapshots()
        self.train_mode()
        last_save = time.monotonic()
        while self.pos["epoch"] < cfg.epochs:
            epoch = self.pos["epoch"]
            batches = epoch_batches(self.train_idx, cfg.batch_size, cfg.seed, epoch)[self.pos["batch"]:]
            mine = [b[ctx.rank::ctx.world] for b in batches]
            bar = tqdm(total=len(batches) * cfg.batch_size, unit="img", disable=not ctx.main, leave=False,
                       desc=f"epoch {epoch + 1}/{cfg.epochs}", dynamic_ncols=True)
            t0, wait = time.monotonic(), 0.0
            batches_in = cached_batches(self.cache, self.train_data, mine, cfg.workers)
            for frames in mine:
                t_ask = time.monotonic()
                images, angles = next(batches_in)
                wait += time.monotonic() - t_ask  # the model waiting for data
                flips = mirrored(cfg.flip, cfg.seed, epoch, self.pos["batch"], len(angles))
                images, angles = flip_frames(images, angles, flips)
                x = None if images is None else batch_on_device(images, self.model, ctx.device)
                y = (angles.to(ctx.device).unsqueeze(1) - self.target["mean"]) / self.target["std"]
                with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    out = self.net(x if self.cache is None else self.cache(x, frames, flips, ctx.device))
                squared = (out.float() - y) ** 2
                loss = squared.mean()  # reported: the plain MSE, weighted or not
                weighted = loss if self.balance is None else (self.balance(angles)[:, None] * squared).mean()
                self.opt.zero_grad(set_to_none=True)
                weighted.backward()
                for group in self.opt.param_groups:
                    group["lr"] = cfg.lr_at(epoch) * warmup_factor(self.pos["step"], self.warmup_steps)
                self.opt.step()
                value = distributed.all_sum([loss.item()], ctx)[0] / ctx.world * self.target["std"] ** 2
                if not math.isfinite(value):
                    raise ValueError(f"training diverged at epoch {self.progress():.3f} (loss {value}); "
                                     f"try a smaller --lr (now {cfg.lr_at(epoch)})")
                self.pos["batch"] += 1
                self.pos["step"] += 1
                self.pos["loss_sum"] += value
                self.pos["loss_count"] += 1
                bar.update(cfg.batch_size)
                bar.set_postfix(loss=f"{value:.3g}", wait=f"{100 * wait / (time.monotonic() - t0):.1f}%",
                                **({"cached": f"{100 * self.cache.share_filled:.0f}%"} if self.cache else {}))
                if self.runlog is not None:
                    self.runlog.steps([self.progress()], [value])
                while pending and pending[0] <= self.progress() + 1e-9 and pending[0] < epoch + 1:
                    self.snapshot()
                    pending.pop(0)
                if ctx.main and time.monotonic() - last_save > cfg.checkpoint_minutes * 60 \
                        and self.pos["batch"] < self.steps_per_epoch:
                    self.save()
                    last_save = time.monotonic()
            bar.close()
            seconds = time.monotonic() - t0
            train_loss = self.pos["loss_sum"] / max(self.pos["loss_count"], 1)
            self.pos.update(epoch=epoch + 1, batch=0, loss_sum=0.0, loss_count=0)
            val, drives = self.validate()
            lr = self.opt.param_groups[0]["lr"]
            improved = val < self.best
            self.best = min(self.best, val)
            self.history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_rmse": val, "lr": lr,
                                 "seconds": seconds, "images_per_second": len(batches) * cfg.batch_size / seconds,
                                 "data_wait_seconds": wait, "val_drives": drives})
            if ctx.main:
                self.runlog.metrics(epoch + 1, train_loss, val, lr)
                self.runlog.validation(epoch + 1, drives)
                while pending and pending[0] <= self.progress() + 1e-9:
                    self.snapshot()
                    pending.pop(0)
                self.save(best=improved)
                if cfg.keep_epochs:
                    save_checkpoint(self.run_dir / f"epoch{epoch + 1}.pt", fold(self.model, self.target),
                                    **self._checkpoint_extra(optimizer=False))
                last_save = time.monotonic()
                print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {train_loss:.4g} deg^2, val RMSE {val:.3f} deg"
                      f"{' (best)' if improved else ''}, {len(batches) * cfg.batch_size / seconds:.1f} img/s, "
                      f"{seconds:.0f} s of which {wait:.1f} s waiting for data", flush=True)
            distributed.barrier(ctx)
        return {"best_val_rmse": self.best, "history": self.history}

    def close(self) -> None:
        if self.runlog is not None:
            self.runlog.close()


def initial_weights(name_or_path, model: ConvNet, target: dict) -> dict:
    """The weights of a model (shipped name or checkpoint, e.g. half precision) for `model`, unfolded for
    `target`; a model of another network layout is an error naming both."""
    init = read_checkpoint(resolve_model_path(name_or_path))
    mine, theirs = asdict(model.config), dict(init.get("config", {}))
    differ = [k for k in mine if k in theirs and list(np.atleast_1d(theirs[k])) != list(np.atleast_1d(mine[k]))]
    if differ or not theirs:
        raise ValueError(f"--init {name_or_path} is not a {model.config.arch} of this layout ("
                         + ", ".join(f"{k} {theirs[k]!r} vs {mine[k]!r}" for k in differ) + ")")
    state = {k: v.float() if v.is_floating_point() else v for k, v in init["state_dict"].items()}
    return unfold(state, model, target)


def unique_names(names: list) -> list:
    """Names made unique by numbering repeats ("drive", "drive#2")."""
    seen, out = {}, []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def write_config(cfg: TrainConfig) -> None:
    path = Path(cfg.out) / "config.json"
    tmp = path.with_name(".config.json.tmp")
    tmp.write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    os.replace(tmp, path)


def preflight(cfg: TrainConfig) -> None:
    """Check the network against the stores (readable, views, sizes, labels) before anything is written."""
    overrides = dict(cfg.net)
    if "channels" in overrides:
        overrides.setdefault("strides", ())
    net = build(cfg.arch, height=cfg.height, **overrides).config
    check_stores(cfg.store, "train", net.view, net.height, net.width, cfg.batch_size)
    for path, split in cfg.validation_sets():
        check_store(path, split, net.view, net.height, net.width, 1)
    if cfg.init:
        resolve_model_path(cfg.init)


def claim_run_dir(out, overwrite: bool = False) -> None:
    """Refuse to train into a folder that holds a run, unless `overwrite`, which moves that run aside."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the run")
    held = [name for name in RUN_FILES if (out / name).exists()]
    if not any(name in held for name in ("last.pt", "best.pt")):
        return  # no run, or one stopped before its first checkpoint: nothing to lose
    if not overwrite:
        raise ValueError(f"{out} already holds a run ({', '.join(held)}); continue it with `vbp train --resume {out}`, "
                         f"train into a new --out, or pass --overwrite to move the old run aside")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = next(p for p in (out.with_name(f"{out.name}.old-{stamp}" + (f"-{i}" if i else "")) for i in range(1000))
                 if not p.exists())
    os.replace(out, aside)
    print(f"vbp train: moved the earlier run {out} to {aside}", file=sys.stderr)


def _check_resume_matches(run_dir: Path, tc: dict, ckpt: dict) -> None:
    """last.pt, config.json and runlog.h5 of a run folder must describe the same network."""
    arch = tc.get("arch")
    if ckpt.get("config", {}).get("arch") not in (None, arch):
        raise ValueError(f"{run_dir / 'last.pt'} holds a {ckpt['config']['arch']} network but its training settings "
                         f"say {arch}; it is not this run's checkpoint")
    config = run_dir / "config.json"
    if config.is_file():
        try:
            written = json.loads(config.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{config} is not readable JSON ({e}); it is written by `vbp train --out`") from None
        differ = [k for k in ("arch", "height", "net") if k in written and written[k] != tc.get(k)]
        if differ:
            raise ValueError(f"{run_dir / 'last.pt'} does not belong to this run: its "
                             + ", ".join(f"{k} {tc.get(k)!r}" for k in differ) + f" differ from {config} ("
                             + ", ".join(f"{k} {written[k]!r}" for k in differ) + "); nothing was changed")
    log = run_dir / "runlog.h5"
    if log.is_file():
        with RunLogReader(log) as r:
            logged = r.file.attrs.get("arch")
        if logged is not None and logged != arch:
            raise ValueError(f"{run_dir / 'last.pt'} holds a {arch} run but {log} records a {logged} run; "
                             f"nothing was changed")


def load_resume(run_dir) -> tuple:
    """(TrainConfig, checkpoint) of RUN_DIR/last.pt, with clear errors for a missing or foreign file."""
    path = Path(run_dir) / "last.pt"
    if Path(run_dir).is_file():
        hint = (f"; to continue that run: --resume {Path(run_dir).parent}"
                if Path(run_dir).name in RUN_FILES else "")
        raise ValueError(f"--resume takes the run folder written by `vbp train --out`, not a file ({run_dir}){hint}")
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist (expected one written by `vbp train --out`)")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: expected the last checkpoint of a run started with "
                                f"`vbp train --out {run_dir}`")
    ckpt = read_checkpoint(path)
    for name in RUN_FILES:  # temporary files of writes a kill interrupted
        for tmp in Path(run_dir).glob(f".{name}.*tmp"):
            tmp.unlink(missing_ok=True)
    missing = [k for k in ("train_config", "optimizer", "target", "position", "history") if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is a model checkpoint without training state ({', '.join(missing)} missing); "
                         f"expected RUN_DIR/last.pt written by `vbp train`")
    tc = dict(ckpt["train_config"])
    tc["out"] = str(run_dir)
    _check_resume_matches(Path(run_dir), tc, ckpt)
    return TrainConfig(**tc), ckpt


def train(cfg: TrainConfig | None = None, resume_dir=None, epochs: int | None = None, lr: float | None = None,
          device: str | None = None, workers: int | None = None, flip: float | None = None,
          overwrite: bool = False, bf16: bool | None = None) -> dict:
    """Train a new run (`cfg`) or continue one (`resume_dir`, optionally with more `epochs`, another `lr`,
    `flip`, `bf16`, `device` or `workers`). A new run refuses a folder holding a run unless `overwrite` (the old run is moved aside); the
    stores and the run folder are checked before anything is written."""
    ckpt = None
    if resume_dir is not None:
        cfg, ckpt = load_resume(resume_dir)
        for name, value in (("epochs", epochs), ("lr", lr), ("device", device), ("workers", workers),
                            ("flip", flip), ("bf16", bf16)):
            if value is not None:
                setattr(cfg, name, value)
        cfg.__post_init__()  # the changed settings are checked like new ones
    preflight(cfg)
    if ckpt is None and not overwrite:
        claim_run_dir(cfg.out)  # every process refuses alike
    ctx = distributed.setup(cfg.device)
    try:
        if ctx.main:
            if ckpt is None and overwrite:
                claim_run_dir(cfg.out, overwrite=True)
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            write_config(cfg)
        distributed.barrier(ctx)
        trainer = Trainer(cfg, ctx, resume=ckpt)
        try:
            if ctx.main and ckpt is None:
                trainer.save()  # a resumable last.pt from step 0 on
            if ctx.main and ckpt is not None:
                print(f"resuming {cfg.out} at epoch {trainer.progress():.3f} (step {trainer.pos['step']})",
                      file=sys.stderr)
            return trainer.run()
        finally:
            trainer.close()
    finally:
        distributed.cleanup(ctx)

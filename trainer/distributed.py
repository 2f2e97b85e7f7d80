"""Multi-process training with PyTorch's DistributedDataParallel, as launched by `torchrun`.

`torchrun --nproc_per_node N -m vbp_rt.cli train ...` sets RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE;
the same command without torchrun runs one process. Backend: gloo on CPU, nccl on CUDA with one GPU per
process: NCCL refuses two processes on one GPU ("Duplicate GPU detected"), so more processes than GPUs on a
machine fail before the process group is made, with a message saying what to run instead.

One process makes no process group, so on a single-GPU machine the nccl and SyncBatchNorm path never runs.
VBP_DIST_BACKEND=gloo lets several processes share one GPU over gloo (CUDA tensors; SyncBatchNorm gathers
with all_gather there): slower, for testing that path on one GPU (tests/test_gpu_readiness.py).

On CUDA, training uses TensorFloat-32 convolutions and matrix products (vbp_rt.precision): losses and RMSE
are training statistics, not reference outputs, and TF32 rounding (~1e-3 relative) is far below SGD noise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vbp_rt.precision import set_torch_fp32

BACKENDS = ("nccl", "gloo")


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(name: str, local_rank: int = 0, local_world: int = 1, gpus: int | None = None,
                backend: str | None = None) -> torch.device:
    """The device of the process with `local_rank` among `local_world` processes on this machine, which has
    `gpus` CUDA GPUs (default: as torch sees them). "auto" -> CUDA when there is a GPU, else CPU; "cuda"
    without a GPU is an error, and so are more processes than GPUs unless the process-group `backend` is
    gloo (nccl refuses two processes on one GPU)."""
    if gpus is None:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == "auto":
        name = "cuda" if gpus else "cpu"
    if name == "cuda":
        if not gpus:
            raise ValueError("--device cuda: no CUDA GPU is available on this machine (use --device cpu or auto)")
        if local_world > gpus and backend != "gloo":
            raise ValueError(f"{local_world} training processes on this machine but {gpus} CUDA GPU(s): NCCL refuses "
                             f"two processes on one GPU; start at most {gpus} (torchrun --nproc_per_node {gpus}), "
                             "use --device cpu, or set VBP_DIST_BACKEND=gloo to share GPUs (slower)")
        return torch.device("cuda", local_rank % gpus)
    if name != "cpu":
        raise ValueError(f"unknown device {name!r} (auto, cpu or cuda)")
    return torch.device("cpu")


def process_group_backend(device: torch.device, override: str | None = None) -> str:
    """nccl on CUDA, gloo on CPU; VBP_DIST_BACKEND (`override`) = gloo or nccl chooses."""
    if override:
        if override not in BACKENDS:
            raise ValueError(f"VBP_DIST_BACKEND={override!r}: expected one of {', '.join(BACKENDS)}")
        if override == "nccl" and device.type != "cuda":
            raise ValueError("VBP_DIST_BACKEND=nccl needs --device cuda")
        return override
    return "nccl" if device.type == "cuda" else "gloo"


def setup(device: str) -> Context:
    """Join the process group when launched by torchrun; otherwise a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    override = os.environ.get("VBP_DIST_BACKEND", "").strip().lower() or None
    dev = pick_device(device, int(os.environ.get("LOCAL_RANK", "0")), local_world if world > 1 else 1,
                      backend=override)
    if dev.type == "cuda":
        set_torch_fp32(True)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(process_group_backend(dev, override))
    return Context(rank, world, dev)


def wrap(model: torch.nn.Module, ctx: Context) -> torch.nn.Module:
    """DDP around the model when distributed. On CUDA, BatchNorm statistics are synchronized across
    processes (SyncBatchNorm); on CPU (gloo) torch has no SyncBatchNorm, so each process normalizes
    with the statistics of its own share of the batch."""
    if not ctx.distributed:
        return model
    if ctx.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def all_sum(values: list, ctx: Context) -> list:
    """Sum floats over processes (identity with one process)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def sync_buffers(model: torch.nn.Module, ctx: Context) -> None:
    """Give every process rank 0's BatchNorm running statistics (before evaluating in eval mode)."""
    if ctx.distributed:
        for b in unwrap(model).buffers():
            dist.broadcast(b, 0)


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def cleanup(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()

"""Multi-process training with PyTorch's DistributedDataParallel, as launched by `torchrun`.

`torchrun --nproc_per_node N -m vbp_rt.cli train ...` sets RANK/WORLD_SIZE/LOCAL_RANK; the same
command without torchrun runs one process. Backend: gloo on CPU, nccl on CUDA (one GPU per process).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cuda" without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA GPU is available on this machine (use --device cpu or auto)")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name != "cpu":
        raise ValueError(f"unknown device {name!r} (auto, cpu or cuda)")
    return torch.device("cpu")


def setup(device: str) -> Context:
    """Join the process group when launched by torchrun; otherwise a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dev = pick_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
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

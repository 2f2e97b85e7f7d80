"""One training step of a shipped architecture, eager against torch.compile, alternating on the same batches.

Batch 64, channels-last, bfloat16 autocast, one thread: the trainer's CPU setting (docs/training.md). Each step is
timed in CPU time of this thread, so other jobs on the machine do not count. Prints the first compiled step's
wall time (compiling) and images per CPU-second of each after two warm-up rounds.

    OMP_NUM_THREADS=1 python scripts/compile_step.py netsvf
"""
import sys
import time

import torch

from vbp_rt.models import build


def main(arch: str = "netsvf", rounds: int = 6, batch: int = 64) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    eager = build(arch).to(memory_format=torch.channels_last)
    other = build(arch).to(memory_format=torch.channels_last)
    other.load_state_dict(eager.state_dict())
    runs = {"eager": (eager, torch.optim.SGD(eager.parameters(), lr=1e-3, momentum=0.9)),
            "compiled": (torch.compile(other), torch.optim.SGD(other.parameters(), lr=1e-3, momentum=0.9))}
    h, w = (135, 640) if arch == "netsvf" else (135, 351)
    cpu = {name: [] for name in runs}
    for r in range(rounds):
        x = torch.rand(batch, 1, h, w).contiguous(memory_format=torch.channels_last)
        y = torch.randn(batch, 1)
        losses = {}
        for name, (net, opt) in runs.items():
            t, wall = time.thread_time(), time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = net(x)
            loss = ((out.float() - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if r == 0 and name == "compiled":
                print(f"first compiled step (compiling): {time.perf_counter() - wall:.1f} s wall", flush=True)
            if r >= 2:
                cpu[name].append(time.thread_time() - t)
            losses[name] = round(loss.item(), 4)
        print(f"round {r}: loss {losses}", flush=True)
    for name, steps in cpu.items():
        print(f"{arch} {name}: {batch * len(steps) / sum(steps):.2f} images per CPU-second "
              f"(steps {', '.join(f'{s:.2f}' for s in steps)} s)")


if __name__ == "__main__":
    main(*sys.argv[1:2])

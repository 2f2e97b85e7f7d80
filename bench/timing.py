"""Timing several callables against each other: warm-up, interleaved rounds, robust statistics.

The callables of one group (forward only, VBP, LRP, peers... on the same model and input) run in
round-robin: a change of machine load during the measurement then shifts all of them alike, so the
differences between them (a method's cost beyond the forward pass) stay meaningful on a shared machine.
Rounds go on until every median is stable (the 95% confidence interval of each median within `rel_tol`
of it) or the group's time budget is spent.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Stats:
    """Milliseconds per call: median, 95th percentile, inter-quartile range, minimum, number of timed calls,
    the 95% confidence interval of the median and whether it met the stability criterion."""

    median: float
    p95: float
    iqr: float
    min: float
    n: int
    ci_low: float
    ci_high: float
    stable: bool

    def to_dict(self) -> dict:
        return asdict(self)


def median_ci(samples) -> tuple:
    """Distribution-free 95% confidence interval of the median (order statistics of the binomial(n, 1/2))."""
    s = np.sort(np.asarray(samples, dtype=np.float64))
    n = len(s)
    half = 1.96 * math.sqrt(n) / 2
    lo = max(0, int(math.floor(n / 2 - half)))
    hi = min(n - 1, int(math.ceil(n / 2 + half)))
    return float(s[lo]), float(s[hi])


def summarize(samples, rel_tol: float = 0.03) -> Stats:
    """Statistics of a list of times in milliseconds."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no timed calls to summarize")
    q25, med, q75, p95 = np.percentile(a, [25, 50, 75, 95])
    lo, hi = median_ci(a)
    stable = a.size >= 5 and med > 0 and max(med - lo, hi - med) <= rel_tol * med
    return Stats(float(med), float(p95), float(q75 - q25), float(a.min()), int(a.size), lo, hi, bool(stable))


class CudaTimer:
    """Times a call on the GPU with CUDA events (the host returns before the GPU is done)."""

    def __init__(self):
        import torch
        self.torch = torch

    def __call__(self, fn) -> float:
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        self.torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))


def wall_ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def cpu_ms(fn) -> float:
    """CPU time of the whole process (all its threads) during the call: the work the call costs, whatever
    else the machine runs. With one engine thread it is the call's latency on an otherwise idle core."""
    t0 = time.process_time()
    fn()
    return (time.process_time() - t0) * 1e3


CLOCKS = {"wall": wall_ms, "cpu": cpu_ms}


@dataclass
class Budget:
    """How long to measure one group. warmup: untimed calls of each callable (and at least warmup_s seconds
    of them); then at least min_runs timed calls each, at most max_runs, and at most max_s seconds."""

    warmup: int = 3
    warmup_s: float = 0.3
    min_runs: int = 10
    max_runs: int = 200
    max_s: float = 20.0
    rel_tol: float = 0.03
    clock: str = "wall"


def measure_group(fns: dict, budget: Budget, timers: dict | None = None) -> dict:
    """Time each callable of `fns` (name -> fn()) in interleaved rounds; returns name -> Stats.

    `timers` maps a name to how to time it (default: the budget's clock; `CudaTimer()` for GPU work). A callable
    slower than the whole budget still gets `min(min_runs, 3)` timed calls.
    """
    timers = timers or {}
    timer = {name: timers.get(name, CLOCKS[budget.clock]) for name in fns}
    for fn in fns.values():
        t0, k = time.perf_counter(), 0
        while k < budget.warmup or (time.perf_counter() - t0 < budget.warmup_s and k < 50):
            fn()
            k += 1
    samples = {name: [] for name in fns}
    deadline = time.perf_counter() + budget.max_s

    def finished(name) -> bool:
        s = samples[name]
        if len(s) >= budget.max_runs:
            return True
        if len(s) < budget.min_runs:
            return time.perf_counter() > deadline and len(s) >= min(budget.min_runs, 3)
        return time.perf_counter() > deadline or summarize(s, budget.rel_tol).stable

    while not all(finished(name) for name in fns):
        for name in fns:  # every callable stays in the rounds, so all of them see the same load
            if len(samples[name]) < budget.max_runs:
                samples[name].append(timer[name](fns[name]))
    return {name: summarize(s, budget.rel_tol) for name, s in samples.items()}


def synchronized(fn) -> float:
    """Wall time of a call that launches torch CUDA work, with the device synchronized before and after."""
    import torch
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def engine_timer(backend: str):
    """How to time one `Runtime.run` call on `backend`: torch-cuda launches work torch must wait for
    (`synchronized`); onnxruntime synchronizes itself (each stage ends with IOBinding.synchronize_outputs and
    the results are on the host when run returns), so ort-cuda, like the CPU backends, takes the wall clock
    and never touches torch.cuda, which asserts on a CPU build of torch beside onnxruntime-gpu."""
    return synchronized if backend == "torch-cuda" else wall_ms

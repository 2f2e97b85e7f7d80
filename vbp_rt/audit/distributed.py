"""`vbp audit --ray ADDRESS`: one Ray task per source, each writing that source's chunk files into AUDIT_DIR
(which every worker must see at the same path: a shared filesystem on a cluster). The driver then merges the
chunk files into audit.h5 with virtual datasets, as a one-process audit does. Each task runs the engine with
one thread per CPU Ray gives it (`num_cpus`); resumed audits skip finished chunks in the tasks too.
"""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from vbp_rt.extras import require

from . import runner


def _audit_source(position: int, spec: str, config: dict, out: str, threads: int):
    """Body of one Ray task: one source through a Runtime made in the worker."""
    runtime = runner.make_runtime(config, threads)
    outcome = runner.SourceAudit(position, spec, runtime, config, out).run()
    return outcome, runner.engine_facts(runtime)


def audit_ray(config: dict, out, address: str, workers: int = 2, cpus_per_task: int = 1) -> tuple:
    """Fan the sources out over Ray; returns (outcomes in source order, engine facts)."""
    ray = require("ray", "ray", "vbp audit --ray")  # heavy and optional: imported only for --ray
    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=cpus_per_task)(_audit_source)
        refs = [task.remote(i, spec, config, str(Path(out).resolve()), cpus_per_task)
                for i, spec in enumerate(config["sources"])]
        position = {ref: i for i, ref in enumerate(refs)}
        results = [None] * len(refs)
        pending = list(refs)
        with tqdm(total=len(refs), unit="source", desc="vbp audit (ray)", disable=None) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    results[position[ref]] = ray.get(ref)
                    bar.update(1)
    finally:
        if started:
            ray.shutdown()
    return [r[0] for r in results], results[0][1]

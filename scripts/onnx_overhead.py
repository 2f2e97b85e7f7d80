"""How much in-graph VBP (and LRP) add to an onnxruntime CPU forward pass of NetSVF (docs/onnx.md).

Runs the plain network, the VBP variant and the LRP variant round-robin (so a busy machine slows all three
alike) and prints medians per batch size and the ratios to the forward pass. Not a test: timings vary by
machine and load. On a machine shared with other work, --cpu-time (one thread, the thread's CPU time
instead of wall-clock time) is much less disturbed by the other processes.

    python scripts/onnx_overhead.py [--model netsvf|CHECKPOINT] [--batches 1,8] [--repeats 200] [--threads N]
                                    [--spinning] [--cpu-time]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnx
import onnxruntime as ort


def forward_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The maps variant with only the prediction as output: the plain network."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    kept = [o for o in m.graph.output if o.name == "prediction"]
    del m.graph.output[:]
    m.graph.output.extend(kept)
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="netsvf", help="shipped model / checkpoint; 'netsvf' without shipped weights "
                                                      "uses random weights with random BatchNorm statistics")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=200, help="runs per session and batch size (batch 8: a quarter)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    p.add_argument("--spinning", action="store_true", help="let idle onnxruntime threads spin")
    p.add_argument("--cpu-time", action="store_true", help="one thread; measure its CPU time, not wall-clock time")
    p.add_argument("--json", help="also write the medians to this JSON file")
    args = p.parse_args()

    import torch

    from vbp_rt import onnx_io
    from vbp_rt.model_config import shipped_models
    from vbp_rt.models import build, load_model
    from vbp_rt.sessions import cpu_session_options

    if args.model in shipped_models() or args.model not in ("netsvf", "nethvf"):
        model = load_model(args.model)
    else:
        torch.manual_seed(0)
        model = build(args.model).eval()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    maps = onnx_io.export_maps(model)
    graphs = {"forward": forward_only(maps), "forward+vbp": onnx_io.append_vbp_head(maps),
              "forward+lrp": onnx_io.export_lrp(model)}
    options = cpu_session_options(1 if args.cpu_time else args.threads, args.spinning)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    sessions = {k: ort.InferenceSession(g.SerializeToString(), options, providers=["CPUExecutionProvider"])
                for k, g in graphs.items()}
    print(f"onnxruntime {ort.__version__}, {options.intra_op_num_threads} thread(s), spinning {args.spinning}, "
          f"{'CPU' if args.cpu_time else 'wall-clock'} time, {model.config.arch} "
          f"{model.config.height}x{model.config.width}")
    results = {}
    for n in (int(b) for b in args.batches.split(",")):
        x = {"input": np.random.default_rng(0).random((n, *model.config.input_shape), dtype=np.float32)}
        times = {k: [] for k in sessions}
        for s in sessions.values():
            for _ in range(3):
                s.run(None, x)
        for _ in range(args.repeats if n == 1 else max(10, args.repeats // 4)):
            for k, s in sessions.items():
                t0 = clock()
                s.run(None, x)
                times[k].append((clock() - t0) * 1000)
        med = {k: float(np.median(v)) for k, v in times.items()}
        results[n] = med
        print(f"batch {n}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items())
              + f"; vbp ratio {med['forward+vbp'] / med['forward']:.3f}, lrp ratio "
                f"{med['forward+lrp'] / med['forward']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

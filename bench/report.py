"""Benchmark results for people (a terminal table, a PNG plot) and for machines (JSON, CSV).

The targets of the benchmark (the paper's speed claims, for this project) are evaluated here from the
measured rows; nothing is asserted, a missed target is reported as missed.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from vbp_rt.extras import pyplot
from vbp_rt.files import atomic_write

FORMAT = "vbp-rt-bench"
TARGET_MODEL, TARGET_BACKEND, TARGET_BATCH = "netsvf", "ort-cpu", 1
STARTUP_STAGES = ("interpreter", "imports", "cache", "load", "export", "sessions", "first_inference")
LATENCY_COLUMNS = ("kind", "model", "weights", "backend", "batch", "library", "method", "median", "p95", "iqr",
                   "min", "n", "ci_low", "ci_high", "stable", "per_image_ms", "forward_ms", "extra_ms",
                   "extra_per_image_ms", "extra_over_forward", "stage_forward_ms", "stage_method_ms")
PIPELINE_COLUMNS = ("kind", "model", "weights", "backend", "methods", "fps", "fps_over_forward", "frames",
                    "dropped", "decode_ms", "preprocess_ms", "engine_ms", "overlay_ms", "video")


def _find(rows, **want):
    for r in rows:
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def ratios(rows) -> list:
    """For every group with a forward baseline: VBP extra / forward and LRP extra / VBP extra."""
    out, seen = [], set()
    for r in rows:
        key = (r["kind"], r["model"], r["backend"], r["batch"])
        if key in seen:
            continue
        seen.add(key)
        group = dict(kind=r["kind"], model=r["model"], backend=r["backend"], batch=r["batch"])
        lib = "vbp-rt"
        vbp, lrp = _find(rows, **group, library=lib, method="vbp"), _find(rows, **group, library=lib, method="lrp")
        if vbp is None:
            continue
        item = {**group, "forward_ms": vbp["forward_ms"], "vbp_extra_ms": vbp["extra_ms"],
                "vbp_extra_over_forward": vbp["extra_over_forward"]}
        if lrp is not None:
            item["lrp_extra_ms"] = lrp["extra_ms"]
            item["lrp_extra_over_vbp_extra"] = lrp["extra_ms"] / vbp["extra_ms"] if vbp["extra_ms"] > 0 else None
        out.append(item)
    return out


def _median(values):
    values = sorted(values)
    n = len(values)
    return None if not n else (values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2)


def startup_summary(startup) -> list:
    """Median of each stage over the repeats, per (what, start)."""
    out = []
    for what in dict.fromkeys(r["what"] for r in startup):
        for start in ("cold", "warm"):
            rs = [r for r in startup if r["what"] == what and r["start"] == start]
            if rs:
                keys = [k for k in rs[0] if k.endswith("_ms") or k in STARTUP_STAGES]
                out.append({"what": what, "start": start, "n": len(rs),
                            **{k: _median([r[k] for r in rs if r.get(k) is not None]) for k in keys},
                            "graph_cached": all(r.get("graph_cached", True) for r in rs),
                            "torch_imported": any(r.get("torch_imported", False) for r in rs),
                            "load_average": [r["load_average"] for r in rs]})
    return out


def targets(rows, pipeline, startup=()) -> list:
    """The issue's targets, each with the measured value (None when the run did not measure it)."""
    g = dict(kind="latency", model=TARGET_MODEL, backend=TARGET_BACKEND, batch=TARGET_BATCH)
    vbp, lrp = _find(rows, **g, method="vbp"), _find(rows, **g, method="lrp")
    vbp8 = _find(rows, **{**g, "batch": 8}, method="vbp")
    where = f"{TARGET_MODEL}, {TARGET_BACKEND}, batch {TARGET_BATCH}"
    out = []

    def add(name, value, op, goal, detail):
        met = None if value is None else (value <= goal if op == "<=" else value >= goal)
        out.append({"target": name, "value": value, "op": op, "goal": goal, "met": met, "where": detail})

    add("VBP extra / forward", vbp["extra_over_forward"] if vbp else None, "<=", 0.10, where)
    add("VBP extra / forward, batch 8", vbp8["extra_over_forward"] if vbp8 else None, "<=", 0.10,
        f"{TARGET_MODEL}, {TARGET_BACKEND}, batch 8")
    lrp_ratio = lrp["extra_ms"] / vbp["extra_ms"] if vbp and lrp and vbp["extra_ms"] > 0 else None
    add("LRP extra / VBP extra", lrp_ratio, ">=", 12.0, where)
    pg = dict(kind="peer", model=TARGET_MODEL, batch=TARGET_BATCH, method="lrp")
    ours, zennit = _find(rows, **pg, library="vbp-rt"), _find(rows, **pg, library="zennit")
    add("zennit LRP time / our LRP time", zennit["median"] / ours["median"] if ours and zennit else None, ">=", 1.0,
        f"{TARGET_MODEL}, torch, batch {TARGET_BATCH}, same module and input")
    pp = [p for p in pipeline if p["model"] == TARGET_MODEL and p["backend"] == TARGET_BACKEND and p["methods"] == "vbp"]
    add("viewer pipeline fps with VBP / forward-only fps", pp[0]["fps_over_forward"] if pp else None, ">=", 0.9,
        f"{TARGET_MODEL}, {TARGET_BACKEND}, decode -> preprocess -> engine -> overlay")
    warm = [r["first_overlay_ms"] / 1000.0 for r in startup
            if r["what"] != "runtime" and r["start"] == "warm" and r.get("first_overlay_ms") is not None]
    add("warm start to the first overlay (s)", _median(warm) if warm else None, "<=", 2.5,
        "vbp view VIDEO --headless --frames 1 --methods vbp, second start, process start to the first overlay")
    return out


def document(settings: dict, environment: dict, rows: list, pipeline: list, notes: list, startup=()) -> dict:
    return {"format": FORMAT, "version": 1, "settings": settings, "environment": environment,
            "startup": list(startup), "startup_summary": startup_summary(startup),
            "latency": [r for r in rows if r["kind"] == "latency"], "peers": [r for r in rows if r["kind"] == "peer"],
            "pipeline": pipeline, "ratios": ratios(rows), "targets": targets(rows, pipeline, startup), "notes": notes}


def _csv(rows, columns) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue().encode()


def pipeline_csv_rows(pipeline) -> list:
    return [{**p, **{f"{k}_ms": v for k, v in p["stages_ms"].items()}} for p in pipeline]


def _fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def table(doc: dict) -> str:
    """The terminal table: one block per group, then ratios, pipeline, targets and notes."""
    lines = []
    rows = doc["latency"] + doc["peers"]
    cpu = doc["settings"].get("clock") == "cpu"
    unit = "ms of process CPU time" if cpu else "ms"
    groups = []
    for r in rows:
        key = (r["kind"], r["model"], r["weights"], r["backend"], r["batch"])
        if key not in groups:
            groups.append(key)
    head = f"  {'method':<18}{'median':>9}{'p95':>9}{'IQR':>8}{'n':>5}{'per img':>9}{'extra':>9}{'extra/fwd':>10}"
    for kind, model, weights, backend, batch in groups:
        title = "engine" if kind == "latency" else "peers (torch, same module and input)"
        lines += ["", f"{title}: {model} ({weights} weights), {backend}, batch {batch}   [{unit}]", head]
        for r in rows:
            if (r["kind"], r["model"], r["weights"], r["backend"], r["batch"]) != (kind, model, weights, backend, batch):
                continue
            name = r["method"] if r["library"] in ("vbp-rt", "torch") else f"{r['library']}:{r['method']}"
            if kind == "peer" and r["library"] == "vbp-rt":
                name = f"vbp-rt:{r['method']}"
            mark = "" if r["stable"] else "~"
            lines.append(f"  {name:<18}{r['median']:>9.2f}{r['p95']:>9.2f}{r['iqr']:>8.2f}{r['n']:>4}{mark:1}"
                         f"{r['per_image_ms']:>9.2f}{r['extra_ms']:>9.2f}{_fmt(r['extra_over_forward']):>10}")
    if doc["ratios"]:
        lines += ["", "ratios", f"  {'group':<40}{'VBP extra/fwd':>14}{'LRP extra/VBP extra':>21}"]
        for q in doc["ratios"]:
            g = f"{q['kind']} {q['model']} {q['backend']} b{q['batch']}"
            lines.append(f"  {g:<40}{_fmt(q['vbp_extra_over_forward'], '.3f'):>14}"
                         f"{_fmt(q.get('lrp_extra_over_vbp_extra'), '.1f'):>21}")
    if doc["pipeline"]:
        lines += ["", f"viewer pipeline (decode -> preprocess -> engine -> overlay), "
                      f"{'frames per CPU-second' if cpu else 'frames/s'}, stages in {unit}",
                  f"  {'model/backend':<22}{'methods':<10}{'fps':>8}{'x fwd':>7}{'decode':>8}{'prep':>7}{'engine':>8}"
                  f"{'overlay':>8}"]
        for p in doc["pipeline"]:
            s = p["stages_ms"]
            lines.append(f"  {p['model'] + ' ' + p['backend']:<22}{p['methods']:<10}{p['fps']:>8.1f}"
                         f"{_fmt(p['fps_over_forward']):>7}{s['decode']:>8.2f}{s['preprocess']:>7.2f}"
                         f"{s['engine']:>8.2f}{s['overlay']:>8.2f}")
    if doc.get("startup_summary"):
        lines += ["", "start-up, a fresh process (median ms; cold: empty graph cache, warm: the next start)",
                  f"  {'what':<28}{'start':<6}" + "".join(f"{k[:8]:>9}" for k in STARTUP_STAGES)
                  + f"{'overlay':>9}{'total':>9}"]
        for q in doc["startup_summary"]:
            lines.append(f"  {q['what']:<28}{q['start']:<6}" + "".join(f"{_fmt(q.get(k), '.0f'):>9}" for k in STARTUP_STAGES)
                         + f"{_fmt(q.get('first_overlay_ms'), '.0f'):>9}{_fmt(q.get('total_ms'), '.0f'):>9}")
    lines += ["", "targets"]
    for t in doc["targets"]:
        state = "not measured" if t["met"] is None else ("met" if t["met"] else "MISSED")
        lines.append(f"  {t['target']:<48} {_fmt(t['value'], '.3f'):>8} {t['op']} {t['goal']:<5} {state:<13}"
                     f"({t['where']})")
    env = doc["environment"]
    lines += ["", f"machine: {env['cpu']}, {env['usable_cores']} usable cores, load {env['load_average']} at start, "
                  f"{env.get('load_average_end')} at end; torch {env['torch_threads']} threads"]
    if any(not r["stable"] for r in rows):
        lines.append("~ = the median did not settle within the time budget (busy machine): treat with care")
    lines += [f"note: {n}" for n in doc["notes"]]
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> None:
    """One PNG: per-image cost by method and backend, the peers, batch scaling and the viewer's frame rate."""
    plt = pyplot("the plot of vbp bench")
    rows = max(len(doc["latency"]), len(doc["peers"]))
    fig, axes = plt.subplots(2, 2, figsize=(15, 9 + 0.12 * max(0, rows - 20)))
    _plot_methods(axes[0][0], doc["latency"])
    _plot_peers(axes[0][1], doc["peers"])
    _plot_batches(axes[1][0], doc["latency"])
    _plot_pipeline(axes[1][1], doc["pipeline"])
    env = doc["environment"]
    clock = "process CPU time" if doc["settings"].get("clock") == "cpu" else "elapsed time"
    fig.suptitle(f"vbp bench ({clock}): {env['cpu']}, {env['usable_cores']} cores, load {env['load_average'][:1]}",
                 fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _smallest_batch(rows):
    return min((r["batch"] for r in rows), default=None)


def _plot_methods(ax, rows):
    b = _smallest_batch(rows)
    sel = [r for r in rows if r["batch"] == b and r["method"] != "forward"]
    labels = [f"{r['model']} {r['backend']} {r['method']}" for r in sel]
    fwd = [r["forward_ms"] / r["batch"] for r in sel]
    extra = [max(r["extra_per_image_ms"], 0.0) for r in sel]
    y = range(len(sel))
    ax.barh(y, fwd, color="0.75", label="forward")
    ax.barh(y, extra, left=fwd, color="tab:red", label="cost beyond the forward pass")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms per image")
    ax.set_title(f"engine, batch {b}: forward + each method's extra", fontsize=10)
    ax.legend(fontsize=8)


def _plot_peers(ax, rows):
    b = _smallest_batch(rows)
    sel = [r for r in rows if r["batch"] == b and r["method"] != "forward"]
    if not sel:
        ax.text(0.5, 0.5, "no peers measured", ha="center", va="center")
        ax.set_axis_off()
        return
    labels = [f"{r['model']}  {r['library']}:{r['method']}" for r in sel]
    colors = ["tab:red" if r["library"] == "vbp-rt" else "tab:blue" for r in sel]
    ax.barh(range(len(sel)), [max(r["extra_per_image_ms"], 1e-3) for r in sel], color=colors)
    ax.set_yticks(list(range(len(sel))), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms per image beyond the forward pass (log)")
    ax.set_title(f"vbp-rt (red) and other libraries (blue), torch, batch {b}", fontsize=10)


def _plot_batches(ax, rows):
    series = {}
    for r in rows:
        if r["method"] in ("forward", "vbp", "lrp"):
            series.setdefault((r["model"], r["backend"], r["method"]), []).append((r["batch"], r["per_image_ms"]))
    styles = {"forward": ":", "vbp": "-", "lrp": "--"}
    for (model, backend, method), pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[method], marker="o", label=f"{model} {backend} {method}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("ms per image (log)")
    ax.set_title("per-image latency by batch size", fontsize=10)
    if series:
        ax.legend(fontsize=6, ncol=2)


def _plot_pipeline(ax, pipeline):
    if not pipeline:
        ax.text(0.5, 0.5, "viewer pipeline not measured", ha="center", va="center")
        ax.set_axis_off()
        return
    labels = [f"{p['model']} {p['backend']}\n{p['methods']}" for p in pipeline]
    ax.bar(range(len(pipeline)), [p["fps"] for p in pipeline], color="tab:green")
    ax.set_xticks(list(range(len(pipeline))), labels, fontsize=7)
    ax.set_ylabel("frames / s")
    ax.set_title("viewer pipeline: decode -> preprocess -> engine -> overlay", fontsize=10)


def write(doc: dict, out_dir) -> dict:
    """Write bench.json, latency.csv, pipeline.csv and bench.png into `out_dir`; returns their paths."""
    out = Path(out_dir)
    paths = {"json": out / "bench.json", "csv": out / "latency.csv", "pipeline_csv": out / "pipeline.csv",
             "png": out / "bench.png"}
    atomic_write(paths["json"], (json.dumps(doc, indent=2) + "\n").encode())
    atomic_write(paths["csv"], _csv(doc["latency"] + doc["peers"], LATENCY_COLUMNS))
    atomic_write(paths["pipeline_csv"], _csv(pipeline_csv_rows(doc["pipeline"]), PIPELINE_COLUMNS))
    plot(doc, paths["png"])
    return paths

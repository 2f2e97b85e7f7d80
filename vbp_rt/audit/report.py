"""AUDIT_DIR/report.html (one self-contained page: inline SVG timelines, base64 PNG thumbnails) and report.md.

Thumbnails are the source's view images with the stored compact VBP mask overlaid (red = where the network
looks); no model is run. A source that can no longer be read gets mask-only thumbnails.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import cv2
import numpy as np

from vbp_rt.data.preprocess import VIEWS, model_view, view_for
from vbp_rt.data.sources import BadFrame, EndOfSource, open_source
from vbp_rt.overlay import overlay

from . import anomaly, store, truth

TOP_EVENTS = 12
THUMB_WIDTH = 320
STYLE = """
body{font-family:system-ui,sans-serif;margin:18px;background:#fafafa;color:#222;max-width:1180px}
h1{font-size:22px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse} td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
.grid{display:flex;flex-wrap:wrap;gap:10px} .card{background:white;border:1px solid #ddd;padding:6px;font-size:13px}
img{display:block} .muted{color:#777;font-size:13px} .warn{background:#fff3cd;padding:6px}
"""


class Frames:
    """View images of an audit's sources, opened once each."""

    def __init__(self, attrs):
        self.sources = json.loads(attrs["sources"])
        name = str(attrs.get("view", ""))
        self.height, self.width = int(attrs["height"]), int(attrs["width"])
        self.view_name = name
        self.view = view_for(name, self.height) if name in VIEWS else None
        if self.view is not None and self.view.width != self.width:
            self.view = None
        self._open = {}

    def image(self, source: int, index: int):
        if source not in self._open:
            try:
                self._open[source] = open_source(self.sources[source], self.view_name)
            except (ValueError, OSError):
                self._open[source] = None
        s = self._open[source]
        if s is None:
            return None
        try:
            frame = s.read(int(index))
        except (BadFrame, EndOfSource, OSError):
            return None
        return frame.image if frame.prepared else model_view(frame.image, self.view, self.height, self.width)

    def close(self):
        for s in self._open.values():
            if s is not None:
                s.close()


def _png(image: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", image)
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def thumbnail(image, compact: np.ndarray, height: int, width: int) -> np.ndarray:
    """The view image (or black) with the compact mask, scaled to its maximum, overlaid; THUMB_WIDTH wide."""
    m = np.asarray(compact, np.float32)
    m = m / m.max() if m.max() > 0 else m
    base = image if image is not None else np.zeros((height, width), np.uint8)
    out = overlay(base, cv2.resize(m, (base.shape[1], base.shape[0]), interpolation=cv2.INTER_LINEAR))
    h = int(round(out.shape[0] * THUMB_WIDTH / out.shape[1]))
    return cv2.resize(out, (THUMB_WIDTH, h), interpolation=cv2.INTER_AREA)


def heatmap(compact: np.ndarray, height: int, width: int) -> np.ndarray:
    m = np.asarray(compact, np.float32)
    m = m / m.max() if m.max() > 0 else m
    h = int(round(height * THUMB_WIDTH / width))
    return cv2.applyColorMap(cv2.resize((m * 255).astype(np.uint8), (THUMB_WIDTH, h),
                                        interpolation=cv2.INTER_NEAREST), cv2.COLORMAP_INFERNO)


def _polyline(xs, ys, x0, x1, y0, y1, lo, hi, n):
    if len(xs) == 0:
        return ""
    px = x0 + (np.asarray(xs) / max(n - 1, 1)) * (x1 - x0)
    py = y1 - (np.clip(ys, lo, hi) - lo) / max(hi - lo, 1e-9) * (y1 - y0)
    return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py) if np.isfinite(b))


def timeline_svg(pred, label, score, thr, events, width=1120, height=240) -> str:
    """Prediction and label (degrees, upper band), anomaly score with its threshold (lower band), events shaded
    and numbered by rank. `events`: [(rank, start, stop)] in rows of this source."""
    n = len(pred)
    left, right = 48, width - 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'style="background:white;border:1px solid #ddd">']
    for rank, a, b in events:
        xa = left + a / max(n - 1, 1) * (right - left)
        xb = left + max(b - 1, a) / max(n - 1, 1) * (right - left)
        parts.append(f'<rect x="{xa:.1f}" y="8" width="{max(xb - xa, 2):.1f}" height="{height - 16}" '
                     f'fill="#ff9800" opacity="0.25"/><text x="{xa:.1f}" y="18" font-size="11" fill="#b35c00">'
                     f'#{rank}</text>')
    finite = np.concatenate([pred[np.isfinite(pred)], label[np.isfinite(label)]])
    lim = float(np.percentile(np.abs(finite), 99.5)) if len(finite) else 1.0
    lim = max(lim, 1.0)
    y0, y1 = 22, 132
    parts.append(f'<line x1="{left}" x2="{right}" y1="{(y0 + y1) / 2}" y2="{(y0 + y1) / 2}" stroke="#ccc"/>')
    parts.append(f'<text x="2" y="{y0 + 8}" font-size="10">+{lim:.0f}°</text>'
                 f'<text x="2" y="{y1}" font-size="10">-{lim:.0f}°</text>')
    idx = np.arange(n)
    if np.isfinite(label).any():
        parts.append(f'<polyline fill="none" stroke="#777" stroke-width="1.2" points="'
                     f'{_polyline(idx, label, left, right, y0, y1, -lim, lim, n)}"/>')
    parts.append(f'<polyline fill="none" stroke="#1565c0" stroke-width="1.2" points="'
                 f'{_polyline(idx, pred, left, right, y0, y1, -lim, lim, n)}"/>')
    s0, s1 = 146, height - 12
    top = max(float(np.percentile(score, 99.8)) if n else 1.0, thr * 1.5, 1e-3)
    parts.append(f'<polyline fill="none" stroke="#c62828" stroke-width="1" points="'
                 f'{_polyline(idx, score, left, right, s0, s1, 0, top, n)}"/>')
    ty = s1 - min(thr / top, 1) * (s1 - s0)
    parts.append(f'<line x1="{left}" x2="{right}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#c62828" '
                 f'stroke-dasharray="4 3"/><text x="2" y="{s0 + 8}" font-size="10">score</text>')
    parts.append(f'<text x="{left}" y="{height - 1}" font-size="10" fill="#1565c0">prediction</text>'
                 f'<text x="{left + 70}" y="{height - 1}" font-size="10" fill="#777">label</text>'
                 f'<text x="{left + 110}" y="{height - 1}" font-size="10" fill="#c62828">anomaly score '
                 f'(dashed: threshold)</text><text x="{left + 290}" y="{height - 1}" font-size="10" '
                 f'fill="#b35c00">events #rank</text></svg>')
    return "".join(parts)


def unusual(z_row, names, off: float, off_leads: bool, k=3) -> str:
    """What makes a frame's score: its off-road mass when that part leads (anomaly.py), then the k features that
    deviate most, with their z-scores."""
    order = np.argsort(-np.abs(z_row))[:k]
    lead = [f"off the road {off:.0%}"] if off_leads else []
    return ", ".join(lead + [f"{names[j]} {z_row[j]:+.1f}" for j in order])


def offroad_leads(x: np.ndarray, off: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Per frame: whether the off-road part of the anomaly score lies further above its threshold than the
    unusualness does above its own."""
    lead = np.zeros(len(x), bool)
    for src in np.unique(source):
        rows = source == src
        u = anomaly.unusualness(x[rows])
        o = off[rows] / anomaly.OFF_UNIT
        lead[rows] = o - anomaly.threshold(o) > u - anomaly.threshold(u)
    return lead


def cue_lines(check: dict) -> list:
    """truth.cue_check in sentences."""
    lines = [f"the cue is present in {check['cue_share']:.1%} of {check['frames']} frames"]
    if "cue_mass" in check:
        lines.append(f"VBP mass on the cue where present: {check['cue_mass']:.3f} "
                     f"({check['enrichment']:.1f}x its share of the view)")
    if check["precision_at"]:
        lines.append("top events with the cue: " + ", ".join(f"{v:.0%} of the top {k}"
                                                              for k, v in check["precision_at"].items()))
    lines.append(f"flagged frames with the cue: {check['flagged_precision']:.0%}; cue frames flagged: "
                 f"{check['flagged_recall']:.0%}")
    if "cue_mode" in check:
        m = check["cue_mode"]
        lines.append(f"mode {m['mode']} ({m['frames']} frames) has the most cue frames: {m['cue_share']:.0%}, "
                     f"mean VBP mass on the cue {m['cue_mass']:.3f}")
    return lines


def collect(out) -> dict:
    """Everything the reports show, from AUDIT_DIR/audit.h5."""
    with store.open_audit(out) as f:
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        frames = store.read_frames(f)
        score = f["anomaly/score"][()]
        flagged = f["anomaly/flagged"][()]
        thresholds = {int(k): v for k, v in json.loads(f["anomaly"].attrs["thresholds"]).items()}
        events = {k: f["events"][k][()] for k in f["events"]}
        modes = {k: f["modes"][k][()] for k in f["modes"]}
    x, names = anomaly.features(frames)
    z = np.zeros_like(x)
    for src in np.unique(frames["source"]):
        rows = frames["source"] == src
        z[rows] = anomaly.robust_z(x[rows])
    off = anomaly.offroad(frames)
    return {"attrs": attrs, "frames": frames, "score": score, "flagged": flagged, "thresholds": thresholds,
            "events": events, "modes": modes, "z": z, "names": names, "offroad": off,
            "offroad_leads": offroad_leads(x, off, frames["source"])}


def _name(spec) -> str:
    return Path(spec).name


def write(out) -> tuple[Path, Path]:
    """Write AUDIT_DIR/report.html and report.md (each atomically); returns their paths."""
    out = Path(out)
    d = collect(out)
    a, fr, ev, md = d["attrs"], d["frames"], d["events"], d["modes"]
    sources = json.loads(a["sources"])
    methods = json.loads(a["methods"])
    primary = f"compact/{methods[0]}"
    problems = json.loads(a.get("problems", "[]"))
    h, w = int(a["height"]), int(a["width"])
    images = Frames(a)
    n_events = len(ev["score"])
    has_truth = {t: bool(np.isfinite(fr[f"truth/{t}"]).any()) for t in ("lane", "distractor", "cue")}
    try:
        body, text = [], []
        title = f"vbp audit: {a['frames']} frames of {len(sources)} source(s), model {_name(a['model'])}"
        body.append(f"<h1>{html.escape(title)}</h1>")
        summary = (f"methods {', '.join(methods)} on {a['backend']}; {a['bad_frames']} unreadable frames skipped; "
                   f"{int(d['flagged'].sum())} frames flagged in {n_events} events; "
                   f"{len(md['count'])} attention modes"
                   + (f"; median VBP-LRP agreement {np.nanmedian(fr['agreement']):.2f}" if "agreement" in fr else ""))
        body.append(f"<p>{html.escape(summary)}</p>")
        text += [f"# {title}", "", summary, ""]
        for p in problems:
            body.append(f'<p class="warn">{html.escape(p)}</p>')
            text.append(f"- problem: {p}")
        body.append("<h2>Timeline</h2>")
        text += ["## Sources", "", "| source | frames | flagged | events | mean absolute error (deg) |",
                 "|---|---|---|---|---|"]
        for src, spec in enumerate(sources):
            rows = np.flatnonzero(fr["source"] == src)
            if not len(rows):
                body.append(f"<p>{html.escape(_name(spec))}: no frames</p>")
                continue
            evs = [(i + 1, ev["start"][i] - rows[0], ev["stop"][i] - rows[0])
                   for i in range(n_events) if ev["source"][i] == src]
            body.append(f"<h3>{html.escape(_name(spec))} ({len(rows)} frames)</h3>")
            body.append(timeline_svg(fr["prediction"][rows], fr["label"][rows], d["score"][rows],
                                     d["thresholds"].get(src, 0.0), evs))
            err = fr["error"][rows]
            mean_err = f"{np.nanmean(np.abs(err)):.2f}" if np.isfinite(err).any() else "-"
            text.append(f"| {_name(spec)} | {len(rows)} | {int(d['flagged'][rows].sum())} | {len(evs)} | "
                        f"{mean_err} |")
        text.append("")
        body.append(f"<h2>Events (top {min(TOP_EVENTS, n_events)} of {n_events}, by score)</h2>")
        body.append('<p class="muted">score: sum over the event of the anomaly score above the drive\'s threshold;'
                    ' unusual: the mask\'s share off the road (above the horizon and at the edges) where that'
                    ' drives the score, and the statistics that deviate most at the peak frame (robust'
                    ' z-scores)</p>')
        text += [f"## Events (top {min(TOP_EVENTS, n_events)} of {n_events})", "",
                 "| rank | source | frames | peak | score | unusual at the peak |", "|---|---|---|---|---|---|"]
        body.append('<div class="grid">')
        for r in range(min(TOP_EVENTS, n_events)):
            peak = int(ev["peak"][r])
            src, idx = int(fr["source"][peak]), int(fr["index"][peak])
            first, last = int(fr["index"][ev["start"][r]]), int(fr["index"][ev["stop"][r] - 1])
            why = unusual(d["z"][peak], d["names"], float(d["offroad"][peak]), bool(d["offroad_leads"][peak]))
            thumb = thumbnail(images.image(src, idx), fr[primary][peak], h, w)
            body.append(f'<div class="card"><img src="{_png(thumb)}" width="{THUMB_WIDTH}"><b>#{r + 1}</b> '
                        f'{html.escape(_name(sources[src]))} frames {first}-{last} (peak {idx})<br>score '
                        f'{ev["score"][r]:.1f}; pred {fr["prediction"][peak]:+.1f}°'
                        + (f', label {fr["label"][peak]:+.1f}°' if np.isfinite(fr["label"][peak]) else "")
                        + f'<br><span class="muted">{html.escape(why)}</span></div>')
            text.append(f"| {r + 1} | {_name(sources[src])} | {first}-{last} | {idx} | {ev['score'][r]:.1f} | "
                        f"{why} |")
        body.append("</div>")
        text.append("")
        body.append("<h2>Attention modes</h2>")
        body.append('<p class="muted">k-means clusters of the compact masks; typical mask = mean of the mode\'s '
                    'masks (bright = more attention); examples = the frames nearest to the mode\'s centre</p>')
        cols = ["mode", "frames", "share", "flagged"] + [f"{t} mass" for t, ok in has_truth.items() if ok]
        text += ["## Attention modes", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        total = len(fr["index"])
        for m in range(len(md["count"])):
            rows = np.flatnonzero(md["label"] == m)
            share = md["count"][m] / max(total, 1)
            flagged = d["flagged"][rows].mean() if len(rows) else 0.0
            masses = [f"{np.nanmean(fr[f'truth/{t}'][rows]):.3f}" for t, ok in has_truth.items() if ok]
            facts = (f"{md['count'][m]} frames ({share:.0%}), {flagged:.0%} flagged"
                     + "".join(f", mean VBP mass on {t} {v}" for (t, ok), v in
                               zip([(t, ok) for t, ok in has_truth.items() if ok], masses)))
            body.append(f"<h3>Mode {m + 1}</h3><p>{html.escape(facts)}</p><div class='grid'>")
            body.append(f'<div class="card"><img src="{_png(heatmap(md["center"][m], h, w))}" '
                        f'width="{THUMB_WIDTH}">typical mask</div>')
            for row in md["examples"][m]:
                if row < 0:
                    continue
                src, idx = int(fr["source"][row]), int(fr["index"][row])
                thumb = thumbnail(images.image(src, idx), fr[primary][row], h, w)
                body.append(f'<div class="card"><img src="{_png(thumb)}" width="{THUMB_WIDTH}">'
                            f'{html.escape(_name(sources[src]))} #{idx}</div>')
            body.append("</div>")
            text.append(f"| {m + 1} | {md['count'][m]} | {share:.0%} | {flagged:.0%} | " + " | ".join(masses)
                        + (" |" if masses else "|"))
        check = truth.cue_check(fr, ev, d["flagged"], md["label"])
        if check is not None:
            lines = cue_lines(check)
            body.append("<h2>Ground truth: the shortcut cue</h2><ul>"
                        + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>")
            text += ["", "## Ground truth: the shortcut cue", ""] + [f"- {x}" for x in lines]
        text += ["", "Thumbnails, timelines and typical masks: report.html.", ""]
    finally:
        images.close()
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")
    return store.atomic_text(out / "report.html", page), store.atomic_text(out / "report.md", "\n".join(text))

"""How an audit's findings match a synthetic drive's ground truth (`vbp data synth`: lane and distractor masks,
and with --shortcut the cue's mask): mean VBP mass on each, and for the shortcut cue how well the ranked events,
the flagged frames and the attention modes pick out the frames where it is present."""
from __future__ import annotations

import numpy as np

TOP = (1, 3, 5, 10)


def has(frames: dict, name: str) -> bool:
    return f"truth_area/{name}" in frames and bool(np.isfinite(frames[f"truth_area/{name}"]).any())


def cue_check(frames: dict, events: dict, flagged: np.ndarray, labels: np.ndarray) -> dict | None:
    """None without cue ground truth. Else: share of frames with the cue; mean VBP mass on the cue where it is
    present, and that mass divided by the cue's share of the view ("enrichment", 1 = no preference);
    precision@k of the top events (an event is a hit when the cue is present in at least half its frames);
    precision and recall of the flagged frames; the mode with the largest share of cue frames."""
    if not has(frames, "cue"):
        return None
    present = np.nan_to_num(frames["truth_area/cue"]) > 0
    mass = frames["truth/cue"]
    out = {"frames": int(len(present)), "cue_share": float(present.mean())}
    if present.any():
        out["cue_mass"] = float(np.nanmean(mass[present]))
        out["enrichment"] = float(np.nanmean(mass[present] / frames["truth_area/cue"][present]))
    hits = [present[a:b].mean() >= 0.5 for a, b in zip(events["start"], events["stop"])]
    out["events"] = len(hits)
    out["precision_at"] = {k: float(np.mean(hits[:k])) for k in TOP if len(hits) >= k}
    out["flagged_precision"] = float(present[flagged].mean()) if flagged.any() else float("nan")
    out["flagged_recall"] = float(flagged[present].mean()) if present.any() else float("nan")
    shares = [float(present[labels == m].mean()) for m in range(int(labels.max()) + 1)] if len(labels) else []
    if shares:
        best = int(np.argmax(shares))
        out["cue_mode"] = {"mode": best + 1, "cue_share": shares[best], "frames": int((labels == best).sum()),
                           "cue_mass": float(np.nanmean(mass[labels == best]))}
    return out

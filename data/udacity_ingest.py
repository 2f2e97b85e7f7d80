"""`vbp data udacity`: find the Udacity sources at a path by their content, and ingest the first usable one.

A folder may hold several sources (bagdump writes camera.csv + steering.csv and interpolated.csv side by
side); they are tried in order of preference (bags, camera.csv + steering.csv, interpolated.csv, simulator
logs, comma.ai) and one that fails does not hide the next. Each source tried gets a Summary: rows read,
frames kept, dropped by speed, dropped by camera (per frame id), bad (first reasons), sessions; the written
store keeps it in its `preprocess` attribute under "summary".
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from .preprocess import REFERENCE_H, REFERENCE_W, View, prepare
from .store import StoreWriter
from .udacity import (BAG_MAGIC, BAGDUMP_IMAGE, BAGDUMP_STEERING, FORMATS, HDF5_MAGIC, LFS_MAGIC, MAX_GAP,
                      MIN_SPEED, SESSION_GAP, SIM_COLUMNS, BadFrame, Source, bag_source, camera_steering_source,
                      comma_source, counts_text, head_bytes, interpolated_source, refuse_lfs_pointer, sim_source,
                      sniff_csv)

SHOWN_REASONS = 20  # bad frames printed individually; the rest are only counted
SUMMARY_REASONS = 3  # bad-frame reasons repeated in the final summary


@dataclass
class Candidate:
    """A source found at the given path, opened on demand."""

    kind: str  # a FORMATS key
    description: str
    open: Callable[[], Source]


def _fail(message: str) -> Callable[[], Source]:
    def opener():
        raise ValueError(message)
    return opener


def _pair(folder: Path, kinds: dict, angle_unit: str, camera) -> Candidate:
    """camera.csv + steering.csv found by content in `folder` (`kinds`: CSV path -> sniffed format)."""
    cams = [p for p, k in kinds.items() if k == "camera"]
    steers = [p for p, k in kinds.items() if k == "steering"]
    names = ", ".join(p.name for p in cams + steers)
    if len(cams) == 1 and len(steers) == 1:
        return Candidate("camera-steering", f"{cams[0].name} + {steers[0].name} in {folder}",
                         lambda: camera_steering_source(cams[0], steers[0], angle_unit, camera))
    if not cams or not steers:
        have, lack = ("camera.csv", "steering.csv") if cams else ("steering.csv", "camera.csv")
        return Candidate("camera-steering", f"{names} in {folder}",
                         _fail(f"{folder}: has {have} but no {lack} (found {names}; a {lack} has the columns "
                               f"{','.join(BAGDUMP_STEERING if cams else BAGDUMP_IMAGE)})"))
    return Candidate("camera-steering", f"{names} in {folder}",
                     _fail(f"{folder}: several bagdump camera/steering CSVs ({names}); give one folder per dump"))


def find_sources(source, fmt: str = "auto", angle_unit: str = "rad", sim_max_angle: float = 25.0,
                 camera: str | None = None) -> list[Candidate]:
    """Every source at `source` (a file or a folder), recognised by content, in order of preference: bags,
    camera.csv + steering.csv, interpolated.csv, simulator logs, comma.ai. `fmt` keeps one format."""
    path = Path(source)
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (auto, {', '.join(FORMATS)})")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    found = _file_sources(path, angle_unit, sim_max_angle, camera) if path.is_file() else \
        _folder_sources(path, angle_unit, sim_max_angle, camera)
    chosen = [c for c in found if fmt in ("auto", c.kind)]
    if not chosen:
        kinds = ", ".join(sorted({c.kind for c in found}))
        raise ValueError(f"{path}: no {fmt} source (found: {kinds})")
    return chosen


def _file_sources(path: Path, angle_unit, sim_max_angle, camera) -> list[Candidate]:
    head = head_bytes(path)
    if head.startswith(LFS_MAGIC):
        refuse_lfs_pointer(path, {".bag": "ROS1 bag", ".csv": "CSV file", ".h5": "HDF5 file"}.get(
            path.suffix.lower(), "data file"))
    if path.suffix.lower() == ".bag" or head.startswith(BAG_MAGIC):
        return [Candidate("bag", str(path), lambda: bag_source([path], path, angle_unit, camera))]
    if head.startswith(HDF5_MAGIC) and path.parent.name in ("camera", "log"):
        root = path.parent.parent
        return [Candidate("comma", f"{path.stem} in {root}", lambda: comma_source(root, [path.stem], camera))]
    kind = sniff_csv(path)
    if kind == "interpolated":
        return [Candidate("interpolated", str(path), lambda: interpolated_source(path, angle_unit, camera))]
    if kind == "simulator":
        return [Candidate("simulator", str(path), lambda: sim_source(path, sim_max_angle, camera))]
    if kind in ("camera", "steering"):
        kinds = {p: sniff_csv(p) for p in sorted(path.parent.glob("*.csv")) if p != path}
        kinds = {p: k for p, k in kinds.items() if k == ("steering" if kind == "camera" else "camera")}
        kinds[path] = kind
        return [_pair(path.parent, kinds, angle_unit, camera)]
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace")
    raise ValueError(f"{path}: not a known Udacity source (its first line: {first[:80]!r}); expected a ROS1 bag, a "
                     f"bagdump CSV (columns {','.join(BAGDUMP_IMAGE)}[,angle,speed] or "
                     f"{','.join(BAGDUMP_STEERING)}), a simulator log ({','.join(SIM_COLUMNS)}, header optional), "
                     f"a comma.ai camera/ or log/ .h5 file, or a folder holding them")


def _folder_sources(path: Path, angle_unit, sim_max_angle, camera) -> list[Candidate]:
    entries = sorted(path.iterdir())
    if not entries:
        raise ValueError(f"folder {path} is empty (expected .bag files, bagdump CSVs (interpolated.csv, camera.csv "
                         f"+ steering.csv), a simulator driving log, or camera/ + log/ of the comma.ai layout)")
    found = []
    bags = [p for p in entries if p.is_file() and p.suffix.lower() == ".bag"]
    if bags:
        found.append(Candidate("bag", f"{len(bags)} bag(s) in {path}", lambda: bag_source(bags, path, angle_unit,
                                                                                         camera)))
    kinds = {p: sniff_csv(p) for p in entries if p.is_file() and p.suffix.lower() == ".csv"}
    if any(k in ("camera", "steering") for k in kinds.values()):
        found.append(_pair(path, {p: k for p, k in kinds.items() if k in ("camera", "steering")}, angle_unit, camera))
    for p in (p for p, k in kinds.items() if k == "interpolated"):
        found.append(Candidate("interpolated", str(p), lambda p=p: interpolated_source(p, angle_unit, camera)))
    sims = [p for p, k in kinds.items() if k == "simulator"]
    if len(sims) == 1:
        found.append(Candidate("simulator", str(sims[0]), lambda: sim_source(sims[0], sim_max_angle, camera)))
    elif sims:
        found.append(Candidate("simulator", f"{len(sims)} simulator logs in {path}",
                               _fail(f"{path}: several simulator logs ({', '.join(p.name for p in sims)}); "
                                     f"give one of them as SOURCE")))
    if (path / "camera").is_dir() and (path / "log").is_dir():
        found.append(Candidate("comma", f"camera/ + log/ in {path}", lambda: comma_source(path, None, camera)))
    if not found:
        for p in (p for p in kinds if head_bytes(p).startswith(LFS_MAGIC)):
            refuse_lfs_pointer(p, "CSV file")
        raise ValueError(f"folder {path} holds no known Udacity source (.bag files, bagdump CSVs with columns "
                         f"{','.join(BAGDUMP_IMAGE)}, a simulator log with columns {','.join(SIM_COLUMNS)} "
                         f"(header optional), or camera/ + log/ of the comma.ai layout)")
    return found


def open_source(source, fmt: str = "auto", angle_unit: str = "rad", sim_max_angle: float = 25.0,
                camera: str | None = None) -> Source:
    """The first source at `source` that opens; when none does, the error names each one's problem."""
    errors = []
    for c in find_sources(source, fmt, angle_unit, sim_max_angle, camera):
        try:
            return c.open()
        except ValueError as e:
            errors.append(str(e))
    raise ValueError(errors[0] if len(errors) == 1 else "; ".join(errors))


# ---------------------------------------------------------------- the ingest loop


@dataclass
class Summary:
    """What one source gave: the numbers `vbp data udacity` prints and stores (attribute preprocess.summary)."""

    source: str = ""
    rows: int = 0
    kept: int = 0
    slow: int = 0
    cameras: dict = field(default_factory=dict)  # frame id or topic -> records dropped for their camera
    bad: int = 0
    reasons: list = field(default_factory=list)  # the first SUMMARY_REASONS
    sessions: list = field(default_factory=list)  # {"start", "end" (s), "frames" (seen), "kept", "first_frame"}
    error: str = ""
    seconds: float = 0.0

    @property
    def fps(self) -> float:
        return (self.kept + self.slow + self.bad) / max(self.seconds, 1e-9)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "kept": self.kept, "dropped_speed": self.slow, "dropped_camera": self.cameras,
                "bad": self.bad, "bad_reasons": self.reasons, "sessions": len(self.sessions),
                "session_spans": self.sessions}

    def text(self) -> str:
        if self.error:
            return f"{self.source}: not used: {self.error}"
        cams = sum(self.cameras.values())
        out = (f"{self.source}: {self.rows} rows read, {self.kept} frames kept, {self.slow} dropped by speed, "
               f"{cams} dropped by camera" + (f" ({counts_text(self.cameras)})" if cams else "")
               + f", {self.bad} bad, {len(self.sessions)} session(s)")
        if self.reasons:
            out += "\n  first bad: " + "\n  first bad: ".join(self.reasons)
        return out


class _Sessions:
    """Splits frames into sessions where time goes backwards or jumps forward by more than SESSION_GAP."""

    def __init__(self, spans: list):
        self.spans = spans

    def see(self, t: float) -> None:
        last = self.spans[-1] if self.spans else None
        if last is None or t < last["end"] or t - last["end"] > SESSION_GAP:
            self.spans.append({"start": t, "end": t, "frames": 0, "kept": 0, "first_frame": None})
        self.spans[-1]["end"] = t
        self.spans[-1]["frames"] += 1

    def kept(self, index: int) -> None:
        span = self.spans[-1]
        if span["first_frame"] is None:
            span["first_frame"] = index
        span["kept"] += 1


class _Reporter:
    def __init__(self, writer: StoreWriter, summary: Summary):
        self.writer, self.summary = writer, summary

    def __call__(self, reason: str) -> None:
        self.writer.bad(reason)
        self.summary.bad += 1
        if len(self.summary.reasons) < SUMMARY_REASONS:
            self.summary.reasons.append(reason)
        if self.summary.bad <= SHOWN_REASONS:
            tqdm.write(f"vbp data udacity: skipping {reason}", file=sys.stderr)
        elif self.summary.bad == SHOWN_REASONS + 1:
            tqdm.write("vbp data udacity: more bad frames; only counting them from now on", file=sys.stderr)


def ingest(source: Source, out, views: list[View], min_speed: float = MIN_SPEED, batch: int = 64,
           progress: bool = True, summary: Summary | None = None) -> Summary:
    """Write a source's usable frames into a store; raises ValueError when none is usable."""
    summary = summary or Summary(f"{FORMATS[source.kind]} ({source.path})")
    summary.rows, summary.cameras = source.rows, dict(source.other_cameras)
    start = time.perf_counter()
    meta = {"ingest": source.kind, "min_speed_mps": min_speed, "views": {v.name: v.to_dict() for v in views},
            "angle": "steering wheel degrees, + left", **source.notes}
    expected = None
    sessions = _Sessions(summary.sessions)
    with StoreWriter(out, views, source=f"{source.kind}: {source.path}", preprocess=meta, fps=source.fps) as w:
        report = _Reporter(w, summary)
        for reason in source.bad:
            report(reason)
        buf: list = []
        for s in tqdm(source.samples, total=source.total, unit="frame", desc=f"vbp data udacity ({source.kind})",
                      disable=None if progress else True):
            sessions.see(s.timestamp)
            if s.angle is None:
                got = source.measurements.at(s.timestamp)
                if got is None:
                    report(f"{s.label}: no steering measurement within {MAX_GAP} s of its timestamp")
                    continue
                s.angle, s.speed = got
            if not s.speed > min_speed:
                summary.slow += 1
                continue
            try:
                img = s.load()
                h, w_ = img.shape[:2]
                if s.size is not None and s.size != (w_, h):
                    raise BadFrame(f"{s.label}: image is {w_}x{h}, the source says {s.size[0]}x{s.size[1]}")
                if expected is None:
                    expected = (w_, h)
                    if expected != (REFERENCE_W, REFERENCE_H):
                        tqdm.write(f"vbp data udacity: frames are {w_}x{h}, not the Udacity centre camera's "
                                   f"{REFERENCE_W}x{REFERENCE_H}; cropping to 4:3 and resizing", file=sys.stderr)
                elif (w_, h) != expected:
                    raise BadFrame(f"{s.label}: image is {w_}x{h}, expected {expected[0]}x{expected[1]} like the "
                                   f"first frame of this source")
            except BadFrame as e:
                report(str(e))
                continue
            sessions.kept(summary.kept + len(buf))
            buf.append((s, {v.name: prepare(img, v) for v in views}))
            if len(buf) >= batch:
                _flush(w, buf, views)
                summary.kept += len(buf)
                buf = []
        if buf:
            _flush(w, buf, views)
            summary.kept += len(buf)
        if summary.kept == 0:
            cams = sum(summary.cameras.values())
            raise ValueError(f"no usable frames in {source.path}: {summary.rows} rows read, {summary.bad} bad, "
                             f"{summary.slow} at or below {min_speed:g} m/s"
                             + (f", {cams} of other cameras ({counts_text(summary.cameras)})" if cams else ""))
        w.preprocess["summary"] = summary.to_dict()
    summary.seconds = time.perf_counter() - start
    return summary


def ingest_path(source, out, views: list[View], fmt: str = "auto", min_speed: float = MIN_SPEED,
                angle_unit: str = "rad", sim_max_angle: float = 25.0, camera: str | None = None,
                progress: bool = True) -> list[Summary]:
    """Ingest the first usable source found at `source` (a failing one does not hide the next); returns a
    Summary per source tried, the last one the source written. When none is usable, raises NoUsableSource."""
    tried = []
    for c in find_sources(source, fmt, angle_unit, sim_max_angle, camera):
        summary = Summary(f"{FORMATS[c.kind]} ({c.description})")
        tried.append(summary)
        try:
            ingest(c.open(), out, views, min_speed, progress=progress, summary=summary)
            return tried
        except ValueError as e:
            summary.error = str(e)
    raise NoUsableSource(tried)


class NoUsableSource(ValueError):
    """No source at the path gave a usable frame; `summaries` says what each one gave."""

    def __init__(self, summaries: list[Summary]):
        self.summaries = summaries
        super().__init__("; ".join(s.error for s in summaries))


def _flush(writer: StoreWriter, buf, views) -> None:
    writer.append(images={v.name: np.stack([imgs[v.name] for _, imgs in buf]) for v in views},
                  angle=[s.angle for s, _ in buf], speed=[s.speed for s, _ in buf],
                  timestamp=[s.timestamp for s, _ in buf], frame_id=[s.frame_id for s, _ in buf])

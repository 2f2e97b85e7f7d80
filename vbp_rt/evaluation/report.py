"""Tables and plots of `vbp eval`: Markdown, CSV and PNG, each written atomically (temp + rename)."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vbp_rt.extras import pyplot
from vbp_rt.files import atomic_write
from vbp_rt.overlay import overlay


@dataclass
class Table:
    """A result table: `rows` are lists aligned with `columns`; `note` is printed under it."""

    name: str  # file stem of the CSV
    title: str
    columns: list
    rows: list = field(default_factory=list)
    note: str = ""

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(fmt(c) for c in self.columns) + " |",
                 "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.columns))) + "|"]
        lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        for row in self.rows:
            w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
        return buf.getvalue()


def fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.3g}" if 0 < abs(v) < 0.01 else f"{v:.3f}"
    return str(v).replace("|", "\\|")


def save_figure(fig, path: Path, dpi: int = 90, colors: int = 0) -> None:
    """PNG of a matplotlib figure; `colors` > 0 quantizes to that many palette colours (smaller files)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    if colors:
        from PIL import Image
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").quantize(colors)
        buf = io.BytesIO()
        img.save(buf, format="png", optimize=True)
    atomic_write(path, buf.getvalue())


def line_plot(path: Path, x, curves: dict, xlabel: str, ylabel: str, title: str, xticks=None) -> None:
    """One line per entry of `curves` (label -> y values, or (y, style) to set the matplotlib style)."""
    plt = pyplot("the plots of vbp eval")
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, y in curves.items():
        y, style = y if isinstance(y, tuple) else (y, "-")
        ax.plot(x, y, style, label=label, linewidth=1.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if xticks is not None:
        ax.set_xticks(x)
        ax.set_xticklabels(xticks, rotation=45, ha="right")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    save_figure(fig, path)
    plt.close(fig)


def example_grid(path: Path, images: np.ndarray, lane: np.ndarray | None, masks: dict, stretch: float = 99.0) -> None:
    """Columns: frames; rows: the lane ground truth, then each method's overlay. For display only, each mask is
    divided by its `stretch` percentile and clipped (a few peak pixels would otherwise hide the rest)."""
    plt = pyplot("the plots of vbp eval")

    cols = [("ground truth", None)] + list(masks.items())
    n = len(images)
    fig, axes = plt.subplots(len(cols), n, figsize=(4.2 * n, 1.15 * len(cols)), squeeze=False)
    for j in range(n):
        for i, (name, m) in enumerate(cols):
            if m is None:
                pic = overlay(images[j], lane[j].astype(np.float32), 0.6, "red") if lane is not None else \
                    np.repeat(images[j][..., None], 3, axis=2)
            else:
                top = np.percentile(m[j], stretch)
                pic = overlay(images[j], np.clip(m[j] / top, 0, 1) if top > 0 else m[j])
            ax = axes[i, j]
            ax.imshow(pic[..., ::-1])
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.subplots_adjust(wspace=0.02, hspace=0.05)
    save_figure(fig, path, dpi=75, colors=128)
    plt.close(fig)


def write_report(out: Path, header: str, tables: list, figures: list, footer: str = "") -> None:
    """report.md (header, every table, the figures) and one CSV per table."""
    parts = [header]
    for t in tables:
        parts.append(t.markdown())
        atomic_write(out / f"{t.name}.csv", t.csv_text().encode())
    if figures:
        parts.append("### Plots\n\n" + "\n".join(f"![{title}]({name})" for name, title in figures) + "\n")
    if footer:
        parts.append(footer)
    atomic_write(out / "report.md", "\n".join(parts).encode())

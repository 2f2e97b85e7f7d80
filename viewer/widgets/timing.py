"""Live numbers: per-stage engine time (this frame, rolling median and p95), frames/s, drops, bad frames."""
from __future__ import annotations

from PyQt5.QtCore import Qt
from PyQt5.QtWidgets import QLabel


class TimingTable(QLabel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setTextFormat(Qt.RichText)
        self.setMinimumWidth(260)
        self.setStyleSheet("font-family: monospace;")
        self.values: dict = {}
        self.setText("no frames yet")

    def show_result(self, timings: dict, stats: dict, dropped: int, bad: int) -> None:
        """Show this frame's `timings` (ms) with the rolling `stats` (TimingStats.summary())."""
        self.values = {"timings": dict(timings), "stats": dict(stats), "dropped": dropped, "bad": bad}
        rows = ["<tr><th align=left>stage</th><th align=right>now</th><th align=right>median</th>"
                "<th align=right>p95</th></tr>"]
        for stage, ms in timings.items():
            s = stats.get(stage, {})
            rows.append(f"<tr><td>{stage}</td><td align=right>{ms:.1f}</td>"
                        f"<td align=right>{s.get('median', float('nan')):.1f}</td>"
                        f"<td align=right>{s.get('p95', float('nan')):.1f}</td></tr>")
        self.setText(f"<table cellspacing=4>{''.join(rows)}</table>"
                     f"<p>ms per frame &nbsp; <b>{stats.get('fps', 0.0):.1f} frames/s</b><br>"
                     f"dropped {dropped} &nbsp; bad frames {bad}</p>")

"""`vbp audit`: per-frame attention statistics over long drives, anomalies, attention modes, reports (docs/audit.md)."""

"""The `vbp view` front end: sources, the capture/inference pipeline, the Qt window, the training monitor, headless mode.

Everything here displays what the engine (`vbp_rt`) computes; no attribution math lives in this package.
Only `app`, `monitor` and `widgets` import Qt.
"""

"""The audit report: one self-contained page (no external resources), its parts present, opened in Debian's
headless chromium and screenshotted (skipped without chromium); report.md lists the same events."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.viewer_helpers import tiny_checkpoint, write_drive
from vbp_rt.cli import main

SCREENSHOT = Path(tempfile.gettempdir()) / "vbp-audit-report.png"


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("audit")
    model = str(tiny_checkpoint(d))
    drive = str(write_drive(d / "drive.h5", 60))
    assert main(["audit", drive, "--model", model, "--out", str(d / "out"), "--backend", "torch-cpu",
                 "--chunk", "32"]) == 0
    return d / "out"


def test_report_is_self_contained(audit_dir):
    page = (audit_dir / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r'(src|href)="(?!data:)', page)  # every image is inline
    assert page.count("data:image/png;base64,") >= 3
    assert "<svg" in page and "Attention modes" in page and "Events" in page
    md = (audit_dir / "report.md").read_text()
    assert "## Events" in md and "## Attention modes" in md


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(audit_dir, tmp_path):
    shot = tmp_path / "report.png"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
           (audit_dir / "report.html").resolve().as_uri()]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (2000, 1200)
    shutil.copy(shot, SCREENSHOT)
    # the page drew something: the thumbnails' red overlays and the timeline's lines, not a blank page
    b, g, r = (image[..., k].astype(int) for k in range(3))
    assert ((r - (g + b) // 2) > 80).sum() > 200  # red mask overlays (and the red score line)
    assert (image.std(axis=(0, 1)) > 20).all()
    assert (np.abs(b - r) > 60).sum() > 50  # the blue prediction line of the timeline

"""Shared fixtures: tiny networks, the shared real footage, GPU skips."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# exported graphs and demo drives go to a folder of this run, not the user's ~/.cache/vbp-rt
if "VBP_RT_CACHE" not in os.environ:
    os.environ["VBP_RT_CACHE"] = tempfile.mkdtemp(prefix="vbp-rt-test-cache-")
    atexit.register(shutil.rmtree, os.environ["VBP_RT_CACHE"], ignore_errors=True)
torch.set_num_threads(min(2, os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "real"


@pytest.fixture
def real_data_dir() -> Path:
    """../shared/data/real (small real highway clips and frames); skip when this checkout has none."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"no shared real footage at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    return torch.device("cuda")


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (eval mode)."""
    from vbp_rt.bench.latency import randomize_batchnorm
    return randomize_batchnorm(model, seed)

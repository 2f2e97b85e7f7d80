"""Stand-in for `vbp_rt.runtime` (torch on the CPU through `vbp_rt.explain`) until the engine's Runtime lands."""
from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from data.preprocess import VIEWS, prepare, view_for
from vbp_rt import explain, load_model


def available_backends() -> list:
    return ["torch-cpu"]


@dataclass
class RunResult:
    prediction: np.ndarray
    masks: dict
    timings: dict


class Runtime:
    def __init__(self, model, backend: str = "auto", methods=("vbp",), threads=None):
        if backend not in ("auto", "torch-cpu"):
            raise ValueError(f"backend {backend!r} is not available here (available: torch-cpu)")
        self.model = model if isinstance(model, nn.Module) else load_model(model)
        self.backend = "torch-cpu"
        self.config = self.model.config
        self.view = view_for(self.config.view, self.config.height) if self.config.view in VIEWS else None
        self.methods = tuple(methods)

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        if self.view is not None:
            return prepare(frame, self.view)
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        return cv2.resize(gray, (self.config.width, self.config.height), interpolation=cv2.INTER_AREA)

    def run(self, images: np.ndarray, methods=None) -> RunResult:
        x = torch.from_numpy(np.ascontiguousarray(images)).float().mul_(self.config.input_scale).unsqueeze(1)
        timings, masks = {}, {}
        t0 = time.perf_counter()
        with torch.no_grad():
            pred = self.model(x)
        timings["forward"] = (time.perf_counter() - t0) * 1e3
        for m in methods or self.methods:
            t = time.perf_counter()
            masks[m] = explain(self.model, x, method=m).mask.detach().numpy()
            timings[m] = (time.perf_counter() - t) * 1e3
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return RunResult(pred.numpy(), masks, timings)

"""`vbp data screen`: pick synthetic drives by their steering labels without rendering them.

The labels of a drive depend on its road and driver only (data.synth.road_and_driver), so they can be
simulated at thousands of frames per second; rendering the same drive runs at tens. This finds, for
example, the seeds whose first 400 frames hold a sharp curve, to add them to a training set.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .synth import SynthOptions, road_and_driver


LAYOUT = ("lane_width", "lanes_right", "lanes_left", "oncoming", "line_width", "paint", "wear", "shoulder", "sun",
          "shadows")


def replay(options: SynthOptions, layout: bool = False) -> tuple:
    """One simulation of the drive: its labels and, with `layout`, its averaged road layout (else None)."""
    road, driver = road_and_driver(options)
    labels, rows = np.empty(options.frames), []
    for i in range(options.frames):
        s = driver.step().s
        labels[i] = driver.wheel_angle_deg
        if layout:
            sec = road.section(s)
            rows.append([float(getattr(sec, name)) for name in LAYOUT]
                        + [float(np.mean(sec.asphalt)), float(sec.lanes_right >= 1 and sec.lanes_left > sec.oncoming)])
    return labels, (dict(zip(LAYOUT + ("asphalt_gray", "middle_lane"), np.mean(rows, axis=0).tolist())) if layout
                    else None)


def drive_labels(options: SynthOptions) -> np.ndarray:
    """The steering labels (degrees, + left) `vbp data synth` writes for these options, one per frame."""
    return replay(options)[0]


def drive_layout(options: SynthOptions) -> dict:
    """The road section under the car at each frame of the drive, averaged: the `LAYOUT` attributes of
    `data.road.Section`, the asphalt's gray (0-255) and `middle_lane`, the share of frames with same-direction
    lanes on both sides of the ego lane."""
    return replay(options, layout=True)[1]


@dataclass
class Screened:
    seed: int
    beyond: int  # frames with |label| > the threshold
    mean: float  # mean label, degrees
    peak: float  # largest |label|, degrees
    layout: dict | None = None  # drive_layout's columns, when asked for


def screen(seeds, frames: int, threshold: float, progress: bool = True, layout: bool = False) -> list:
    """Screened rows for each seed: how many of its `frames` labels lie beyond +-threshold degrees (and, with
    `layout`, its road layout, from the same simulation)."""
    rows = []
    for seed in tqdm(list(seeds), desc="screen", unit="seed", disable=not progress, file=sys.stderr):
        a, lay = replay(SynthOptions(frames=frames, seed=seed), layout)
        rows.append(Screened(seed, int(np.sum(np.abs(a) > threshold)), float(a.mean()), float(np.abs(a).max()), lay))
    return rows

"""Seed lists for synthetic drives: "1001-1008", "11,12,90417", "125-699"."""
from __future__ import annotations

import re

_SEEDS = re.compile(r"^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$")


def is_seed_list(text: str) -> bool:
    """True for "201", "201-204", "11,12,1001-1008" (not for a path)."""
    return bool(_SEEDS.match(str(text)))


def parse_seeds(text: str) -> list:
    """"1001-1004,7" -> [1001, 1002, 1003, 1004, 7]; ValueError for anything else."""
    if not is_seed_list(text):
        raise ValueError(f"expected seeds like 1001-1008 or 11,12,90417, got {text!r}")
    seeds = []
    for part in str(text).split(","):
        lo, _, hi = part.strip().partition("-")
        lo, hi = int(lo), int(hi or lo)
        if hi < lo:
            raise ValueError(f"seed range {part.strip()!r} runs backwards")
        seeds += range(lo, hi + 1)
    return seeds

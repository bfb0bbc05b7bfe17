"""Sparsity schedules: pure functions of the step."""

from __future__ import annotations

import math

SCHEDULES = ("linear", "cosine")


def target_sparsity(step: int, steps: int, final: float, kind: str = "linear") -> float:
    """Target parameter sparsity after step ``step`` of ``steps`` (step 0 = dense, step T = final).

    ``linear`` rises evenly (the reference); ``cosine`` rises as ``(1 - cos(pi t / T)) / 2``:
    small steps at the start and the end, where scores change fastest relative to the model.
    """
    if not 0 <= step <= steps:
        raise ValueError(f"step {step} outside 0..{steps}")
    frac = step / steps
    if kind == "linear":
        return final * frac
    if kind == "cosine":
        return final * (1 - math.cos(math.pi * frac)) / 2
    raise ValueError(f"unknown schedule {kind!r}; choose from {', '.join(SCHEDULES)}")

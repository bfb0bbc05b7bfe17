"""Standard errors of the evaluation's proportions (exact match, accuracy), as lm-eval reports them."""

from __future__ import annotations

import math


def proportion_stderr(hits: int, n: int) -> float:
    """Standard error of ``hits / n``: the sample standard deviation over sqrt n, sqrt(p(1-p)/(n-1))."""
    if n < 2:
        return 0.0
    p = hits / n
    return math.sqrt(p * (1 - p) / (n - 1))


def paired_stderr(only_a: int, only_b: int, n: int) -> float:
    """Standard error of the difference in accuracy of two models scored on the same ``n`` items,
    ``only_a`` right only for the first and ``only_b`` only for the second: the sample standard
    deviation of the per-item differences (+1, -1, 0) over sqrt n. Pairing removes the items' shared
    difficulty, so it is far smaller than two independent standard errors combined."""
    if n < 2:
        return 0.0
    mean = (only_a - only_b) / n
    var = (only_a * (1 - mean) ** 2 + only_b * (-1 - mean) ** 2 + (n - only_a - only_b) * mean ** 2) / (n - 1)
    return math.sqrt(var / n)

"""Standard errors of the evaluation's proportions (exact match, accuracy), as lm-eval reports them."""

from __future__ import annotations

import math


def proportion_stderr(hits: int, n: int) -> float:
    """Standard error of ``hits / n``: the sample standard deviation over sqrt n, sqrt(p(1-p)/(n-1))."""
    if n < 2:
        return 0.0
    p = hits / n
    return math.sqrt(p * (1 - p) / (n - 1))

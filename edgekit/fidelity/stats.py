"""Confidence intervals for gate figures, and how many samples would decide a verdict.

A gate figure measured on a few samples is a guess: 11 of 12 agreeing is 91.7 %, but anything
from 65 % to 99 % is consistent with it. The gate refuses only what the data show to be below
the threshold, and says how many samples would settle the rest.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 %


def wilson(successes: float, n: int, z: float = Z95) -> Optional[tuple[float, float]]:
    """Wilson score interval of a rate (Wilson 1927): sound at 0 %, 100 % and small n, unlike
    the normal approximation. ``None`` for ``n == 0``."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values, z: float = Z95) -> Optional[tuple[float, float]]:
    """Normal-approximation interval of the mean of per-sample values (``None`` below 2)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return None
    half = z * float(np.std(v, ddof=1)) / math.sqrt(v.size)
    return float(np.mean(v) - half), float(np.mean(v) + half)


def samples_to_decide_rate(rate: float, threshold: float, *, limit: int = 100_000) -> Optional[int]:
    """Samples needed for the Wilson interval of ``rate`` to fall wholly on one side of
    ``threshold`` (the rate held as measured); ``None`` when the rate equals the threshold."""
    if rate == threshold:
        return None
    n = 2
    while n <= limit:
        lo, hi = wilson(rate * n, n)
        if hi < threshold or lo >= threshold:
            return n
        n = int(n * 1.25) + 1
    return None


def samples_to_decide_mean(mean: float, sd: float, threshold: float, *, z: float = Z95) -> Optional[int]:
    """Samples for a mean's normal interval to exclude ``threshold`` (spread held as measured)."""
    gap = abs(mean - threshold)
    if gap == 0 or not math.isfinite(sd):
        return None
    return max(2, math.ceil((z * sd / gap) ** 2))

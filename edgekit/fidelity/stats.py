"""Confidence intervals for gate figures, and how many samples would decide a verdict.

A gate figure measured on a few samples is a guess: 11 of 12 agreeing is 91.7 %, but anything
from 65 % to 99 % is consistent with it. The gate refuses only what the data show to be below
the threshold, and says how many samples would settle the rest.

The interval follows the sampling unit, the eval sample:
- a rate with one outcome per sample (top-1 agreement, exact match): the Wilson score interval;
- a mean of per-sample values (mask IoU, cosine): the normal interval of the mean;
- a figure pooled over everything the samples hold (detection recall / precision / F1: every
  detection of every image counted together): a seeded percentile bootstrap over the samples
  (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13; the cluster bootstrap
  of Davison & Hinkley, *Bootstrap Methods*, 1997, sec. 3.8): whole samples are drawn with
  replacement and the pooled ratio recomputed, so one image's detections (and the several
  anchors that see one face) stay together and fail together. A Wilson interval over the
  detections would treat each as independent and be far too narrow.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 %

# How each interval was made, as the metric record names it.
CI_WILSON = "wilson"
CI_MEAN = "normal-mean"
CI_BOOTSTRAP = "bootstrap-samples"
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20260  # fixed: the same data give the same interval, run after run


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


def bootstrap_ratio(numerators, denominators, *, resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> Optional[tuple[float, float]]:
    """95 % interval of a pooled ratio ``sum(numerators) / sum(denominators)`` with the
    samples (not the items they hold) as the unit: a seeded percentile bootstrap over samples.

    Args:
        numerators / denominators: one count per eval sample, e.g. ``2 * true_positives`` and
            ``reference + artifact detections`` for F1.
        resamples: bootstrap draws (each draws ``n`` samples with replacement).
        seed: the generator's seed; the interval is a pure function of the counts.

    Returns:
        ``(low, high)``, or ``None`` when no sample has a denominator. A draw whose
        denominators sum to 0 is left out. When every sample shows the same ratio (all perfect,
        typically) resampling cannot show any spread; the interval is then the Wilson interval
        of that rate with each sample one outcome, so a clean run on 8 images is not read as
        certainty.
    """
    num = np.asarray(numerators, dtype=np.float64).reshape(-1)
    den = np.asarray(denominators, dtype=np.float64).reshape(-1)
    if num.shape != den.shape:
        raise ValueError(f"numerators {num.shape} and denominators {den.shape} differ in length")
    if num.size == 0 or den.sum() <= 0:
        return None
    n = num.size
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    d = den[idx].sum(axis=1)
    keep = d > 0
    ratios = num[idx].sum(axis=1)[keep] / d[keep]
    lo, hi = (float(v) for v in np.quantile(ratios, [0.025, 0.975]))
    if hi - lo <= 1e-12:  # every sample gives the same ratio: no spread to resample
        used = int(np.count_nonzero(den > 0))
        rate = float(num.sum() / den.sum())
        return wilson(rate * used, used)
    return lo, hi


def samples_to_decide_interval(value: float, ci, n: int, threshold: float) -> Optional[int]:
    """Samples for a bootstrap (or any root-n) interval around ``value`` to exclude
    ``threshold``: its half-width on the threshold's side shrinks as ``1 / sqrt(n)``, the spread
    between samples held as measured. ``None`` when it cannot be told (no interval, no samples,
    the value on the threshold)."""
    if not ci or not n or value == threshold:
        return None
    edge = ci[1] if value < threshold else ci[0]
    reach, gap = abs(edge - value), abs(threshold - value)
    if reach < gap:  # already decided
        return n
    return max(n + 1, math.ceil(n * (reach / gap) ** 2))

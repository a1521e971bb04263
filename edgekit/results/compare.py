"""Noise-aware comparison of two results: ``compare(base, new)`` judges each metric against the
spread of the runs themselves."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

from edgekit.errors import InputError
from edgekit.results.model import Result


@dataclass
class MetricDelta:
    """One metric of NEW against BASE, with the noise band used to judge it."""

    name: str
    base: Optional[float]
    new: Optional[float]
    delta: Optional[float]
    threshold: Optional[float]
    verdict: str  # "regression", "improvement", "within noise", "n/a"
    higher_is_better: bool = False


@dataclass
class Comparison:
    """BASE vs NEW; ``regressions`` lists the metric names that got worse beyond noise."""

    base_id: int
    new_id: int
    same_artifact: bool
    same_device: bool
    metrics: list[MetricDelta]

    @property
    def regressions(self) -> list[str]:
        return [m.name for m in self.metrics if m.verdict == "regression"]

    def to_dict(self) -> dict:
        return {"base_id": self.base_id, "new_id": self.new_id, "same_artifact": self.same_artifact,
                "same_device": self.same_device, "regressions": self.regressions,
                "metrics": [asdict(m) for m in self.metrics]}


def latency_noise(lat: dict) -> float:
    """The noise band of a latency median, from the spread of the runs themselves.

    The jitter of one run is taken as the larger of the inter-run std and the p50..p90 gap; the
    median's uncertainty shrinks with sqrt(runs) but never below a quarter of that jitter, since
    runs on one board are not independent (thermal state, background load, frequency changes).
    """
    spread = max(lat.get("std") or 0.0, (lat.get("p90") or 0.0) - (lat.get("p50") or 0.0))
    runs = max(int(lat.get("runs") or 1), 1)
    return max(1.2533 * spread / math.sqrt(runs), 0.25 * spread)


def _judge(name, base, new, threshold, higher_is_better=False) -> MetricDelta:
    if base is None or new is None:
        return MetricDelta(name, base, new, None, threshold, "n/a", higher_is_better)
    delta = new - base
    worse = -delta if higher_is_better else delta
    verdict = ("regression" if worse > threshold else
               "improvement" if worse < -threshold else "within noise")
    return MetricDelta(name, base, new, delta, threshold, verdict, higher_is_better)


def compare(base: Result, new: Result) -> Comparison:
    """Judge NEW against BASE, metric by metric, with noise-aware thresholds.

    Latency (p50, mean): the combined noise band of both runs (``latency_noise``) times 3.
    Peak RSS: 2% of BASE or 1 MiB, whichever is larger (allocators round up).
    Accuracy: two binomial standard errors of the two eval sets combined.

    Raises:
        InputError: one of the results has no measurements.
    """
    for r in (base, new):
        if not r.ok:
            raise InputError(f"result {r.id} has no measurements ({r.error}); compare two "
                             "successful results")
    bl, nl = base.metrics["latency_ms"], new.metrics["latency_ms"]
    lat_thr = 3 * math.hypot(latency_noise(bl), latency_noise(nl))
    metrics = [_judge("latency_p50_ms", bl["p50"], nl["p50"], lat_thr),
               _judge("latency_mean_ms", bl["mean"], nl["mean"], lat_thr)]
    bm, nm = base.metrics.get("memory") or {}, new.metrics.get("memory") or {}
    if bm.get("peak_rss_bytes") and nm.get("peak_rss_bytes"):
        thr = max(0.02 * bm["peak_rss_bytes"], 1 << 20)
        metrics.append(_judge("peak_rss_bytes", bm["peak_rss_bytes"], nm["peak_rss_bytes"], thr))
    ba, na = base.metrics.get("accuracy"), new.metrics.get("accuracy")
    if ba and na:
        p = (ba["top1"] + na["top1"]) / 2
        se = math.sqrt(max(p * (1 - p), 1e-6) * (1 / ba["samples"] + 1 / na["samples"]))
        metrics.append(_judge("accuracy_top1", ba["top1"], na["top1"], 2 * se, True))
    return Comparison(base.id, new.id, base.artifact.get("sha256") == new.artifact.get("sha256"),
                      base.device == new.device, metrics)

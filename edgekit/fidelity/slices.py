"""Slices of one output whose values mean different things, each measured on its own.

A detector that concatenates box coordinates (0..320) with class scores (0..1) along one axis keeps
a fine SQNR overall (the signal *is* the boxes) while the scores, 300 times smaller, can be crushed
to a couple of int8 levels. So for each axis we look at how large the values at each index are,
and where the indices fall into groups of very different size (more than ``SPLIT_RATIO`` apart
at the widest gap), each group is measured alone. Groups whose reference barely moves (constant or
near zero next to the output's range) carry no signal for an SQNR: they are judged by their error
relative to the output's range instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from edgekit.fidelity.metrics import sqnr_db

# Index groups whose magnitudes differ by more than this (at the widest gap) are measured apart:
# box coordinates vs sigmoid scores differ by ~300x; channels of one feature map by < 10x.
SPLIT_RATIO = 30.0
# Axes longer than this are positions (anchors, pixels, tokens), not meanings: never split.
MAX_AXIS = 4096
# A group whose reference spans less than this share of the output's range has no signal of its
# own to measure an SQNR against (an absent class, a constant channel).
FLAT_SHARE = 1e-3


@dataclass
class SliceResult:
    """One group of indices along one axis of an output, and how close the artifact is there."""

    axis: int
    label: str
    sqnr_db: Optional[float]
    rel_error: float
    flat: bool

    def to_dict(self) -> dict:
        return {"axis": self.axis, "slice": self.label, "sqnr_db": self.sqnr_db,
                "rel_error": self.rel_error, "judged_by": "rel_error" if self.flat else "sqnr_db"}


def _label(idx: np.ndarray) -> str:
    idx = np.sort(idx)
    if idx.size and idx[-1] - idx[0] + 1 == idx.size:
        return f"{int(idx[0])}:{int(idx[-1]) + 1}"
    shown = ",".join(str(int(i)) for i in idx[:6])
    return f"[{shown}{',...' if idx.size > 6 else ''}] ({idx.size} indices)"


def split_axis(ref: np.ndarray, axis: int) -> Optional[list[np.ndarray]]:
    """Index groups along ``axis`` (sample axis 0 excluded) by magnitude, or ``None`` when the
    indices are all of one kind."""
    size = ref.shape[axis]
    if size < 2 or size > MAX_AXIS:
        return None
    other = tuple(a for a in range(ref.ndim) if a != axis)
    mag = np.max(np.abs(ref), axis=other).astype(np.float64)
    top = float(mag.max())
    if top <= 0 or not math.isfinite(top):
        return None
    logs = np.log10(np.maximum(mag, top * 1e-12))
    order = np.argsort(logs)
    gaps = np.diff(logs[order])
    if gaps.size == 0:
        return None
    cut = int(np.argmax(gaps))
    if gaps[cut] < math.log10(SPLIT_RATIO):
        return None
    return [order[:cut + 1], order[cut + 1:]]


def measure_slices(ref: np.ndarray, got: np.ndarray) -> list[SliceResult]:
    """Every magnitude group of every axis of one output (``[samples, ...]``), worst first."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    span = float(np.max(ref) - np.min(ref)) if ref.size else 0.0
    out = []
    for axis in range(1, ref.ndim):
        groups = split_axis(ref, axis)
        if not groups:
            continue
        for idx in groups:
            r = np.take(ref, idx, axis=axis)
            g = np.take(got, idx, axis=axis)
            out.append(judge(r, g, span, axis, _label(idx)))
    out.sort(key=lambda s: (not s.flat, s.sqnr_db if s.sqnr_db is not None else math.inf))
    return out


def judge(ref: np.ndarray, got: np.ndarray, span: float, axis: int, label: str) -> SliceResult:
    """SQNR for a slice with a signal of its own, else RMS error relative to the output's span."""
    rms = float(np.sqrt(np.mean((ref - got) ** 2))) if ref.size else 0.0
    rel = rms / span if span > 0 else (0.0 if rms == 0 else math.inf)
    own = float(np.max(ref) - np.min(ref)) if ref.size else 0.0
    flat = span == 0 or own < FLAT_SHARE * span
    return SliceResult(axis, label, None if flat else sqnr_db(ref, got), rel, flat)


def worst_slice(slices: list[SliceResult], *, max_rel_error: float) -> Optional[SliceResult]:
    """The slice that is furthest from its bar: the lowest SQNR among slices with a signal, or a
    flat slice whose relative error is over ``max_rel_error``."""
    flat_bad = [s for s in slices if s.flat and s.rel_error > max_rel_error]
    if flat_bad:
        return max(flat_bad, key=lambda s: s.rel_error)
    signal = [s for s in slices if not s.flat]
    return min(signal, key=lambda s: s.sqnr_db) if signal else None

"""Per-sample closeness measures, one per kind of output."""

from __future__ import annotations

import math

import numpy as np

# SQNR of identical outputs is infinite; JSON has no infinity, so it is reported as this ceiling.
SQNR_CEILING_DB = 200.0


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``got`` against ``ref`` in dB (higher is closer)."""
    ref = np.asarray(ref, dtype=np.float64)
    noise = float(np.sum((ref - np.asarray(got, dtype=np.float64)) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return SQNR_CEILING_DB
    if signal == 0.0 or not math.isfinite(noise):
        return -SQNR_CEILING_DB
    return max(-SQNR_CEILING_DB, min(SQNR_CEILING_DB, 10.0 * math.log10(signal / noise)))


def cosine_per_sample(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample's flattened output to the reference's."""
    r = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    g = np.asarray(got, dtype=np.float64).reshape(len(got), -1)
    num = np.sum(r * g, axis=1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
    both_zero = (np.linalg.norm(r, axis=1) == 0) & (np.linalg.norm(g, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return np.where(both_zero, 1.0, cos)


def iou_per_sample(ref_mask: np.ndarray, got_mask: np.ndarray) -> np.ndarray:
    """Intersection over union of boolean masks, per sample; two empty masks agree (1.0)."""
    r = ref_mask.reshape(len(ref_mask), -1)
    g = got_mask.reshape(len(got_mask), -1)
    inter = np.sum(r & g, axis=1)
    union = np.sum(r | g, axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def class_masks(maps: np.ndarray, channel_axis: int, threshold: float) -> np.ndarray:
    """Boolean masks of a segmentation output: the arg-max class (several channels summing to
    one, or logits) one-hot along the channel axis, else each channel thresholded."""
    c = maps.shape[channel_axis]
    if c == 1:
        return maps >= threshold
    arg = np.argmax(maps, axis=channel_axis)
    return np.stack([arg == k for k in range(c)], axis=channel_axis)


def topk_agreement(ref: np.ndarray, got: np.ndarray, k: int = 5) -> float:
    """Share of samples whose reference top-1 class is among the artifact's top ``k``."""
    k = min(k, ref.shape[1])
    top = np.argsort(-got, axis=1)[:, :k]
    return float(np.mean(np.any(top == np.argmax(ref, 1)[:, None], axis=1)))

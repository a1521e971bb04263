"""What each output of a model is for, and the measure a user of that output would judge by.

Every output gets a task, auto-detected from its shape and values unless the user names one:
- ``classification`` ``[N, C]``: top-1 agreement with the source (accuracy with labels), top-5;
- ``detection``: YOLO-style ``[N, 4+C, A]`` / ``[N, A, 5+C]`` heads, SSD-style boxes + scores
  pairs and raw anchor heads (regressors ``[N, A, 4+2K]`` + score logits ``[N, A, C]``, as
  MediaPipe's BlazeFace): the source's detections are the ground truth, the artifact's F1 /
  recall / precision / mAP@0.5 against them;
- ``segmentation``: probability or class maps ``[N, C, H, W]`` / ``[N, H, W, C]`` / ``[N, H, W]``:
  IoU of the thresholded (or arg-max) masks;
- ``embedding``: L2-normalised ``[N, D]`` vectors: cosine similarity;
- ``regression``: anything else: SQNR of the worst slice (:mod:`edgekit.fidelity.slices`).
Integer outputs are compared exactly; an output that repeats an input (token ids passed through)
is a ``passthrough`` and proves nothing; an output the source gives identically for every sample
is ``constant`` and cannot be judged.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Optional

import numpy as np

from edgekit.artifact import OutputFidelity
from edgekit.fidelity import detection as det
from edgekit.fidelity.metrics import (
    class_masks,
    cosine_per_sample,
    iou_per_sample,
    sqnr_db,
    topk_agreement,
)
from edgekit.fidelity.slices import measure_slices, worst_slice
from edgekit.fidelity.stats import (
    CI_BOOTSTRAP,
    CI_MEAN,
    CI_WILSON,
    bootstrap_ratio,
    mean_interval,
    wilson,
)


class Task(str, Enum):
    """What a model's outputs are for; ``AUTO`` detects it per output."""

    AUTO = "auto"
    CLASSIFICATION = "classification"
    DETECTION = "detection"
    SEGMENTATION = "segmentation"
    EMBEDDING = "embedding"
    REGRESSION = "regression"


PASSTHROUGH = "passthrough"
CONSTANT = "constant"
INTEGER = "integer"

# The metric each task is judged by (higher is better for all of them).
METRIC = {Task.CLASSIFICATION: "top1_agreement", Task.DETECTION: "detection_f1",
          Task.SEGMENTATION: "mask_iou", Task.EMBEDDING: "cosine", Task.REGRESSION: "sqnr_db",
          INTEGER: "exact_match"}

SEG_THRESHOLD = 0.5
MIN_MAP_SIDE = 8
# A flat slice (no signal of its own) may carry this RMS error, relative to its output's range:
# quantized, ~9x int8's ideal rounding noise (LSB/sqrt(12) = 0.11 %); float, near-exact.
FLAT_REL_ERROR = {"quantized": 1e-2, "float": 1e-3}


def _in_unit(a: np.ndarray) -> bool:
    return bool(a.size) and float(np.min(a)) >= -1e-3 and float(np.max(a)) <= 1 + 1e-3


def yolo_layout(ref: np.ndarray) -> Optional[str]:
    """``"v8"`` for ``[N, 4+C, A]``, ``"v5"`` for ``[N, A, 5+C]``, else ``None``: the attribute
    axis is the short one, its first four attributes are wide box coordinates, the rest scores."""
    if ref.ndim != 3:
        return None
    attrs_first = ref.shape[1] < ref.shape[2]
    rows = np.moveaxis(ref, 1, 2) if attrs_first else ref  # [N, A, attrs]
    if rows.shape[2] < 5 or rows.shape[1] < 16:
        return None
    boxes, rest = rows[..., :4], rows[..., 4:]
    if not _in_unit(rest) or float(np.max(np.abs(boxes))) <= 1.5:
        return None
    return "v8" if attrs_first else "v5"


def map_channel_axis(ref: np.ndarray) -> Optional[int]:
    """Channel axis of a map ``[N, C, H, W]`` / ``[N, H, W, C]`` (or ``[N, H, W]`` → -1 means no
    channel axis), or ``None`` when the output is not map-shaped."""
    if ref.ndim == 3 and min(ref.shape[1:]) >= MIN_MAP_SIDE:
        return -1
    if ref.ndim != 4:
        return None
    if ref.shape[1] <= ref.shape[3] and min(ref.shape[2:]) >= MIN_MAP_SIDE:
        return 1
    if min(ref.shape[1:3]) >= MIN_MAP_SIDE:
        return 3
    return None


def detect_task(ref: np.ndarray) -> Task:
    """The task of one float output from its reference values ``[N, ...]``."""
    if yolo_layout(ref):
        return Task.DETECTION
    axis = map_channel_axis(ref)
    if axis is not None and _in_unit(ref) and (axis == -1 or ref.shape[axis] <= 256):
        return Task.SEGMENTATION
    if ref.ndim == 2 and ref.shape[1] >= 16:
        norms = np.linalg.norm(ref.astype(np.float64), axis=1)
        if np.all(np.abs(norms - 1.0) < 1e-2):
            return Task.EMBEDDING
    if ref.ndim == 2 and ref.shape[1] > 1:
        return Task.CLASSIFICATION
    return Task.REGRESSION


def _metric(name, value, ci=None, samples=None, ci_method=None, **extra) -> dict:
    """One gate figure: ``samples`` counts eval samples (the interval's unit), ``ci_method``
    names how the interval was made (:mod:`edgekit.fidelity.stats`)."""
    out = {"name": name, "value": None if value is None else float(value),
           "ci": None if ci is None else [float(ci[0]), float(ci[1])], "samples": samples}
    if ci is not None and ci_method is not None:
        out["ci_method"] = ci_method
    out.update(extra)
    return out


def judge_output(name: str, ref: np.ndarray, got: np.ndarray, *, task: Task = Task.AUTO,
                 precision_kind: str = "quantized", inputs: Optional[dict] = None,
                 labels=None) -> OutputFidelity:
    """Measure one output of the artifact against the source's, by its task.

    Args:
        name: output name.
        ref / got: the source's and the artifact's values, ``[samples, ...]``, same shape.
        task: the user's task, or ``AUTO``; a task the output's shape cannot have falls back
            to auto-detection.
        precision_kind: ``"quantized"`` or ``"float"``: how much error a flat slice may carry.
        inputs: the verification inputs, to recognise outputs that pass an input through.
        labels: class ids per sample, for a classification output's accuracy.

    Returns:
        The output's fidelity record.
    """
    n = int(ref.shape[0]) if ref.ndim else 1
    reff = np.asarray(ref, dtype=np.float64)
    gotf = np.asarray(got, dtype=np.float64)
    finite = np.isfinite(gotf)
    nonfinite = int(gotf.size - np.count_nonzero(finite))
    err = np.abs(reff - gotf)
    max_abs = float(np.max(err)) if err.size and nonfinite == 0 else (math.inf if nonfinite else 0.0)
    of = OutputFidelity(name, max_abs, sqnr_db(reff, gotf) if nonfinite == 0 else -200.0)
    of.samples = n
    of.nonfinite = nonfinite
    for feed_name, arr in (inputs or {}).items():
        if np.shape(arr) == np.shape(ref) and np.array_equal(np.asarray(arr), ref):
            of.task, of.note = PASSTHROUGH, f"repeats input {feed_name!r}: not judged"
            return of
    if n >= 2 and np.all(reff == reff[:1]):
        of.task = CONSTANT
        of.note = ("the source gives this output identically for every sample: a comparison "
                   "proves nothing (an untrained model, or inputs that do not reach it)")
        if labels is not None and reff.ndim == 2 and reff.shape[1] > 1:
            # the accuracies are still facts (both at one class's share), for the record
            labels = np.asarray(labels).reshape(-1)
            of.details = {"accuracy": float(np.mean(np.argmax(gotf, 1) == labels)),
                          "source_accuracy": float(np.mean(np.argmax(reff, 1) == labels))}
        return of
    varies = n >= 2 and not np.all(reff == reff[:1])
    of.collapsed = bool(varies and nonfinite == 0 and np.all(gotf == gotf[:1]))
    if np.asarray(ref).dtype.kind in "iub":
        same = np.all((reff == gotf).reshape(n, -1), axis=1)
        of.task = INTEGER
        of.metric = _metric("exact_match", np.mean(same), wilson(int(np.sum(same)), n), n,
                            CI_WILSON)
        return of

    kind = task if task != Task.AUTO else detect_task(reff)
    slices = measure_slices(reff, gotf) if nonfinite == 0 else []
    ws = worst_slice(slices, max_rel_error=FLAT_REL_ERROR[precision_kind])
    if ws is not None:
        of.worst_slice = ws.to_dict()
    judged = _judge_task(kind, reff, gotf, labels)
    if judged is None:  # the named task does not fit this output's shape
        kind = detect_task(reff)
        judged = _judge_task(kind, reff, gotf, labels)
    of.task, (of.metric, of.details) = kind.value, judged
    return of


def _judge_task(kind: Task, ref, got, labels):
    n = len(ref)
    if kind == Task.CLASSIFICATION:
        if ref.ndim != 2 or ref.shape[1] < 2:
            return None
        agree = np.argmax(ref, 1) == np.argmax(got, 1)
        details = {"top5_agreement": topk_agreement(ref, got, 5)}
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            details["accuracy"] = float(np.mean(np.argmax(got, 1) == labels))
            details["source_accuracy"] = float(np.mean(np.argmax(ref, 1) == labels))
        return _metric("top1_agreement", np.mean(agree), wilson(int(np.sum(agree)), n), n,
                       CI_WILSON), details
    if kind == Task.DETECTION:
        layout = yolo_layout(ref) or ("v8" if ref.ndim == 3 and ref.shape[1] < ref.shape[2]
                                      else "v5" if ref.ndim == 3 else None)
        if layout is None:
            return None
        cmp = det.compare(det.decode_yolo(ref, layout), det.decode_yolo(got, layout))
        return _detection_metric(cmp, layout)
    if kind == Task.SEGMENTATION:
        axis = map_channel_axis(ref)
        if axis is None:
            return None
        if axis == -1:
            rm, gm = ref >= SEG_THRESHOLD, got >= SEG_THRESHOLD
        else:
            rm, gm = class_masks(ref, axis, SEG_THRESHOLD), class_masks(got, axis, SEG_THRESHOLD)
        ious = iou_per_sample(rm, gm)
        return (_metric("mask_iou", np.mean(ious), mean_interval(ious), n, CI_MEAN, sd=_sd(ious)),
                {"min_iou": float(np.min(ious)), "threshold": SEG_THRESHOLD,
                 "channel_axis": axis})
    if kind == Task.EMBEDDING:
        cos = cosine_per_sample(ref, got)
        return (_metric("cosine", np.mean(cos), mean_interval(cos), n, CI_MEAN, sd=_sd(cos)),
                {"min_cosine": float(np.min(cos))})
    # regression: the worst slice's SQNR (the whole output when nothing splits)
    return _metric("sqnr_db", sqnr_db(ref, got), None, n), {}


def _sd(v) -> Optional[float]:
    v = np.asarray(v, dtype=np.float64)
    return float(np.std(v, ddof=1)) if v.size > 1 else None


def _detection_metric(cmp: dict, layout: str):
    """F1 at IoU 0.5, its interval (and recall's and precision's) from a bootstrap over the eval
    samples: the figures pool every detection, but the samples are what was drawn, and one
    image's detections fail together (:func:`edgekit.fidelity.stats.bootstrap_ratio`)."""
    cmp = dict(cmp)
    counts = cmp.pop("per_sample")
    n = int(len(counts))
    n_ref, n_got = cmp["reference_detections"], cmp["artifact_detections"]
    if n_ref == 0 and n_got == 0:
        return _metric("detection_f1", None, None, n), {**cmp, "layout": layout,
                                                         "note": "no detections in either model"}
    refs, tps, gots = counts[:, 0], counts[:, 1], counts[:, 2]
    ci = bootstrap_ratio(2 * tps, refs + gots)
    details = {**cmp, "layout": layout}
    for key, den in (("recall_ci", refs), ("precision_ci", gots)):
        part = bootstrap_ratio(tps, den)
        details[key] = None if part is None else [float(part[0]), float(part[1])]
    return _metric("detection_f1", cmp["f1"], ci, n, CI_BOOTSTRAP), details


def judge_detection_pair(boxes_ref, boxes_got, scores_ref, scores_got, layout: str = "ssd"
                         ) -> tuple[dict, dict]:
    """An SSD-style boxes + scores pair judged together (``layout`` from :func:`ssd_pairs`):
    ``"ssd"`` decoded boxes + probabilities (threshold, NMS), ``"anchors"`` a raw anchor head
    compared anchor by anchor (:func:`edgekit.fidelity.detection.decode_anchors`)."""
    if layout == "ssd":
        cmp = det.compare(det.decode_ssd(boxes_ref, scores_ref),
                          det.decode_ssd(boxes_got, scores_got))
        return _detection_metric(cmp, layout)
    logits = not _in_unit(scores_ref)
    if not logits:  # probabilities already: the sigmoid's inverse gives the same threshold
        scores_ref, scores_got = _logit(scores_ref), _logit(scores_got)
    cmp = det.compare(det.decode_anchors(boxes_ref, scores_ref),
                      det.decode_anchors(boxes_got, scores_got))
    metric, details = _detection_metric(cmp, layout)
    details.update(
        scores="logits: sigmoid applied" if logits else "probabilities",
        score_threshold=det.LOGIT_SCORE_THRESHOLD, box="x_center, y_center, w, h per anchor",
        matching=("per anchor, IoU >= 0.5 on the raw box (decoding scales and shifts both boxes "
                  "of an anchor alike); before NMS, so a face seen by several anchors counts "
                  "once per anchor; the interval resamples whole images, so those anchors "
                  "stay together"))
    return metric, details


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


# Longest regressor row of a raw anchor head: a box and up to 30 keypoints (MediaPipe's face
# detector has 6, its palm detector 7).
MAX_ANCHOR_ROW = 4 + 2 * 30


def ssd_pairs(outputs: list[tuple[str, np.ndarray]]) -> list[tuple[int, int, str]]:
    """(boxes index, scores index, layout) of outputs that form a detection head with one row
    per anchor (``A`` >= 16 anchors, the same ``A`` in both):

    - ``"ssd"``: ``[N, A, 4]`` boxes and ``[N, A, C]`` (or ``[N, A]``) scores in 0..1;
    - ``"anchors"``: a raw head, ``[N, A, 4+2K]`` regressors (box, then K keypoints; sizes never
      negative) and ``[N, A, C]`` scores, logits (as MediaPipe's BlazeFace gives) or
      probabilities.
    """
    pairs = []
    for i, (_, b) in enumerate(outputs):
        if b.ndim != 3 or b.shape[1] < 16 or b.shape[2] < 4:
            continue
        row = b.shape[2]
        raw_ok = row == 4 or (row <= MAX_ANCHOR_ROW and (row - 4) % 2 == 0)
        sizes_ok = bool(np.all(b[..., 2:4] >= 0))
        for j, (_, s) in enumerate(outputs):
            if j == i or s.ndim not in (2, 3) or s.shape[1] != b.shape[1] \
                    or (s.ndim == 3 and s.shape[2] in (4, row)):
                continue
            if row == 4 and _in_unit(s):
                pairs.append((i, j, "ssd"))
                break
            if raw_ok and sizes_ok and np.issubdtype(s.dtype, np.floating):
                pairs.append((i, j, "anchors"))
                break
    return pairs


METRIC_WORDS = {"top1_agreement": "top-1 agreement", "detection_f1": "detection F1",
                "mask_iou": "mask IoU", "cosine": "cosine", "sqnr_db": "SQNR",
                "exact_match": "exact matches"}


def metric_text(metric: Optional[dict]) -> str:
    """``"detection F1 0.976"``, ``"top-1 agreement 99.5%"``, ``"SQNR 49.2 dB"``... or ``"-"``."""
    if not metric or metric.get("value") is None:
        return "-"
    name, v = metric["name"], metric["value"]
    words = METRIC_WORDS.get(name, name)
    if name in ("top1_agreement", "exact_match"):
        return f"{words} {100 * v:.1f}%"
    if name == "sqnr_db":
        return f"{words} {v:.1f} dB"
    return f"{words} {v:.3f}" if name != "cosine" else f"{words} {v:.4f}"

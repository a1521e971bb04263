"""Detection heads: decode, non-maximum suppression, and the artifact's detections scored against
the source model's (the source's detections are the ground truth: what the user would have seen).

Supported layouts (auto-detected in :mod:`edgekit.fidelity.tasks`):
- YOLOv8-style ``[N, 4 + C, A]``: box (cx, cy, w, h) then C class scores, per anchor;
- YOLOv5-style ``[N, A, 5 + C]``: box, objectness, C class scores;
- SSD-style pairs ``boxes [N, A, 4]`` (x1, y1, x2, y2 or y1, x1, y2, x2: IoU does not care) and
  ``scores [N, A, C]``;
- raw anchor heads (MediaPipe's BlazeFace / palm detectors): ``regressors [N, A, 4+2K]``
  (x_center, y_center, w, h offsets of each anchor, then K keypoints) and ``scores [N, A, C]``
  as logits. The app applies the sigmoid and keeps anchors whose score passes 0.5 (MediaPipe's
  ``min_score_thresh``), then decodes each box with its anchor. Without the anchor table the
  boxes are compared anchor by anchor: a source detection is found when the artifact passes the
  threshold at the same anchor with IoU >= 0.5 on the raw box. Decoding is, per anchor, the same
  axis-aligned scale and shift for the source's box and the artifact's (MediaPipe:
  ``x = raw_x / x_scale * anchor_w + anchor_x``, ``w = raw_w / w_scale * anchor_w`` with
  ``x_scale == w_scale``, no exponential on sizes), and IoU does not change under such a map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

SCORE_THRESHOLD = 0.25  # Ultralytics' default confidence for predictions
LOGIT_SCORE_THRESHOLD = 0.5  # MediaPipe's min_score_thresh, on sigmoid(logit)
NMS_IOU = 0.45
MATCH_IOU = 0.5
MAX_DETECTIONS = 300


@dataclass
class Detections:
    boxes: np.ndarray   # [K, 4] x1, y1, x2, y2
    scores: np.ndarray  # [K]
    classes: np.ndarray  # [K]
    anchors: Optional[np.ndarray] = None  # [K] anchor index, for heads compared anchor by anchor


def _xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    cx, cy, w, h = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [K, 4] with every box in ``b`` [M, 4] (corner format)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a = np.sort(a.reshape(-1, 2, 2), axis=1).reshape(-1, 4)  # tolerate flipped corners
    b = np.sort(b.reshape(-1, 2, 2), axis=1).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: np.clip(z[:, 2] - z[:, 0], 0, None) * np.clip(z[:, 3] - z[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Greedy per-class non-maximum suppression; indices kept, best first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores)
    keep: list[int] = []
    # Offsetting boxes by class keeps classes apart in one pass (the torchvision batched_nms trick).
    shift = (classes.astype(np.float64) * (np.abs(boxes).max() + 1.0))[:, None]
    shifted = boxes + shift
    while order.size and len(keep) < MAX_DETECTIONS:
        i = order[0]
        keep.append(int(i))
        if order.size == 1:
            break
        ious = iou_matrix(shifted[i:i + 1], shifted[order[1:]])[0]
        order = order[1:][ious <= NMS_IOU]
    return np.asarray(keep, dtype=np.int64)


def decode_yolo(out: np.ndarray, layout: str) -> list[Detections]:
    """Per-sample detections of a YOLO head (``layout``: ``"v8"`` or ``"v5"``)."""
    res = []
    for sample in out:
        rows = sample.T if layout == "v8" else sample  # [A, attrs]
        rows = rows.astype(np.float64)
        if layout == "v5":
            cls = rows[:, 5:] * rows[:, 4:5] if rows.shape[1] > 5 else rows[:, 4:5]
        else:
            cls = rows[:, 4:]
        classes = np.argmax(cls, axis=1)
        scores = cls[np.arange(len(cls)), classes]
        sel = scores >= SCORE_THRESHOLD
        boxes = _xywh_to_xyxy(rows[sel, :4])
        keep = nms(boxes, scores[sel], classes[sel])
        res.append(Detections(boxes[keep], scores[sel][keep], classes[sel][keep]))
    return res


def decode_ssd(boxes: np.ndarray, scores: np.ndarray) -> list[Detections]:
    """Per-sample detections of a boxes + scores pair (class 0 is kept: callers that have a
    background class see it as one more class the source and artifact must agree on)."""
    res = []
    for b, s in zip(boxes, scores, strict=True):
        s = s.astype(np.float64).reshape(len(b), -1)
        classes = np.argmax(s, axis=1)
        sc = s[np.arange(len(s)), classes]
        sel = sc >= SCORE_THRESHOLD
        bb = b.reshape(-1, 4)[sel].astype(np.float64)
        keep = nms(bb, sc[sel], classes[sel])
        res.append(Detections(bb[keep], sc[sel][keep], classes[sel][keep]))
    return res


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logits to probabilities, clipped as MediaPipe does (``score_clipping_thresh`` 100)."""
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, dtype=np.float64), -100.0, 100.0)))


def decode_anchors(regressors: np.ndarray, logits: np.ndarray,
                   threshold: float = LOGIT_SCORE_THRESHOLD) -> list[Detections]:
    """Per-sample detections of a raw anchor head: every anchor whose best class's
    ``sigmoid(logit)`` passes ``threshold``, its box (x_center, y_center, w, h) as corners, its
    anchor index kept for :func:`compare`. No NMS: that runs on the decoded boxes, after this."""
    res = []
    for b, s in zip(regressors, logits, strict=True):
        p = sigmoid(s).reshape(len(b), -1)
        classes = np.argmax(p, axis=1)
        sc = p[np.arange(len(p)), classes]
        sel = np.flatnonzero(sc >= threshold)
        boxes = _xywh_to_xyxy(b.reshape(len(b), -1)[sel, :4].astype(np.float64))
        res.append(Detections(boxes, sc[sel], classes[sel], sel))
    return res


def compare(ref: list[Detections], got: list[Detections]) -> dict:
    """The artifact's detections against the source's: true/false positives at IoU 0.5 with the
    same class (and the same anchor, where both carry anchors; greedy by score), recall,
    precision, F1 and mAP@0.5 (all-point interpolation, classes present in the source's
    detections). ``per_sample`` holds each sample's counts, ``[N, 3]``: reference detections,
    true positives, artifact detections (the pooled figures' interval resamples these rows)."""
    tp = fp = n_ref = 0
    per_class: dict = {}
    rows = []
    for r, g in zip(ref, got, strict=True):
        n_ref += len(r.boxes)
        tp0, fp0 = tp, fp
        ious = iou_matrix(g.boxes, r.boxes)
        used = np.zeros(len(r.boxes), dtype=bool)
        for i in np.argsort(-g.scores):
            cand = (~used) & (r.classes == g.classes[i]) & (ious[i] >= MATCH_IOU) if len(r.boxes) \
                else np.zeros(0, dtype=bool)
            if cand.size and r.anchors is not None and g.anchors is not None:
                cand &= r.anchors == g.anchors[i]
            hit = bool(cand.any())
            if hit:
                used[int(np.argmax(np.where(cand, ious[i], -1)))] = True
            tp, fp = tp + hit, fp + (not hit)
            per_class.setdefault(int(g.classes[i]), []).append((float(g.scores[i]), hit))
        for c in r.classes:
            per_class.setdefault(int(c), [])
        rows.append((len(r.boxes), tp - tp0, (tp - tp0) + (fp - fp0)))
    fn = n_ref - tp
    recall = tp / n_ref if n_ref else None
    precision = tp / (tp + fp) if tp + fp else (None if n_ref == 0 else 0.0)
    f1 = (2 * tp / (2 * tp + fp + fn)) if (2 * tp + fp + fn) else None
    aps = []
    for c, hits in per_class.items():
        n_c = sum(int(np.sum(r.classes == c)) for r in ref)
        if n_c == 0:
            continue
        hits.sort(key=lambda h: -h[0])
        flags = np.array([h[1] for h in hits], dtype=np.float64)
        if flags.size == 0:
            aps.append(0.0)
            continue
        ctp = np.cumsum(flags)
        rec = ctp / n_c
        prec = ctp / np.arange(1, len(flags) + 1)
        mrec = np.concatenate([[0.0], rec, [1.0]])
        mpre = np.concatenate([[1.0], prec, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        idx = np.where(mrec[1:] != mrec[:-1])[0]
        aps.append(float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1])))
    return {"reference_detections": int(n_ref), "artifact_detections": int(tp + fp),
            "true_positives": int(tp), "recall": recall, "precision": precision, "f1": f1,
            "map50": float(np.mean(aps)) if aps else None,
            "per_sample": np.asarray(rows, dtype=np.int64).reshape(-1, 3)}

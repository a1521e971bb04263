"""Raw anchor heads (MediaPipe BlazeFace-style ``regressors [N, A, 4+2K]`` + score logits
``[N, A, C]``) are judged as detection: the sigmoid of the logits passes 0.5 at an anchor, boxes
compared anchor by anchor, the source's detections as ground truth.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from converters.options import ConvertOptions
from edgekit.api import convert, evaluate_artifact
from edgekit.fidelity import detection as det
from edgekit.fidelity.tasks import judge_detection_pair, ssd_pairs

sys.path.insert(0, os.path.dirname(__file__))
from fidelity_models import anchor_head, ort_default_int8, photo_crops


def _raw_head(rng, n=8, anchors=128):
    reg = np.zeros((n, anchors, 16), np.float32)
    reg[..., :2] = rng.uniform(-8, 8, (n, anchors, 2))
    reg[..., 2:4] = rng.uniform(20, 60, (n, anchors, 2))
    reg[..., 4:] = rng.uniform(-40, 40, (n, anchors, 12))
    logits = rng.uniform(-120, -5, (n, anchors, 1)).astype(np.float32)
    for i in range(n):
        logits[i, rng.choice(anchors, 6, replace=False), 0] = rng.uniform(0.5, 3, 6)
    return reg, logits


def test_raw_anchor_head_is_paired_and_judged_anchor_by_anchor():
    rng = np.random.default_rng(0)
    reg, logits = _raw_head(rng)
    assert ssd_pairs([("regressors", reg), ("classificators", logits)]) == [(0, 1, "anchors")]
    # negative sizes are not a box layout we can read: no pair, the outputs keep their own judge
    assert ssd_pairs([("r", reg - 100), ("c", logits)]) == []
    metric, details = judge_detection_pair(reg, reg, logits, logits, "anchors")
    assert metric["value"] == 1.0 and details["reference_detections"] == 48
    assert details["scores"] == "logits: sigmoid applied" and details["score_threshold"] == 0.5
    # The artifact keeps every score but moves each box by its own width at one anchor in two:
    # a detection at the right anchor with the wrong box is a miss.
    moved = reg.copy()
    moved[:, ::2, 0] += moved[:, ::2, 2]
    metric, details = judge_detection_pair(reg, moved, logits, logits, "anchors")
    assert 0.3 < metric["value"] < 0.7 and details["true_positives"] < 48
    # The same box at a different anchor is not the same detection (no decoding: raw offsets).
    shifted = np.roll(logits, 1, axis=1)
    metric, _ = judge_detection_pair(reg, reg, logits, shifted, "anchors")
    assert metric["value"] < 0.2


def test_anchor_iou_is_the_decoded_iou_for_equal_scale_anchors():
    # MediaPipe decodes x = raw_x / 128 * anchor_w + anchor_x, w = raw_w / 128 * anchor_w: one
    # scale and shift per anchor for both models' boxes, which leaves their IoU unchanged.
    rng = np.random.default_rng(1)
    a, b = rng.uniform(-10, 10, (50, 4)), rng.uniform(-10, 10, (50, 4))
    a[:, 2:] = rng.uniform(20, 60, (50, 2))
    b[:, 2:] = a[:, 2:] * rng.uniform(0.8, 1.2, (50, 2))

    def corners(r, scale=1.0, ax=0.0, ay=0.0):
        cx, cy, w, h = r[:, 0] * scale + ax, r[:, 1] * scale + ay, r[:, 2] * scale, r[:, 3] * scale
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)

    raw = det.iou_matrix(corners(a), corners(b)).diagonal()
    ax, ay = rng.uniform(0, 1, (2, 50))
    decoded = np.array([det.iou_matrix(corners(a[i:i + 1], 1 / 128, ax[i], ay[i]),
                                       corners(b[i:i + 1], 1 / 128, ax[i], ay[i]))[0, 0]
                        for i in range(50)])
    np.testing.assert_allclose(raw, decoded, atol=1e-9)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    d = tmp_path_factory.mktemp("anchors")
    np.savez(d / "calib.npz", image=photo_crops(96, seed=1))
    np.savez(d / "eval.npz", image=photo_crops(48, seed=2))
    return anchor_head(d), d


def test_naive_int8_anchor_head_misses_detection_f1(head, tmp_path):
    model, d = head
    raw = ort_default_int8(model, np.load(d / "calib.npz")["image"], tmp_path / "raw.onnx")
    res = evaluate_artifact(model, raw, eval=d / "eval.npz")
    f = res["fidelity"]
    assert f["task"] == "detection" and f["task_metric"]["name"] == "detection_f1"
    # the shared head scale lifts background logits over 0: decisively below the bar
    assert f["task_metric"]["ci"][1] < 0.9
    assert any("detection F1" in m and "'classificators'" in m for m in res["gate_misses"])


def test_repaired_int8_anchor_head_ships_on_detection_f1(head, tmp_path):
    model, d = head
    fp32, = convert(model, ["onnx-fp32"], eval=d / "eval.npz", out=tmp_path / "f")
    assert fp32.fidelity.task == "detection" and fp32.fidelity.task_metric["value"] == 1.0
    art, = convert(model, ["onnx-int8"], calibration=d / "calib.npz", eval=d / "eval.npz",
                   out=tmp_path / "b", options=ConvertOptions(repair=True))
    m = art.fidelity.task_metric
    assert m["name"] == "detection_f1" and m["value"] >= 0.9 and m["ci"][0] > 0.8
    assert art.bytes <= 0.6 * fp32.bytes
    boxes = next(o for o in art.fidelity.outputs if o.name == "regressors")
    assert boxes.task == "detection" and "classificators" in boxes.note

"""The fidelity gate sees every head: per-output tasks, slices, intervals, made-up inputs,
constant references, and repairs that stay INT8 (or refuse, naming a measured alternative).

The models are built with fixed seeded weights (``fidelity_models``) and fed real photographs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from converters.options import ConvertOptions
from edgekit.api import convert, evaluate_artifact
from edgekit.artifact import Fidelity
from edgekit.errors import ConversionError
from edgekit.fidelity.slices import measure_slices
from edgekit.fidelity.stats import wilson
from edgekit.fidelity.tasks import Task, detect_task, judge_output
from edgekit.gate import gate_for

sys.path.insert(0, os.path.dirname(__file__))
from fidelity_models import (
    constant_head,
    hardswish_map,
    near_zero_map,
    ort_default_int8,
    photo_crops,
    yolo_head,
)


def _fid(*outs, origin="eval"):
    judged = [o for o in outs if o.judged] or list(outs)
    return Fidelity(outs[0].samples, None, 0.0, min(o.sqnr_db for o in judged), outputs=list(outs),
                    task=judged[0].task, data_origin=origin)


# --- unit level: the measures themselves -------------------------------------------------------

def _boxes_and_scores(rng, n=6, classes=6, anchors=300):
    ref = np.zeros((n, 4 + classes, anchors), np.float32)
    ref[:, :2] = rng.uniform(0, 320, (n, 2, anchors))
    ref[:, 2:4] = rng.uniform(8, 40, (n, 2, anchors))
    ref[:, 4:] = rng.uniform(0, 0.05, (n, classes, anchors))
    for i in range(n):
        for _ in range(6):
            ref[i, 4 + rng.integers(classes), rng.integers(anchors)] = rng.uniform(0.5, 0.95)
    return ref


def _int8(x, lo, hi):
    step = (hi - lo) / 255
    return (np.round((x - lo) / step) * step + lo).astype(np.float32)


def test_slices_find_scores_hiding_behind_boxes():
    ref = _boxes_and_scores(np.random.default_rng(0))
    shared = _int8(ref, 0, 320)  # one int8 scale for the concatenation: the naive INT8 case
    slices = measure_slices(ref, shared)
    worst = slices[0]
    assert worst.axis == 1 and worst.label == "4:10" and worst.sqnr_db < 5
    whole = judge_output("out", ref, shared, task=Task.REGRESSION)
    assert whole.sqnr_db > 25, "the whole output's SQNR hides the collapse"
    assert whole.worst_sqnr_db < 5
    gate = gate_for("int8", _fid(whole))
    assert any("slice 4:10" in m for m in gate.misses(_fid(whole)))


def test_detection_head_is_detected_and_scored_against_the_source():
    ref = _boxes_and_scores(np.random.default_rng(1))
    assert detect_task(ref) == Task.DETECTION
    good = ref.copy()
    good[:, :4], good[:, 4:] = _int8(ref[:, :4], 0, 320), _int8(ref[:, 4:], 0, 1)
    ok = judge_output("out", ref, good)
    bad = judge_output("out", ref, _int8(ref, 0, 320))
    assert ok.task == "detection" and ok.metric["value"] > 0.95
    assert bad.metric["value"] < 0.9 and bad.details["recall"] < 0.9
    assert gate_for("int8", _fid(ok)).misses(_fid(ok)) == []
    assert "detection F1" in gate_for("int8", _fid(bad)).misses(_fid(bad))[0]


def test_one_flip_in_twelve_is_reported_with_its_interval_not_refused():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(12, 10))
    got = ref.copy()
    got[0] = -got[0]  # one sample's top-1 flips
    o = judge_output("probs", ref, got)
    assert o.task == "classification" and o.metric["value"] == pytest.approx(11 / 12)
    lo, hi = o.metric["ci"]
    assert (lo, hi) == pytest.approx(wilson(11, 12)) and lo < 0.97 < hi
    verdict = gate_for("int8", _fid(o)).check(_fid(o))
    assert verdict.misses == []
    assert len(verdict.warnings) == 1 and "95% CI" in verdict.warnings[0]
    assert "samples would decide it" in verdict.warnings[0]
    # 6 of 12 flipping is below the bar whatever the interval: refused.
    got[:6] = -got[:6]
    o = judge_output("probs", ref, got)
    assert gate_for("int8", _fid(o)).misses(_fid(o))


def test_constant_reference_cannot_be_judged_and_never_reads_as_agreement():
    ref = np.tile(np.linspace(-1, 1, 10), (20, 1))
    o = judge_output("logits", ref, ref.copy())
    assert o.task == "constant" and o.metric is None
    verdict = gate_for("int8", _fid(o)).check(_fid(o))
    assert verdict.misses == [] and any("cannot judge" in w for w in verdict.warnings)


def test_passthrough_output_is_not_judged_and_the_embedding_is():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 1000, size=(16, 12)).astype(np.int64)
    emb = rng.normal(size=(16, 64))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    noisy = emb + rng.normal(scale=0.08, size=emb.shape)
    outs = [judge_output("ids", ids, ids, inputs={"input_ids": ids}),
            judge_output("sentence_embedding", emb, noisy, inputs={"input_ids": ids})]
    assert outs[0].task == "passthrough" and outs[1].task == "embedding"
    f = _fid(*outs)
    assert f.task == "embedding" and f.task_metric["name"] == "cosine"
    assert f.task_metric["value"] < 0.9
    assert any("cosine similarity" in m for m in gate_for("int8", f).misses(f))


def test_made_up_inputs_make_a_miss_advisory_but_nan_is_refused():
    ref = np.random.default_rng(4).normal(size=(32, 1, 16, 16))
    got = ref + np.random.default_rng(5).normal(scale=0.2, size=ref.shape)
    o = judge_output("map", ref, got)
    f = _fid(o, origin="synthetic")
    verdict = gate_for("fp16", f).check(f)
    assert verdict.misses == [] and "--eval" in verdict.warnings[0]
    got[0, 0, 0, 0] = np.nan
    o = judge_output("map", ref, got)
    assert "NaN" in gate_for("fp16", _fid(o, origin="synthetic")).misses(_fid(o, origin="synthetic"))[0]


# --- real conversions -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    np.savez(d / "calib.npz", image=photo_crops(96, seed=1))
    np.savez(d / "eval.npz", image=photo_crops(48, seed=2))
    return d


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return yolo_head(tmp_path_factory.mktemp("yolo"))


def test_naive_int8_detector_is_refused_and_names_the_measured_alternative(detector, photos, tmp_path):
    with pytest.raises(ConversionError) as err:
        convert(detector, ["onnx-fp32", "onnx-int8"], calibration=photos / "calib.npz",
                eval=photos / "eval.npz", out=tmp_path / "b")
    msg = err.value.failures["onnx-int8"]
    assert "detection F1" in msg and "--auto-mixed-precision" in msg
    assert "measured alternatives:" in msg and "onnx-fp16 meets the gate" in msg
    assert "0.50x the FP32 size" in msg and "onnx-dynamic" in msg
    assert not (tmp_path / "b" / "yolo_head.onnx-int8.onnx").exists()
    fp32 = err.value.artifacts[0]
    assert fp32.fidelity.task == "detection" and fp32.fidelity.task_metric["value"] == 1.0


def test_repaired_int8_detector_meets_the_gate_and_stays_int8(detector, photos, tmp_path):
    fp32, = convert(detector, ["onnx-fp32"], eval=photos / "eval.npz", out=tmp_path / "f")
    art, = convert(detector, ["onnx-int8"], calibration=photos / "calib.npz",
                   eval=photos / "eval.npz", out=tmp_path / "b", options=ConvertOptions(repair=True))
    assert art.fidelity.task_metric["value"] >= 0.9
    assert art.bytes <= 0.6 * fp32.bytes
    assert art.pass_config["repair"]["chosen"]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    fid = manifest["artifacts"][0]["fidelity"]
    assert fid["task"] == "detection" and fid["task_metric"]["name"] == "detection_f1"
    assert fid["worst_slice"]["slice"] == "4:12"


def test_a_repair_that_would_leave_the_artifact_float_is_refused(detector, photos, tmp_path):
    # 80 dB on every slice is beyond INT8: the repair would keep everything in float.
    opts = ConvertOptions(repair=True, min_sqnr_db=80.0)
    with pytest.raises(ConversionError) as err:
        convert(detector, ["onnx-int8"], calibration=photos / "calib.npz",
                eval=photos / "eval.npz", out=tmp_path / "b", options=opts)
    msg = err.value.failures["onnx-int8"]
    assert ("barely quantized" in msg or "missed the fidelity gate" in msg) and "onnx-fp16" in msg
    assert not list((tmp_path / "b").glob("*.onnx"))


def test_hardswish_map_repair_stays_int8_or_names_fp16(photos, tmp_path):
    model = hardswish_map(tmp_path)
    fp32, = convert(model, ["onnx-fp32"], eval=photos / "eval.npz", out=tmp_path / "f")
    assert fp32.fidelity.task == "segmentation"
    try:
        art, = convert(model, ["onnx-int8"], calibration=photos / "calib.npz",
                       eval=photos / "eval.npz", out=tmp_path / "b",
                       options=ConvertOptions(repair=True))
    except ConversionError as e:
        assert "onnx-fp16" in e.failures["onnx-int8"]
    else:
        assert art.fidelity.task_metric["name"] == "mask_iou"
        assert art.fidelity.task_metric["value"] >= 0.85 and art.bytes <= 0.6 * fp32.bytes


def test_fp16_on_made_up_near_zero_outputs_ships_with_a_warning(tmp_path):
    art, = convert(near_zero_map(tmp_path), ["onnx-fp16"], out=tmp_path / "b")
    f = art.fidelity
    assert f.data_origin == "synthetic"
    assert f.warnings and "made-up inputs" in f.warnings[0] and "--eval" in f.warnings[0]


def test_constant_model_is_reported_as_cannot_judge(tmp_path):
    x = np.random.default_rng(0).random((40, 16), dtype=np.float32)
    np.savez(tmp_path / "e.npz", x=x)
    art, = convert(constant_head(tmp_path), ["onnx-fp32"], eval=tmp_path / "e.npz",
                   out=tmp_path / "b")
    assert art.fidelity.top1_agreement is None
    assert art.fidelity.outputs[0].task == "constant"
    assert any("cannot judge" in w for w in art.fidelity.warnings)


def test_calibration_only_verifies_on_samples_held_apart(detector, photos, tmp_path):
    # 64 of the 96 samples calibrate; the other 32 verify.
    art, = convert(detector, ["onnx-int8"], calibration=photos / "calib.npz", out=tmp_path / "b",
                   options=ConvertOptions(calibration_samples=64, repair=True))
    assert art.fidelity.data_origin == "calibration-holdout" and art.fidelity.samples == 32
    assert art.calibration["samples"] == 64
    # All 96 calibrate (the default takes up to 200): verified on them, and the record says so.
    art, = convert(detector, ["onnx-fp16"], calibration=photos / "calib.npz", out=tmp_path / "c")
    assert art.fidelity.data_origin == "calibration" and art.fidelity.samples == 96
    assert any("calibration samples themselves" in w for w in art.fidelity.warnings)


def test_evaluate_artifact_judges_a_raw_tools_int8(detector, photos, tmp_path):
    raw = ort_default_int8(detector, np.load(photos / "calib.npz")["image"],
                           tmp_path / "raw.onnx")
    res = evaluate_artifact(detector, raw, eval=photos / "eval.npz")
    assert res["fidelity"]["task"] == "detection"
    assert res["gate_misses"] and res["fidelity"]["task_metric"]["value"] < 0.9


def test_cli_task_flag_and_table(detector, photos, tmp_path):
    env = {**os.environ, "COLUMNS": "80"}
    r = subprocess.run([sys.executable, "-m", "edgekit.cli.main", "convert", str(detector),
                        "--to", "onnx-fp16", "--eval", str(photos / "eval.npz"), "--task",
                        "regression", "--out", str(tmp_path / "b")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "regression" in r.stderr and "SQNR" in r.stderr
    r = subprocess.run([sys.executable, "-m", "edgekit.cli.main", "convert", str(detector),
                        "--to", "onnx-fp16", "--task", "nonsense", "--out", str(tmp_path / "c")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2

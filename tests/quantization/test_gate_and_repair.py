"""Fidelity gate and automatic mixed precision on models built to break naive int8.

The models are real digits classifiers, then edited so that the float function is unchanged but
one activation tensor carries a few huge values (a hidden unit scaled ×2000 with the next layer's
weights divided by 2000). Per-tensor int8 activation scales then crush every other value in that
tensor, and naive int8 collapses to chance accuracy — the failure users meet with real models.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from calibration_data.digits import digits_path, load_split
from converters.options import ConvertOptions
from edgekit.api import convert, diagnose
from edgekit.errors import ConversionError
from edgekit.recipe import options_from_json

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
CALIB, EVAL = digits_path("calibration"), digits_path("eval")


def _outlier_model(folder):
    import keras

    x, y = load_split("train")
    keras.utils.set_random_seed(1)
    # Conv-heavy, with a small dense head, so keeping the head in float stays cheap in bytes.
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu", name="hidden"),
        keras.layers.Dense(10, activation="softmax", name="probs")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    hidden, probs = model.get_layer("hidden"), model.get_layer("probs")
    feats = keras.Model(model.inputs, hidden.output)(load_split("calibration")[0]).numpy()
    unit = int(np.argmax(feats.mean(0)))  # a live unit, so the outlier is really there
    (w1, b1), (w2, b2) = hidden.get_weights(), probs.get_weights()
    w1[:, unit] *= 2000.0
    b1[unit] *= 2000.0
    w2[unit, :] /= 2000.0
    hidden.set_weights([w1, b1])
    probs.set_weights([w2, b2])
    path = folder / "outlier.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    return _outlier_model(tmp_path_factory.mktemp("outlier"))


@pytest.fixture(scope="module")
def fp32_sizes(outlier, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32")
    arts = convert(outlier, ["tflite-fp32", "onnx-fp32"], eval=EVAL, out=out)
    return {a.format: a for a in arts}


@pytest.mark.parametrize("target", ["onnx-int8", "tflite-int8"])
def test_gate_refuses_collapsed_int8_and_writes_nothing(outlier, fp32_sizes, tmp_path, target):
    out = tmp_path / "build"
    with pytest.raises(ConversionError) as err:
        convert(outlier, [target], calibration=CALIB, eval=EVAL, out=out)
    message = err.value.failures[target]
    assert "fidelity gate" in message and "accuracy drop" in message
    assert "--auto-mixed-precision" in message
    # The collapsed artifact is not left behind, under its name or a temp name.
    # (a folder the failed run created is removed again)
    assert not out.exists() or not [p for p in out.iterdir() if p.suffix in (".onnx", ".tflite")]
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize("target", ["onnx-int8", "tflite-int8"])
def test_repair_meets_gate_with_few_float_ops_and_stays_smaller(outlier, fp32_sizes, tmp_path, target):
    options = ConvertOptions(repair=True)
    [art] = convert(outlier, [target], calibration=CALIB, eval=EVAL, out=tmp_path, options=options)
    f = art.fidelity
    assert f.accuracy_drop is not None and 100 * f.accuracy_drop <= 1.0
    # Naive int8 collapsed (recorded), the repair kept a handful of ops in float and said why.
    repair = art.pass_config["repair"]
    assert repair["naive_fidelity"]["accuracy"] < 0.5
    assert 1 <= len(art.float_ops) <= 4
    assert all(op["reason"].startswith("sensitivity rank") for op in art.float_ops)
    assert any("hidden" in op["op"] for op in art.float_ops)
    # Still int8 where it counts: the conv stack keeps int8 weights.
    assert art.bytes < 0.6 * fp32_sizes[art.format].bytes
    # The manifest records the replayable choice.
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert doc["artifacts"][0]["pass"]["config"]["float_nodes"] == [o["op"] for o in art.float_ops]


def test_replaying_recorded_float_nodes_reproduces_the_repair(outlier, tmp_path):
    [first] = convert(outlier, ["onnx-int8"], calibration=CALIB, eval=EVAL, out=tmp_path / "a",
                      options=ConvertOptions(repair=True))
    cfg = first.pass_config
    # Every option the manifest records for the pass (the remedy chosen, and the float nodes).
    known = {f.name for f in dataclasses.fields(ConvertOptions)}
    replay = options_from_json({k: v for k, v in cfg.items()
                                if k in known and k not in ("repair", "task")})
    assert replay.float_nodes and not replay.repair
    [again] = convert(outlier, ["onnx-int8"], calibration=CALIB, eval=EVAL, out=tmp_path / "b",
                      options=replay)
    assert again.fidelity.accuracy == pytest.approx(first.fidelity.accuracy)
    assert again.fidelity.sqnr_db == pytest.approx(first.fidelity.sqnr_db, abs=0.01)
    assert _op_counts(again.path) == _op_counts(first.path)


def _op_counts(path):
    import collections

    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_diagnose_ranks_the_outlier_tensor_first(outlier):
    report = diagnose(outlier, "onnx-int8", calibration=CALIB, eval=EVAL)
    assert report["gate_misses"], "naive int8 of this model must miss the gate"
    top = report["ranking"][0]
    assert any("hidden" in n for n in top["nodes"])
    scores = [r["score"] for r in report["ranking"]]
    assert scores == sorted(scores)


def test_user_gate_thresholds_apply(outlier, tmp_path):
    # With the accuracy budget opened wide, the same collapsed artifact is accepted on purpose...
    [art] = convert(outlier, ["onnx-int8"], calibration=CALIB, eval=EVAL, out=tmp_path,
                    options=ConvertOptions(max_accuracy_drop=100.0))
    assert art.pass_config["gate"]["max_accuracy_drop"] == 100.0
    assert art.fidelity.accuracy < 0.5
    # ...and an SQNR floor alone catches it again.
    with pytest.raises(ConversionError, match="SQNR"):
        convert(outlier, ["onnx-int8"], calibration=CALIB, eval=EVAL, out=tmp_path / "b",
                options=ConvertOptions(min_sqnr_db=20.0))


def test_cli_gate_failure_is_one_line_exit_1(outlier, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", "convert", str(outlier), "--to", "onnx-int8",
         "--calibration", str(CALIB), "--eval", str(EVAL), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 1 of 1 targets failed")


def test_opset11_onnx_source_quantizes_per_channel_into_a_loadable_model(tmp_path):
    """An opset-11 graph: per-channel QDQ needs opset 13, so the opset is raised, not broken."""
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    x, y = load_split("train")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1), name="image"),
                              keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, verbose=0)
    spec = [tf.TensorSpec([None, 8, 8, 1], tf.float32, name="image")]
    fn = tf.function(lambda image: {"probs": model(image)}, input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=11)
    src = tmp_path / "opset11.onnx"
    onnx.save(proto, str(src))
    [art] = convert(src, ["onnx-int8"], calibration=CALIB, eval=EVAL, out=tmp_path / "out")
    quantized = onnx.load(str(art.path))
    assert next(o.version for o in quantized.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert any(n.op_type == "DequantizeLinear" for n in quantized.graph.node)
    assert any("opset upgraded 11 -> 13" in n for n in art.pass_config["notes"])
    assert art.fidelity.top1_agreement >= 0.97

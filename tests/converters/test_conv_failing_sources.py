"""Sources that used to fail every or some target, built here and converted for real.

- An ONNX classifier with an int32 input (byte values: Cast → scale → Conv → MatMul + bias, the
  bias reshaped to ``[1, N]`` the way jax2tf / tf2onnx export ``x @ W + b``): ORT's per-channel
  quantizer crashed on the ``[1, N]`` Gemm bias its own pre-processing makes.
- An ONNX model with int64 token ids and mask (Gather embedding → masked mean → MatMul).
- A Keras 2 (``tf_keras``) SavedModel saved with its optimizer state, which TensorFlow's TF2
  loader refuses ("'_UserObject' object has no attribute 'add_slot'").
- ``edgekit --debug convert`` shows the failed target's chained traceback.

Weights are fixed by a seed and the classifier heads are fitted on the shipped digits, so the
fidelity gates measure a real model on real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest_convert import onnx_initializer_dtypes, onnx_ops
from onnx import TensorProto, helper, numpy_helper

from calibration_data.digits import load_split
from converters.onnx_common import flatten_gemm_biases
from converters.registry import targets_for
from edgekit.api import convert

# Every target an ONNX source can go to (onnx-fp32/fp16/dynamic/int8 and ort), from the registry.
ONNX_SOURCE_TARGETS = tuple(t.name for t in targets_for("onnx"))
TOKENS, VOCAB, EMBED = 32, 64 * 17, 64
CONV_CHANNELS = 16


def _by_target(arts):
    return {a.target: a for a in arts}


def _fit_head(features: np.ndarray, labels: np.ndarray, ridge: float) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """A ridge-regression head on fixed features (closed form, instant): (W [F, 10], b [10]).

    ``ridge`` keeps the weights small enough that int8 activations keep the classes apart.
    """
    x = np.hstack([features, np.ones((len(features), 1))]).astype(np.float64)
    y = np.eye(10)[labels]
    coef = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)
    return coef[:-1].astype(np.float32), coef[-1].astype(np.float32)


# --- int32 byte input ---------------------------------------------------------------------------

def _byte_pixels(x: np.ndarray) -> np.ndarray:
    """Digits in [0, 1] (N, 8, 8, 1) → byte values 0..16 as int32, NCHW."""
    return np.round(x[..., 0] * 16).astype(np.int32)[:, None]


def _byte_features(pixels: np.ndarray, conv_w: np.ndarray, conv_b: np.ndarray) -> np.ndarray:
    """What the ONNX graph computes before its head: relu(conv3x3(pixels / 16)), flattened."""
    x = np.pad(pixels.astype(np.float32) / 16, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((len(pixels), conv_w.shape[0], 8, 8), np.float32)
    for i in range(3):
        for j in range(3):
            out += x[:, :, i:i + 8, j:j + 8] * conv_w[None, :, 0, i, j, None, None]
    return np.maximum(out + conv_b[None, :, None, None], 0).reshape(len(pixels), -1)


def build_byte_classifier(folder) -> tuple:
    """An int32-input digits classifier in ONNX plus calibration/eval .npz files.

    Returns:
        (model path, calibration path, eval path)
    """
    rng = np.random.default_rng(0)
    conv_w = rng.normal(0, 0.5, (CONV_CHANNELS, 1, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, CONV_CHANNELS).astype(np.float32)
    x, y = load_split("train")
    w, b = _fit_head(_byte_features(_byte_pixels(x), conv_w, conv_b), y, ridge=30.0)
    nodes = [
        helper.make_node("Cast", ["bytes"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["as_float", "inv_scale"], ["scaled"]),
        helper.make_node("Conv", ["scaled", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"]),
        helper.make_node("MatMul", ["flat", "head_w"], ["matmul"]),
        helper.make_node("Add", ["matmul", "head_b"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(np.array(1 / 16, np.float32), "inv_scale"),
             numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(conv_b, "conv_b"),
             numpy_helper.from_array(w, "head_w"),
             # [1, N], as jax2tf exports a broadcast bias: ORT fuses MatMul + Add into a Gemm.
             numpy_helper.from_array(b.reshape(1, -1), "head_b")]
    graph = helper.make_graph(
        nodes, "byte_classifier",
        [helper.make_tensor_value_info("bytes", TensorProto.INT32, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = folder / "bytes.onnx"
    onnx.save(model, str(path))
    data = []
    for split in ("calibration", "eval"):
        xs, ys = load_split(split)
        data.append(folder / f"bytes_{split}.npz")
        np.savez(data[-1], bytes=_byte_pixels(xs), y=ys)
    return path, data[0], data[1]


# --- int64 token ids + mask ---------------------------------------------------------------------

def _tokens(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``TOKENS`` brightest pixels of each digit as ids ``position * 17 + value`` (int64),
    with a mask that drops the blank ones (value 0)."""
    flat = np.round(x.reshape(len(x), -1) * 16).astype(np.int64)
    pos = np.argsort(-flat, axis=1, kind="stable")[:, :TOKENS]
    values = np.take_along_axis(flat, pos, axis=1)
    return pos * 17 + values, (values > 0).astype(np.int64)


def _pooled(ids, mask, table):
    m = mask[..., None].astype(np.float32)
    return (table[ids] * m).sum(1) / np.maximum(m.sum(1), 1.0)


def build_token_classifier(folder) -> tuple:
    """An int64 ids + mask model in ONNX (Gather embedding → masked mean → MatMul + bias).

    Returns:
        (model path, calibration path, eval path)
    """
    # Token (position, value) embeds as value/16 times a random vector of its position, so the
    # masked mean is a random projection of the image: features a linear head can classify.
    rng = np.random.default_rng(1)
    by_position = rng.normal(0, 1, (VOCAB // 17, EMBED))
    table = (np.arange(VOCAB)[:, None] % 17 / 16 * by_position[np.arange(VOCAB) // 17])
    table = table.astype(np.float32)
    x, y = load_split("train")
    w, b = _fit_head(_pooled(*_tokens(x), table), y, ridge=10.0)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"]),
        helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last_axis"], ["mask_3d"]),
        helper.make_node("Mul", ["embedded", "mask_3d"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "token_axis"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask_3d", "token_axis"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "one"], ["count_1"]),
        helper.make_node("Div", ["summed", "count_1"], ["mean"]),
        helper.make_node("MatMul", ["mean", "head_w"], ["matmul"]),
        helper.make_node("Add", ["matmul", "head_b"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(table, "table"),
             numpy_helper.from_array(np.array([-1], np.int64), "last_axis"),
             numpy_helper.from_array(np.array([1], np.int64), "token_axis"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(w, "head_w"),
             numpy_helper.from_array(b.reshape(1, -1), "head_b")]
    graph = helper.make_graph(
        nodes, "token_classifier",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", TOKENS]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", TOKENS])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = folder / "tokens.onnx"
    onnx.save(model, str(path))
    data = []
    for split in ("calibration", "eval"):
        xs, ys = load_split(split)
        ids, mask = _tokens(xs)
        data.append(folder / f"tokens_{split}.npz")
        np.savez(data[-1], ids=ids, mask=mask, y=ys)
    return path, data[0], data[1]


@pytest.fixture(scope="module")
def byte_classifier(tmp_path_factory):
    return build_byte_classifier(tmp_path_factory.mktemp("bytes"))


@pytest.fixture(scope="module")
def token_classifier(tmp_path_factory):
    return build_token_classifier(tmp_path_factory.mktemp("tokens"))


def test_int32_input_onnx_converts_to_every_target(byte_classifier, tmp_path):
    model, calibration, eval_ = byte_classifier
    arts = _by_target(convert(model, ONNX_SOURCE_TARGETS, calibration=calibration, eval=eval_,
                              out=tmp_path))
    assert sorted(arts) == sorted(ONNX_SOURCE_TARGETS)
    for art in arts.values():
        assert art.inputs[0].dtype == "int32", art.target  # the byte input stays integer
        assert art.fidelity.top1_agreement >= 0.97, (art.target, art.fidelity)
        assert abs(art.fidelity.accuracy_drop) <= 0.01, (art.target, art.fidelity)
    int8 = arts["onnx-int8"]
    ops = onnx_ops(int8.path)
    assert ops["QuantizeLinear"] >= 2 and ops["DequantizeLinear"] >= 4, ops
    assert any("Gemm bias" in n for n in int8.pass_config["notes"]), int8.pass_config
    assert onnx_initializer_dtypes(int8.path)["int8"] >= 2  # conv and head weights


def test_flatten_gemm_biases_keeps_the_output(byte_classifier, tmp_path):
    """The [1, N] → [N] rewrite is exact, and a bias other nodes also read is copied."""
    import onnxruntime as ort

    model = onnx.load(str(byte_classifier[0]))
    # Make the head a Gemm reading the [1, N] bias that an Add also reads.
    g = model.graph
    matmul = next(n for n in g.node if n.op_type == "MatMul")
    add = next(n for n in g.node if n.op_type == "Add")
    gemm = helper.make_node("Gemm", [matmul.input[0], matmul.input[1], add.input[1]], ["gemm"])
    extra = helper.make_node("Add", ["gemm", add.input[1]], ["logits"])
    nodes = [n for n in g.node if n.op_type not in ("MatMul", "Add")] + [gemm, extra]
    del g.node[:]
    g.node.extend(nodes)
    before = onnx.ModelProto()
    before.CopyFrom(model)
    assert flatten_gemm_biases(model) == 1
    bias = {i.name: list(i.dims) for i in model.graph.initializer}
    gemm_bias = next(n for n in model.graph.node if n.op_type == "Gemm").input[2]
    assert bias["head_b"] == [1, 10] and gemm_bias != "head_b" and bias[gemm_bias] == [10]
    assert flatten_gemm_biases(model) == 0
    x = _byte_pixels(load_split("eval")[0][:16])
    ys = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
          .run(None, {"bytes": x})[0] for m in (before, model)]
    np.testing.assert_array_equal(ys[0], ys[1])


def test_int64_ids_and_mask_onnx_converts_to_every_target(token_classifier, tmp_path):
    model, calibration, eval_ = token_classifier
    arts = _by_target(convert(model, ONNX_SOURCE_TARGETS, calibration=calibration, eval=eval_,
                              out=tmp_path))
    assert sorted(arts) == sorted(ONNX_SOURCE_TARGETS)
    for art in arts.values():
        assert [t.dtype for t in art.inputs] == ["int64", "int64"], art.target
        assert art.fidelity.top1_agreement >= 0.97, (art.target, art.fidelity)
        assert abs(art.fidelity.accuracy_drop) <= 0.01, (art.target, art.fidelity)
    assert onnx_ops(arts["onnx-int8"].path)["QuantizeLinear"] >= 2


# --- Keras 2 SavedModel with its optimizer state ------------------------------------------------

# A digits CNN built and trained with tf_keras' legacy Adam and saved in TF SavedModel format with
# its optimizer state, committed as a fixture (tests/data/keras2_savedmodel/make.py writes it):
# the failure only shows where tf_keras is absent, and edgekit does not depend on it.
KERAS2_FIXTURE = Path(__file__).resolve().parents[1] / "data" / "keras2_savedmodel"

# The conversion, in a process where tf_keras cannot be imported (as without the package).
CONVERT_WITHOUT_TF_KERAS = """
import json, sys
sys.modules["tf_keras"] = None
import numpy as np
import tensorflow as tf
from calibration_data.digits import digits_path, load_split
from converters.options import ConvertOptions
from converters.sources import load_source
from edgekit.api import convert

saved, ref, out, targets = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
try:
    tf.saved_model.load(saved)
    tf2_error = None
except Exception as e:
    tf2_error = f"{type(e).__name__}: {e}"
src = load_source(saved)
own = src.predict({"image": load_split("eval")[0]})[0]
arts = convert(saved, targets, calibration=digits_path("calibration"), eval=digits_path("eval"),
               out=out)
pinned = convert(saved, ["tflite-fp32", "onnx-fp32"], eval=digits_path("eval"), out=out + "_pinned",
                 options=ConvertOptions(input_shapes={"image": (1, 8, 8, 1)}))
print(json.dumps({
    "pinned": {a.target: list(a.inputs[0].shape) for a in pinned},
    "tf2_error": tf2_error, "max_abs_diff": float(np.abs(own - np.load(ref)).max()),
    "inputs": [[t.name, list(t.shape), t.dtype] for t in src.inputs],
    "artifacts": [{"target": a.target, "agreement": a.fidelity.top1_agreement,
                   "drop": a.fidelity.accuracy_drop, "source": a.source,
                   "notes": a.pass_config.get("notes", [])} for a in arts]}))
"""


def _run_python(code: str, *args, timeout=600):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def keras2_savedmodel(tmp_path_factory):
    """(SavedModel folder, the Keras model's own eval predictions .npy), written by tf_keras."""
    import shutil

    folder = tmp_path_factory.mktemp("keras2")
    saved, ref = folder / "digits_keras2", folder / "keras_eval_probs.npy"
    shutil.copytree(KERAS2_FIXTURE / "digits_keras2", saved)
    shutil.copyfile(KERAS2_FIXTURE / "keras_eval_probs.npy", ref)
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((saved / "saved_model.pb").read_bytes())
    nodes = proto.meta_graphs[0].object_graph_def.nodes
    # The optimizer and its slot variables are in the SavedModel: the state that trips TF2's loader.
    assert any(n.slot_variables for n in nodes)
    return saved, ref


@pytest.mark.slow
def test_keras2_savedmodel_with_optimizer_state_converts_to_every_target(keras2_savedmodel,
                                                                          tmp_path):
    import json

    saved, ref = keras2_savedmodel
    targets = [t.name for t in targets_for("savedmodel")]
    done = _run_python(CONVERT_WITHOUT_TF_KERAS, saved, ref, str(tmp_path / "out"),
                       json.dumps(targets))
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "add_slot" in result["tf2_error"]  # the failure this fallback is for
    assert result["inputs"] == [["image", [None, 8, 8, 1], "float32"]]
    # The source the artifacts are checked against is the SavedModel itself: its outputs are the
    # trained Keras model's own predictions.
    assert result["max_abs_diff"] < 1e-5
    # --input-shape pins reach both v1 converters.
    assert result["pinned"] == {"tflite-fp32": [1, 8, 8, 1], "onnx-fp32": [1, 8, 8, 1]}
    arts = {a["target"]: a for a in result["artifacts"]}
    assert sorted(arts) == sorted(targets)
    for target, art in arts.items():
        assert art["source"]["loader"] == "tf1-graph", target
        assert "add_slot" in art["source"]["loader_note"], target
        assert any("v1 graph path" in n for n in art["notes"]), (target, art["notes"])
        assert art["agreement"] >= 0.97, (target, art)
        assert abs(art["drop"]) <= 0.01, (target, art)


# --- --debug ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_debug_shows_the_failed_targets_chained_traceback(keras2_savedmodel, tmp_path, capsys):
    import re

    from edgekit.cli.main import main

    saved, _ = keras2_savedmodel
    # tf2onnx refuses the opset with its own ValueError, which the pass chains to its error.
    args = ["convert", str(saved), "--to", "onnx-fp32", "--opset", "99", "--out", str(tmp_path)]
    assert main(args) == 1
    plain = capsys.readouterr().err.strip().splitlines()
    assert len(plain) == 1, plain  # without --debug: one line
    assert plain[0].startswith("error: 1 of 1 targets failed: onnx-fp32: tf2onnx failed")

    assert main(["--debug", *args]) == 1
    err = capsys.readouterr().err
    assert "--- target onnx-fp32 failed:" in err
    assert "ValueError: make_sure failure: Opset 99" in err  # the tool's own exception...
    assert re.search(r'File "[^"]*tf2onnx[^"]*\.py", line \d+', err)  # ...with its frames
    assert "The above exception was the direct cause of the following exception" in err
    assert "edgekit.errors.ConversionError: tf2onnx failed" in err
    assert err.rstrip().splitlines()[-1] == plain[0]  # and the same line last

"""``ConvertOptions.fix_inputs`` / ``--fix-input``: a model whose net sits inside ``If`` nodes on
a scalar input (as silero-vad's does on its sample rate) is specialised for one value, its
``If`` nodes folded into the branches taken, so ONNX Runtime's quantizer reaches the weights.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from converters.fix_inputs import parse_fix_inputs, specialise
from converters.options import ConvertOptions
from edgekit.api import convert
from edgekit.errors import ConversionError, InputError

FEATURES = 32


def _rate_model(path):
    """``y = relu(x @ W16 + b)`` when ``rate == 16000`` else ``x @ W8``; the ReLU sits in a nested
    ``If`` on ``x``'s static width, and the 16 kHz branch reads ``W16`` from the outer graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w16 = (rng.normal(size=(FEATURES, 16)) / np.sqrt(FEATURES)).astype(np.float32)
    w8 = (rng.normal(size=(FEATURES, 16)) / np.sqrt(FEATURES)).astype(np.float32)
    b = rng.normal(size=16).astype(np.float32) * 0.1

    def out(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)

    relu = helper.make_graph([helper.make_node("Relu", ["pre"], ["act"])], "relu", [], [out("act")])
    same = helper.make_graph([helper.make_node("Identity", ["pre"], ["same"])], "same", [],
                             [out("same")])
    hi = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w16"], ["mm"]),
         helper.make_node("Add", ["mm", "b16"], ["pre"]),
         helper.make_node("Shape", ["x"], ["xs"]),
         helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", 7, [], [1])),
         helper.make_node("Gather", ["xs", "one"], ["width"]),
         helper.make_node("Constant", [], ["f"], value=helper.make_tensor("f", 7, [], [FEATURES])),
         helper.make_node("Equal", ["width", "f"], ["wide"]),
         helper.make_node("If", ["wide"], ["hi_y"], then_branch=relu, else_branch=same)],
        "hi", [], [out("hi_y")], [numpy_helper.from_array(b, "b16")])
    lo = helper.make_graph([helper.make_node("MatMul", ["x", "w8"], ["lo_y"])], "lo", [],
                           [out("lo_y")], [numpy_helper.from_array(w8, "w8")])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", 7, [], [16000])),
         helper.make_node("Equal", ["rate", "k"], ["is16k"]),
         helper.make_node("If", ["is16k"], ["y"], then_branch=hi, else_branch=lo)],
        "rate_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES]),
         helper.make_tensor_value_info("rate", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [numpy_helper.from_array(w16, "w16")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _data(path, n, seed, rate=16000):
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.normal(size=(n, FEATURES)).astype(np.float32),
             rate=np.full(n, rate, np.int64))
    return path


@pytest.fixture(scope="module")
def rate_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("rate")
    return _rate_model(d / "rate.onnx"), _data(d / "calib.npz", 64, 0), _data(d / "eval.npz", 32, 1)


def test_specialised_graph_has_no_if_and_computes_the_taken_branch(rate_model):
    import onnx
    import onnxruntime as ort

    path, _, _ = rate_model
    model, notes = onnx.load(path), []
    specialise(model, {"rate": 16000}, notes)
    assert [i.name for i in model.graph.input] == ["x"]
    assert not [n for n in model.graph.node if n.op_type == "If"]
    assert "2 If nodes folded" in notes[0] and "0 left" in notes[0]
    x = np.random.default_rng(2).normal(size=(5, FEATURES)).astype(np.float32)
    src = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = src.run(None, {"x": x, "rate": np.array(16000, np.int64)})[0]
    np.testing.assert_array_equal(got.run(None, {"x": x})[0], want)
    assert (want >= 0).all()  # the nested If's ReLU branch was the one taken


def test_onnx_int8_reaches_the_weights_only_with_the_input_fixed(rate_model, tmp_path):
    import onnx

    path, calib, evalf = rate_model
    with pytest.raises(ConversionError) as err:
        convert(path, ["onnx-int8"], calibration=calib, eval=evalf, out=tmp_path / "a")
    assert "holds no int8 weight" in err.value.failures["onnx-int8"]
    art, = convert(path, ["onnx-int8"], calibration=calib, eval=evalf, out=tmp_path / "b",
                   options=ConvertOptions(fix_inputs={"rate": 16000}))
    assert art.fidelity.outputs[0].sqnr_db > 25
    model = onnx.load(art.path)
    assert [i.name for i in model.graph.input] == ["x"]
    assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    entry = manifest["artifacts"][0]
    assert entry["pass"]["config"]["fix_inputs"] == {"rate": 16000}


def test_samples_that_give_another_value_are_refused(rate_model, tmp_path):
    path, _, evalf = rate_model
    mixed = _data(tmp_path / "mixed.npz", 64, 0)
    z = dict(np.load(mixed))
    z["rate"][::2] = 8000
    np.savez(mixed, **z)
    with pytest.raises(ConversionError) as err:
        convert(path, ["onnx-int8"], calibration=mixed, eval=evalf, out=tmp_path / "b",
                options=ConvertOptions(fix_inputs={"rate": 16000}))
    assert "rate = 8000, 16000" in err.value.failures["onnx-int8"]


def test_bad_fix_inputs_are_input_errors(rate_model, tmp_path):
    import onnx

    assert parse_fix_inputs(["sr=16000", "gain=0.5"]) == {"sr": 16000, "gain": 0.5}
    with pytest.raises(InputError, match="NAME=VALUE"):
        parse_fix_inputs(["sr"])
    with pytest.raises(InputError, match="not an input of the model"):
        specialise(onnx.load(rate_model[0]), {"sample_rate": 16000}, [])
    r = subprocess.run([sys.executable, "-m", "edgekit.cli.main", "convert", str(rate_model[0]),
                        "--to", "onnx-fp32", "--fix-input", "rate=fast", "--out",
                        str(tmp_path / "c")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--fix-input" in r.stderr


@pytest.mark.thirdparty
@pytest.mark.slow
def test_silero_vad_for_16khz_ships_int8(thirdparty_model, tmp_path):
    # The real silero-vad: its net sits in an If on `sr` (and nested ones); built for 16 kHz,
    # the repair ships it INT8 well under FP32's size, judged on espeak-ng speech.
    from pathlib import Path

    import onnx

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "thirdparty"))
    import vad_data

    model = thirdparty_model("silero-vad")
    try:
        vad_data.write(model, tmp_path / "vad.npz")
    except vad_data.SpeechUnavailable as e:
        pytest.fail(f"no speech to calibrate on: {e}", pytrace=False)
    opts = ConvertOptions(fix_inputs={"sr": 16000})
    fp32, = convert(model, ["onnx-fp32"], calibration=tmp_path / "vad.npz", out=tmp_path / "f",
                    options=opts)
    art, = convert(model, ["onnx-int8"], calibration=tmp_path / "vad.npz", out=tmp_path / "b",
                   options=ConvertOptions(fix_inputs={"sr": 16000}, repair=True))
    assert art.bytes <= 0.6 * fp32.bytes
    assert all(o.sqnr_db >= 15 for o in art.fidelity.outputs)
    graph = onnx.load(art.path).graph
    assert "sr" not in [i.name for i in graph.input]
    assert "DynamicQuantizeLSTM" in {n.op_type for n in graph.node}
    assert sum(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer) >= 5

"""Data for models whose batch axis is not first, and for scalar inputs.

A streaming model built here with onnx.helper (fixed seeded weights) has the inputs of a
voice-activity model: ``input [batch, 64]``, a recurrent ``state [2, batch, 64]`` and a scalar
int64 ``sr``. Its data are digits rows fed as a stream: every sample carries the state the model
left after the sample before it, so calibration sees the states the model really reaches.
The same is then done on the real Silero VAD model with synthesised speech.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest_convert import ONNX_TARGETS, onnx_initializer_dtypes, onnx_ops
from onnx import TensorProto, helper, numpy_helper

from calibration_data import Dataset, Layout, SampleFeeds, load_dataset
from calibration_data.digits import load_split
from edgekit import verify
from edgekit.api import convert
from edgekit.errors import CalibrationError, ConversionError, InputError
from edgekit.spec import TensorSpec

FEATURES, HIDDEN = 64, 64
SPEC = [TensorSpec("input", (None, FEATURES), "float32"),
        TensorSpec("state", (2, None, HIDDEN), "float32"),
        TensorSpec("sr", (), "int64")]
AGENT = Path(__file__).resolve().parents[2] / "device_agents" / "agent.py"


def build_streaming_model(path: Path) -> Path:
    """out = sigmoid(V·h1 + c), h_k = tanh(W_k·x_k + U_k·state[k] + b_k), x = input · sr/16000."""
    rng = np.random.default_rng(0)

    def w(name, *shape, scale):
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    inits = [w("W0", FEATURES, HIDDEN, scale=1 / np.sqrt(FEATURES)),
             w("U0", HIDDEN, HIDDEN, scale=0.6 / np.sqrt(HIDDEN)), w("b0", HIDDEN, scale=0.1),
             w("W1", HIDDEN, HIDDEN, scale=1 / np.sqrt(HIDDEN)),
             w("U1", HIDDEN, HIDDEN, scale=0.6 / np.sqrt(HIDDEN)), w("b1", HIDDEN, scale=0.1),
             w("V", HIDDEN, 1, scale=1 / np.sqrt(HIDDEN)), w("c", 1, scale=0.1),
             numpy_helper.from_array(np.array(16000, np.float32), "sr_ref"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    nodes = [helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["sr_f", "sr_ref"], ["gain"]),
             helper.make_node("Mul", ["input", "gain"], ["x"])]
    prev = "x"
    for k, idx in enumerate(("zero", "one")):
        nodes += [helper.make_node("Gather", ["state", idx], [f"s{k}"], axis=0),
                  helper.make_node("MatMul", [prev, f"W{k}"], [f"wx{k}"]),
                  helper.make_node("MatMul", [f"s{k}", f"U{k}"], [f"us{k}"]),
                  helper.make_node("Add", [f"wx{k}", f"us{k}"], [f"sum{k}"]),
                  helper.make_node("Add", [f"sum{k}", f"b{k}"], [f"pre{k}"]),
                  helper.make_node("Tanh", [f"pre{k}"], [f"h{k}"]),
                  helper.make_node("Unsqueeze", [f"h{k}", "axis0"], [f"h{k}_"])]
        prev = f"h{k}"
    nodes += [helper.make_node("Concat", ["h0_", "h1_"], ["stateN"], axis=0),
              helper.make_node("MatMul", ["h1", "V"], ["logit0"]),
              helper.make_node("Add", ["logit0", "c"], ["logit"]),
              helper.make_node("Sigmoid", ["logit"], ["output"])]
    graph = helper.make_graph(
        nodes, "streaming",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", FEATURES]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", HIDDEN]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", HIDDEN])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def stream(model_path: Path, frames: np.ndarray, sr: int = 16000) -> dict:
    """Run the model over ``frames`` as a stream; the arrays a calibration .npz holds."""
    s = _session(model_path)
    state = np.zeros((2, 1, HIDDEN), np.float32)
    states = np.zeros((len(frames), 2, 1, HIDDEN), np.float32)
    for i, frame in enumerate(frames):
        states[i] = state
        _, state = s.run(None, {"input": frame[None], "state": state, "sr": np.array(sr)})
    return {"input": frames.astype(np.float32), "state": states,
            "sr": np.full(len(frames), sr, np.int64)}


@pytest.fixture(scope="module")
def streaming(tmp_path_factory):
    """(model path, calibration .npz, eval .npz, eval arrays) for the streaming model."""
    folder = tmp_path_factory.mktemp("streaming")
    model = build_streaming_model(folder / "streaming.onnx")
    x_calib, _ = load_split("calibration")
    x_eval, _ = load_split("eval")
    calib = stream(model, x_calib[:160].reshape(160, FEATURES))
    evals = stream(model, x_eval[:48].reshape(48, FEATURES))
    np.savez(folder / "calib.npz", **calib)
    np.savez(folder / "eval.npz", **evals)
    return model, folder / "calib.npz", folder / "eval.npz", evals


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


# --- the loader ---------------------------------------------------------------------------------

def test_loader_reads_batched_and_full_shape_layouts_and_says_so(streaming, caplog):
    _, calib, _, _ = streaming
    with caplog.at_level(logging.INFO, logger="calibration_data"):
        data = load_dataset(calib, SPEC)
    assert data.layouts == {"input": Layout.BATCHED, "state": Layout.FULL_SHAPE,
                            "sr": Layout.FULL_SHAPE}
    assert data.describe()["layouts"] == {"input": "batched", "state": "full-shape",
                                          "sr": "full-shape"}
    assert data.one_at_a_time and len(data) == 160
    line = next(r.getMessage() for r in caplog.records if "layouts:" in r.getMessage())
    assert "'state' full-shape [N,2,1,64] of [2,?,64]" in line
    assert "'sr' full-shape [N] of []" in line and "fed one sample at a time" in line
    # Every feed is one sample at the model's full shapes, whatever batch size is asked for.
    feeds = list(data.batches(8))
    assert len(feeds) == 160
    assert {k: v.shape for k, v in feeds[3].items()} == {"input": (1, FEATURES),
                                                          "state": (2, 1, HIDDEN), "sr": ()}
    assert isinstance(feeds[3]["sr"], np.ndarray) and int(feeds[3]["sr"]) == 16000
    np.testing.assert_array_equal(feeds[3]["state"], data.inputs["state"][3])
    labelled = list(Dataset(data.inputs, np.arange(160) % 10, layouts=data.layouts)
                    .labeled_batches(4))
    assert len(labelled) == 160 and labelled[7][1].tolist() == [7]


def test_full_shape_samples_of_a_batch_first_input_are_held_batched(streaming, tmp_path):
    _, calib, _, _ = streaming
    with np.load(calib) as z:
        arrays = {k: z[k] for k in z.files}
    full = _save(tmp_path / "full.npz", **{**arrays, "input": arrays["input"][:, None]})
    a, b = load_dataset(calib, SPEC), load_dataset(full, SPEC)
    assert b.layouts["input"] is Layout.BATCHED and b.inputs["input"].shape == (160, FEATURES)
    assert a.fingerprint == b.fingerprint  # the same samples, however they were laid out


def test_take_keeps_the_layouts(streaming):
    _, calib, _, _ = streaming
    data = load_dataset(calib, SPEC, samples=20)
    assert len(data) == 20 and data.layouts["state"] is Layout.FULL_SHAPE
    assert data.inputs["state"].shape == (20, 2, 1, HIDDEN)


@pytest.mark.parametrize("key, array, words", [
    # [2, batch, 64] has no leading batch axis: a batched array is not a layout it can take.
    ("state", np.zeros((5, 1, HIDDEN), np.float32),
     ["layout mismatch", "[2,?,64]", "not its batch axis", "expected [N,2,?,64]",
      "found [5, 1, 64]"]),
    ("state", np.zeros((5, 3, 1, HIDDEN), np.float32),
     ["shape mismatch", "full shape [2,?,64]", "[N,2,?,64]", "found [5, 3, 1, 64]"]),
    ("sr", np.array(16000), ["layout mismatch", "scalar", "expected [N]", "single value",
                             "np.full(N, value)"]),
    ("sr", np.full((5, 1), 16000), ["shape mismatch", "expected N samples of the full shape []",
                                    "[N]", "found [5, 1]"]),
    ("input", np.zeros((5, 1, FEATURES - 1), np.float32),
     ["shape mismatch", "[?,64]", "[N,?,64]", "found [5, 1, 63]"]),
    ("input", np.zeros(FEATURES, np.float32), ["sample axis looks missing"]),
    ("state", np.zeros((0, 2, 1, HIDDEN), np.float32), ["empty", "at least one sample"]),
    # A valid full shape on its own, but a sample of 'input' carries a batch of 1, not 3.
    ("state", np.zeros((5, 2, 3, HIDDEN), np.float32),
     ["inputs disagree on the batch", "'input' 1", "'state' 3"]),
])
def test_impossible_layouts_name_the_input_and_the_accepted_shapes(tmp_path, key, array, words):
    arrays = {"input": np.zeros((5, FEATURES), np.float32),
              "state": np.zeros((5, 2, 1, HIDDEN), np.float32), "sr": np.full(5, 16000)}
    path = _save(tmp_path / "bad.npz", **{**arrays, key: array})
    with pytest.raises(CalibrationError) as info:
        load_dataset(path, SPEC)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    assert f"input '{key}'" in msg or f"'{key}' " in msg
    for w in words:
        assert w in msg, (w, msg)


def test_layouts_must_name_inputs():
    with pytest.raises(CalibrationError, match=r"layouts given for \['nope'\]"):
        Dataset({"a": np.zeros((2, 3), np.float32)}, layouts={"nope": Layout.FULL_SHAPE})


# --- feeding the model ------------------------------------------------------------------------

def test_run_batched_feeds_full_shape_samples_one_by_one(streaming):
    model, _, _, evals = streaming
    s = _session(model)
    data = Dataset(evals, layouts={"state": Layout.FULL_SHAPE, "sr": Layout.FULL_SHAPE})
    names = ["input", "state", "sr"]
    calls = []

    def run(xs):
        calls.append([x.shape for x in xs])
        return s.run(None, dict(zip(names, xs, strict=True)))

    out, state_n = verify.run_batched(run, data.feeds(), names, chunk=16)
    assert len(calls) == 48 and calls[0] == [(1, FEATURES), (2, 1, HIDDEN), ()]
    assert out.shape == (48, 1, 1) and state_n.shape == (48, 2, 1, HIDDEN)
    i = 17
    want = s.run(None, {"input": evals["input"][i:i + 1], "state": evals["state"][i],
                        "sr": np.array(16000)})
    np.testing.assert_array_equal(out[i], want[0])
    np.testing.assert_array_equal(state_n[i], want[1])
    # The stream is consistent: what sample i leaves is what sample i + 1 was given.
    np.testing.assert_allclose(state_n[i], evals["state"][i + 1], atol=1e-6)


def test_run_batched_keeps_chunking_batched_feeds():
    calls = []

    def run(xs):
        calls.append(xs[0].shape)
        return [xs[0] * 2]

    x = np.arange(10, dtype=np.float32)[:, None]
    (y,) = verify.run_batched(run, {"x": x}, ["x"], chunk=4)
    assert calls == [(4, 1), (4, 1), (2, 1)]
    np.testing.assert_array_equal(y, x * 2)
    (y,) = verify.run_batched(run, SampleFeeds({"x": x}, {"x": Layout.BATCHED}), ["x"], chunk=8)
    assert calls[-2:] == [(8, 1), (2, 1)]


def test_synthetic_feeds_follow_the_spec():
    feeds = verify.synthetic_feeds(SPEC, samples=6)
    assert {k: v.shape for k, v in feeds.items()} == {"input": (6, FEATURES),
                                                      "state": (6, 2, 1, HIDDEN), "sr": (6,)}
    assert feeds["sr"].dtype == np.int64
    assert feeds.layouts == {"input": Layout.BATCHED, "state": Layout.FULL_SHAPE,
                             "sr": Layout.FULL_SHAPE}
    with pytest.raises(InputError) as info:
        verify.synthetic_feeds([TensorSpec("kv", (2, None, None), "float32")])
    assert "--input-shape kv=2,1,N" in str(info.value)


# --- converting ---------------------------------------------------------------------------------

def test_convert_to_every_onnx_target_with_full_shape_calibration(streaming, tmp_path):
    model, calib, evaluation, _ = streaming
    arts = {a.target: a for a in convert(model, ONNX_TARGETS, calibration=calib, eval=evaluation,
                                         out=tmp_path / "out")}
    assert sorted(arts) == sorted(ONNX_TARGETS)
    for a in arts.values():
        assert a.fidelity.samples == 48
    assert arts["onnx-fp32"].fidelity.sqnr_db > 100
    assert arts["onnx-fp16"].fidelity.sqnr_db > 50
    assert arts["onnx-int8"].fidelity.sqnr_db > 20
    assert arts["onnx-int8"].bytes < 0.6 * arts["onnx-fp32"].bytes
    int8 = Path(arts["onnx-int8"].path)
    assert onnx_ops(int8)["QuantizeLinear"] > 0
    assert onnx_initializer_dtypes(int8)["int8"] >= 5  # the five weight matrices
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["target"] == "onnx-int8")
    assert entry["calibration"]["layouts"] == {"input": "batched", "state": "full-shape",
                                               "sr": "full-shape"}


def build_streaming_savedmodel(folder: Path, frames: np.ndarray) -> tuple:
    """The same kind of streaming net as a TensorFlow SavedModel, with its streamed data.

    Returns:
        (SavedModel folder, calibration .npz)
    """
    import tensorflow as tf

    rng = np.random.default_rng(1)
    w0, w1, v = (tf.constant(rng.normal(0, 1 / np.sqrt(n), (n, m)).astype(np.float32))
                 for n, m in ((FEATURES, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, 1)))
    u0, u1 = (tf.constant(rng.normal(0, 0.6 / np.sqrt(HIDDEN), (HIDDEN, HIDDEN))
                          .astype(np.float32)) for _ in range(2))

    class Streaming(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, FEATURES], tf.float32, name="input"),
                                      tf.TensorSpec([2, None, HIDDEN], tf.float32, name="state"),
                                      tf.TensorSpec([], tf.int64, name="sr")])
        def __call__(self, input, state, sr):
            x = input * tf.cast(sr, tf.float32) / 16000.0
            h0 = tf.tanh(x @ w0 + state[0] @ u0)
            h1 = tf.tanh(h0 @ w1 + state[1] @ u1)
            return {"output": tf.sigmoid(h1 @ v), "stateN": tf.stack([h0, h1])}

    net = Streaming()
    tf.saved_model.save(net, str(folder / "sm"), signatures={"serving_default": net.__call__})
    state, states = np.zeros((2, 1, HIDDEN), np.float32), []
    for frame in frames:
        states.append(state)
        state = net(frame[None], state, np.int64(16000))["stateN"].numpy()
    calib = _save(folder / "calib.npz", input=frames, state=np.stack(states),
                  sr=np.full(len(frames), 16000, np.int64))
    return folder / "sm", calib


@pytest.mark.slow
def test_savedmodel_to_tflite_with_full_shape_calibration(tmp_path):
    # The TFLite representative dataset gets one full-shape sample at a time as well.
    x, _ = load_split("calibration")
    model, calib = build_streaming_savedmodel(tmp_path, x[:120].reshape(120, FEATURES))
    arts = {a.target: a for a in convert(model, ["tflite-fp32", "tflite-int8"],
                                         calibration=calib, out=tmp_path / "out")}
    assert arts["tflite-fp32"].fidelity.sqnr_db > 100
    assert arts["tflite-int8"].fidelity.sqnr_db > 20
    assert arts["tflite-int8"].calibration["layouts"] == {"input": "batched",
                                                          "state": "full-shape",
                                                          "sr": "full-shape"}


def test_convert_on_made_up_inputs(streaming, tmp_path):
    model, _, _, _ = streaming
    arts = convert(model, ["onnx-fp32", "onnx-fp16"], out=tmp_path / "out")
    assert [a.fidelity.samples for a in arts] == [verify.SYNTHETIC_SAMPLES] * 2
    assert arts[0].fidelity.sqnr_db > 100


def test_device_agent_evaluates_full_shape_samples(streaming, tmp_path):
    from device_agents.agent import load_model, run_eval

    model, _, evaluation, evals = streaming
    loaded = load_model(str(model), threads=1)
    with np.load(evaluation) as z:
        outs = run_eval(loaded, [z[s["name"]] for s in loaded.inputs])
    assert outs[0].shape == (48, 1, 1) and outs[1].shape == (48, 2, 1, HIDDEN)
    want = _session(model).run(None, {"input": evals["input"][:1], "state": evals["state"][0],
                                      "sr": np.array(16000)})
    np.testing.assert_allclose(outs[0][0], want[0], rtol=1e-6)
    ref = _save(tmp_path / "ref.npz", output=outs[0], stateN=outs[1])
    proc = subprocess.run([sys.executable, str(AGENT), "run", str(model), "--runs", "3",
                           "--warmup", "1", "--eval", str(evaluation), "--reference", str(ref)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["ok"] and doc["input_source"] == "eval"
    assert [a["sqnr_db"] for a in doc["agreement"]] == [None, None]  # identical outputs


def test_bench_with_full_shape_eval_data(streaming, tmp_path):
    # The host runs the artifact on the eval data for the agreement reference (run_eval), and
    # the agent on the device does the same: both one sample at a time.
    from edgekit.bench import BenchOptions, benchmark
    from edgekit.devices.spec import DeviceSpec

    model, _, evaluation, _ = streaming
    local = DeviceSpec(name="local", workdir=str(tmp_path / "cache"))
    (result,) = benchmark(model, [local], BenchOptions(runs=3, warmup=0, eval=evaluation))
    assert result.ok, result.error
    assert result.settings["reference"] == "host"
    agreement = {a["name"]: a for a in result.metrics["agreement"]}
    assert set(agreement) == {"output", "stateN"}
    assert all(a["max_abs_error"] == 0.0 for a in agreement.values())


# --- the real Silero VAD ------------------------------------------------------------------------

@pytest.mark.thirdparty
@pytest.mark.slow
def test_silero_vad_calibrates_on_speech(thirdparty_model, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "thirdparty"))
    import vad_data

    model = thirdparty_model("silero-vad")
    try:
        arrays = vad_data.write(model, tmp_path / "vad.npz")
    except vad_data.SpeechUnavailable as e:
        pytest.skip(f"no speech to calibrate on: {e}")
    probs = arrays["speech_prob"]
    assert (probs > 0.5).sum() > 100 and (probs < 0.1).sum() > 50  # speech and pauses
    data = load_dataset(tmp_path / "vad.npz", [TensorSpec("input", (None, None), "float32"),
                                               TensorSpec("state", (2, None, 128), "float32"),
                                               TensorSpec("sr", (), "int64")])
    assert data.describe()["layouts"] == {"input": "batched", "state": "full-shape",
                                          "sr": "full-shape"}
    targets = ["onnx-fp32", "onnx-fp16", "onnx-int8"]
    try:
        arts = convert(model, targets, calibration=tmp_path / "vad.npz", out=tmp_path / "out")
        failures = {}
    except ConversionError as e:
        arts, failures = e.artifacts, e.failures
    by = {a.target: a for a in arts}
    assert "onnx-fp32" in by and "onnx-fp16" in by, failures
    assert by["onnx-fp16"].fidelity.sqnr_db > 40
    # int8 calibrates and runs on this data; whether it ships is the gate's and the content
    # check's call (the net sits inside an If), never a data error.
    if "onnx-int8" in failures:
        assert "calibration data" not in failures["onnx-int8"], failures["onnx-int8"]
    else:
        assert by["onnx-int8"].calibration["layouts"]["state"] == "full-shape"


@pytest.mark.thirdparty
def test_silero_vad_pinned_for_made_up_inputs_is_one_clear_error(thirdparty_model, tmp_path):
    # Without data the sequence dim must be pinned, and a pinned Silero graph fails ORT's shape
    # inference in its unused 8 kHz branch: one line that points at giving data instead.
    from converters.options import ConvertOptions
    from edgekit.errors import ModelLoadError

    model = thirdparty_model("silero-vad")
    with pytest.raises(ModelLoadError) as info:
        convert(model, ["onnx-fp32"], out=tmp_path / "out",
                options=ConvertOptions(input_shapes={"input": (1, 576)}))
    msg = str(info.value)
    assert "\n" not in msg and "--calibration/--eval data" in msg

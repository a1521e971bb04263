"""onnx-int8 gives an LSTM int8 weights: ONNX Runtime's static QDQ quantizer has no LSTM, so its
dynamic quantizer turns it into ``DynamicQuantizeLSTM`` after the static pass."""

from __future__ import annotations

import numpy as np

from edgekit.api import convert

HIDDEN, FEATURES, STEPS = 32, 16, 6


def _lstm_model(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.normal(size=(1, 4 * HIDDEN, FEATURES)) / np.sqrt(FEATURES)).astype(np.float32)
    r = (rng.normal(size=(1, 4 * HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
    head = (rng.normal(size=(HIDDEN, 4)) / np.sqrt(HIDDEN)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "w", "r"], ["", "h"], name="lstm", hidden_size=HIDDEN),
         helper.make_node("Squeeze", ["h", "axes"], ["h2"]),
         helper.make_node("MatMul", ["h2", "head"], ["y"])],
        "lstm_model", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [STEPS, "N", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(r, "r"),
         numpy_helper.from_array(head, "head"), numpy_helper.from_array(np.array([0], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_lstm_weights_are_int8_and_the_artifact_stays_close(tmp_path):
    import onnx

    model = _lstm_model(tmp_path / "lstm.onnx")
    rng = np.random.default_rng(1)
    # [samples, STEPS, 1, FEATURES]: a batch axis that is not the first (sample i is x[i])
    t = np.linspace(0, 6, STEPS)[None, :, None, None]
    for name, n in (("calib", 64), ("eval", 32)):
        phase = rng.uniform(0, 6, (n, 1, 1, FEATURES))
        np.savez(tmp_path / f"{name}.npz", x=np.sin(t + phase).astype(np.float32))
    art, = convert(model, ["onnx-int8"], calibration=tmp_path / "calib.npz",
                   eval=tmp_path / "eval.npz", out=tmp_path / "b")
    graph = onnx.load(art.path).graph
    ops = {n.op_type for n in graph.node}
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
    int8 = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert {"w_quantized", "r_quantized", "head_quantized"} <= set(int8)
    assert art.fidelity.sqnr_db > 20

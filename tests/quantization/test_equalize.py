"""INT8 remedies that keep every op quantized: cross-layer equalization, bias correction and
Conv/MatMul-only quantization, on ONNX models built here with fixed, seeded weights.

The quantized artifacts are run with ONNX Runtime's graph optimizations off, so each
DequantizeLinear → op → QuantizeLinear runs as written (simulated int8): the error measured is
the quantization's own, the same on every CPU (fused int8 kernels saturate on some x86 hosts).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from calibration_data import Dataset
from converters.onnx_int8 import convert as onnx_int8
from converters.options import CONV_MATMUL_OP_TYPES, WEIGHT_OP_TYPES, ConvertOptions
from converters.registry import get_target
from converters.repair import cheaper_remedies
from converters.repair.equalize import correct_biases, equalize, find_pairs
from converters.repair.metrics import sqnr_db
from converters.sources import load_source
from edgekit.recipe import options_from_json, options_to_json

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402 - after the importorskip

SPREAD = np.logspace(-1, 1, 8).astype(np.float32)  # channel ranges 0.1 .. 10: 100x apart


def _conv(name, x, w, b, out, group=1):
    inits = [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]
    k = w.shape[-1]
    node = helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [out], name=name,
                            pads=[k // 2] * 4, group=group)
    return node, inits


def _model(nodes, inits, path=None, channels=3):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, str(path))
    return model


def _unbalanced(between=("Relu",), seed=0):
    """Conv(3→8) → ``between`` → Conv(8→4): channel i of the first conv scaled by SPREAD[i]
    and input channel i of the second by 1/SPREAD[i] (one float function, ranges 100x apart)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32) * SPREAD[:, None, None, None]
    b1 = rng.normal(0, 0.1, 8).astype(np.float32) * SPREAD
    w2 = rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32) / SPREAD[None, :, None, None]
    b2 = rng.normal(0, 0.1, 4).astype(np.float32)
    n1, i1 = _conv("conv1", "x", w1, b1, "h0")
    nodes, t = [n1], "h0"
    inits = i1
    for k, op in enumerate(between):
        if op in ("Relu6", "ClipMin0"):
            inits += [numpy_helper.from_array(np.array(0, np.float32), f"lo{k}"),
                      numpy_helper.from_array(np.array(6, np.float32), f"hi{k}")]
            bounds = [f"lo{k}", f"hi{k}"] if op == "Relu6" else [f"lo{k}"]
            nodes.append(helper.make_node("Clip", [t, *bounds], [f"a{k}"]))
        else:
            nodes.append(helper.make_node(op, [t], [f"a{k}"]))
        t = f"a{k}"
    n2, i2 = _conv("conv2", t, w2, b2, "y")
    return _model(nodes + [n2], inits + i2)


def _depthwise_chain():
    """Conv(3→6) → Relu → depthwise Conv(6, group 6) → Relu → Conv(6→4), unbalanced."""
    rng = np.random.default_rng(3)
    f = np.logspace(-1, 1, 6).astype(np.float32)
    w1 = rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32) * f[:, None, None, None]
    g = f[::-1]  # the depthwise conv re-spreads the channels the other way
    dw = rng.normal(0, 0.3, (6, 1, 3, 3)).astype(np.float32) * (g / f)[:, None, None, None]
    w3 = rng.normal(0, 0.3, (4, 6, 1, 1)).astype(np.float32) / g[None, :, None, None]
    n1, i1 = _conv("c1", "x", w1, rng.normal(0, .1, 6).astype(np.float32) * f, "h1")
    n2, i2 = _conv("dw", "r1", dw, rng.normal(0, .1, 6).astype(np.float32) * g, "h2", group=6)
    n3, i3 = _conv("c3", "r2", w3, np.zeros(4, np.float32), "y")
    relu = [helper.make_node("Relu", ["h1"], ["r1"]), helper.make_node("Relu", ["h2"], ["r2"])]
    return _model([n1, relu[0], n2, relu[1], n3], i1 + i2 + i3)


def _inputs(n, seed, mean=0.0):
    return np.random.default_rng(seed).normal(mean, 1.0, (n, 1, 3, 12, 12)).astype(np.float32)


def _run(model_or_path, xs, *, optimize=True):
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") \
        else str(model_or_path)
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    return np.stack([sess.run(None, {"x": x})[0] for x in xs])


def _int8(model, tmp_path, options, calib_x, name):
    """onnx-int8 of ``model`` through edgekit's pass; returns the artifact's path."""
    src_path = tmp_path / f"{name}-src.onnx"
    onnx.save(model, str(src_path))
    out = tmp_path / f"{name}-int8.onnx"
    result = onnx_int8(load_source(src_path), options, Dataset({"x": calib_x[:, 0]}), out)
    return out, result


PER_TENSOR = ConvertOptions(per_channel=False)


def test_cle_keeps_the_float_function_and_balances_ranges():
    model = _unbalanced()
    xs = _inputs(8, seed=1)
    before = _run(model, xs)
    report = equalize(model)
    after = _run(model, xs)
    assert report.pairs == 1 and report.skipped == {"convs whose output is a graph output": 1}
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    w1 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "conv1_w"))
    w2 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "conv2_w"))
    r1 = np.abs(w1).reshape(8, -1).max(1)
    r2 = np.abs(w2).transpose(1, 0, 2, 3).reshape(8, -1).max(1)
    np.testing.assert_allclose(r1, r2, rtol=1e-3)  # the paper's condition: equal ranges
    assert r1.max() / r1.min() < 5  # was 100x apart


def test_data_aware_cle_balances_activations_against_weights_and_keeps_the_function():
    from converters.repair.equalize import activation_ranges

    model = _unbalanced()
    calib, xs = _inputs(16, seed=6), _inputs(8, seed=1)
    before = _run(model, xs)
    ranges = activation_ranges(model, ({"x": x} for x in calib))
    assert list(ranges) == ["a0"]  # the Relu's output, read by conv2
    report = equalize(model, ranges)
    np.testing.assert_allclose(_run(model, xs), before, rtol=1e-4,
                               atol=1e-4 * np.abs(before).max())
    assert report.data_aware and "activation ranges" in report.describe()
    after = activation_ranges(model, ({"x": x} for x in calib))["a0"]
    w2 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "conv2_w"))
    r2 = np.abs(w2).transpose(1, 0, 2, 3).reshape(8, -1).max(1)
    np.testing.assert_allclose(after, r2, rtol=1e-3)  # a_i / s_i == r2_i * s_i
    assert ranges["a0"].max() / ranges["a0"].min() > 30 and after.max() / after.min() < 10


def test_cle_improves_per_channel_int8_sqnr_through_the_activations(tmp_path):
    model = _unbalanced()
    calib, xs = _inputs(32, seed=4), _inputs(16, seed=5)
    ref = _run(model, xs)
    naive, _ = _int8(model, tmp_path, ConvertOptions(), calib, "naive")
    cle, result = _int8(model, tmp_path, ConvertOptions(equalize=True), calib, "cle")
    naive_db = sqnr_db(ref, _run(naive, xs, optimize=False))
    cle_db = sqnr_db(ref, _run(cle, xs, optimize=False))
    assert cle_db >= naive_db + 6.0, (naive_db, cle_db)
    assert any("activation ranges vs weight ranges" in n for n in result.notes)


def test_cle_through_depthwise_converges_and_keeps_the_function():
    model = _depthwise_chain()
    xs = _inputs(4, seed=2)
    before = _run(model, xs)
    report = equalize(model)
    after = _run(model, xs)
    assert report.pairs == 2 and report.rounds > 1
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())


def test_cle_skips_pairs_it_cannot_rescale_exactly():
    relu6 = _unbalanced(between=("Relu6",))
    pairs, skipped = find_pairs(relu6)
    assert pairs == [] and any("Clip" in reason for reason in skipped)
    swish = _unbalanced(between=("HardSwish",))
    weights = [numpy_helper.to_array(i).copy() for i in swish.graph.initializer]
    report = equalize(swish)
    assert report.pairs == 0 and any("HardSwish" in r for r in report.skipped)
    assert all(np.array_equal(w, numpy_helper.to_array(i))
               for w, i in zip(weights, swish.graph.initializer, strict=True))
    # A Clip with min 0 and no max is a Relu: equalized, through an Identity too.
    assert len(find_pairs(_unbalanced(between=("ClipMin0", "Identity")))[0]) == 1


def test_cle_improves_per_tensor_int8_sqnr(tmp_path):
    model = _unbalanced()
    calib, xs = _inputs(32, seed=4), _inputs(16, seed=5)
    ref = _run(model, xs)
    naive, _ = _int8(model, tmp_path, PER_TENSOR, calib, "naive")
    cle, result = _int8(model, tmp_path, dataclasses.replace(PER_TENSOR, equalize=True), calib,
                        "cle")
    naive_db = sqnr_db(ref, _run(naive, xs, optimize=False))
    cle_db = sqnr_db(ref, _run(cle, xs, optimize=False))
    assert cle_db >= naive_db + 6.0, (naive_db, cle_db)
    assert any("cross-layer equalization: 1 conv pairs" in n for n in result.notes)
    # Still int8: both convs read int8 weights.
    q = onnx.load(str(cle))
    int8_weights = [i for i in q.graph.initializer if i.data_type == TensorProto.INT8
                    and len(i.dims) == 4]
    assert len(int8_weights) == 2


def test_bias_correction_removes_the_mean_output_shift(tmp_path):
    # One conv, coarse (7-bit per-tensor) weights, inputs with a large mean: the weights'
    # rounding shifts each output channel's mean by (W_q - W)·E[x].
    rng = np.random.default_rng(7)
    w = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32) * SPREAD[:, None, None, None]
    node, inits = _conv("conv", "x", w, np.zeros(8, np.float32), "y")
    model = _model([node], inits)
    calib, xs = _inputs(32, seed=8, mean=2.0), _inputs(32, seed=9, mean=2.0)
    ref = _run(model, xs)
    opts = dataclasses.replace(PER_TENSOR, reduce_range=True)
    shifts = {}
    for bc in (False, True):
        path, _ = _int8(model, tmp_path, dataclasses.replace(opts, bias_correction=bc), calib,
                        f"bc{bc}")
        err = _run(path, xs, optimize=False) - ref
        shifts[bc] = np.abs(err.mean(axis=(0, 1, 3, 4)))  # borders included
    assert shifts[True].mean() < 0.5 * shifts[False].mean(), shifts


@pytest.mark.parametrize("attrs", [dict(pads=[1, 1, 1, 1], strides=[2, 2]),
                                   dict(auto_pad="SAME_UPPER", strides=[2, 2], group=2),
                                   dict(pads=[0, 2, 1, 0], dilations=[2, 1])])
def test_tap_means_give_the_exact_mean_of_a_conv_borders_included(attrs):
    from converters.repair.equalize import _grouped, conv_tap_means

    rng = np.random.default_rng(13)
    group = attrs.get("group", 1)
    dw = rng.normal(0, 1, (4, 4 // group, 3, 3)).astype(np.float32)
    x = rng.normal(1.0, 1.0, (5, 4, 9, 7)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                        list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(dw, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    measured = sess.run(None, {"x": x})[0].mean(axis=(0, 2, 3))
    taps = conv_tap_means(x.astype(np.float64), node, (3, 3))
    predicted = np.einsum("gmck,gck->gm", _grouped(dw, group),
                          taps.reshape(group, 4 // group, -1)).reshape(-1)
    np.testing.assert_allclose(predicted, measured, rtol=1e-4, atol=1e-4)


def test_correct_biases_changes_only_the_biases():
    model = _unbalanced()
    weights = {i.name: numpy_helper.to_array(i).copy() for i in model.graph.initializer}
    done = correct_biases(model, ({"x": x} for x in _inputs(8, seed=10)), per_channel=False,
                          exclude=("conv2",))
    assert done == 1
    after = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    changed = sorted(n for n in weights if not np.array_equal(weights[n], after[n]))
    assert changed == ["conv1_b"]


def _swish_model():
    """Conv → Sigmoid → Mul (swish) → Conv → Add(residual): the elementwise ops are the risk."""
    rng = np.random.default_rng(11)
    n1, i1 = _conv("c1", "x", rng.normal(0, .3, (4, 3, 3, 3)).astype(np.float32),
                   np.zeros(4, np.float32), "h")
    n2, i2 = _conv("c2", "s", rng.normal(0, .3, (4, 4, 3, 3)).astype(np.float32),
                   np.zeros(4, np.float32), "h2")
    nodes = [n1, helper.make_node("Sigmoid", ["h"], ["g"], name="sig"),
             helper.make_node("Mul", ["h", "g"], ["s"], name="mul"), n2,
             helper.make_node("Add", ["h2", "s"], ["y"], name="add")]
    return _model(nodes, i1 + i2)


def test_conv_matmul_only_leaves_elementwise_ops_in_float(tmp_path):
    model = _swish_model()
    calib = _inputs(16, seed=12)
    quantized_outputs = {}
    for name, types in (("all", ()), ("convs", CONV_MATMUL_OP_TYPES)):
        path, _ = _int8(model, tmp_path, ConvertOptions(quantize_op_types=types), calib, name)
        q = onnx.load(str(path))
        producer = {o: n.op_type for n in q.graph.node for o in n.output}
        quantized_outputs[name] = {producer.get(n.input[0]) for n in q.graph.node
                                   if n.op_type == "QuantizeLinear"}
        int8_weights = [i for i in q.graph.initializer if i.data_type == TensorProto.INT8
                        and len(i.dims) == 4]
        assert len(int8_weights) == 2  # both convs int8 either way
    assert {"Sigmoid", "Add"} <= quantized_outputs["all"]
    # Sigmoid's and Add's outputs are not quantized; Mul's only because conv c2 reads it as input.
    assert not {"Sigmoid", "Add"} & quantized_outputs["convs"]


def test_new_options_are_recorded_and_replayed():
    info = get_target("onnx-int8")
    opts = ConvertOptions(equalize=True, bias_correction=True,
                          quantize_op_types=CONV_MATMUL_OP_TYPES)
    assert opts.subset(info.options)["quantize_op_types"] == CONV_MATMUL_OP_TYPES
    assert {"equalize", "bias_correction", "quantize_op_types"} <= set(info.options)
    assert options_from_json(options_to_json(opts)) == opts


def test_cheaper_remedies_try_int8_keeping_remedies_in_order_of_cost():
    remedies = cheaper_remedies(get_target("onnx-int8"), ConvertOptions())
    names = [d for d, _ in remedies]
    first_new = next(i for i, (_, o) in enumerate(remedies) if o.equalize or o.quantize_op_types)
    new = remedies[first_new:]
    assert [o.equalize for _, o in new][:2] == [True, True]
    assert not new[0][1].bias_correction and new[1][1].bias_correction
    assert new[-2][1].quantize_op_types == CONV_MATMUL_OP_TYPES
    # last, the weight ops alone in int8 (every activation and data-movement op float)
    assert new[-1][1].quantize_op_types == WEIGHT_OP_TYPES and not new[-1][1].equalize
    assert all(not o.float_nodes for _, o in remedies)
    assert len(set(names)) == len(names)
    assert cheaper_remedies(get_target("onnx-fp16"), ConvertOptions()) == []


def test_cli_flags_reach_the_artifact_and_its_manifest(capsys, tmp_path):
    import json

    from edgekit.cli.main import main

    model = tmp_path / "unbalanced.onnx"
    onnx.save(_unbalanced(), str(model))
    calib, ev = tmp_path / "calib.npz", tmp_path / "eval.npz"
    np.savez(calib, x=_inputs(32, seed=4)[:, 0])
    np.savez(ev, x=_inputs(16, seed=5)[:, 0])
    out = tmp_path / "out"
    code = main(["convert", str(model), "--to", "onnx-int8", "--calibration", str(calib),
                 "--eval", str(ev), "--equalize", "--bias-correction", "--out", str(out),
                 "--json"])
    assert code == 0, capsys.readouterr().err
    (artifact,) = json.loads((out / "manifest.json").read_text())["artifacts"]
    config = artifact["pass"]["config"]
    assert config["equalize"] is True and config["bias_correction"] is True
    assert config["quantize_op_types"] == []
    notes = " ".join(config.get("notes", []))
    assert "cross-layer equalization" in notes and "bias correction" in notes


def test_repair_adopts_equalization_before_keeping_ops_in_float(tmp_path):
    """Per-tensor int8 of a 64-channel unbalanced pair misses a 25 dB gate; no calibration
    remedy reaches it (4-11 dB here), cross-layer equalization does, with nothing in float."""
    import json

    from edgekit.api import convert

    rng = np.random.default_rng(0)
    f = np.logspace(-1, 1, 64).astype(np.float32)
    w1 = rng.normal(0, .3, (64, 3, 3, 3)).astype(np.float32) * f[:, None, None, None]
    w2 = rng.normal(0, .05, (64, 64, 3, 3)).astype(np.float32) / f[None, :, None, None]
    n1, i1 = _conv("conv1", "x", w1, rng.normal(0, .1, 64).astype(np.float32) * f, "h")
    n2, i2 = _conv("conv2", "a", w2, np.zeros(64, np.float32), "y")
    model = tmp_path / "wide.onnx"
    _model([n1, helper.make_node("Relu", ["h"], ["a"]), n2], i1 + i2, path=model)
    np.savez(tmp_path / "c.npz", x=_inputs(32, seed=4)[:, 0])
    np.savez(tmp_path / "e.npz", x=_inputs(16, seed=5)[:, 0])
    convert(model, ["onnx-int8"], calibration=tmp_path / "c.npz", eval=tmp_path / "e.npz",
            out=tmp_path / "out", options=ConvertOptions(per_channel=False, min_sqnr_db=25.0,
                                                         repair=True, task="regression"))
    (artifact,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["artifacts"]
    config = artifact["pass"]["config"]
    assert config["repair"]["chosen"] == "cross-layer equalization"
    assert config["equalize"] is True and config["float_nodes"] == []
    tried = [a["description"] for a in config["repair"]["attempts"]]
    assert tried.index("cross-layer equalization") == len(tried) - 1  # cheaper ones tried first

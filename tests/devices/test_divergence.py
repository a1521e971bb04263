"""Per-layer divergence on the device (`diagnose --device`, `agent.py layers`): real ONNX Runtime,
on `local` and over a real sshd. The same artifact agrees everywhere; a copy with one node's
weight scale changed is named as the first departing layer."""

from __future__ import annotations

import io
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest_ssh import connect_options, ssh_device
from rich.console import Console

from device_agents import AGENT_PATH
from edgekit.cli.common import print_table
from edgekit.cli.divergence_table import divergence_summary, divergence_table
from edgekit.cli.main import main
from edgekit.devices.spec import DeviceSpec
from edgekit.divergence import (
    DEPARTS_BELOW_DB,
    MAX_TENSORS,
    DivergenceOptions,
    host_values,
    measure_divergence,
    plan_probes,
    sample_feeds,
    with_outputs,
    write_reference,
)

CONVS = 6
PERTURBED = "conv3"  # its weight scale x 1.5 in the device's copy
DOC_BYTES = 40_000  # the agent's document for MAX_TENSORS tensors stays below this
# int8 vs float of the chain's layers: measured 31-47 dB; below 20 dB the quantizer broke it.
MIN_QUANT_DB = 20.0


class Models:
    def __init__(self, folder: Path):
        self.folder = folder
        self.float = folder / "chain.onnx"
        self.int8 = folder / "chain_int8.onnx"
        self.perturbed = folder / "chain_int8_perturbed.onnx"
        self.many = folder / "many.onnx"
        self.qop = folder / "chain_qop.onnx"  # QOperator: QLinearConv nodes in the file
        self.qop_perturbed = folder / "chain_qop_perturbed.onnx"
        rng = np.random.default_rng(0)
        self.calib = rng.random((64, 1, 8, 8)).astype(np.float32)
        self.eval = rng.random((16, 1, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    """A chain of 6 Conv+Relu, its onnx-int8 (ORT static QDQ), a copy with one weight scale
    changed, and a float model of 400 nodes with long names."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    m = Models(tmp_path_factory.mktemp("divergence"))
    rng = np.random.default_rng(1)
    nodes, inits, prev = [], [], "x"
    for i in range(CONVS):
        w = rng.normal(0, 0.3, (8, 8 if i else 1, 3, 3)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(rng.normal(0, .1, 8).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}",
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        prev = f"r{i}"
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), m.float)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"x": m.calib[k:k + 1]} for k in range(len(m.calib)))

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(m.float), str(m.int8), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    per_channel=True)
    quantize_static(str(m.float), str(m.qop), Reader(), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True)

    def perturb(src, dst, scale_of):
        q = onnx.load(src)
        [scale] = [scale_of(n) for n in q.graph.node if scale_of(n)]
        for t in q.graph.initializer:
            if t.name == scale:
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.5, t.name))
        onnx.save(q, dst)

    w = f"w{PERTURBED[-1]}"
    perturb(m.int8, m.perturbed, lambda n: n.input[1] if n.op_type == "DequantizeLinear"
            and n.input[0].startswith(w) else None)
    perturb(m.qop, m.qop_perturbed, lambda n: n.input[4] if n.op_type == "QLinearConv"
            and n.input[3].startswith(w) else None)

    nodes, inits, prev = [], [], "x"
    for i in range(200):
        stem = f"encoder/block_{i:03d}/a_rather_long_scope_name_as_exporters_write_them/"
        inits.append(helper.make_tensor(f"c{i}", TensorProto.FLOAT, [64], [0.01] * 64))
        nodes += [helper.make_node("Add", [prev, f"c{i}"], [f"a{i}"], name=stem + "add"),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=stem + "relu")]
        prev = f"r{i}"
    graph = helper.make_graph(nodes, "many", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 64])], [helper.make_tensor_value_info(
            prev, TensorProto.FLOAT, [1, 64])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), m.many)
    return m


def local(tmp_path) -> DeviceSpec:
    return DeviceSpec(name="local", workdir=str(tmp_path / "w"))


def check_departure(doc: dict, layer, qop: bool = False) -> None:
    """Every tensor compared; rows in graph order; identical before ``layer``, far off at it."""
    convs = [f"conv{i}" for i in range(CONVS)]
    assert doc["compared"] == doc["tensor_count"] == len(doc["layers"]) == CONVS + (not qop)
    assert [r["layer"] for r in doc["layers"]] == ([] if qop else ["x"]) + convs
    first = doc["first_departure"]
    # Reading an int8 tensor out can stop ORT's QDQ fusion of its layer (s8 activations on x86):
    # the fused kernels are counted, and the unedited artifact's outputs compared as well.
    assert doc["int8_kernels"]["artifact"] == CONVS >= doc["int8_kernels"]["copy"]
    [out] = doc["artifact_outputs"]
    assert out["output"] == f"r{CONVS - 1}" and doc["artifact_departs"] == (layer is not None)
    if layer is None:
        assert first is None and out["device_sqnr_db"] is None
        assert all(r["device_sqnr_db"] is None and r["device_max_abs_error"] == 0
                   for r in doc["layers"])  # the same kernels: bit for bit
        return
    assert out["device_sqnr_db"] < DEPARTS_BELOW_DB
    assert first["layer"] == layer and first["op_type"] == ("QLinearConv" if qop else "Conv")
    assert first["device_sqnr_db"] < DEPARTS_BELOW_DB and first["device_cosine"] < 1
    before = doc["layers"][:first["index"]]
    assert before and all(r["device_sqnr_db"] is None for r in before)
    after = doc["layers"][first["index"] + 1:]
    assert all(r["device_sqnr_db"] < DEPARTS_BELOW_DB for r in after)  # the error carries on


def test_same_artifact_on_the_device_agrees_at_every_layer(models, tmp_path):
    doc = measure_divergence(models.int8, {"x": models.eval}, local(tmp_path),
                             float_model=models.float)
    check_departure(doc, None)
    assert doc["samples"] == 4 and doc["method"] == "onnxruntime-extra-outputs"
    if platform.machine() in ("x86_64", "AMD64"):  # ORT's s8 -> u8 rewrite: no fusion
        assert doc["int8_kernels"]["copy"] < CONVS
        assert "per-layer copy runs" in divergence_summary(doc)
    quant = [r["quant_sqnr_db"] for r in doc["layers"][1:]]
    assert all(q is not None and MIN_QUANT_DB < q < 80 for q in quant), quant


def test_one_perturbed_node_is_named_as_the_first_departing_layer(models, tmp_path):
    doc = measure_divergence(models.int8, [models.eval], local(tmp_path),
                             device_artifact=models.perturbed,
                             options=DivergenceOptions(samples=3))
    check_departure(doc, PERTURBED)
    assert doc["samples"] == 3 and all(r["quant_sqnr_db"] is None for r in doc["layers"])
    summary = divergence_summary(doc)
    assert "departs from the host at conv3 (Conv)" in summary
    assert "the artifact's outputs depart" in summary
    agree = dict(doc, first_departure=None)  # as if only the fused kernels differed
    assert divergence_summary(agree).endswith("the difference is in the fused int8 kernels")
    buf = io.StringIO()  # an 80-column terminal: whole cells, the departing row marked
    print_table(divergence_table(doc), Console(file=buf, width=80, force_terminal=True,
                                               color_system=None))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text, text
    [marked] = [line for line in text.splitlines() if "departs" in line]
    assert "conv3" in marked


def test_a_reference_over_the_byte_cap_compares_fewer_samples_and_says_so(models, tmp_path,
                                                                         monkeypatch):
    """The host's tensors for every sample go to the device: beyond the cap, fewer samples (at
    least one), named in the result's note; the perturbed node is still found."""
    import edgekit.divergence as div

    monkeypatch.setattr(div, "MAX_REFERENCE_BYTES", 1)  # smaller than any one sample
    doc = measure_divergence(models.int8, [models.eval], local(tmp_path),
                             device_artifact=models.perturbed,
                             options=DivergenceOptions(samples=3))
    assert doc["samples"] == 1 and "1 of 3 samples compared" in doc["note"]
    check_departure(doc, PERTURBED)
    values = {"t": np.zeros((4, 1000), np.float32)}  # 4 kB a sample (+ inputs and outputs)
    feeds = [[np.zeros((1, 10), np.float32)] for _ in range(4)]
    outs = [np.zeros((4, 10), np.float32)]
    kept, feeds2, outs2, note = div.fit_reference(values, feeds, outs, max_bytes=9000)
    assert kept["t"].shape == (2, 1000) and len(feeds2) == 2 and outs2[0].shape == (2, 10)
    assert note.startswith("2 of 4 samples compared")
    assert div.fit_reference(values, feeds, outs, max_bytes=1 << 20)[3] is None


def test_qoperator_artifact_reads_out_its_fused_kernels(models, tmp_path):
    """QLinearConv nodes in the file: their int8 outputs are read out as they are (nothing to
    fuse), dequantized with each node's output scale, set against the float Relu outputs."""
    same = measure_divergence(models.qop, {"x": models.eval}, local(tmp_path),
                              float_model=models.float)
    check_departure(same, None, qop=True)
    assert same["int8_kernels"] == {"artifact": CONVS, "copy": CONVS}
    assert all(r["op_type"] == "QLinearConv" and MIN_QUANT_DB < r["quant_sqnr_db"] < 80
               for r in same["layers"]), same["layers"]
    moved = measure_divergence(models.qop, {"x": models.eval}, local(tmp_path),
                               device_artifact=models.qop_perturbed)
    check_departure(moved, PERTURBED, qop=True)


@pytest.mark.ssh
def test_over_ssh_the_perturbed_node_is_named_and_the_files_are_cached(models, sshd, tmp_path):
    # This Python (with the runtimes) by path: a login shell's PATH may put another python3 first.
    remote = ssh_device(sshd, tmp_path / "remote", python=sys.executable, explicit_python=True)
    for device_artifact, layer in ((models.int8, None), (models.perturbed, PERTURBED)):
        doc = measure_divergence(models.int8, {"x": models.eval}, remote,
                                 device_artifact=device_artifact, connect=connect_options(sshd))
        check_departure(doc, layer)
        assert doc["device"] == "box"
    cached = sorted(p.name for p in (tmp_path / "remote").glob("*/*"))
    assert cached.count("layers.onnx") == 2 and cached.count("reference.npz") == 1
    assert cached.count("artifact.onnx") == 2  # the unedited artifact and the perturbed one


def test_the_agent_document_stays_small_for_a_model_of_many_nodes(models, tmp_path):
    import onnx

    model = onnx.load(models.many)
    probes, total = plan_probes(model)
    assert total == 400 and len(probes) == MAX_TENSORS
    assert probes[-1].name == "r199"  # the last tensor is always compared
    names = [p.name for p in probes]
    edited = with_outputs(model, names, tmp_path / "many_outputs.onnx")
    x = np.random.default_rng(2).random((4, 64)).astype(np.float32)
    per_sample = sample_feeds([{"name": "x", "dtype": "float32"}], [x], 4)
    ref = write_reference(tmp_path / "ref.npz", probes, host_values(edited, names, per_sample, "all"),
                          per_sample)
    out = subprocess.run([sys.executable, str(AGENT_PATH), "layers", str(edited), "--reference",
                          str(ref)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout) < DOC_BYTES
    doc = json.loads(out.stdout)
    layers = doc["layers"]
    assert doc["kind"] == "layers" and layers["version"] == 1 and layers["samples"] == 4
    assert len(layers["tensors"]) == MAX_TENSORS and not layers["missing"]
    assert all(t["sqnr_db"] is None for t in layers["tensors"])
    assert "encoder/block" not in out.stdout  # names stay on the host

    rep = measure_divergence(models.many, [x], local(tmp_path))
    assert rep["tensor_count"] == 400 and rep["compared"] == MAX_TENSORS
    assert rep["first_departure"] is None


def test_a_malformed_reference_is_an_error_document(models, tmp_path):
    ref = tmp_path / "bad.npz"
    np.savez(ref, t0=np.zeros(3))
    out = subprocess.run([sys.executable, str(AGENT_PATH), "layers", str(models.int8),
                          "--reference", str(ref)], capture_output=True, text=True, timeout=120)
    doc = json.loads(out.stdout)
    assert out.returncode == 3 and doc["ok"] is False and doc["kind"] == "layers"
    assert "no 'names' array" in doc["error"]["message"]


def test_cli_diagnose_device_local_table_and_json(models, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # `local`'s cache: ~/.cache/edgekit
    monkeypatch.setenv("COLUMNS", "80")
    calib, ev = tmp_path / "c.npz", tmp_path / "e.npz"
    np.savez(calib, x=models.calib)
    np.savez(ev, x=models.eval)
    args = ["diagnose", str(models.float), "--calibration", str(calib), "--eval", str(ev),
            "--device", "local", "--samples", "2"]
    assert main(args + ["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)["device"]
    check_departure(doc, None)
    assert doc["samples"] == 2 and doc["device"] == "local"
    if platform.machine() in ("x86_64", "AMD64"):  # edgekit's x86 layout: u8, stays fused
        assert doc["int8_kernels"] == {"artifact": CONVS, "copy": CONVS}
    assert all(r["quant_sqnr_db"] is not None for r in doc["layers"][1:])  # the float source
    assert main(args) == 0
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "the device agrees with the host at every compared layer" in err
    assert "layers on local in graph order" in err and "same" in err
    # a device that does not answer: one line, exit 1 (the job failed, the input was fine)
    assert main(args[:-3] + ["nobody@127.0.0.1:1", "--connect-timeout", "2"]) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and "cannot connect to nobody@127.0.0.1:1" in lines[0]


@pytest.fixture(scope="module")
def tflite_chain(tmp_path_factory):
    """A Keras chain of 4 Conv+Relu as a full-int8 .tflite, and a copy with conv2's int8
    weights negated in place (the same file otherwise)."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    from device_agents.agent import load_model

    folder = tmp_path_factory.mktemp("divergence-tflite")
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="x")
    h = inp
    for i in range(4):
        h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"conv{i}")(h)
    calib = np.random.default_rng(0).random((32, 8, 8, 1)).astype(np.float32)
    conv = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, h))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    raw = conv.convert()
    path, perturbed = folder / "chain_int8.tflite", folder / "chain_int8_perturbed.tflite"
    path.write_bytes(raw)
    interp = load_model(str(path), xnnpack=False)._interp
    [weights] = [interp.get_tensor(d["index"]) for d in interp.get_tensor_details()
                 if d["name"].endswith("conv2_1/convolution") and d["shape"][0] == 8]
    old = weights.tobytes()
    assert raw.count(old) == 1
    new = np.clip(-weights.astype(np.int16), -127, 127).astype(np.int8).tobytes()
    perturbed.write_bytes(raw.replace(old, new))
    return path, perturbed


def test_tflite_same_file_agrees_and_perturbed_weights_are_named(tflite_chain, tmp_path):
    path, perturbed = tflite_chain
    x = np.random.default_rng(3).random((8, 8, 8, 1)).astype(np.float32)
    same = measure_divergence(path, {"x": x}, local(tmp_path))
    assert same["method"] == "tflite-preserve-all-tensors"
    assert same["compared"] == same["tensor_count"] >= 5 and same["first_departure"] is None
    assert all(r["device_sqnr_db"] is None for r in same["layers"])
    assert [o["device_sqnr_db"] for o in same["artifact_outputs"]] == [None]
    assert "XNNPACK off" in divergence_summary(same)
    convs = [r for r in same["layers"] if r["op_type"] == "CONV_2D"]
    assert len(convs) == 4

    moved = measure_divergence(path, {"x": x}, local(tmp_path), device_artifact=perturbed)
    first = moved["first_departure"]
    assert first is not None and first["op_type"] == "CONV_2D", moved["layers"]
    assert "conv2" in first["layer"] and first["index"] == convs[2]["index"]
    assert all(r["device_sqnr_db"] is None for r in moved["layers"][:first["index"]])
    assert moved["artifact_departs"]


@pytest.mark.ssh
def test_tflite_over_ssh_names_the_perturbed_conv(tflite_chain, sshd, tmp_path):
    path, perturbed = tflite_chain
    remote = ssh_device(sshd, tmp_path / "remote", python=sys.executable, explicit_python=True)
    x = np.random.default_rng(3).random((4, 8, 8, 1)).astype(np.float32)
    doc = measure_divergence(path, [x], remote, device_artifact=perturbed,
                             connect=connect_options(sshd))
    assert doc["device"] == "box" and doc["method"] == "tflite-preserve-all-tensors"
    assert "conv2" in doc["first_departure"]["layer"]

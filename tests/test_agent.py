"""The device agent: in-process API (load_model / run_float) and its probe / run protocol."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest_ssh import build_digits_models  # tests/ may or may not be a package

from device_agents import AGENT_PATH
from device_agents.agent import (
    PROTOCOL_VERSION,
    AgentModelError,
    RunFailed,
    dequantize,
    load_model,
    quantize,
)


@pytest.fixture(scope="session")
def digits():
    return build_digits_models()


def agent(*argv, timeout=120, env=None):
    proc = subprocess.run([sys.executable, str(AGENT_PATH), *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def test_tflite_float_spec_uses_signature_names(digits):
    m = load_model(digits.tflite_fp32)
    assert m.runtime == "ai_edge_litert"
    assert m.runtime_version and m.runtime_version != "unknown"
    assert m.inputs == [{"name": "image", "shape": [None, 8, 8, 1], "dtype": "float32",
                         "quantization": None}]
    assert m.outputs[0]["name"] == "output_0"
    assert m.outputs[0]["shape"] == [None, 10]


def test_tflite_int8_spec_and_float_run_matches_keras(digits):
    m = load_model(digits.tflite_int8, threads=2)
    assert m.threads == 2
    q = m.inputs[0]["quantization"]
    assert m.inputs[0]["dtype"] == "int8" and q["axis"] is None
    assert q["scale"][0] == pytest.approx(1 / 255, rel=1e-3) and q["zero_point"] == [-128]
    data = np.load(digits.eval_npz)
    ref = np.load(digits.reference_npz)["output_0"]
    out = m.run_float([data["x"]])[0]
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.mean(out.argmax(1) == ref.argmax(1)) > 0.95
    assert np.max(np.abs(out - ref)) < 0.1
    raw = m.run_raw([quantize(data["x"][:3], m.inputs[0])])[0]
    assert raw.dtype == np.int8 and raw.shape == (3, 10)


def test_fixed_batch_model_runs_sample_by_sample(digits):
    m = load_model(digits.tflite_fixed_batch)
    assert m.inputs[0]["shape"] == [1, 8, 8, 1]
    x = np.load(digits.eval_npz)["x"][:7]
    out = m.run_float([x])[0]
    full = load_model(digits.tflite_fp32).run_float({"image": x})[0]
    assert out.shape == (7, 10)
    np.testing.assert_allclose(out, full, atol=1e-5)


def test_onnx_spec_and_run(digits):
    m = load_model(digits.onnx_fp32)
    assert m.runtime == "onnxruntime" and m.provider == "CPUExecutionProvider"
    assert m.inputs[0]["name"] == "image" and m.inputs[0]["shape"] == [None, 8, 8, 1]
    assert m.inputs[0]["dtype"] == "float32" and m.inputs[0]["quantization"] is None
    data = np.load(digits.eval_npz)
    out = m.run_float([data["x"]])[0]
    ref = np.load(digits.reference_npz)["output_0"]
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_quantize_round_trip_per_channel():
    spec = {"name": "t", "shape": [None, 2], "dtype": "int8",
            "quantization": {"scale": [0.1, 0.01], "zero_point": [0, 5], "axis": 1}}
    x = np.array([[1.0, 0.5], [100.0, -100.0]], dtype=np.float32)
    q = quantize(x, spec)
    assert q.dtype == np.int8
    assert q.tolist() == [[10, 55], [127, -128]]  # clipped, not wrapped
    np.testing.assert_allclose(dequantize(q, spec)[0], [1.0, 0.5], atol=1e-6)


def test_load_errors_are_clear(tmp_path, digits):
    with pytest.raises(AgentModelError, match="not found"):
        load_model(tmp_path / "missing.tflite")
    odd = tmp_path / "model.pt"
    odd.write_bytes(b"x")
    with pytest.raises(AgentModelError, match=r"\.onnx"):
        load_model(odd)
    bad = tmp_path / "garbage.tflite"
    bad.write_bytes(b"not a flatbuffer at all" * 10)
    with pytest.raises(AgentModelError, match="could not load"):
        load_model(bad)
    with pytest.raises(AgentModelError, match="cannot run"):
        load_model(digits.tflite_fp32, runtime="onnxruntime")
    with pytest.raises(RunFailed, match="1 inputs"):
        load_model(digits.tflite_fp32).run_raw([])


def test_probe_document():
    code, doc, _ = agent("probe")
    assert code == 0 and doc["protocol"] == PROTOCOL_VERSION and doc["kind"] == "probe"
    assert doc["arch"] and doc["cpu"]["cores"] >= 1 and doc["memory"]["total_bytes"] > 0
    assert doc["python"]["version"].startswith("3.")
    names = {r["name"] for r in doc["runtimes"]}
    assert {"ai_edge_litert", "onnxruntime"} <= names
    assert doc["disk"]["free_bytes"] > 0


def test_probe_cpu_features_from_cpuinfo(monkeypatch):
    import device_agents.agent as agent_mod

    x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm asimdhp asimddp fphp\n"
    for text, expected in ((x86, ["sse4_2", "avx", "avx2", "fma"]),
                           (arm, ["asimd", "asimddp", "asimdhp", "fphp"]), ("", [])):
        monkeypatch.setattr(agent_mod, "_read", lambda path, t=text: t)
        assert agent_mod.cpu_features() == expected


@pytest.mark.parametrize("fmt", ["tflite_int8", "onnx_fp32"])
def test_run_document_with_eval(digits, fmt):
    path = getattr(digits, fmt)
    code, doc, _ = agent("run", path, "--runs", 30, "--warmup", 3, "--eval", digits.eval_npz,
                         "--reference", digits.reference_npz)
    assert code == 0, doc
    assert doc["protocol"] == PROTOCOL_VERSION and doc["ok"] is True
    lat = doc["latency_ms"]
    assert lat["runs"] == 30
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert doc["init_ms"] > 0 and doc["first_inference_ms"] > 0
    assert doc["memory"]["peak_rss_bytes"] > 10_000_000
    assert doc["accuracy"]["samples"] == 297
    assert abs(doc["accuracy"]["top1"] - digits.keras_accuracy) < 0.03
    assert doc["agreement"][0]["top1_agreement"] > 0.95
    assert doc["input_source"] == "eval"
    assert "before" in doc["system"] and "after" in doc["system"]


def test_run_generates_quantized_inputs_without_eval(digits):
    code, doc, _ = agent("run", digits.tflite_int8, "--runs", 5, "--warmup", 0)
    assert code == 0 and doc["input_source"] == "generated"
    assert doc["accuracy"] is None and doc["inputs"][0]["dtype"] == "int8"


def test_run_of_a_broken_model_is_an_error_document(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    code, doc, _ = agent("run", bad, "--runs", 2)
    assert code == 3 and doc["ok"] is False
    assert doc["error"]["type"] == "AgentModelError" and "bad.onnx" in doc["error"]["message"]


def test_crash_of_the_measuring_process_is_reported(digits):
    """Kill the fresh measuring child: the supervisor reports the signal, it does not hang."""
    proc = subprocess.Popen([sys.executable, str(AGENT_PATH), "run", str(digits.tflite_fp32),
                             "--runs", "10000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    child = None
    deadline = time.monotonic() + 30
    while child is None and time.monotonic() < deadline:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True,
                             text=True).stdout.split()
        child = int(out[0]) if out else None
        time.sleep(0.1)
    assert child is not None
    time.sleep(1.0)
    os.kill(child, signal.SIGSEGV)
    out, _ = proc.communicate(timeout=30)
    doc = json.loads(out)
    assert proc.returncode == 3 and doc["error"]["type"] == "Crashed"
    assert doc["error"]["signal"] == "SIGSEGV"


def test_no_runtime_points_to_setup(tmp_path, digits):
    """A bare Python (a venv without numpy or any runtime) probes fine and says to run setup."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")],
                   check=True, timeout=60)
    python = str(tmp_path / "bare" / "bin" / "python")
    probe = subprocess.run([python, str(AGENT_PATH), "probe"], capture_output=True, text=True,
                           timeout=60)
    doc = json.loads(probe.stdout)
    assert probe.returncode == 0 and doc["runtimes"] == [] and doc["python"]["numpy"] is None
    run = subprocess.run([python, str(AGENT_PATH), "run", str(digits.onnx_fp32), "--runs", "1"],
                         capture_output=True, text=True, timeout=60)
    doc = json.loads(run.stdout)
    assert run.returncode == 3 and doc["error"]["type"] == "NoRuntimeError"
    assert "devices setup" in doc["error"]["message"]


def test_agent_is_python38_syntax_and_imports_only_what_a_board_has():
    import ast

    source = AGENT_PATH.read_text()
    tree = ast.parse(source, feature_version=(3, 8))  # no match, no X | Y at runtime, ...
    allowed = set(sys.stdlib_module_names) | {"numpy", "ai_edge_litert", "tflite_runtime",
                                              "tensorflow", "onnxruntime"}
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported <= allowed, imported - allowed
    assert "edgekit" not in imported
    for node in ast.walk(tree):  # `list[int]`-style subscripts would fail at runtime on 3.8
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            assert node.value.id not in ("list", "dict", "tuple", "set", "type"), ast.dump(node)


def test_protocol_documents_round_trip_through_json(digits):
    code, doc, _ = agent("run", digits.tflite_fp32, "--runs", 3, "--warmup", 0)
    assert code == 0
    again = json.loads(json.dumps(doc))
    assert again == doc and doc["protocol"] == PROTOCOL_VERSION
    assert doc["device"]["protocol"] == PROTOCOL_VERSION and doc["device"]["kind"] == "probe"


def test_a_hanging_run_is_killed_at_its_timeout(digits):
    t0 = time.monotonic()
    code, doc, _ = agent("run", digits.tflite_fp32, "--runs", 10**9, "--timeout", 3, timeout=60)
    assert code == 3 and doc["error"]["type"] == "Timeout" and "3" in doc["error"]["message"]
    assert time.monotonic() - t0 < 30


def test_run_xnnpack_off_uses_the_builtin_kernels(digits):
    # Observable in the graph: with XNNPACK on, DELEGATE nodes take the ops over; off, none.
    code, on, _ = agent("run", digits.tflite_int8, "--runs", 5, "--warmup", 0)
    assert code == 0 and on["runtime_settings"] == {"xnnpack": True,
                                                   "delegated_nodes": on["runtime_settings"][
                                                       "delegated_nodes"]}
    assert on["runtime_settings"]["delegated_nodes"] >= 1
    code, off, _ = agent("run", digits.tflite_int8, "--runs", 5, "--warmup", 0, "--xnnpack", "off")
    assert code == 0 and off["runtime_settings"] == {"xnnpack": False, "delegated_nodes": 0}
    # Close answers from either set of kernels (their int8 rounding differs by a few steps).
    m_on = load_model(digits.tflite_int8)
    m_off = load_model(digits.tflite_int8, xnnpack=False)
    x = np.load(digits.eval_npz)["x"][:32]
    a, b = m_on.run_float([x])[0], m_off.run_float([x])[0]
    assert np.abs(a - b).max() < 0.1 and np.mean(a.argmax(1) == b.argmax(1)) > 0.9


def test_run_ort_opt_level_is_read_back_from_the_session(digits):
    for level in ("disable", "basic", "extended"):
        code, doc, _ = agent("run", digits.onnx_fp32, "--runs", 3, "--warmup", 0,
                             "--ort-opt-level", level)
        assert code == 0 and doc["runtime_settings"] == {"ort_opt_level": level}, doc
    code, doc, _ = agent("run", digits.onnx_fp32, "--runs", 3, "--warmup", 0)
    assert doc["runtime_settings"] == {"ort_opt_level": "all"}  # ORT's default
    # A TFLite model ignores the ORT level (a mixed build folder is benched with one flag set).
    code, doc, _ = agent("run", digits.tflite_int8, "--runs", 3, "--ort-opt-level", "basic")
    assert code == 0 and doc["runtime_settings"]["xnnpack"] is True
    with pytest.raises(AgentModelError, match="optimization level 'fast'"):
        load_model(digits.onnx_fp32, ort_opt_level="fast")


def test_agent_and_host_agree_on_ort_levels():
    from device_agents.agent import ORT_OPT_LEVELS as agent_levels
    from edgekit.devices.device import ORT_OPT_LEVELS

    assert agent_levels == ORT_OPT_LEVELS

"""The tools' native chatter never reaches the user's terminal without --debug / -v: one line on
stderr for every bad input, on any CPU (oneDNN's banner forced on), and no chatter from a real
conversion; an SSH port that does not speak SSH is one line, not paramiko's traceback."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

# What TensorFlow, absl, LiteRT, oneDNN and XNNPACK print by themselves.
CHATTER = re.compile(r"absl::InitializeLog|oneDNN|fully_quantize|XNNPACK|cuda|cuInit|"
                     r"cpu_feature_guard|^[IWE]\d{4} ")


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    # oneDNN on whatever the CPU: TensorFlow then prints its banner on every machine.
    env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    env.update(extra)
    return env


def _edgekit(*argv, cwd, **extra):
    return subprocess.run([sys.executable, "-m", "edgekit.cli.main", *map(str, argv)],
                          capture_output=True, text=True, timeout=600, cwd=cwd,
                          env=_env(**extra), check=False)


def _lines(text):
    return [ln for ln in text.splitlines() if ln.strip()]


# --- the capture itself, in a fresh process -----------------------------------------------------

_SCRIPT = textwrap.dedent("""
    import ctypes, logging, sys
    from edgekit.quiet import captured_native_output

    logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s")
    libc = ctypes.CDLL(None)
    with captured_native_output() as outer:
        libc.write(2, b"native chatter\\n", 15)
        print("ours", file=sys.stderr)
        logging.warning("logged")
        with captured_native_output():
            libc.write(2, b"inner chatter\\n", 14)
    sys.stdout.write(outer.text)
""")


def test_native_writes_are_captured_and_python_lines_still_show(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, check=True)
    assert proc.stderr == "ours\nWARNING logged\n"
    assert proc.stdout == "native chatter\ninner chatter\n"  # the inner capture hands it on


# --- the real entry point ----------------------------------------------------------------------

# One stderr line per bad input, with oneDNN's banner forced on: tests/test_cli_convert.py's
# test_entry_point_prints_exactly_one_line.


@pytest.mark.slow
def test_a_conversion_prints_no_chatter(tmp_path, digits_cnn):
    """tflite-int8 runs the MLIR quantizer (``fully_quantize: ...``) and verification runs the
    LiteRT interpreter (``Created TensorFlow Lite XNNPACK delegate``)."""
    proc = _edgekit("convert", digits_cnn.keras, "--to", "tflite-int8,onnx-fp32",
                    "--calibration", digits_cnn.calibration, "--out", tmp_path / "out",
                    "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if CHATTER.search(ln)] == [], proc.stderr
    doc = json.loads(proc.stdout)  # stdout is the JSON document alone
    assert doc


# --- SSH: a listening port that does not speak SSH ----------------------------------------------

def _serve(mode):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def loop():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if mode == "garbage":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

    threading.Thread(target=loop, daemon=True).start()
    return server


@pytest.mark.parametrize("mode", ["garbage", "close"])
def test_a_port_that_is_not_ssh_is_one_line(tmp_path, mode):
    server = _serve(mode)
    port = server.getsockname()[1]
    try:
        proc = _edgekit("devices", "probe", f"ssh://pi@127.0.0.1:{port}", "--known-hosts",
                        tmp_path / "known_hosts", "--connect-timeout", "3", cwd=tmp_path,
                        HOME=str(tmp_path))
    finally:
        server.close()
    lines = _lines(proc.stderr)
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot connect to") and "Traceback" not in proc.stderr


def test_debug_still_shows_paramikos_own_account(tmp_path):
    server = _serve("garbage")
    port = server.getsockname()[1]
    try:
        proc = _edgekit("--debug", "devices", "probe", f"ssh://pi@127.0.0.1:{port}",
                        "--known-hosts", tmp_path / "known_hosts", "--connect-timeout", "2",
                        cwd=tmp_path, HOME=str(tmp_path))
    finally:
        server.close()
    assert proc.returncode == 1
    assert "paramiko.transport" in proc.stderr and "Error reading SSH protocol banner" in \
        proc.stderr


# --- the device agent: its stdout is the JSON document alone -----------------------------------

@pytest.mark.slow
def test_agent_stdout_is_its_json_document_alone_with_xnnpack_on(tmp_path):
    """LiteRT prints ``INFO: Created TensorFlow Lite XNNPACK delegate`` from C++; the measuring
    child's fd 1 and 2 go to a log, so the host (which parses stdout) reads one JSON line."""
    from pathlib import Path

    code = ("import tensorflow as tf, keras; m = keras.Sequential([keras.Input((4,)), "
            "keras.layers.Dense(2)]); open('m.tflite', 'wb').write("
            "tf.lite.TFLiteConverter.from_keras_model(m).convert())")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True,
                   timeout=300)
    agent = Path(__file__).resolve().parent.parent / "device_agents" / "agent.py"
    proc = subprocess.run([sys.executable, str(agent), "run", "m.tflite", "--runs", "3",
                           "--warmup", "1"], cwd=tmp_path, capture_output=True, text=True,
                          env=_env(), timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    doc = json.loads(lines[0])
    assert doc["ok"] and doc["runtime_settings"]["xnnpack"] is True


def _layernorm_onnx(path):
    """x [1, 16] -> MatMul -> LayerNormalization -> MatMul -> y: a transformer block's shape,
    where ONNX Runtime's per-channel quantizer warns about every LayerNorm weight (rank 1)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.ones(16, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(16, np.float32), "beta"),
             numpy_helper.from_array(rng.normal(size=(16, 8)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], axis=-1),
             helper.make_node("MatMul", ["n", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 16])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    np.savez(path.with_suffix(".npz"), x=rng.normal(size=(64, 1, 16)).astype(np.float32))


def test_onnx_runtimes_root_logger_warnings_stay_out_without_verbose(tmp_path):
    """ONNX Runtime's quantizer logs on the root logger ("Axis 1 is out-of-range for weight
    'gamma'"): shown with -v, never without it."""
    model = tmp_path / "ln.onnx"
    _layernorm_onnx(model)
    args = ["convert", model, "--to", "onnx-int8", "--calibration", model.with_suffix(".npz"),
            "--min-sqnr", "0"]
    quiet = _edgekit(*args, "--out", tmp_path / "a", cwd=tmp_path)
    loud = _edgekit("-v", *args, "--out", tmp_path / "b", cwd=tmp_path)
    assert "out-of-range for weight" in loud.stderr  # ONNX Runtime really says it
    assert "out-of-range" not in quiet.stderr and "root:" not in quiet.stderr, quiet.stderr
    assert quiet.returncode == loud.returncode

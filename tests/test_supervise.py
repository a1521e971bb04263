"""A crash of native code (a real SIGSEGV / SIGABRT in the child) becomes one line and exit 1;
a training command that crashed is run again once with oneDNN off, and says so."""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import sys

import pytest

from edgekit import supervise
from edgekit.errors import InputError


def _edgekit(*argv, cwd, **env):
    full = {k: v for k, v in os.environ.items()
            if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "edgekit.cli.main", *map(str, argv)],
                          capture_output=True, text=True, timeout=600, cwd=cwd, env=full,
                          check=False)


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_a_segfault_during_convert_is_one_line_and_exit_1(tmp_path):
    proc = _edgekit("convert", tmp_path / "model.keras", "--to", "tflite-fp32", "--out",
                    tmp_path / "out", cwd=tmp_path, EDGEKIT_TEST_NATIVE_CRASH="SIGSEGV")
    lines = _lines(proc.stderr)
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: edgekit convert crashed in native code: killed by SIGSEGV")
    assert "corrupted double-linked list" in line  # the native code's last words
    assert "TF_ENABLE_ONEDNN_OPTS=0" in line  # what to do
    log = line.rsplit("its output is in ", 1)[1]
    assert "Fatal Python error: Segmentation fault" in open(log).read()  # the stack, kept
    os.unlink(log)
    assert proc.stdout == ""


def test_a_training_crash_is_retried_with_onednn_off_then_reported_once(tmp_path):
    proc = _edgekit("qat", tmp_path / "model.keras", "--train", tmp_path / "train.npz",
                    cwd=tmp_path, EDGEKIT_TEST_NATIVE_CRASH="SIGABRT")
    lines = _lines(proc.stderr)
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: edgekit qat crashed in native code: killed by SIGABRT")
    assert "crashed again with oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)" in lines[0]
    os.unlink(lines[0].rsplit("its output is in ", 1)[1])


@pytest.mark.slow
def test_a_training_crash_that_oneDNN_off_avoids_succeeds_and_says_so(tmp_path):
    """The crash happens only while oneDNN is on (as the AVX-512 oneDNN bug does): the retry
    runs the real command to the end."""
    code = ("import keras; m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16), "
            "keras.layers.Dense(8)]); m.save('m.keras')")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True)
    proc = _edgekit("cluster", "m.keras", "--clusters", "2", "--out", "c.keras", "--json",
                    cwd=tmp_path, EDGEKIT_TEST_NATIVE_CRASH="SIGSEGV:onednn")
    assert proc.returncode == 0, proc.stderr
    lines = _lines(proc.stderr)
    assert lines == [lines[-1]] and lines[-1].startswith("note: edgekit cluster first crashed "
                                                         "with SIGSEGV"), proc.stderr
    assert "run again with oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)" in lines[-1]
    assert (tmp_path / "c.keras").is_file()
    import json

    assert json.loads(proc.stdout)["out"].endswith("c.keras")


def test_bad_input_in_a_supervised_command_is_still_one_line_exit_2(tmp_path):
    proc = _edgekit("qat", tmp_path / "model.keras", "--train", tmp_path / "train.npz",
                    cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(_lines(proc.stderr)) == 1 and proc.stderr.startswith("error: ")


# --- the Python API: supervise.call ------------------------------------------------------------

def segfault_unless_onednn_off(value):
    """Dereferences NULL (a real SIGSEGV) unless oneDNN is off; else returns ``value`` twice."""
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0":
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        ctypes.string_at(0)
    return value * 2


def segfault(_):
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    ctypes.string_at(0)


def refuse(name):
    raise InputError(f"no such file: {name}")


def test_call_returns_the_childs_result_after_a_retry_with_onednn_off(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    assert supervise.call(segfault_unless_onednn_off, 21, retry_onednn_off=True) == 42


def test_call_reports_a_real_segfault_as_native_crash(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    with pytest.raises(supervise.NativeCrash) as info:
        supervise.call(segfault, 1, what="training")
    assert info.value.signal_name == "SIGSEGV"
    assert info.value.exit_code == 1
    assert str(info.value).startswith("training crashed in native code: killed by SIGSEGV")
    assert "\n" not in str(info.value)
    if info.value.log_path:
        os.unlink(info.value.log_path)


def test_call_raises_the_childs_own_error():
    with pytest.raises(InputError, match="no such file: x.npz"):
        supervise.call(refuse, "x.npz")


@pytest.mark.slow
def test_train_api_supervised_gives_back_the_model_after_a_crash(tmp_path, monkeypatch):
    import keras

    from edgekit import train_api

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16), keras.layers.Dense(8)])
    model.save(tmp_path / "m.keras")
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setenv(supervise.TEST_CRASH_ENV, "SIGSEGV:onednn")
    clustered, report = train_api.supervised(train_api.cluster, tmp_path / "m.keras", 2,
                                             out=tmp_path / "c.keras")
    assert isinstance(clustered, keras.Model)
    kernel = clustered.layers[0].get_weights()[0]
    assert len(set(kernel.ravel().tolist())) <= 2  # really clustered, by the retried child
    assert report["layers"]

"""What a new user meets in the first hour: exit codes that tell the truth, a half-built device
venv that is never used, eval data of the wrong size refused (on the host and in the agent), and
no empty folders or databases left by a command that refused its input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device_agents import AGENT_PATH
from edgekit.devices.device import VENV_MARKER, VENV_NAME

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, cwd, home, timeout=600):
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "edgekit.cli.main", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _one_error_line(p) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def square96(tmp_path_factory):
    """A tiny [?, 96, 96, 3] classifier converted by edgekit to tflite-fp32 (with a manifest)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from edgekit.api import convert

    root = tmp_path_factory.mktemp("square96")
    keras.utils.set_random_seed(0)
    inp = keras.Input((96, 96, 3), name="image")
    h = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(h))
    model.save(root / "square.keras")
    [art] = convert(root / "square.keras", ["tflite-fp32"], out=root / "build")
    rng = np.random.default_rng(0)
    for side in (64, 96):
        np.savez(root / f"eval{side}.npz", x=rng.random((6, side, side, 3), dtype=np.float32),
                 y=np.arange(6) % 3)
    np.savez(root / "eval96full.npz", x=rng.random((6, 1, 96, 96, 3), dtype=np.float32))
    return root, art


def _agent(*argv):
    p = subprocess.run([sys.executable, str(AGENT_PATH), *map(str, argv)], capture_output=True,
                       text=True, timeout=300, check=False)
    return p.returncode, json.loads(p.stdout)


def test_agent_refuses_eval_data_of_another_size(square96):
    root, art = square96
    code, doc = _agent("run", art.path, "--runs", 2, "--warmup", 0, "--eval", root / "eval64.npz")
    assert code != 0 and doc["ok"] is False
    msg = doc["error"]["message"]
    assert doc["error"]["type"] == "AgentModelError"
    assert "[6,64,64,3]" in msg and "[?,96,96,3]" in msg and "does not resize" in msg
    # Data of the model's size, batched or as full-shape samples, still runs.
    for name in ("eval96.npz", "eval96full.npz"):
        code, doc = _agent("run", art.path, "--runs", 2, "--warmup", 0, "--eval", root / name)
        assert code == 0 and doc["ok"], doc.get("error")
        assert doc["inputs"][0]["shape"][1:] == [96, 96, 3] and doc["input_source"] == "eval"


@pytest.mark.parametrize("what", ["build", "file"])
def test_bench_refuses_eval_data_of_another_size_before_pushing(square96, tmp_path, what):
    root, art = square96
    target = root / "build" if what == "build" else art.path
    home = tmp_path / "home"
    p = _cli("bench", target, "--eval", root / "eval64.npz", "--db", tmp_path / "r.db",
             "--runs", 2, cwd=tmp_path, home=home)
    assert p.returncode == 2, p.stderr
    line = _one_error_line(p)
    assert "expected" in line and "[?,96,96,3]" in line and "found [6, 64, 64, 3]" in line
    assert art.path.name in line
    assert not (tmp_path / "r.db").exists()
    assert not (home / ".cache" / "edgekit").exists()  # nothing pushed to the device's cache


def test_bad_device_creates_no_results_db(square96, tmp_path):
    root, _ = square96
    p = _cli("bench", root / "build", "--device", "bad host name!", "--db", tmp_path / "r.db",
             cwd=tmp_path, home=tmp_path)
    assert p.returncode == 2 and "cannot read device" in _one_error_line(p)
    assert not (tmp_path / "r.db").exists()


def _bare_venv(home: Path, complete: bool) -> Path:
    """``~/.cache/edgekit/venv`` as a Python without numpy or any runtime: a set-up still
    installing (no marker), or one marked complete."""
    venv = home / ".cache" / "edgekit" / VENV_NAME
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    if complete:
        (venv / VENV_MARKER).write_text("{}")
    return venv


def test_half_built_local_venv_is_not_used(square96, tmp_path):
    root, art = square96
    home = tmp_path / "home"
    venv = _bare_venv(home, complete=False)
    p = _cli("bench", art.path, "--runs", 2, "--warmup", 0, "--db", tmp_path / "r.db", "--json",
             cwd=tmp_path, home=home)
    assert p.returncode == 0, p.stderr
    [row] = json.loads(p.stdout)
    assert row["ok"] and row["device_info"]["python_used"] == sys.executable
    # Marked complete, the same venv is used (and fails here: it has no numpy), so the marker
    # is what decides, and a failed run exits 1.
    (venv / VENV_MARKER).write_text("{}")
    p = _cli("bench", art.path, "--runs", 2, "--warmup", 0, "--db", tmp_path / "r.db", "--json",
             cwd=tmp_path, home=home)
    [row] = json.loads(p.stdout)
    assert p.returncode == 1 and not row["ok"] and "numpy" in row["error"]
    assert row["device_info"] is None or row["device_info"]["python_used"] == str(
        venv / "bin" / "python")
    assert p.stderr.strip().splitlines()[-1].startswith("error: 1 of 1 runs failed")


@pytest.mark.slow
def test_demo_exits_1_when_its_benchmark_rows_fail(tmp_path):
    home = tmp_path / "home"
    _bare_venv(home, complete=True)  # every local row fails: numpy is missing there
    p = _cli("demo", "--out", tmp_path / "demo", "--runs", 2, "--warmup", 0, "--json",
             cwd=tmp_path, home=home, timeout=1500)
    assert p.returncode == 1, p.stderr
    doc = json.loads(p.stdout)  # the JSON is still printed, and the report still written
    assert doc["results"] and not any(r["ok"] for r in doc["results"])
    assert Path(doc["report"]).is_file()
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("error: demo: ")
    assert f"{len(doc['results'])} of {len(doc['results'])} benchmark runs" in line


def test_failed_convert_leaves_no_out_folder(square96, tmp_path):
    root, _ = square96
    out = tmp_path / "new" / "build"
    p = _cli("convert", root / "square.keras", "--to", "tflite-fp32", "--calibration",
             root / "eval64.npz", "--out", out, cwd=tmp_path, home=tmp_path)
    assert p.returncode == 2 and "calibration" in _one_error_line(p)
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    p = _cli("convert", root / "square.keras", "--to", "tflite-fp32", "--calibration",
             root / "eval64.npz", "--out", kept, cwd=tmp_path, home=tmp_path)
    assert p.returncode == 2 and kept.is_dir()  # a folder the run did not create stays


def test_demo_output_folder_is_git_ignored():
    from edgekit.cli.demo_cmd import demo_cmd

    default = next(o.default for o in demo_cmd.params if o.name == "out")
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert f"/{Path(default).as_posix()}/" in ignored
    p = subprocess.run(["git", "check-ignore", "-q", f"{default}/report.html"], cwd=REPO,
                       timeout=60, check=False)
    assert p.returncode == 0

"""A device cache entry damaged after its upload (the model, the eval data, the agent itself) is
found by the agent's sha256 check, uploaded again once, with one warning, and the run's result
is the intact files' (local device, and over the real sshd of the session)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_ssh import connect_options, ssh_device

from edgekit.bench import benchmark
from edgekit.devices.spec import DeviceSpec
from edgekit.fsutil import sha256_file

REPO = Path(__file__).resolve().parents[2]
FAST = {"runs": 10, "warmup": 1}
WARNING = "no longer matches its sha256"


def flip(path: Path, size: int = 4096) -> None:
    """Invert ``size`` bytes in the middle of ``path`` (a cache entry damaged in place)."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - size // 2)
    for i in range(start, min(len(data), start + size)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def agent_entry(workdir: Path) -> Path:
    (entry,) = workdir.glob("*/agent.py")
    return entry


def repair_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and WARNING in r.getMessage()]


def test_agent_refuses_a_file_whose_sha256_changed(digits, tmp_path):
    from device_agents import AGENT_PATH

    proc = subprocess.run(
        [sys.executable, str(AGENT_PATH), "run", str(digits.tflite_fp32), "--runs", "1",
         "--eval", str(digits.eval_npz), "--sha256", sha256_file(digits.tflite_fp32),
         "--eval-sha256", "0" * 64], capture_output=True, text=True, timeout=120)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 3 and doc["error"]["type"] == "CacheCorrupt"
    (bad,) = doc["error"]["corrupt"]
    assert bad["role"] == "eval" and bad["found"] == sha256_file(digits.eval_npz)
    assert "device" not in doc  # nothing was measured


def test_local_damaged_model_is_uploaded_again_and_measured_intact(digits, tmp_path, caplog):
    workdir = tmp_path / "cache"
    local = DeviceSpec(name="local", workdir=str(workdir))
    (clean,) = benchmark([digits.tflite_fp32], devices=[local], eval=digits.eval_npz, **FAST)
    assert clean.ok, clean.error
    entry = workdir / sha256_file(digits.tflite_fp32) / "artifact.tflite"
    flip(entry)
    with caplog.at_level(logging.WARNING):
        (again,) = benchmark([digits.tflite_fp32], devices=[local], eval=digits.eval_npz, **FAST)
    assert again.ok, again.error
    assert again.metrics["accuracy"] == clean.metrics["accuracy"]
    assert again.upload_bytes == digits.tflite_fp32.stat().st_size  # the model, nothing else
    assert sha256_file(entry) == sha256_file(digits.tflite_fp32)
    (warning,) = repair_warnings(caplog)
    assert warning.startswith("local: ") and digits.tflite_fp32.name in warning


def test_local_damaged_eval_data_and_agent_are_uploaded_again(digits, tmp_path, caplog):
    workdir = tmp_path / "cache"
    local = DeviceSpec(name="local", workdir=str(workdir))
    (clean,) = benchmark([digits.tflite_int8], devices=[local], eval=digits.eval_npz, **FAST)
    assert clean.ok, clean.error
    flip(workdir / sha256_file(digits.eval_npz) / "eval.npz")
    agent = agent_entry(workdir)
    # An edit that keeps the agent runnable: only its own sha256 check can notice it.
    agent.write_text(agent.read_text().replace("edgekit device agent", "edgekit device agenT", 1))
    with caplog.at_level(logging.WARNING):
        (again,) = benchmark([digits.tflite_int8], devices=[local], eval=digits.eval_npz, **FAST)
    assert again.ok, again.error
    assert again.metrics["accuracy"] == clean.metrics["accuracy"]
    warnings = repair_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert any("agent.py" in w for w in warnings) and any(digits.eval_npz.name in w
                                                          for w in warnings)
    assert sha256_file(agent) == sha256_file(REPO / "device_agents" / "agent.py")


def test_local_agent_too_damaged_to_answer_is_uploaded_again(digits, tmp_path, caplog):
    workdir = tmp_path / "cache"
    local = DeviceSpec(name="local", workdir=str(workdir))
    (clean,) = benchmark([digits.tflite_int8], devices=[local], **FAST)
    assert clean.ok, clean.error
    flip(agent_entry(workdir))  # 4 KB of garbage in the middle: a SyntaxError
    with caplog.at_level(logging.WARNING):
        (again,) = benchmark([digits.tflite_int8], devices=[local], **FAST)
    assert again.ok, again.error
    (warning,) = repair_warnings(caplog)
    assert "agent.py" in warning


@pytest.mark.ssh
def test_ssh_damaged_model_is_uploaded_again_and_said_once(sshd, digits, tmp_path):
    """Through the CLI: the bench succeeds with the intact model's accuracy and stderr has one
    warning line naming the device and the file."""
    workdir = tmp_path / "remote"
    spec = ssh_device(sshd, workdir, python=sys.executable, explicit_python=True)
    (clean,) = benchmark([digits.tflite_int8], devices=[spec], connect=connect_options(sshd),
                         eval=digits.eval_npz, **FAST)
    assert clean.ok, clean.error
    flip(workdir / sha256_file(digits.tflite_int8) / "artifact.tflite")
    inv = tmp_path / "devices.toml"
    inv.write_text(f'[devices.board]\nhost = "{sshd.alias}"\nworkdir = "{workdir}"\n'
                   f'python = "{sys.executable}"\n')
    db = tmp_path / "results.db"
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", "bench", str(digits.tflite_int8), "--device",
         "board", "--eval", str(digits.eval_npz), "--runs", "10", "--warmup", "1", "--db",
         str(db), "--inventory", str(inv), "--ssh-config", str(sshd.ssh_config), "--json"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if WARNING in ln]
    assert len(lines) == 1, proc.stderr
    assert "board: " in lines[0] and digits.tflite_int8.name in lines[0]
    assert sha256_file(workdir / sha256_file(digits.tflite_int8) / "artifact.tflite") == \
        sha256_file(digits.tflite_int8)
    from edgekit.results import ResultStore

    with ResultStore(db) as store:
        (row,) = store.list()
    assert row.ok and row.metrics["accuracy"] == clean.metrics["accuracy"]

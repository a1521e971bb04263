"""The code base passes the linter with the rules pinned in pyproject.toml (CI runs this)."""

import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_passes_on_the_whole_repository():
    ruff = shutil.which("ruff")
    cmd = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    proc = subprocess.run([*cmd, "check", "--no-cache", str(ROOT)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_the_pinned_rules_include_bugbear_blind_except_imports_and_unused_noqa():
    # RUF100 makes every noqa name a rule that is checked and fires; B/BLE catch the bugs
    # (loop closures, silent `except Exception`) the house style forbids.
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert {"E4", "E7", "E9", "F", "B", "BLE", "I", "RUF100"} <= set(lint["select"])

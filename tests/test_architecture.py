"""The import layers hold: `lint-imports` keeps every contract in pyproject.toml (CI runs this)."""

import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports() -> list[str]:
    beside = Path(sys.executable).parent / "lint-imports"  # the venv's console script
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    assert found, "lint-imports is missing: pip install -e '.[test]' (it is in the test extra)"
    return [found]


def test_import_contracts_are_kept():
    proc = subprocess.run([*_lint_imports(), "--no-cache"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout, proc.stdout[-6000:]


def test_the_design_layers_are_all_contracts():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert set(contracts["root_packages"]) == {"edgekit", "converters", "calibration_data",
                                               "device_agents"}
    types = {c["type"] for c in contracts["contracts"]}
    assert {"forbidden", "layers", "acyclic_siblings"} <= types
    forbidden = [c for c in contracts["contracts"] if c["type"] == "forbidden"]
    assert any(c["forbidden_modules"] == ["click"] for c in forbidden)
    assert any(c["source_modules"] == ["device_agents"] for c in forbidden)

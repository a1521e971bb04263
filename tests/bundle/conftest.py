"""Bundle fixtures: the same real build + bench database as the report tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "report"))

import ship_build as sb  # shared with tests/report (memoised per process)


@pytest.fixture(scope="session")
def ship():
    """Digits CNN converted to tflite-fp32/int8, onnx-fp32, ort and benchmarked on local."""
    return sb.ship_build()

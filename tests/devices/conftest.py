"""Fixtures for device tests: the digits models and a real OpenSSH sshd on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest_ssh import SshServer, build_digits_models, start_sshd, user_key


@pytest.fixture(scope="session")
def digits():
    return build_digits_models()


@pytest.fixture(scope="session")
def client_key() -> Path:
    return user_key()


@pytest.fixture(scope="session")
def sshd(client_key) -> SshServer:
    """One sshd for the whole session (tests that break connections use ``own_sshd``)."""
    server = start_sshd(client_key)
    yield server
    server.stop()


@pytest.fixture
def own_sshd(client_key) -> SshServer:
    """A private sshd for a test that kills its sessions."""
    server = start_sshd(client_key, alias="ownbox")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory) -> str:
    """A Python with neither numpy nor any runtime: a board before `devices setup`."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    return str(venv / "bin" / "python")

"""`devices setup local`: the venv appears only when complete (temp name, marker written last,
renamed into place), concurrent set-ups serialise on the lock, a half-built venv is replaced."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edgekit.devices.device import VENV_MARKER, VENV_NAME, Device
from edgekit.devices.setup import SetupOptions, setup_device
from edgekit.devices.spec import DeviceSpec


@pytest.mark.slow
def test_concurrent_local_setups_serialise_and_leave_one_complete_venv(tmp_path):
    workdir = tmp_path / "edgekit"
    # This Python's own numpy version: the venv sees the system's runtimes, built against it.
    options = SetupOptions(packages=(f"numpy=={np.__version__}",), fallback_runtimes=(),
                           wheel_cache=tmp_path / "wheels")
    spec = DeviceSpec(name="local", workdir=str(workdir))
    half = workdir / VENV_NAME / "bin"
    half.mkdir(parents=True)  # what a killed set-up left: a venv folder without the marker
    (half / "python").write_text("#!/bin/sh\nexit 3\n")
    with Device.open(spec) as dev:
        assert dev.python != dev.venv_python  # never the half-built one
        setup_device(dev, options)  # fills the wheel cache; replaces the half-built venv
    events, errors = [], []
    lock = threading.Lock()

    def run(who):
        try:
            with Device.open(spec) as dev:
                def say(msg):
                    with lock:
                        events.append((who, msg))
                setup_device(dev, options, say)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    assert not errors, errors
    # Between "creating the venv" and "done" one set-up holds the lock: the other's venv steps
    # come wholly before or after.
    steps = [w for w, m in events if m in ("creating the venv", "installing")]
    assert steps in (["a", "a", "b", "b"], ["b", "b", "a", "a"]), events
    venv = workdir / VENV_NAME
    assert (venv / VENV_MARKER).is_file() and (venv / "bin" / "python").exists()
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith(VENV_NAME)) == [
        VENV_NAME, f"{VENV_NAME}.lock"]  # no temp or old venvs left
    with Device.open(spec) as dev:
        assert dev.python == dev.venv_python == str(venv / "bin" / "python")
        doc = dev.probe()
    assert doc["runtimes"] and Path(doc["python"]["executable"]).parent == venv / "bin"

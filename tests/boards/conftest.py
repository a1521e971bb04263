"""An emulated aarch64 board (Debian arm64 under qemu-user, real sshd inside) for the board suite.

Board tests are marked ``board``. They need root, apt, binfmt_misc and a few minutes (the rootfs
is built once per machine and cached; see make_arm64_board.sh), so a plain ``pytest`` run
deselects them; ``pytest -m board tests/boards`` (what run_board_suite.sh and CI run) selects
them. The fixtures build and start the board themselves: nothing is faked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest_ssh import free_port, user_key  # tests/ is not a package

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "make_arm64_board.sh"
CACHE = Path(os.environ.get("EDGEKIT_BOARD_CACHE", "/var/cache/edgekit-board"))
ALIAS = "armboard"  # the board as the CLI names it (ssh_config alias / inventory name)
TFLRT = "armboard-tflrt"  # the same board, with a tflite_runtime venv in another workdir
# Emulated runs are 10-30x slower than the hardware: few runs, generous timeouts.
RUNS, WARMUP, RUN_TIMEOUT = 20, 2, 600
BUILD_TIMEOUT = 1500  # a cold build: apt-get + debootstrap under qemu (about 4-5 minutes)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "board: runs on an emulated aarch64 board (qemu-user Debian arm64 + sshd; "
                   "root; deselected unless -m selects it; run tests/boards/run_board_suite.sh)")


def pytest_collection_modifyitems(config, items):
    if "board" in (config.getoption("markexpr") or ""):
        return
    board = [i for i in items if i.get_closest_marker("board")]
    if board:
        config.hook.pytest_deselected(items=board)
        items[:] = [i for i in items if not i.get_closest_marker("board")]


@dataclass
class Board:
    """A running emulated board and the host-side files that reach it."""

    folder: Path
    root: Path  # the board's filesystem, seen from the host
    port: int
    pid: int  # its sshd
    user_key: Path
    known_hosts: Path
    ssh_config: Path  # Host armboard -> 127.0.0.1:port
    inventory: Path  # devices.toml: armboard and armboard-tflrt
    log: Path
    start_s: float  # seconds `start` took (build included when the cache was cold)

    def cli_connection(self) -> list[str]:
        return ["--inventory", str(self.inventory), "--ssh-config", str(self.ssh_config),
                "--known-hosts", str(self.known_hosts), "--connect-timeout", "60"]

    def sshd_alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True


def board_script(*args, timeout=BUILD_TIMEOUT) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "EDGEKIT_BOARD_CACHE": str(CACHE)})
    if proc.returncode != 0:
        raise RuntimeError(f"{SCRIPT.name} {' '.join(map(str, args))} exited {proc.returncode}:\n"
                           f"{proc.stderr[-3000:]}")
    return proc


def start_board(folder: Path, key: Path, alias: str = ALIAS) -> Board:
    """Unpack a fresh board into ``folder`` (building the cached rootfs first if needed) and start
    its sshd on a free loopback port, accepting ``key`` for root."""
    port = free_port()
    t0 = time.monotonic()
    out = board_script("start", folder / "board", port, str(key) + ".pub").stdout
    took = time.monotonic() - t0
    facts = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    pub = Path(facts["HOST_KEY_PUB"]).read_text().split()
    known = folder / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    cfg = folder / "ssh_config"
    cfg.write_text(f"Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n"
                   f"  IdentityFile {key}\n  UserKnownHostsFile {known}\n")
    inv = folder / "devices.toml"
    inv.write_text(
        f'[devices.{ALIAS}]\nhost = "127.0.0.1"\nport = {port}\nuser = "root"\nkey = "{key}"\n'
        'tags = ["arm64", "emulated"]\n\n'
        f'[devices.{TFLRT}]\nhost = "127.0.0.1"\nport = {port}\nuser = "root"\nkey = "{key}"\n'
        'workdir = "~/edgekit-tflrt"\ntags = ["arm64", "emulated", "tflite_runtime"]\n')
    return Board(folder, Path(facts["ROOT"]), port, int(facts["PID"]), key, known, cfg, inv,
                 folder / "board" / "sshd.log", took)


def edgekit(*args, timeout=RUN_TIMEOUT * 3, check=True) -> subprocess.CompletedProcess:
    """Run the edgekit CLI as a user would (a fresh process)."""
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"})
    if check and proc.returncode != 0:
        raise AssertionError(f"edgekit {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
    return proc


def edgekit_json(*args, **kw):
    return json.loads(edgekit(*args, "--json", **kw).stdout)


@pytest.fixture(scope="session")
def board_key() -> Path:
    return user_key()


@pytest.fixture(scope="session")
def board(board_key) -> Board:
    """One emulated board per session, started fresh (no runtime) and destroyed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="edgekit-board-"))
    try:
        b = start_board(folder, board_key)
    except BaseException:
        board_script("destroy", folder / "board", timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    yield b
    board_script("destroy", folder / "board", timeout=120)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def bare_probe(board) -> dict:
    """``edgekit devices probe`` of the board before anything is installed on it."""
    return edgekit_json("devices", "probe", ALIAS, *board.cli_connection())


@pytest.fixture(scope="session")
def board_setup(board, bare_probe) -> dict:
    """``edgekit devices setup``: numpy, ai-edge-litert and onnxruntime wheels for aarch64 /
    Python 3.11 downloaded here, pushed and installed offline into a venv on the board."""
    return edgekit_json("devices", "setup", ALIAS, *board.cli_connection())


@pytest.fixture(scope="session")
def board_setup_tflite_runtime(board, bare_probe) -> dict:
    """A second venv on the board (another workdir) with tflite_runtime instead of LiteRT."""
    return edgekit_json("devices", "setup", TFLRT, "--package", "numpy<2",
                        "--package", "tflite-runtime", *board.cli_connection())


@dataclass
class HostBuild:
    folder: Path  # edgekit convert output: artifacts + manifest.json
    eval_npz: Path
    manifest: dict
    local: dict  # {target: local bench result document} on this host


TARGETS = ("tflite-int8", "tflite-fp16", "onnx-int8")


@pytest.fixture(scope="session")
def host_build(tmp_path_factory) -> HostBuild:
    """The digits CNN trained and converted on the host with the CLI, and benched on ``local``
    with the same eval data (the accuracy the board must reproduce)."""
    from calibration_data.digits import digits_path
    from edgekit.demo import DigitsCNN, train_digits_cnn

    folder = tmp_path_factory.mktemp("host-build")
    model = train_digits_cnn(folder / "digits_cnn.keras", DigitsCNN(epochs=6))
    out = folder / "build"
    edgekit("convert", model, "--to", ",".join(TARGETS), "--calibration",
            digits_path("calibration"), "--eval", digits_path("eval"), "--out", out)
    manifest = json.loads((out / "manifest.json").read_text())
    local = edgekit_json("bench", out, "--device", "local", "--runs", RUNS, "--warmup", WARMUP,
                         "--eval", digits_path("eval"), "--db", folder / "local.db")
    return HostBuild(out, Path(digits_path("eval")), manifest,
                     {r["artifact"]["target"]: r for r in local})

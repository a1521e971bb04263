"""labgrid places as devices, against a real labgrid-coordinator and labgrid-exporter on
127.0.0.1 whose places lead to the test sshd (tests/conftest_lab.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("labgrid", reason="labgrid is not installed: pip install 'edgekit[lab]'")

from conftest_lab import start_lab
from conftest_ssh import connect_options, free_port

from edgekit.bench import benchmark
from edgekit.cli.main import main
from edgekit.devices.lab.client import LabClient

pytestmark = [pytest.mark.ssh, pytest.mark.labgrid]
FAST = {"runs": 20, "warmup": 2}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def lab(sshd, tmp_path_factory):
    os.environ["EDGEKIT_LAB_STATE"] = str(tmp_path_factory.mktemp("lab-state"))
    lab = start_lab(sshd.port)
    yield lab
    lab.stop()


@pytest.fixture(scope="session")
def inventory(lab, sshd, tmp_path_factory) -> Path:
    """devices.toml naming the lab: its coordinator, the key, cache folder and Python (the one
    running the tests, which has the runtimes) of its boards."""
    path = tmp_path_factory.mktemp("inv") / "devices.toml"
    workdir = tmp_path_factory.mktemp("board-cache")
    path.write_text(f'[labgrid]\ncoordinator = "{lab.address}"\nkey = "{sshd.user_key}"\n'
                    f'workdir = "{workdir}"\npython = "{sys.executable}"\n')
    return path


def holder(lab, place):
    with LabClient(lab.address) as c:
        return c.place(place).holder


def cli(capfd, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capfd.readouterr()
    return code, out, err


def interval(r):
    """The agent's measurement interval (epoch seconds) of a result."""
    return r.metrics["started_at"], r.metrics["started_at"] + r.metrics["wall_s"]


def test_bench_through_a_place_holds_it_only_while_measuring(lab, sshd, digits, inventory):
    place = lab.make_place("bench-1", "board1")
    seen = []

    def watch(device, message, done, total):
        if message.endswith("running"):
            seen.append(holder(lab, place))

    results = benchmark([digits.tflite_int8], devices=[f"labgrid:{place}"], inventory=inventory,
                        connect=connect_options(sshd), eval=digits.eval_npz, progress=watch,
                        **FAST)
    r = results[0]
    assert r.ok, r.error
    assert r.device == f"labgrid:{place}"
    assert r.metrics["accuracy"]["top1"] > 0.8  # the trained digits model, measured for real
    with LabClient(lab.address) as c:
        me = c.identity
        assert c.place(place).holder is None  # released after the bench
    assert seen == [me]  # held while measuring
    assert r.lease["place"] == place and r.lease["holder"] == me
    assert r.lease["waited_s"] == 0 and r.lease["took_over_pid"] is None
    assert r.lease["lock_s"] < 2
    assert r.to_dict()["lease"]["coordinator"] == lab.address


def test_devices_list_shows_places_boards_and_holders(lab, sshd, capfd):
    place = lab.make_place("list-1", "board2")
    lab.client("-p", place, "set-tags", "board=rpi4", "rack=3")
    lab.client("-p", place, "acquire", user="alice")
    try:
        code, out, _ = cli(capfd, "devices", "list", "--labgrid", lab.address, "--json")
        assert code == 0
        doc = json.loads(out)
        row = next(p for p in doc["places"] if p["name"] == place)
        assert row["network_service"]["port"] == sshd.port
        assert row["network_service"]["username"] == "root"
        assert row["holder"].endswith("/alice")
        assert row["tags"] == {"board": "rpi4", "rack": "3"}
        env = dict(os.environ, COLUMNS="80", PYTHONPATH=str(REPO))
        table = subprocess.run([sys.executable, "-m", "edgekit.cli.main", "devices", "list",
                                "--labgrid", lab.address], capture_output=True, text=True,
                               env=env, timeout=120)
        assert table.returncode == 0, table.stderr
        assert place in table.stderr and f"root@127.0.0.1:{sshd.port}" in table.stderr
        assert "alice" in table.stderr and "board=rpi4" in table.stderr
    finally:
        lab.client("-p", place, "release", user="alice")


def test_two_concurrent_benches_on_one_place_never_overlap(lab, sshd, digits, inventory):
    place = lab.make_place("concurrent-1", "board3")
    out: list = []

    def one():
        out.extend(benchmark([digits.tflite_fp32], devices=[f"labgrid:{place}"],
                             inventory=inventory, connect=connect_options(sshd), runs=300,
                             warmup=5))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(out) == 2 and all(r.ok for r in out), [r.error for r in out]
    (a0, a1), (b0, b1) = sorted(interval(r) for r in out)
    assert a1 <= b0  # disjoint measurement intervals
    assert max(r.lease["waited_s"] for r in out) > 0  # one of them waited for the other
    assert holder(lab, place) is None


def test_a_place_held_by_someone_else_is_waited_for_then_given_up(lab, sshd, digits, inventory,
                                                                   capfd):
    place = lab.make_place("held-1", "board4")
    lab.client("-p", place, "acquire", user="alice")
    try:
        t0 = time.monotonic()
        code, _, err = cli(capfd, "bench", str(digits.tflite_int8), "--device",
                           f"labgrid:{place}", "--inventory", str(inventory), "--lock-timeout",
                           "1", "--known-hosts", str(sshd.known_hosts), "--runs", "5",
                           "--db", str(inventory.parent / "r.db"))
        assert code == 1
        assert time.monotonic() - t0 < 60
        line = err.strip().splitlines()[-1]
        assert line.startswith("error:") and "alice" in line and "--lock-timeout" in line
        assert "Traceback" not in err
        # Now the holder lets go while edgekit waits: the bench runs once the place is free.
        threading.Timer(1.5, lambda: lab.client("-p", place, "release", user="alice")).start()
        lines = []
        r = benchmark([digits.tflite_int8], devices=[f"labgrid:{place}"], inventory=inventory,
                      connect=connect_options(sshd, lock_timeout=60),
                      progress=lambda d, m, *_: lines.append(m), **FAST)[0]
        assert r.ok, r.error
        assert r.lease["waited_s"] >= 1.0
        assert any("held by" in m and "alice" in m for m in lines)
    finally:
        lab.client("-p", place, "release", user="alice", check=False)
    assert holder(lab, place) is None


_HOLD_SCRIPT = """
import sys
from edgekit.bench import benchmark
from edgekit.devices.spec import ConnectOptions
benchmark([sys.argv[1]], devices=[sys.argv[2]], inventory=sys.argv[3], runs=3000000, warmup=1,
          connect=ConnectOptions(known_hosts=sys.argv[4]))
"""


def _start_holder(lab, place, digits, inventory, sshd):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_SCRIPT, str(digits.tflite_fp32),
                             f"labgrid:{place}", str(inventory), str(sshd.known_hosts)],
                            env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while holder(lab, place) is None:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the holder never acquired the place"
        time.sleep(0.2)
    time.sleep(1.0)  # measuring by now (3 million runs of a few microseconds: 10 s or more)
    assert proc.poll() is None, f"the holder finished before the test: {proc.stderr.read()}"
    return proc


def test_a_holder_killed_with_sigkill_leaves_the_place_recoverable(lab, sshd, digits, inventory):
    place = lab.make_place("killed-1", "board5")
    proc = _start_holder(lab, place, digits, inventory, sshd)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    with LabClient(lab.address) as c:
        assert c.place(place).holder == c.identity  # labgrid keeps it acquired
    lines = []
    r = benchmark([digits.tflite_int8], devices=[f"labgrid:{place}"], inventory=inventory,
                  connect=connect_options(sshd, lock_timeout=30),
                  progress=lambda d, m, *_: lines.append(m), **FAST)[0]
    assert r.ok, r.error
    assert r.lease["took_over_pid"] == proc.pid
    assert any("took over" in m and str(proc.pid) in m for m in lines)
    assert holder(lab, place) is None


def _cli_bench(place, digits, inventory, sshd, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli.main", "bench", str(digits.tflite_fp32), "--device",
         f"labgrid:{place}", "--inventory", str(inventory), "--known-hosts",
         str(sshd.known_hosts), "--db", str(inventory.parent / "c.db"), *extra],
        env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)


def test_ctrl_c_stops_the_wait_and_releases_the_place(lab, sshd, digits, inventory):
    place = lab.make_place("sigint-1", "board6")
    lab.client("-p", place, "acquire", user="alice")
    waiting = _cli_bench(place, digits, inventory, sshd, "--runs", "5")
    time.sleep(8)  # started, and waiting for alice
    assert waiting.poll() is None
    t0 = time.monotonic()
    waiting.send_signal(signal.SIGINT)
    assert waiting.wait(30) == 130 and time.monotonic() - t0 < 5
    err = waiting.stderr.read()
    assert "held by" in err and "alice" in err  # the progress line named the holder
    assert err.strip().splitlines()[-1] in ("aborted", "interrupted")
    lab.client("-p", place, "release", user="alice")
    measuring = _cli_bench(place, digits, inventory, sshd, "--runs", "3000000")
    deadline = time.monotonic() + 120
    while holder(lab, place) is None:
        assert measuring.poll() is None and time.monotonic() < deadline, measuring.stderr.read()
        time.sleep(0.2)
    measuring.send_signal(signal.SIGINT)
    assert measuring.wait(120) == 130
    assert holder(lab, place) is None


def test_errors_are_one_line_with_an_exit_code(lab, sshd, digits, inventory, capfd):
    lab.make_place("nonet-1", "nonet")
    base = ["bench", str(digits.tflite_int8), "--inventory", str(inventory), "--known-hosts",
            str(sshd.known_hosts), "--db", str(inventory.parent / "e.db")]
    cases = [
        (["--device", "labgrid:no-such-place"], 2, "does not exist"),
        (["--device", "labgrid:nonet-1"], 2, "no NetworkService"),
        (["--device", "labgrid:nonet-1", "--labgrid", f"127.0.0.1:{free_port()}"], 1,
         "not reachable"),
    ]
    for extra, want, words in cases:
        code, _, err = cli(capfd, *base, *extra)
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert code == want, err
        assert len(lines) == 1 and words in lines[0], err
        assert "Traceback" not in err
    code, _, err = cli(capfd, "devices", "list", "--labgrid", f"127.0.0.1:{free_port()}")
    assert code == 1 and err.strip().count("\n") == 0 and "not reachable" in err


def test_the_coordinator_comes_from_the_flag_then_env_then_inventory(tmp_path, monkeypatch):
    from edgekit.bench import resolve_devices
    from edgekit.devices.lab.places import coordinator_for
    from edgekit.devices.spec import ConnectOptions
    from edgekit.errors import InputError

    inv = tmp_path / "devices.toml"
    inv.write_text('[labgrid]\ncoordinator = "inv-host:1"\nworkdir = "/tmp/w"\n')
    spec = resolve_devices(["labgrid:pi"], inv)[0]
    monkeypatch.delenv("LG_COORDINATOR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert coordinator_for(spec, ConnectOptions()) == "inv-host:1"
    monkeypatch.setenv("LG_COORDINATOR", "env-host:2")
    assert coordinator_for(spec, ConnectOptions()) == "env-host:2"
    assert coordinator_for(spec, ConnectOptions(labgrid="flag-host:3")) == "flag-host:3"
    monkeypatch.delenv("LG_COORDINATOR")
    bare = resolve_devices(["labgrid:pi"])[0]
    (tmp_path / "devices.toml").rename(tmp_path / "elsewhere.toml")  # no default inventory
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(InputError, match="--labgrid"):
        coordinator_for(bare, ConnectOptions())
    with pytest.raises(InputError, match="labgrid:PLACE"):
        resolve_devices(["labgrid:"])


class _PowerSwitch:
    """A networked power switch (labgrid's ``simplerest`` protocol: GET /INDEX/VALUE) whose
    outlet feeds a board: the sshd of ``server``. Off kills it, on starts it again."""

    def __init__(self, server):
        import http.server

        self.server, self.calls = server, []
        switch = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                parts = self.path.strip("/").split("/")
                if len(parts) == 2:
                    switch.set(parts[1] == "1")
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"1" if switch.server.proc.poll() is None else b"0")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def crash(self):
        """The board dies: its sshd and every session (and agent) under it."""
        for pid in self.server.children():
            os.kill(pid, signal.SIGKILL)
        self.server.proc.kill()
        self.server.proc.wait()

    def set(self, on: bool):
        self.calls.append(on)
        if not on and self.server.proc.poll() is None:
            self.crash()
        elif on and self.server.proc.poll() is not None:
            from conftest_ssh import SSHD, wait_port

            log = open(self.server.folder / "sshd.log", "a")
            self.server.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.server.folder / "sshd_config")], stdout=log,
                stderr=log, stdin=subprocess.DEVNULL)
            wait_port(self.server.port)


def test_power_cycle_on_loss_goes_through_labgrids_power_driver(own_sshd, digits, tmp_path):
    switch = _PowerSwitch(own_sshd)
    lab = start_lab(own_sshd.port, boards=1, extra_yaml=(
        f"powered:\n  NetworkService:\n    address: 127.0.0.1\n    username: root\n"
        f"    port: {own_sshd.port}\n  NetworkPowerPort:\n    model: simplerest\n"
        f"    host: 'http://127.0.0.1:{switch.port}/{{index}}/{{value}}'\n    index: 0\n"))
    try:
        place = lab.make_place("powered-1", "powered")
        inv = tmp_path / "devices.toml"
        inv.write_text(f'[labgrid]\ncoordinator = "{lab.address}"\n'
                       f'key = "{own_sshd.user_key}"\nworkdir = "{tmp_path / "w"}"\n'
                       f'python = "{sys.executable}"\n')
        lines = []

        def progress(device, message, done, total):
            lines.append(message)
            if message.endswith("running") and not switch.calls:
                threading.Timer(1.0, switch.crash).start()  # the board dies mid-run

        r = benchmark([digits.tflite_fp32], devices=[f"labgrid:{place}"], inventory=inv,
                      connect=connect_options(own_sshd, power_cycle_on_loss=True),
                      progress=progress, runs=3000000, warmup=1)[0]
        assert r.ok, (r.error, lines)
        assert switch.calls == [False, True]  # labgrid's driver switched it off, then on
        assert any("power-cycling labgrid place" in m for m in lines)
        # Without the option, the same loss is the device's error.
        switch.calls.clear()
        r = benchmark([digits.tflite_fp32], devices=[f"labgrid:{place}"], inventory=inv,
                      connect=connect_options(own_sshd), progress=progress, runs=3000000,
                      warmup=1)[0]
        assert not r.ok and "lost" in r.error and switch.calls == []
        switch.set(True)
        assert holder(lab, place) is None
    finally:
        lab.stop()
        switch.httpd.shutdown()


def test_without_labgrid_one_line_says_what_to_install():
    # A Python where `import labgrid` fails (as without the lab extra); edgekit itself imports.
    script = ("import sys; sys.modules['labgrid'] = None\n"
              "from edgekit.cli.main import main\n"
              "sys.exit(main(['devices', 'list', '--labgrid', '127.0.0.1:1']))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "pip install 'edgekit[lab]'" in run.stderr

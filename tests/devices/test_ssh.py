"""Benchmarks over a real OpenSSH sshd on 127.0.0.1 (see conftest): security, cache, failures."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest_ssh import connect_options, ssh_device

from edgekit.bench import benchmark
from edgekit.devices.device import Device
from edgekit.devices.spec import ConnectOptions, DeviceSpec, load_inventory, parse_device
from edgekit.errors import DeviceError, HostKeyError
from edgekit.fsutil import sha256_file

pytestmark = pytest.mark.ssh
FAST = {"runs": 20, "warmup": 2}


def shape(value):
    """The key structure of a JSON value (types of leaves), to compare documents' shapes."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else \
        type(value).__name__


def no_temp_files(workdir: Path) -> bool:
    return not [p for p in Path(workdir).rglob("*.part")]


def test_alias_and_inventory_resolution(sshd, tmp_path):
    inv = tmp_path / "devices.toml"
    inv.write_text(f'[devices.board]\nhost = "{sshd.alias}"\nworkdir = "/tmp/x"\n'
                   'tags = ["x86", "loopback"]\n')
    spec = parse_device("board", load_inventory(inv), sshd.ssh_config)
    assert (spec.host, spec.port, spec.user) == ("127.0.0.1", sshd.port, "root")
    assert spec.keys == (str(sshd.user_key),) and spec.known_hosts == str(sshd.known_hosts)
    assert spec.workdir == "/tmp/x" and spec.tags == ("x86", "loopback")
    direct = parse_device("pi@10.0.0.7:2222", None, sshd.ssh_config)
    assert (direct.user, direct.host, direct.port) == ("pi", "10.0.0.7", 2222)
    with Device.open(parse_device(sshd.alias, None, sshd.ssh_config),
                     ConnectOptions(ssh_config=sshd.ssh_config)) as dev:
        assert dev.transport.run(["id", "-u"]).stdout.strip() == "0"


def test_bench_over_ssh_and_local_have_the_same_shape(sshd, digits, tmp_path):
    remote = ssh_device(sshd, tmp_path / "remote")
    local = DeviceSpec(name="local", workdir=str(tmp_path / "local"))
    results = benchmark([digits.tflite_int8], devices=[remote, local],
                        connect=connect_options(sshd), eval=digits.eval_npz,
                        reference=digits.reference_npz, **FAST)
    assert [r.device for r in results] == ["box", "local"]
    assert all(r.ok for r in results), [r.error for r in results]
    a, b = (r.to_dict() for r in results)
    assert shape(a) == shape(b)
    assert a["metrics"]["accuracy"] == b["metrics"]["accuracy"]  # same model, same data
    assert a["device_info"]["arch"] == b["device_info"]["arch"]
    assert a["metrics"]["latency_ms"]["runs"] == 20


def test_second_bench_uploads_nothing(sshd, digits, tmp_path):
    spec = ssh_device(sshd, tmp_path / "cache")
    arts = [digits.tflite_fp32, digits.onnx_fp32]
    first = benchmark(arts, devices=[spec], connect=connect_options(sshd),
                      eval=digits.eval_npz, **FAST)
    assert all(r.ok for r in first) and first[0].upload_bytes > digits.tflite_fp32.stat().st_size
    second = benchmark(arts, devices=[spec], connect=connect_options(sshd),
                       eval=digits.eval_npz, **FAST)
    assert [r.upload_bytes for r in second] == [0, 0] and all(r.ok for r in second)
    entry = tmp_path / "cache" / sha256_file(digits.onnx_fp32) / "artifact.onnx"
    assert sha256_file(entry) == sha256_file(digits.onnx_fp32)
    assert no_temp_files(tmp_path / "cache")


def test_names_with_spaces_and_quotes_are_not_injected(sshd, digits, tmp_path):
    build = tmp_path / "build dir 'q'"
    build.mkdir()
    model = build / "my model's v1 $(touch pwned).tflite"
    shutil.copy(digits.tflite_fp32, model)
    workdir = tmp_path / "dev cache's dir; touch pwned2"
    results = benchmark([model], devices=[ssh_device(sshd, workdir)],
                        connect=connect_options(sshd), **FAST)
    assert results[0].ok, results[0].error
    assert results[0].artifact["name"] == model.name
    assert (workdir / sha256_file(model) / "artifact.tflite").is_file()
    with Device.open(ssh_device(sshd, workdir), connect_options(sshd)) as dev:
        out = dev.transport.run(["echo", "a'b; echo INJECTED", "$HOME", "`id`"]).stdout
    assert out.strip() == "a'b; echo INJECTED $HOME `id`"
    assert not list(tmp_path.rglob("pwned*")) and not Path("pwned").exists()


def test_unknown_host_refused_then_accepted_with_opt_in(sshd, tmp_path):
    known = tmp_path / "known_hosts"  # empty: the host was never seen
    spec = ssh_device(sshd, tmp_path / "w")
    with pytest.raises(HostKeyError) as e:
        Device.open(spec, ConnectOptions(known_hosts=known, connect_timeout=10))
    pub = (Path(str(sshd.host_key) + ".pub")).read_text().split()
    import base64
    import hashlib
    fp = "SHA256:" + base64.b64encode(hashlib.sha256(base64.b64decode(pub[1])).digest()).decode()
    assert fp.rstrip("=") in str(e.value) and "--trust-new-host" in str(e.value)
    assert not known.exists() or known.read_text() == ""
    with Device.open(spec, ConnectOptions(known_hosts=known, trust_new_host=True)) as dev:
        assert dev.transport.run(["true"]).ok
    assert f"[127.0.0.1]:{sshd.port} ssh-ed25519 {pub[1]}" in known.read_text()
    with Device.open(spec, ConnectOptions(known_hosts=known)) as dev:  # now known: no opt-in
        assert dev.transport.run(["true"]).ok


def test_changed_host_key_is_always_refused(sshd, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} " + " ".join(
        Path(str(other) + ".pub").read_text().split()[:2]) + "\n")
    for trust in (False, True):
        with pytest.raises(HostKeyError, match="CHANGED"):
            Device.open(ssh_device(sshd, tmp_path / "w"),
                        ConnectOptions(known_hosts=known, trust_new_host=trust))


def test_wrong_key_is_an_auth_error(sshd, tmp_path):
    wrong = tmp_path / "wrong"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    spec = DeviceSpec(name="box", host="127.0.0.1", user="root", port=sshd.port,
                      keys=(str(wrong),), workdir=str(tmp_path))
    with pytest.raises(DeviceError, match="authentication as root") as e:
        Device.open(spec, connect_options(sshd))
    assert not isinstance(e.value, HostKeyError)


def test_closed_port_fails_clearly_within_the_timeout(tmp_path, sshd):
    from conftest_ssh import free_port

    spec = DeviceSpec(name="nobody", host="127.0.0.1", user="root", port=free_port(),
                      workdir=str(tmp_path))
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="connection refused") as e:
        Device.open(spec, connect_options(sshd, connect_timeout=3.0))
    assert time.monotonic() - t0 < 4.0
    assert "nobody" in str(e.value) and "attempt" in str(e.value)


def test_dropped_connection_mid_upload_leaves_no_corrupt_cache(own_sshd, tmp_path):
    big = tmp_path / "big.onnx"
    big.write_bytes(os.urandom(48 << 20))
    sha = sha256_file(big)
    workdir = tmp_path / "cache"
    spec = ssh_device(own_sshd, workdir)
    dev = Device.open(spec, connect_options(own_sshd, retries=0))
    killed = []

    def kill_midway(done, total):
        if not killed and done > total // 4:
            for pid in own_sshd.children():  # the per-connection sshd of this session
                os.kill(pid, signal.SIGKILL)
            killed.append(done)

    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="upload of .*big.onnx"):
        dev.ensure_file(big, sha, progress=kill_midway)
    dev.close()
    assert killed and time.monotonic() - t0 < 60
    assert not (workdir / sha).exists()  # nothing under the content address
    with Device.open(spec, connect_options(own_sshd)) as dev2:
        path, sent = dev2.ensure_file(big, sha)
    assert sent == big.stat().st_size
    assert sha256_file(path) == sha
    assert no_temp_files(workdir)  # the dead upload's temp file was cleaned on retry


def _pids_running(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def test_agent_killed_mid_run_is_an_error_result(sshd, digits, tmp_path):
    workdir = tmp_path / "killrun"
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", benchmark(
        [digits.tflite_fp32], devices=[ssh_device(sshd, workdir)], connect=connect_options(sshd),
        runs=50_000_000, warmup=0)))
    t.start()
    deadline, killed = time.monotonic() + 30, []
    while not killed and time.monotonic() < deadline:
        time.sleep(0.3)
        for pid in _pids_running(f"{workdir}.*agent.py run"):
            try:
                if "python" in os.readlink(f"/proc/{pid}/exe"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            except (ProcessLookupError, FileNotFoundError):
                continue  # a shell or shim that has exec'd or exited meanwhile
    assert killed, "the agent never started"
    t.join(60)
    assert not t.is_alive()
    (r,) = out["r"]
    assert not r.ok and "killed or lost" in r.error
    time.sleep(0.5)
    assert not _pids_running(f"{workdir}.*agent.py _measure")  # the child died with it


def test_device_without_runtime_points_to_setup(sshd, digits, tmp_path, bare_python):
    spec = ssh_device(sshd, tmp_path / "bare", python=bare_python, explicit_python=True)
    (r,) = benchmark([digits.tflite_int8], devices=[spec], connect=connect_options(sshd), **FAST)
    assert not r.ok and "devices setup box" in r.error and "numpy" in r.error
    assert r.device_info["runtimes"] == []


def test_parallel_devices_with_one_failing(sshd, digits, tmp_path):
    from conftest_ssh import free_port

    good = ssh_device(sshd, tmp_path / "good")
    local = DeviceSpec(name="local", workdir=str(tmp_path / "local"))
    dead = DeviceSpec(name="dead", host="127.0.0.1", user="root", port=free_port(),
                      workdir=str(tmp_path / "dead"))
    results = benchmark([digits.tflite_int8, digits.onnx_fp32], devices=[good, dead, local],
                        connect=connect_options(sshd, connect_timeout=3.0), parallel=3, **FAST)
    by_device = {}
    for r in results:
        by_device.setdefault(r.device, []).append(r)
    assert [len(v) for v in by_device.values()] == [2, 2, 2]
    assert all(r.ok for r in by_device["box"] + by_device["local"])
    assert all(not r.ok and "connection refused" in r.error for r in by_device["dead"])


def test_proxy_jump_through_another_sshd(sshd, client_key, tmp_path):
    from conftest_ssh import start_sshd

    inner = start_sshd(client_key, alias="inner")
    try:
        cfg = tmp_path / "ssh_config"
        known = tmp_path / "known_hosts"
        known.write_text(sshd.host_key_line() + inner.host_key_line())
        cfg.write_text(
            f"Host jump\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
            f"  IdentityFile {client_key}\n  UserKnownHostsFile {known}\n"
            f"Host inner\n  HostName 127.0.0.1\n  Port {inner.port}\n  User root\n"
            f"  IdentityFile {client_key}\n  UserKnownHostsFile {known}\n  ProxyJump jump\n")
        spec = parse_device("inner", None, cfg)
        assert spec.proxy_jump == "jump"
        with Device.open(spec, ConnectOptions(ssh_config=cfg)) as dev:
            assert dev.transport.run(["true"]).ok
            assert dev.transport._hops  # really tunnelled
    finally:
        inner.stop()


def test_results_written_before_a_crash_survive(sshd, digits, tmp_path):
    db = tmp_path / "results.db"
    cmd = [sys.executable, "-m", "edgekit.cli.main", "bench", str(digits.tflite_int8),
           str(digits.onnx_fp32), str(digits.tflite_fp32), "--device", "box", "--runs", "20000",
           "--warmup", "0", "--db", str(db), "--inventory", str(tmp_path / "devices.toml"),
           "--ssh-config", str(sshd.ssh_config)]
    (tmp_path / "devices.toml").write_text(
        f'[devices.box]\nhost = "{sshd.alias}"\nworkdir = "{tmp_path / "w"}"\n')
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    from edgekit.results import ResultStore

    deadline, count = time.monotonic() + 90, 0
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            with ResultStore(db) as store:
                count = store.count()
            if count >= 1:
                break
        time.sleep(0.02)
    assert count >= 1, proc.stderr.read() if proc.poll() is not None else "no result in time"
    proc.kill()
    proc.wait()
    with ResultStore(db) as store:
        kept = store.list()
    # The file itself, read by SQLite (not through edgekit): intact after the kill.
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert 1 <= len(kept) < 3 and kept[-1].ok
    assert kept[-1].artifact["name"] == digits.tflite_int8.name


def test_out_of_memory_is_an_error_result_naming_the_cause(sshd, digits, tmp_path):
    """The measuring process gets 100 MiB of address space: too little for numpy + LiteRT."""
    (r,) = benchmark([digits.tflite_fp32], devices=[ssh_device(sshd, tmp_path / "oom")],
                     connect=connect_options(sshd), memory_limit_mb=100, **FAST)
    assert not r.ok and "100 MiB memory limit" in r.error
    assert "(stderr: " in r.error  # the process's own last words name the failed allocation
    assert r.settings["memory_limit_mb"] == 100


def test_concurrent_uploads_of_the_same_content_both_succeed(sshd, tmp_path):
    big = tmp_path / "same.tflite"
    big.write_bytes(os.urandom(16 << 20))
    sha = sha256_file(big)
    spec = ssh_device(sshd, tmp_path / "shared")
    out, errors = [], []

    def upload():
        try:
            with Device.open(spec, connect_options(sshd)) as dev:
                out.append(dev.ensure_file(big, sha)[0])
        except DeviceError as e:  # collected, so the assertion below can show it
            errors.append(e)

    threads = [threading.Thread(target=upload) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(set(out)) == 1
    assert sha256_file(out[0]) == sha and no_temp_files(tmp_path / "shared")


def test_key_from_ssh_agent(sshd, tmp_path, monkeypatch):
    """No key file given and none in ~/.ssh: the key comes from a running ssh-agent."""
    sock = tmp_path / "agent.sock"
    agent_proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", str(sshd.user_key)], env=env, check=True,
                       capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* to fall back on
        spec = DeviceSpec(name="box", host="127.0.0.1", user="root", port=sshd.port,
                          workdir=str(tmp_path / "w"))
        with Device.open(spec, connect_options(sshd)) as dev:
            assert dev.transport.run(["true"]).ok
        monkeypatch.delenv("SSH_AUTH_SOCK")
        with pytest.raises(DeviceError, match="authentication"):
            Device.open(spec, connect_options(sshd))
    finally:
        agent_proc.terminate()
        agent_proc.wait(10)


def test_a_remote_command_that_hangs_times_out(sshd, tmp_path):
    with Device.open(ssh_device(sshd, tmp_path / "w"), connect_options(sshd)) as dev:
        t0 = time.monotonic()
        with pytest.raises(DeviceError, match="did not finish within 1 s"):
            dev.transport.run(["sleep", "30"], timeout=1)
        assert time.monotonic() - t0 < 5
        assert dev.transport.run(["true"]).ok  # the connection is still usable

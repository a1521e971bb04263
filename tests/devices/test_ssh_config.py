"""ssh_config resolution: OpenSSH's own (`ssh -G`) and paramiko's parser when `ssh` is absent,
against the real sshd of the session (see conftest)."""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest_ssh import SshServer

from edgekit.bench import benchmark
from edgekit.devices.device import Device
from edgekit.devices.spec import ConnectOptions, DeviceSpec, load_inventory, parse_device
from edgekit.errors import InputError

pytestmark = pytest.mark.ssh
REPO = Path(__file__).resolve().parents[2]
FAST = {"runs": 10, "warmup": 1}


def _key_as(client_key: Path, path: Path) -> Path:
    """A copy of the test user key at ``path`` (a name built from %-tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(client_key, path)
    path.chmod(0o600)
    return path


def replace_workdir(spec: DeviceSpec, tmp_path: Path) -> DeviceSpec:
    return replace(spec, workdir=str(tmp_path / "w"))


def _lab_config(tmp_path: Path, sshd: SshServer, client_key: Path, include: bool) -> Path:
    """A config using Match host/user, %h/%p tokens, first-value-wins and ProxyJump, with the
    lab's host blocks in a file pulled in by a glob Include (or inline, ``include=False``)."""
    keys = tmp_path / "keys"
    _key_as(client_key, keys / f"127.0.0.1-{sshd.port}.key")  # IdentityFile %h-%p
    _key_as(client_key, keys / "127.0.0.1.key")  # IdentityFile %h (paramiko has no %p)
    known = tmp_path / "lab_known_hosts"
    known.write_text(sshd.host_key_line())
    lab = (f"Host lab-box\n  Port {sshd.port}\n  User root\n"
           f"Host lab-box\n  Port 1\n  User nobody\n"  # second values: OpenSSH keeps the first
           f"Host lab-hop\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
           f"  IdentityFile {keys}/%h.key\n  UserKnownHostsFile {known}\n"
           "Host lab-*\n  HostName 127.0.0.1\n")
    cfg = tmp_path / "config"
    # Match user: only a login as alice goes to port 2 (and so never reaches the lab).
    head = "Match user alice\n  Port 2\nMatch all\n"  # Include in a Match block is conditional
    rest = (
        f"Host lab-box\n  IdentityFile {keys}/%h-{'%p' if include else str(sshd.port)}.key\n"
        f"Host lab-jumped\n  ProxyJump lab-hop\n  Port {sshd.port}\n"
        f"  IdentityFile {keys}/%h.key\n"
        # Match host: tested against the HostName set above it, not the alias.
        f"Match host 127.0.0.1 user root\n  UserKnownHostsFile {known}\n")
    if include:
        (tmp_path / "conf.d").mkdir()
        (tmp_path / "conf.d" / "10-lab.conf").write_text(lab)
        (tmp_path / "conf.d" / "README").write_text("not matched by the glob\n")
        cfg.write_text(head + f"Include {tmp_path}/conf.d/*.conf\n" + rest)
    else:
        cfg.write_text(head + lab + rest)
    return cfg


def test_openssh_resolves_include_match_tokens_and_first_value(sshd, client_key, digits,
                                                               tmp_path):
    cfg = _lab_config(tmp_path, sshd, client_key, include=True)
    spec = parse_device("lab-box", None, cfg)
    assert (spec.host, spec.port, spec.user) == ("127.0.0.1", sshd.port, "root")
    assert spec.keys == (str(tmp_path / "keys" / f"127.0.0.1-{sshd.port}.key"),)
    assert spec.known_hosts == str(tmp_path / "lab_known_hosts")  # from the Match host block
    alice = parse_device("alice@lab-box", None, cfg)  # Match user sees the --device user
    assert (alice.user, alice.port) == ("alice", 2)
    given = parse_device(f"lab-box:{sshd.port + 1}", None, cfg)  # the command line wins
    assert given.port == sshd.port + 1
    inv = tmp_path / "devices.toml"
    # python: this venv's by its path (a login shell's PATH on this host may put another first)
    inv.write_text(f'[devices.board]\nhost = "lab-box"\nworkdir = "{tmp_path / "w"}"\n'
                   f'python = "{sys.executable}"\n')
    board = parse_device("board", load_inventory(inv), cfg)
    (r,) = benchmark([digits.tflite_int8], devices=[board], connect=ConnectOptions(ssh_config=cfg),
                     eval=digits.eval_npz, **FAST)
    assert r.ok, r.error
    assert r.metrics["accuracy"]["top1"] > 0.8


def test_proxy_jump_through_the_sshd_to_itself(sshd, client_key, tmp_path):
    cfg = _lab_config(tmp_path, sshd, client_key, include=True)
    spec = parse_device("lab-jumped", None, cfg)
    assert spec.proxy_jump == "lab-hop" and spec.host == "127.0.0.1"
    with Device.open(replace_workdir(spec, tmp_path), ConnectOptions(ssh_config=cfg)) as dev:
        doc = dev.probe()
        assert dev.transport._hops  # really tunnelled through lab-hop
    assert doc["ok"] and doc["python"]["executable"]


def test_bad_config_is_one_line_quoting_openssh(tmp_path):
    bad = tmp_path / "config"
    bad.write_text("Host x\n  Bogusoption yes\n")
    with pytest.raises(InputError, match="Bad configuration option: bogusoption"):
        parse_device("x", None, bad)
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", "devices", "probe", "x", "--ssh-config",
         str(bad)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Bad configuration option" in lines[0], proc.stderr


def _private_ssh_dir_works() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "true"], capture_output=True).returncode == 0


def test_relative_include_in_the_users_own_config(sshd, client_key, tmp_path):
    """OpenSSH reads ~/.ssh/config from the passwd home (not $HOME) and resolves a relative
    Include against ~/.ssh: the CLI runs in a private mount namespace where a throw-away .ssh
    folder is bind-mounted over the real one (nobody else sees it)."""
    if not _private_ssh_dir_works():
        pytest.skip("needs `unshare -m` (a private mount namespace) to give ssh a throw-away "
                    "~/.ssh")
    home = tmp_path / "home"
    dot = home / ".ssh"
    (dot / "lab.d").mkdir(parents=True)
    _key_as(client_key, dot / "lab_key")
    (dot / "known_hosts_lab").write_text(sshd.host_key_line())
    (dot / "config").write_text("Include lab.d/*.conf\n")  # relative: ~/.ssh/lab.d/*.conf
    (dot / "lab.d" / "box.conf").write_text(
        f"Host incbox\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
        "  IdentityFile ~/.ssh/lab_key\n  UserKnownHostsFile ~/.ssh/known_hosts_lab\n")
    real = Path(pwd.getpwuid(os.getuid()).pw_dir)
    target = real / ".ssh" if (real / ".ssh").is_dir() else real
    source = dot if target.name == ".ssh" else home
    script = (f"mount --bind {source} {target} && exec {sys.executable} -m edgekit.cli.main "
              "devices probe incbox --json")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "PYTHONPATH": str(REPO),
                                            "HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] and doc["device"] == "incbox"


# -- without the OpenSSH client ------------------------------------------------------------------

@pytest.fixture
def no_ssh_client(tmp_path, monkeypatch):
    """A PATH with everything but `ssh`: edgekit falls back to paramiko's parser."""
    bin_dir = tmp_path / "bin-without-ssh"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    assert shutil.which("ssh") is None


def test_without_ssh_the_fallback_resolves_and_warns_once(sshd, client_key, tmp_path,
                                                          no_ssh_client, caplog):
    cfg = _lab_config(tmp_path, sshd, client_key, include=False)
    with caplog.at_level(logging.WARNING, logger="edgekit.devices.ssh_config"):
        spec = parse_device("lab-box", None, cfg)
        jumped = parse_device("lab-jumped", None, cfg)
    assert (spec.host, spec.port, spec.user) == ("127.0.0.1", sshd.port, "root")
    assert spec.known_hosts == str(tmp_path / "lab_known_hosts")
    assert spec.keys == (str(tmp_path / "keys" / f"127.0.0.1-{sshd.port}.key"),)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "not on PATH" in warnings[0] and "Include" in warnings[0] and str(cfg) in warnings[0]
    assert jumped.proxy_jump == "lab-hop"
    with Device.open(replace_workdir(jumped, tmp_path), ConnectOptions(ssh_config=cfg)) as dev:
        assert dev.probe()["ok"] and dev.transport._hops


def test_without_ssh_an_included_host_is_a_clear_error(sshd, client_key, tmp_path,
                                                       no_ssh_client):
    cfg = _lab_config(tmp_path, sshd, client_key, include=True)
    with pytest.raises(InputError, match="does not support Include") as e:
        parse_device("lab-box", None, cfg)
    assert "'lab-box'" in str(e.value) and "install the OpenSSH client" in str(e.value)
    direct = parse_device(f"root@127.0.0.1:{sshd.port}", None, cfg)  # no alias: still usable
    assert (direct.host, direct.port) == ("127.0.0.1", sshd.port)

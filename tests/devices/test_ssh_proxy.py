"""ProxyJump chains and ProxyCommand, through real sshd jump hosts (see conftest): the device is
the session's sshd, reached through two more sshd that each let one tunnel through
(``PermitOpen``), so a connection that skipped or reordered a hop would be refused."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from conftest_ssh import SshServer, start_sshd

from edgekit.bench import benchmark
from edgekit.devices.device import Device
from edgekit.devices.spec import ConnectOptions, load_inventory, parse_device
from edgekit.errors import DeviceError, HostKeyError

pytestmark = pytest.mark.ssh
FAST = {"runs": 10, "warmup": 1}


@dataclass
class Lab:
    """A board behind two gateways: ``board`` = ``ProxyJump gw1,gw2``."""

    gw1: SshServer  # may open tunnels to gw2 only
    gw2: SshServer  # may open tunnels to the board only
    board: SshServer
    folder: Path
    known: Path  # all three host keys

    def config(self, name: str, board_lines: str, known: Path | None = None) -> Path:
        known = known or self.known
        blocks = "".join(
            f"Host {alias}\n  HostName 127.0.0.1\n  Port {server.port}\n  User root\n"
            f"  IdentityFile {server.user_key}\n  UserKnownHostsFile {known}\n"
            "  BatchMode yes\n" + (board_lines if alias == "board" else "")
            for alias, server in (("board", self.board), ("gw1", self.gw1), ("gw2", self.gw2)))
        path = self.folder / name
        path.write_text(blocks)
        return path


@pytest.fixture(scope="module")
def lab(sshd, client_key, tmp_path_factory):
    gw2 = start_sshd(client_key, alias="gw2", extra_config=f"PermitOpen 127.0.0.1:{sshd.port}\n")
    gw1 = start_sshd(client_key, alias="gw1", extra_config=f"PermitOpen 127.0.0.1:{gw2.port}\n")
    folder = tmp_path_factory.mktemp("lab")
    known = folder / "known_hosts"
    known.write_text(sshd.host_key_line() + gw1.host_key_line() + gw2.host_key_line())
    yield Lab(gw1, gw2, sshd, folder, known)
    gw1.stop()
    gw2.stop()


def _sessions_end(*servers: SshServer, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(s.children() for s in servers):
            return True
        time.sleep(0.1)
    return False


def test_two_hop_proxy_jump_chain(lab, digits, tmp_path):
    cfg = lab.config("chain", "  ProxyJump gw1,gw2\n")
    spec = replace(parse_device("board", None, cfg), workdir=str(tmp_path / "w"))
    assert spec.proxy_jump == "gw1,gw2" and spec.proxy_command is None
    connect = ConnectOptions(ssh_config=cfg)
    with Device.open(spec, connect) as dev:
        assert dev.probe()["ok"]
        # One session on each gateway while the device is open (PermitOpen: gw1 -> gw2 -> board)
        assert len(lab.gw1.children()) == 1 and len(lab.gw2.children()) == 1
        hops = dev.transport._hops
        assert [h.name for h in hops] == ["gw1", "gw2"]
    assert _sessions_end(lab.gw1, lab.gw2)  # closing the device closed every hop
    assert all(h.client.get_transport() is None for h in hops)
    (r,) = benchmark([digits.tflite_int8], devices=[spec], connect=connect,
                     eval=digits.eval_npz, **FAST)
    assert r.ok, r.error
    assert r.metrics["accuracy"]["top1"] > 0.8
    assert _sessions_end(lab.gw1, lab.gw2)


def test_hops_in_the_wrong_order_are_refused_by_the_gateway(lab, tmp_path):
    cfg = lab.config("reversed", "  ProxyJump gw2,gw1\n")
    spec = replace(parse_device("board", None, cfg), workdir=str(tmp_path / "w"))
    with pytest.raises(DeviceError) as e:
        Device.open(spec, ConnectOptions(ssh_config=cfg, connect_timeout=5, retries=0))
    msg = str(e.value)
    assert "\n" not in msg and "gw2" in msg and "gw1" in msg, msg
    assert _sessions_end(lab.gw1, lab.gw2)


def test_a_hop_with_an_unknown_host_key_is_refused_naming_it(lab, tmp_path):
    known = tmp_path / "known_hosts"  # gw2's key missing
    known.write_text(lab.board.host_key_line() + lab.gw1.host_key_line())
    cfg = lab.config("unknown-gw2", "  ProxyJump gw1,gw2\n", known=known)
    spec = replace(parse_device("board", None, cfg), workdir=str(tmp_path / "w"))
    with pytest.raises(HostKeyError) as e:
        Device.open(spec, ConnectOptions(ssh_config=cfg, connect_timeout=5))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("jump host gw2 (hop 2 of 2 to board): unknown host key"), msg
    assert f"[127.0.0.1]:{lab.gw2.port}" in msg
    assert known.read_text().count("\n") == 2  # nothing recorded without --trust-new-host
    assert _sessions_end(lab.gw1, lab.gw2)  # gw1's session did not leak


def test_proxy_command_ssh_w_through_a_gateway(lab, tmp_path):
    cfg = lab.config("pc", "")
    cfg.write_text(cfg.read_text().replace(
        "Host gw1", f"Host board\n  ProxyCommand ssh -F {cfg} -W %h:%p gw2\nHost gw1", 1))
    spec = replace(parse_device("board", None, cfg), workdir=str(tmp_path / "w"))
    # ssh -G prints the tokens unexpanded: edgekit expands them as ssh would
    assert spec.proxy_command == f"ssh -F {cfg} -W 127.0.0.1:{lab.board.port} gw2"
    assert spec.proxy_jump is None
    with Device.open(spec, ConnectOptions(ssh_config=cfg)) as dev:
        assert dev.probe()["ok"]
        assert len(lab.gw2.children()) == 1 and not lab.gw1.children()  # via gw2's sshd
        process = dev.transport._proxy.process
    assert process.poll() is not None  # the ssh -W process ended with the device
    assert _sessions_end(lab.gw2)


def test_proxy_command_tokens(lab, tmp_path):
    cfg = lab.config("tokens", "  ProxyCommand printf '%%s' %r@%h:%p %n %%\n")
    spec = parse_device("board", None, cfg)
    assert spec.proxy_command == f"printf '%s' root@127.0.0.1:{lab.board.port} board %"
    inv = tmp_path / "devices.toml"  # the inventory's command: the same tokens
    inv.write_text('[devices.pi]\nhost = "board"\nproxy_command = "nc %h %p # %n"\n')
    pi = parse_device("pi", load_inventory(inv), cfg)
    assert pi.proxy_command == f"nc 127.0.0.1 {lab.board.port} # board"


def test_a_failing_proxy_command_is_one_line_with_its_stderr(lab, tmp_path):
    cfg = lab.config("badpc", "  ProxyCommand sh -c 'echo connecting to %h >&2; "
                              "echo no route to the lab gateway >&2; exit 3'\n")
    spec = replace(parse_device("board", None, cfg), workdir=str(tmp_path / "w"))
    started = time.monotonic()
    with pytest.raises(DeviceError) as e:
        Device.open(spec, ConnectOptions(ssh_config=cfg, connect_timeout=20))
    msg = str(e.value)
    assert time.monotonic() - started < 10  # not retried until the connect timeout
    assert "\n" not in msg
    assert "ProxyCommand for board" in msg and "exited with code 3" in msg, msg
    assert msg.endswith("connecting to 127.0.0.1 | no route to the lab gateway; run it by hand "
                        "(or `ssh -v` the alias) to see why"), msg


def test_a_proxy_command_that_never_answers_times_out(lab, tmp_path):
    cfg = lab.config("hang", "  ProxyCommand sleep 60\n")
    spec = replace(parse_device("board", None, cfg), workdir=str(tmp_path / "w"))
    started = time.monotonic()
    with pytest.raises(DeviceError) as e:
        Device.open(spec, ConnectOptions(ssh_config=cfg, connect_timeout=2, retries=0))
    assert time.monotonic() - started < 8
    msg = str(e.value)
    assert "\n" not in msg and "through ProxyCommand `sleep 60`" in msg and "within 2 s" in msg
    assert "exited" not in msg  # it was stopped by us, not a failure of its own


def test_without_ssh_the_fallback_parser_gives_the_chain_and_the_command(lab, tmp_path,
                                                                         monkeypatch):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ps").symlink_to(shutil.which("ps"))  # for SshServer.children()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no `ssh`: paramiko's parser reads it
    cfg = lab.config("fallback-chain", "  ProxyJump gw1,gw2\n")
    spec = replace(parse_device("board", None, cfg), workdir=str(tmp_path / "w"))
    assert spec.proxy_jump == "gw1,gw2"
    with Device.open(spec, ConnectOptions(ssh_config=cfg)) as dev:
        assert dev.transport.run(["true"]).ok
        assert len(lab.gw1.children()) == 1 and len(lab.gw2.children()) == 1
    assert _sessions_end(lab.gw1, lab.gw2)
    cfg = lab.config("fallback-pc", "  ProxyCommand nc %h %p %r\n")
    assert parse_device("board", None, cfg).proxy_command == (
        f"nc 127.0.0.1 {lab.board.port} root")


def test_a_jump_host_config_that_loops_is_one_error(lab, tmp_path):
    cfg = lab.config("loop", "  ProxyJump gw1\n")
    cfg.write_text(cfg.read_text().replace("Host gw1\n", "Host gw1\n  ProxyJump gw1\n", 1))
    spec = replace(parse_device("board", None, cfg), workdir=str(tmp_path / "w"))
    with pytest.raises(DeviceError, match="nest deeper than 8") as e:
        Device.open(spec, ConnectOptions(ssh_config=cfg, connect_timeout=5))
    assert "\n" not in str(e.value) and str(e.value).startswith("jump host gw1 ")

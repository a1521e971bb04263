"""SSHTransport: with ``ssh_proxy.py``, the only module that imports paramiko.

Security defaults follow OpenSSH: host keys are checked against known_hosts; an unknown host is
refused (its fingerprint is in the message) unless ``trust_new_host`` (accept-new) is set, and a
changed key is always refused. Keys come from the spec / ssh_config and from ssh-agent.

Like ``ssh``, the connection goes through ProxyJump hops (each hop resolved through the
ssh_config and its host key checked, the next hop's connection a ``direct-tcpip`` channel of the
previous one) or through a ProxyCommand process.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import os
import select
import shlex
import socket
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import paramiko

from edgekit.devices.spec import ConnectOptions, DeviceSpec, parse_device
from edgekit.devices.ssh_proxy import ProxyProcess, split_jumps
from edgekit.devices.transport import Transport
from edgekit.errors import DeviceError, HostKeyError, InputError

log = logging.getLogger(__name__)

#: How deep jump hosts of jump hosts may nest (the first hop's own ProxyJump, and so on).
MAX_JUMP_DEPTH = 8


class _ParamikoOnlyWhenDebugging(logging.Filter):
    """paramiko's transport thread logs each failed handshake as an ERROR traceback (22 lines
    for a port that answers with something other than SSH), while the connect call raises the
    same failure to us, which we report in one line. Its records pass only at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


# Logger filters are not inherited: each logger paramiko writes to gets one.
for _name in ("paramiko", "paramiko.transport", "paramiko.transport.sftp", "paramiko.sftp"):
    if not any(isinstance(f, _ParamikoOnlyWhenDebugging)
               for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(_ParamikoOnlyWhenDebugging())


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        raise HostKeyError(
            f"unknown host key for {hostname}: {key.get_name()} {fingerprint(key)} is not in "
            f"{self.known_hosts}; if this fingerprint is the device's, re-run with "
            "--trust-new-host to record it (or add it with ssh-keyscan)")


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        log.warning("trusting new host key for %s: %s %s (recorded in %s)", hostname,
                    key.get_name(), fingerprint(key), self.known_hosts)
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(self.known_hosts, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class SSHTransport(Transport):
    """A device reached over SSH (paramiko), with SFTP for files.

    Args:
        spec: the device (host, user, port, keys, proxy_jump, proxy_command...).
        options: timeouts, retries, known_hosts and host-key policy.
        via: the jump host to tunnel through instead of the spec's own proxy settings (the
            previous hop of a ProxyJump chain; its owner closes it).

    Raises:
        HostKeyError: unknown (without trust_new_host) or changed host key, of the device or
            of a jump host (named).
        DeviceError: unreachable host, refused connection, failed authentication, timeout, a
            jump host that fails (named) or a ProxyCommand that exits.
        InputError: a jump host that the ssh_config cannot resolve.
    """

    def __init__(self, spec: DeviceSpec, options: Optional[ConnectOptions] = None, *,
                 via: Optional[SSHTransport] = None, _depth: int = 0):
        self.spec = spec
        self.options = options or ConnectOptions()
        self.name = spec.name
        self._via = via
        self._depth = _depth  # jump hosts of jump hosts: a config that loops must end
        self._hops: list[SSHTransport] = []  # the jump hosts this connection owns, first first
        self._proxy: Optional[ProxyProcess] = None
        self._sftp: Optional[paramiko.SFTPClient] = None
        self._home: Optional[str] = None
        self.client = self._connect()

    # -- connection ---------------------------------------------------------------------------
    @property
    def known_hosts(self) -> Path:
        chosen = self.options.known_hosts or self.spec.known_hosts
        if chosen:
            return Path(os.path.expanduser(str(chosen)))
        return Path.home() / ".ssh" / "known_hosts"

    def _connect(self) -> paramiko.SSHClient:
        spec, opts = self.spec, self.options
        port = spec.port or 22
        user = spec.user or getpass.getuser()  # OpenSSH's default: the local user name
        deadline = time.monotonic() + opts.connect_timeout
        if self._via is None and spec.proxy_jump:
            self._hops = self._open_hops()
        via = self._hops[-1] if self._hops else self._via
        attempt = 0
        while True:
            client = paramiko.SSHClient()
            if self.known_hosts.is_file():
                client.load_host_keys(str(self.known_hosts))
            policy = _AcceptNew if opts.trust_new_host else _RefuseUnknown
            client.set_missing_host_key_policy(policy(self.known_hosts))
            left = max(0.5, deadline - time.monotonic())
            try:
                sock = self._proxy_sock(via, port, left)
                client.connect(
                    spec.host, port=port, username=user, key_filename=list(spec.keys) or None,
                    allow_agent=True, look_for_keys=not spec.keys, timeout=left,
                    banner_timeout=left, auth_timeout=opts.auth_timeout, sock=sock,
                    channel_timeout=left)
            except (DeviceError, InputError):  # host key, a jump host, the ProxyCommand
                client.close()
                self._close_tunnels()
                raise
            except paramiko.BadHostKeyException as e:
                client.close()
                self._close_tunnels()
                raise HostKeyError(
                    f"host key for {spec.host}:{port} has CHANGED: got {e.key.get_name()} "
                    f"{fingerprint(e.key)}, known_hosts ({self.known_hosts}) has "
                    f"{fingerprint(e.expected_key)}. This may be an attack, or the device was "
                    f"reinstalled; if you are sure, remove the old line with "
                    f"`ssh-keygen -R '{_known_hosts_name(spec.host, port)}'`") from e
            except paramiko.AuthenticationException as e:
                client.close()
                self._close_tunnels()
                keys = ", ".join(spec.keys) or "default keys"
                raise DeviceError(
                    f"authentication as {user} on {spec.host}:{port} failed ({e}); offered "
                    f"{keys} and ssh-agent: check the key (--device inventory `key`, ssh_config "
                    "IdentityFile) and the device's authorized_keys") from e
            except (OSError, EOFError, paramiko.SSHException) as e:
                client.close()
                if self._proxy is not None and self._proxy.ended_early():
                    failure = self._proxy.failure(spec.name)  # ssh does not retry it either
                    self._close_tunnels()
                    raise failure from e
                attempt += 1
                wait = min(2.0 ** (attempt - 1) * 0.25, 2.0)
                if attempt > opts.retries or time.monotonic() + wait >= deadline:
                    self._close_tunnels()
                    through = (f" through jump host {via.name}" if via is not None else
                               f" through ProxyCommand `{spec.proxy_command}`"
                               if spec.proxy_command else "")
                    raise DeviceError(
                        f"cannot connect to {spec.name} ({user}@{spec.host}:{port}){through} "
                        f"after {attempt} attempt(s) within {opts.connect_timeout:g} s: "
                        f"{_reason(e)}") from e
                log.info("connect to %s failed (%s); retrying in %.2f s", spec.name, e, wait)
                time.sleep(wait)
                continue
            transport = client.get_transport()
            if opts.keepalive:
                transport.set_keepalive(int(opts.keepalive))
            return client

    def _open_hops(self) -> list[SSHTransport]:
        """Connect the ProxyJump chain, first hop first, as ``ssh -J a,b`` does: each hop is
        resolved through the ssh_config; the first keeps its own ProxyJump / ProxyCommand, each
        later one is reached through the hop before it."""
        hops = split_jumps(self.spec.proxy_jump)
        if self._depth >= MAX_JUMP_DEPTH:
            raise DeviceError(f"{self.spec.name}: jump hosts of jump hosts nest deeper than "
                              f"{MAX_JUMP_DEPTH} (ProxyJump {self.spec.proxy_jump}): does the "
                              "ssh_config give a jump host a ProxyJump that leads back to it?")
        opened: list[SSHTransport] = []
        try:
            for i, text in enumerate(hops):
                where = (f"jump host {text} (hop {i + 1} of {len(hops)} to {self.spec.name})"
                         if len(hops) > 1 else f"jump host {text} (to {self.spec.name})")
                try:
                    hop = parse_device(text, ssh_config=self.options.ssh_config)
                    if opened:
                        hop = replace(hop, proxy_jump=None, proxy_command=None)
                    opened.append(SSHTransport(hop, self.options,
                                               via=opened[-1] if opened else None,
                                               _depth=self._depth + 1))
                except (DeviceError, InputError) as e:  # HostKeyError is a DeviceError
                    if getattr(e, "hop_named", False):  # a hop of a hop: named already
                        raise
                    named = type(e)(f"{where}: {e}")
                    named.hop_named = True
                    raise named from e
        except BaseException:
            for hop in reversed(opened):
                hop.close()
            raise
        return opened

    def _proxy_sock(self, via: Optional[SSHTransport], port: int, timeout: float):
        """What SSH runs over: a channel of the last jump host, a ProxyCommand process, or
        None (paramiko connects directly)."""
        host = self.spec.host
        if via is not None:
            try:
                return via.client.get_transport().open_channel(
                    "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise DeviceError(f"jump host {via.name} could not reach {host}:{port} for "
                                  f"{self.spec.name}: {_reason(e)}") from e
        if self.spec.proxy_command:
            if self._proxy is not None:  # a retry: the previous attempt's process goes
                self._proxy.close()
            self._proxy = ProxyProcess(self.spec.proxy_command)
            return self._proxy
        return None

    def _close_tunnels(self) -> None:
        if self._proxy is not None:
            self._proxy.close()
        for hop in reversed(self._hops):
            hop.close()
        self._proxy, self._hops = None, []

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
                self._sftp.get_channel().settimeout(self.options.command_timeout)
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise DeviceError(f"{self.name}: cannot open SFTP: {_reason(e)}") from e
        return self._sftp

    # -- commands -----------------------------------------------------------------------------
    def _run(self, argv, timeout):
        timeout = self.options.command_timeout if timeout is None else timeout
        command = shlex.join(argv)
        try:
            chan = self.client.get_transport().open_session(timeout=self.options.connect_timeout)
            chan.exec_command(command)
            chan.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError, AttributeError) as e:
            raise DeviceError(f"{self.name}: lost the connection starting {argv[0]}: "
                              f"{_reason(e)}") from e
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        try:
            while True:
                while chan.recv_ready():
                    out += chan.recv(1 << 16)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                if chan.exit_status_ready() and not chan.recv_ready() \
                        and not chan.recv_stderr_ready():
                    break
                if chan.closed and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeviceError(f"{self.name}: {argv[0]} did not finish within {timeout:g} s;"
                                      " abandoned")
                if not self.client.get_transport().is_active():
                    raise DeviceError(f"{self.name}: connection lost while running {argv[0]}")
                select.select([chan], [], [], min(left, 1.0))
            code = chan.recv_exit_status() if chan.exit_status_ready() else -1
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise DeviceError(f"{self.name}: connection lost while running {argv[0]}: "
                              f"{_reason(e)}") from e
        finally:
            chan.close()
        return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    # -- files --------------------------------------------------------------------------------
    def put(self, local, remote, progress=None):
        size = os.path.getsize(local)
        try:
            self._sftp_client().put(str(local), remote, callback=progress, confirm=True)
        except (OSError, EOFError, paramiko.SSHException) as e:
            self._sftp = None
            raise DeviceError(f"{self.name}: upload of {local} to {remote} failed: "
                              f"{_reason(e)}") from e
        return size

    def get(self, remote, local):
        try:
            self._sftp_client().get(remote, str(local))
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise DeviceError(f"{self.name}: download of {remote} failed: {_reason(e)}") from e

    def home(self):
        if self._home is None:
            try:
                self._home = self._sftp_client().normalize(".")
            except (OSError, EOFError, paramiko.SSHException) as e:
                raise DeviceError(f"{self.name}: cannot find the home folder: {_reason(e)}") from e
        return self._home

    def exists(self, remote):
        try:
            return stat.S_ISREG(self._sftp_client().stat(remote).st_mode)
        except FileNotFoundError:
            return False
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise DeviceError(f"{self.name}: cannot stat {remote}: {_reason(e)}") from e

    def remove(self, remote):
        try:
            self._sftp_client().remove(remote)
        except FileNotFoundError:
            pass
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise DeviceError(f"{self.name}: cannot remove {remote}: {_reason(e)}") from e

    def listdir(self, remote):
        try:
            return self._sftp_client().listdir(remote)
        except FileNotFoundError:
            return []
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise DeviceError(f"{self.name}: cannot list {remote}: {_reason(e)}") from e

    def makedirs(self, remote):
        sftp = self._sftp_client()
        prefix = "/" if remote.startswith("/") else ""
        done: list[str] = []
        for part in [p for p in remote.split("/") if p]:
            done.append(part)
            path = prefix + "/".join(done)
            try:
                sftp.stat(path)
            except FileNotFoundError:
                try:
                    sftp.mkdir(path)
                except OSError as e:
                    # Another connection (a second bench on the same device) may have
                    # created it between our stat and mkdir; SFTP only says "Failure".
                    if not self._is_dir(sftp, path):
                        raise DeviceError(f"{self.name}: cannot create {path}: {e}") from e
            except (OSError, EOFError, paramiko.SSHException) as e:
                raise DeviceError(f"{self.name}: cannot create {path}: {_reason(e)}") from e

    @staticmethod
    def _is_dir(sftp, path):
        try:
            return stat.S_ISDIR(sftp.stat(path).st_mode or 0)
        except (OSError, EOFError, paramiko.SSHException):
            return False

    def read_text(self, remote):
        try:
            with self._sftp_client().open(remote, "r") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return None
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise DeviceError(f"{self.name}: cannot read {remote}: {_reason(e)}") from e

    def write_text(self, remote, text):
        try:
            with self._sftp_client().open(remote, "w") as f:
                f.write(text.encode())
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise DeviceError(f"{self.name}: cannot write {remote}: {_reason(e)}") from e

    def close(self):
        """Close the session, then its ProxyCommand or its jump hosts, last hop first."""
        for closer in (self._sftp, self.client, self._proxy, *reversed(self._hops)):
            if closer is not None:
                try:
                    closer.close()
                except (OSError, EOFError, paramiko.SSHException) as e:
                    log.debug("%s: close: %s", self.name, e)
        self._sftp, self._proxy, self._hops = None, None, []


def _reason(e: BaseException) -> str:
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused (is sshd running and the port right?)"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, socket.gaierror):
        return f"unknown host ({e})"
    if isinstance(e, paramiko.SSHException) and str(e) == "No existing session":
        return "no SSH server answered in time"  # what paramiko says after a banner timeout
    if isinstance(e, paramiko.ChannelException):
        return f"the jump host refused the tunnel ({e.text})"
    if isinstance(e, EOFError):
        return "connection closed by the device"
    text = str(e) or type(e).__name__
    return text

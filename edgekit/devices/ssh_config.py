"""What the OpenSSH client config says about one host.

With the OpenSSH client installed, the host is resolved by ``ssh -G HOST`` itself, so every
file and rule OpenSSH reads applies exactly as it would to ``ssh HOST``: ``/etc/ssh/ssh_config``,
``Include`` (relative and glob), ``Match``, ``%``-tokens, first-value-wins, ``ProxyJump``,
``CanonicalizeHostname``. Without it, paramiko's parser reads the user's file, with the gaps
named in ``FALLBACK_GAPS`` (warned about once per config file).
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgekit.errors import DeviceError, InputError

log = logging.getLogger(__name__)

#: The OpenSSH client edgekit asks; looked up on PATH at each call.
SSH_CLIENT = "ssh"
#: Seconds ``ssh -G`` may take (CanonicalizeHostname and ``Match exec`` may do real work).
SSH_G_TIMEOUT = 20.0
#: What paramiko's parser (the fallback) does not read the way OpenSSH does.
FALLBACK_GAPS = ("Include, the system-wide /etc/ssh/ssh_config, Match exec (without the "
                 "`invoke` package), Match user/%r with the --device user, and %-tokens "
                 "other than %h in HostName and a few in IdentityFile (none in "
                 "UserKnownHostsFile, no %p)")
_INCLUDE = re.compile(r"^\s*include[\s=]", re.IGNORECASE | re.MULTILINE)
_warned_fallback: set[str] = set()


@dataclass(frozen=True)
class HostConfig:
    """One host as the ssh_config resolves it.

    Attributes:
        hostname: the address to connect to (HostName, else the alias itself).
        user, port: the login (None: not given by the config).
        identity_files: IdentityFile entries that exist on this machine, in order.
        proxy_jump: the ProxyJump value, ``[user@]host[:port]`` hops separated by commas
            (None: direct).
        proxy_command: the ProxyCommand with its %-tokens expanded (None: unset; OpenSSH keeps
            whichever of ProxyJump and ProxyCommand comes first, so at most one is set).
        known_hosts: the first UserKnownHostsFile.
        reader: ``"ssh -G"`` or ``"paramiko"`` (the fallback parser).
    """

    hostname: str
    user: Optional[str] = None
    port: Optional[int] = None
    identity_files: tuple[str, ...] = ()
    proxy_jump: Optional[str] = None
    proxy_command: Optional[str] = None
    known_hosts: Optional[str] = None
    reader: str = "ssh -G"


def resolve_host(host: str, ssh_config: Optional[Path] = None, user: Optional[str] = None,
                 port: Optional[int] = None) -> HostConfig:
    """Resolve ``host`` (an alias or a host name) through the OpenSSH client config.

    Args:
        host: what the user named, without ``user@`` and ``:port``.
        ssh_config: the config file (``ssh -F``); None: the files OpenSSH reads by default.
        user, port: given on the command line or inventory (``ssh -l`` / ``-p``), so that
            ``Match user`` and ``%r`` / ``%p`` see them.

    Returns:
        the HostConfig.

    Raises:
        InputError: the config is missing or OpenSSH refuses it (its message is quoted).
        DeviceError: ``ssh -G`` did not answer within ``SSH_G_TIMEOUT``.
    """
    if host.startswith("-"):
        raise InputError(f"device host {host!r} starts with '-': not a host name")
    if ssh_config is not None and not Path(ssh_config).is_file():
        raise InputError(f"ssh config {ssh_config} does not exist")
    ssh = shutil.which(SSH_CLIENT)
    if ssh is None:
        return _paramiko_lookup(host, ssh_config)
    return _ssh_g(ssh, host, ssh_config, user, port)


# -- ssh -G -------------------------------------------------------------------------------------

def _ssh_g(ssh: str, host: str, ssh_config: Optional[Path], user: Optional[str],
           port: Optional[int]) -> HostConfig:
    argv = [ssh, "-T", "-G"]
    if ssh_config is not None:
        argv += ["-F", str(ssh_config)]
    if user:
        argv += ["-l", user]
    if port:
        argv += ["-p", str(port)]
    argv += ["--", host]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=SSH_G_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise DeviceError(f"`ssh -G {host}` did not answer within {SSH_G_TIMEOUT:g} s (a slow "
                          "DNS lookup for CanonicalizeHostname, or a Match exec command?)") from e
    except OSError as e:
        raise DeviceError(f"cannot run {ssh}: {e}") from e
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        where = f" ({ssh_config})" if ssh_config else ""
        raise InputError(f"OpenSSH cannot resolve host {host!r} with its config{where}: "
                         f"{lines[0] if lines else f'ssh -G exited {proc.returncode}'}")
    values: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        values.setdefault(key.lower(), []).append(value.strip())

    def first(key: str) -> Optional[str]:
        value = (values.get(key) or [None])[0]
        return None if value is None or value.lower() == "none" else value

    hostname = first("hostname") or host
    resolved_user = first("user")
    resolved_port = int(first("port") or 22)
    jump = first("proxyjump")
    tokens = _tokens(host, hostname, resolved_user or getpass.getuser(), resolved_port,
                     jump or "", first("hostkeyalias"))
    keys = [_expand(k, tokens) for k in values.get("identityfile", []) if k.lower() != "none"]
    known = (first("userknownhostsfile") or "").split()
    command = first("proxycommand")
    if command is not None:
        command = expand_proxy_command(command, host, hostname, resolved_port,
                                       resolved_user or getpass.getuser())
    return HostConfig(hostname=hostname, user=resolved_user, port=resolved_port,
                      identity_files=tuple(k for k in keys if os.path.isfile(k)),
                      proxy_jump=jump, proxy_command=command,
                      known_hosts=_expand(known[0], tokens) if known else None,
                      reader="ssh -G")


def expand_proxy_command(command: str, original: str, hostname: str, port: int,
                         user: str) -> str:
    """Expand the %-tokens ProxyCommand accepts (ssh_config(5): ``%%``, ``%h``, ``%n``, ``%p``,
    ``%r``), which OpenSSH 9.2's ``ssh -G`` prints unexpanded.

    Args:
        command: the ProxyCommand as the config gives it.
        original: the host name as the user typed it (``%n``).
        hostname, port, user: the resolved HostName, Port and User (``%h``, ``%p``, ``%r``).

    Returns:
        the command to run.

    Raises:
        InputError: a token ProxyCommand does not accept (OpenSSH refuses it too).
    """
    tokens = {"%": "%", "h": hostname, "n": original, "p": str(port), "r": user}

    def one(m: re.Match) -> str:
        if m.group(1) not in tokens:
            raise InputError(f"ProxyCommand {command!r} for {original}: unknown token "
                             f"%{m.group(1)} (ProxyCommand accepts %%, %h, %n, %p and %r)")
        return tokens[m.group(1)]

    return re.sub(r"%(.?)", one, command)


def _home() -> str:
    """The home OpenSSH expands ``~`` to: the passwd entry's, not $HOME."""
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return os.path.expanduser("~")


def _tokens(original: str, hostname: str, user: str, port: int, jump: str,
            host_key_alias: Optional[str]) -> dict[str, str]:
    """OpenSSH's %-tokens for IdentityFile (ssh_config(5) TOKENS), which ``ssh -G`` prints
    unexpanded (OpenSSH expands them only when it loads the keys)."""
    local = socket.gethostname()
    tokens = {"%": "%", "d": _home(), "h": hostname, "i": str(os.getuid()), "j": jump,
              "k": host_key_alias or original, "L": local.split(".")[0], "l": local,
              "n": original, "p": str(port), "r": user, "u": getpass.getuser()}
    tokens["C"] = hashlib.sha1((tokens["l"] + hostname + tokens["p"] + user + jump).encode()
                               ).hexdigest()
    return tokens


def _expand(value: str, tokens: dict[str, str]) -> str:
    if value.startswith("~/") or value == "~":
        value = _home() + value[1:]
    return re.sub(r"%(.)", lambda m: tokens.get(m.group(1), m.group(0)), value)


# -- fallback: paramiko's parser ----------------------------------------------------------------

def _paramiko_lookup(host: str, ssh_config: Optional[Path]) -> HostConfig:
    import paramiko  # SSHConfig is a plain parser; paramiko is a dependency anyway

    path = Path(ssh_config) if ssh_config else Path.home() / ".ssh" / "config"
    if not path.is_file():
        return HostConfig(hostname=host, reader="paramiko")
    try:
        text = path.read_text()
        cfg = paramiko.SSHConfig.from_text(text)
        found = cfg.lookup(host)
    except (OSError, UnicodeDecodeError, paramiko.ssh_exception.ConfigParseError) as e:
        raise InputError(f"cannot read ssh config {path}: {e}") from e
    if str(path) not in _warned_fallback:
        _warned_fallback.add(str(path))
        log.warning("the OpenSSH client (%s) is not on PATH: reading %s with paramiko's parser, "
                    "which does not read %s; install the OpenSSH client for OpenSSH's own "
                    "resolution", SSH_CLIENT, path, FALLBACK_GAPS)
    if found.get("hostname", host) == host and _INCLUDE.search(text) and not _resolves(host):
        raise InputError(
            f"host {host!r} is not defined in {path}, which pulls in other files with Include: "
            "paramiko's parser (used because the OpenSSH client `ssh` is not on PATH) does not "
            "support Include; install the OpenSSH client, or give the device as "
            "user@host[:port] or in the inventory")
    keys = tuple(os.path.expanduser(k) for k in found.get("identityfile", []))
    known = (found.get("userknownhostsfile") or "").split()
    return HostConfig(
        hostname=found.get("hostname", host), user=found.get("user"),
        port=int(found["port"]) if "port" in found else None,
        identity_files=tuple(k for k in keys if os.path.isfile(k)),
        proxy_jump=None if (found.get("proxyjump") or "none").lower() == "none"
        else found["proxyjump"],
        # paramiko's lookup expands ProxyCommand's %-tokens itself
        proxy_command=None if (found.get("proxycommand") or "none").lower() == "none"
        else found["proxycommand"],
        known_hosts=os.path.expanduser(known[0]) if known else None, reader="paramiko")


def _resolves(host: str) -> bool:
    """Whether ``host`` is an address or a name DNS knows (then it needs no Host block)."""
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return True

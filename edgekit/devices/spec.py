"""Device specs: what ``--device`` names, resolved from ``local``, an inventory file
(``devices.toml``), ``user@host[:port]`` or an ``~/.ssh/config`` alias.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import tomllib

from edgekit.devices.ssh_config import expand_proxy_command, resolve_host
from edgekit.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_WORKDIR = "~/.cache/edgekit"
INVENTORY_NAME = "devices.toml"
_INVENTORY_KEYS = {"host", "user", "port", "key", "python", "workdir", "tags", "proxy_jump",
                   "proxy_command"}
_USER_HOST_PORT = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s]+)(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class ConnectOptions:
    """How edgekit talks to SSH devices. Defaults are the safe ones.

    Attributes:
        trust_new_host: accept (and record in known_hosts) a host key never seen before, like
            OpenSSH's ``StrictHostKeyChecking=accept-new``. A changed key is always refused.
        ssh_config: the OpenSSH client config to read aliases from, as ``ssh -F`` (default:
            the files ``ssh`` reads).
        known_hosts: known_hosts file (default: the config's UserKnownHostsFile, else
            ``~/.ssh/known_hosts``).
        connect_timeout: seconds for the whole connect, retries included.
        auth_timeout: seconds for authentication.
        command_timeout: default seconds for one remote command.
        keepalive: seconds between SSH keepalive packets (0: off).
        retries: connect attempts after the first one, with exponential backoff.
        labgrid: ``HOST[:PORT]`` of the labgrid coordinator for ``labgrid:PLACE`` devices
            (else ``LG_COORDINATOR``, else devices.toml's ``[labgrid] coordinator``).
        lock_timeout: seconds to wait for a labgrid place someone else holds.
        power_cycle_on_loss: a labgrid place's board whose agent is lost is power-cycled
            through labgrid's power driver (the place needs a power resource), then the lost
            command runs again, once.
    """

    trust_new_host: bool = False
    ssh_config: Optional[Path] = None
    known_hosts: Optional[Path] = None
    connect_timeout: float = 15.0
    auth_timeout: float = 15.0
    command_timeout: float = 900.0
    keepalive: float = 15.0
    retries: int = 2
    labgrid: Optional[str] = None
    lock_timeout: float = 600.0
    power_cycle_on_loss: bool = False


@dataclass(frozen=True)
class DeviceSpec:
    """One device to benchmark on.

    Attributes:
        name: how results name it (the inventory name, alias, ``user@host:port`` or ``local``).
        host: hostname or address (``None`` for the local device).
        user, port: SSH login; ``None`` means the ssh_config's value or the SSH default.
        keys: private key files to offer (plus ssh-agent's keys).
        python: the device's Python interpreter (a venv made by ``devices setup`` wins).
        workdir: cache folder on the device (``~`` is the remote home).
        tags: free labels from the inventory.
        proxy_jump: ``[user@]host[:port]`` jump hosts to tunnel through, comma-separated and
            first hop first, as OpenSSH's ProxyJump (from ssh_config or inventory).
        proxy_command: a command whose stdin/stdout reach the device's sshd, as OpenSSH's
            ProxyCommand, %-tokens expanded (used only without ``proxy_jump``).
    """

    name: str
    host: Optional[str] = None
    user: Optional[str] = None
    port: Optional[int] = None
    keys: tuple[str, ...] = ()
    python: str = "python3"
    workdir: str = DEFAULT_WORKDIR
    tags: tuple[str, ...] = ()
    proxy_jump: Optional[str] = None
    proxy_command: Optional[str] = None
    known_hosts: Optional[str] = None  # from the ssh_config's UserKnownHostsFile
    explicit_python: bool = False  # python given by the user: do not switch to the setup venv
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def is_local(self) -> bool:
        return self.host is None

    @property
    def address(self) -> str:
        return f"{self.user or '?'}@{self.host}:{self.port or 22}"


def load_inventory(path) -> dict[str, DeviceSpec]:
    """Devices from a TOML inventory.

    The file holds one table per device (``host = "local"`` is this machine)::

        [devices.pi4]
        host = "192.168.1.20"
        user = "pi"
        port = 22
        key = "~/.ssh/id_ed25519"
        python = "/usr/bin/python3"
        workdir = "~/.cache/edgekit"
        tags = ["arm64", "board"]

    Args:
        path: the TOML file.

    Returns:
        {name: DeviceSpec}.

    Raises:
        InputError: unreadable file, or a device without ``host`` / with unknown keys.
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"cannot read device inventory {path}: {e}") from e
    devices = doc.get("devices", {})
    if not isinstance(devices, dict):
        raise InputError(f"{path}: expected [devices.NAME] tables, got {type(devices).__name__}")
    out = {}
    for name, entry in devices.items():
        unknown = set(entry) - _INVENTORY_KEYS
        if unknown:
            raise InputError(f"{path}: device {name!r} has unknown keys {sorted(unknown)}; "
                             f"allowed: {sorted(_INVENTORY_KEYS)}")
        if "host" not in entry:
            raise InputError(f"{path}: device {name!r} has no host")
        local = entry["host"] == "local"  # this machine, with its own python / workdir
        key = entry.get("key")
        keys = tuple(os.path.expanduser(k) for k in ([key] if isinstance(key, str) else key or []))
        out[name] = DeviceSpec(
            name=name, host=None if local else str(entry["host"]), user=entry.get("user"),
            port=int(entry["port"]) if "port" in entry else None, keys=keys,
            python=entry.get("python", "python3"), workdir=entry.get("workdir", DEFAULT_WORKDIR),
            tags=tuple(entry.get("tags", ())), proxy_jump=entry.get("proxy_jump"),
            proxy_command=entry.get("proxy_command"), explicit_python="python" in entry)
    return out


def default_inventory() -> Optional[Path]:
    """``./devices.toml`` if present, else ``~/.config/edgekit/devices.toml`` if present."""
    for p in (Path.cwd() / INVENTORY_NAME, Path.home() / ".config" / "edgekit" / INVENTORY_NAME):
        if p.is_file():
            return p
    return None


def apply_ssh_config(spec: DeviceSpec, ssh_config: Optional[Path] = None) -> DeviceSpec:
    """Fill HostName, User, Port, IdentityFile, ProxyJump, ProxyCommand, UserKnownHostsFile
    from ssh_config (resolved by OpenSSH itself when installed: ``edgekit.devices.ssh_config``).

    Values already set on ``spec`` (from the command line or inventory) win, as in OpenSSH; a
    jump or proxy command given there replaces both of the config's.

    Raises:
        InputError: the config is missing or OpenSSH refuses it.
    """
    if spec.is_local:
        return spec
    cfg = resolve_host(spec.host, ssh_config, spec.user, spec.port)
    jump, command = cfg.proxy_jump, cfg.proxy_command
    if spec.proxy_jump or spec.proxy_command:
        jump, command = spec.proxy_jump, spec.proxy_command
        if command:
            command = expand_proxy_command(command, spec.host, cfg.hostname,
                                           spec.port or cfg.port or 22,
                                           spec.user or cfg.user or getpass.getuser())
    return replace(
        spec, host=cfg.hostname, user=spec.user or cfg.user, port=spec.port or cfg.port,
        keys=spec.keys or cfg.identity_files, proxy_jump=jump, proxy_command=command,
        known_hosts=spec.known_hosts or cfg.known_hosts)


def parse_device(text: str, inventory: Optional[dict[str, DeviceSpec]] = None,
                 ssh_config: Optional[Path] = None) -> DeviceSpec:
    """Resolve one ``--device`` value.

    Args:
        text: ``local``, an inventory name, ``user@host[:port]``, ``host:port``, an ssh alias, or
            ``labgrid:PLACE`` (a place of a labgrid lab, resolved when it is held).
        inventory: devices from ``load_inventory``.
        ssh_config: OpenSSH client config to consult (default ``~/.ssh/config``).

    Returns:
        a DeviceSpec with the ssh_config applied.

    Raises:
        InputError: an empty or malformed value.
    """
    text = (text or "").strip()
    if not text:
        raise InputError("empty --device value: use `local`, an inventory name, user@host[:port] "
                         "or an ~/.ssh/config alias")
    if text == "local":
        return DeviceSpec(name="local")
    if text.startswith("labgrid:"):  # a place of a labgrid lab: edgekit.devices.lab
        from edgekit.devices.lab.places import place_spec

        return place_spec(text)
    if inventory and text in inventory:
        return apply_ssh_config(inventory[text], ssh_config)
    m = _USER_HOST_PORT.match(text)
    if not m:
        raise InputError(f"cannot read device {text!r}: expected `local`, an inventory name, "
                         "user@host[:port] or an ~/.ssh/config alias")
    host = m.group("host").strip("[]")
    spec = DeviceSpec(name=text, host=host, user=m.group("user"),
                      port=int(m.group("port")) if m.group("port") else None)
    return apply_ssh_config(spec, ssh_config)

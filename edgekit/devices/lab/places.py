"""``labgrid:PLACE`` device specs: which coordinator, and the lab-wide defaults of devices.toml's
``[labgrid]`` table. No network here (see ``client`` and ``lease``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import tomllib

from edgekit.devices.spec import DEFAULT_WORKDIR, ConnectOptions, DeviceSpec, default_inventory
from edgekit.errors import InputError

PREFIX = "labgrid:"
EXTRA_KEY = "labgrid"  # DeviceSpec.extra[EXTRA_KEY] is the LabPlace
ENV_COORDINATOR = "LG_COORDINATOR"  # labgrid-client's own variable
_TABLE_KEYS = {"coordinator", "key", "python", "workdir"}


@dataclass(frozen=True)
class LabPlace:
    """A place of a labgrid lab, as named by ``--device labgrid:PLACE``.

    Attributes:
        place: the place's name on the coordinator.
        coordinator: ``HOST[:PORT]`` from devices.toml's ``[labgrid]`` table (``--labgrid`` and
            ``LG_COORDINATOR`` win over it; see ``coordinator_for``).
        keys, python, workdir: SSH keys, interpreter and cache folder for the lab's boards
            (the place's ``NetworkService`` gives address, user and port).
    """

    place: str
    coordinator: Optional[str] = None
    keys: tuple[str, ...] = ()
    python: Optional[str] = None
    workdir: Optional[str] = None


def is_lab(spec: DeviceSpec) -> bool:
    return isinstance(spec.extra.get(EXTRA_KEY), LabPlace)


def lab_of(spec: DeviceSpec) -> LabPlace:
    return spec.extra[EXTRA_KEY]


def place_spec(text: str, lab: Optional[LabPlace] = None) -> DeviceSpec:
    """The DeviceSpec of ``labgrid:PLACE`` (its SSH target is known once the place is held).

    Raises:
        InputError: no place name.
    """
    name = text[len(PREFIX):].strip()
    if not name or any(c.isspace() for c in name):
        raise InputError(f"cannot read device {text!r}: expected labgrid:PLACE, e.g. "
                         "labgrid:rpi4-03")
    lab = replace(lab, place=name) if lab else LabPlace(name)
    # host is a placeholder (not None: None means this machine); lease.resolve() sets the real one
    return DeviceSpec(name=f"{PREFIX}{name}", host=f"{PREFIX}{name}", extra={EXTRA_KEY: lab})


def read_lab_table(path) -> dict:
    """The ``[labgrid]`` table of a devices.toml ({} when it has none)::

        [labgrid]
        coordinator = "lab.example.com:20408"
        key = "~/.ssh/id_lab"
        workdir = "~/.cache/edgekit"

    Raises:
        InputError: unreadable file or unknown keys.
    """
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text()).get("labgrid", {})
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"cannot read device inventory {path}: {e}") from e
    if not isinstance(table, dict) or set(table) - _TABLE_KEYS:
        raise InputError(f"{path}: [labgrid] allows the keys {sorted(_TABLE_KEYS)}, got "
                         f"{sorted(table) if isinstance(table, dict) else table!r}")
    return table


def with_inventory(spec: DeviceSpec, inventory) -> DeviceSpec:
    """``spec`` with the ``[labgrid]`` defaults of ``inventory`` (a devices.toml path) filled in;
    other specs are returned as they are."""
    if not is_lab(spec) or not inventory:
        return spec
    table = read_lab_table(inventory)
    if not table:
        return spec
    lab = lab_of(spec)
    key = table.get("key")
    keys = tuple(os.path.expanduser(k) for k in ([key] if isinstance(key, str) else key or []))
    lab = replace(lab, coordinator=lab.coordinator or table.get("coordinator"),
                  keys=lab.keys or keys, python=lab.python or table.get("python"),
                  workdir=lab.workdir or table.get("workdir"))
    return replace(spec, extra={**spec.extra, EXTRA_KEY: lab})


def coordinator_for(spec: DeviceSpec, connect: ConnectOptions) -> str:
    """The coordinator of a ``labgrid:`` device: ``--labgrid`` (``ConnectOptions.labgrid``),
    else ``LG_COORDINATOR``, else the inventory's ``[labgrid] coordinator``, else the default
    inventory's.

    Raises:
        InputError: none of them names one.
    """
    lab = lab_of(spec)
    found = connect.labgrid or os.environ.get(ENV_COORDINATOR) or lab.coordinator
    if not found:
        default = default_inventory()
        found = read_lab_table(default).get("coordinator") if default else None
    if not found:
        raise InputError(f"no labgrid coordinator for {spec.name}: pass --labgrid HOST[:PORT], "
                         f"set {ENV_COORDINATOR}, or add [labgrid] coordinator = \"HOST:PORT\" "
                         "to devices.toml")
    return str(found)


def ssh_spec(spec: DeviceSpec, service: dict) -> DeviceSpec:
    """``spec`` pointed at the place's NetworkService (address, username, port)."""
    lab = lab_of(spec)
    return replace(spec, host=service["address"], user=service.get("username") or None,
                   port=int(service.get("port") or 22), keys=lab.keys or spec.keys,
                   python=lab.python or spec.python, explicit_python=bool(lab.python),
                   workdir=lab.workdir or DEFAULT_WORKDIR)

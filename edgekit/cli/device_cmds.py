"""`edgekit devices probe|setup|list`: reach a device, describe it, give it a runtime."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from edgekit.cli.common import FitTable, console, emit_json, json_option, print_table
from edgekit.devices.device import Device
from edgekit.devices.lab import with_inventory
from edgekit.devices.spec import ConnectOptions, default_inventory, load_inventory, parse_device

_LAB_META = "edgekit.labgrid"  # click context meta: --labgrid / --lock-timeout of this command


def _keep_lab_option(ctx, param, value):
    ctx.meta.setdefault(_LAB_META, {})[param.name] = value
    return value


def connection_options(fn):
    """--inventory, --ssh-config, --known-hosts, --trust-new-host, --connect-timeout, and for
    labgrid:PLACE devices --labgrid and --lock-timeout (kept in the context: ``make_connect``
    reads them, so commands do not take them as arguments)."""
    options = [
        click.option("--inventory", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="devices.toml (default: ./devices.toml, else "
                          "~/.config/edgekit/devices.toml)."),
        click.option("--ssh-config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="OpenSSH client config for aliases, as `ssh -F` (default: the "
                          "files `ssh` reads)."),
        click.option("--known-hosts", type=click.Path(dir_okay=False, path_type=Path),
                     help="known_hosts file (default: the config's, else ~/.ssh/known_hosts)."),
        click.option("--trust-new-host", is_flag=True,
                     help="Accept and record a host key never seen before (accept-new). "
                          "A changed key is always refused."),
        click.option("--connect-timeout", type=float, default=ConnectOptions.connect_timeout,
                     show_default=True, help="Seconds to connect, retries included."),
        click.option("--labgrid", metavar="HOST[:PORT]", expose_value=False,
                     callback=_keep_lab_option,
                     help="labgrid coordinator for labgrid:PLACE devices (default: "
                          "$LG_COORDINATOR, else devices.toml's [labgrid] coordinator)."),
        click.option("--lock-timeout", type=click.FloatRange(min=0),
                     default=ConnectOptions.lock_timeout, show_default=True, expose_value=False,
                     callback=_keep_lab_option,
                     help="Seconds to wait for a labgrid place someone else holds."),
        click.option("--power-cycle-on-loss", is_flag=True, expose_value=False,
                     callback=_keep_lab_option,
                     help="labgrid places with a power resource: power-cycle a board whose "
                          "agent is lost (through labgrid's power driver) and run again once."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def make_connect(ssh_config, known_hosts, trust_new_host, connect_timeout) -> ConnectOptions:
    ctx = click.get_current_context(silent=True)
    lab = (ctx.meta.get(_LAB_META) if ctx else None) or {}
    return ConnectOptions(trust_new_host=trust_new_host, ssh_config=ssh_config,
                          known_hosts=known_hosts, connect_timeout=connect_timeout,
                          labgrid=lab.get("labgrid"),
                          lock_timeout=lab.get("lock_timeout", ConnectOptions.lock_timeout),
                          power_cycle_on_loss=bool(lab.get("power_cycle_on_loss")))


def inventory_path(inventory):
    return inventory or default_inventory()


def open_device(name, inventory, connect: ConnectOptions) -> Device:
    inv_path = inventory_path(inventory)
    inv = load_inventory(inv_path) if inv_path else None
    spec = with_inventory(parse_device(name, inv, connect.ssh_config), inv_path)
    return Device.open(spec, connect)


@click.group("devices")
def devices():
    """Reach, describe and prepare devices (local, SSH boards and phones)."""


@devices.command("probe")
@click.argument("device")
@connection_options
@json_option
def probe_cmd(device, inventory, ssh_config, known_hosts, trust_new_host, connect_timeout, as_json):
    """Describe DEVICE: arch, OS, CPU, frequencies, temperatures, memory, Python, runtimes.

    DEVICE is `local`, an inventory name, user@host[:port] or an ~/.ssh/config alias.
    """
    connect = make_connect(ssh_config, known_hosts, trust_new_host, connect_timeout)
    with open_device(device, inventory, connect) as dev:
        doc = dev.probe()
    if as_json:
        emit_json(doc)
        return
    table = FitTable(title=f"device {doc['device']}", show_header=False)
    table.add_column()
    table.add_column(wrap=True)
    freqs = doc["cpu"]["frequencies"]
    govs = sorted({f.get("governor") or "?" for f in freqs.values()}) or ["n/a"]
    cur = [f["cur_khz"] // 1000 for f in freqs.values() if f.get("cur_khz")]
    rows = [
        ("arch", doc["arch"]),
        ("os", f"{doc['os'].get('release') or doc['os']['system']} (kernel {doc['os']['kernel']})"),
        ("cpu", f"{doc['cpu']['model']} x{doc['cpu']['cores']}"),
        ("governors", ", ".join(govs)),
        ("MHz now", f"{min(cur)}..{max(cur)}" if cur else "n/a"),
        ("temperatures", ", ".join(f"{k} {v:.0f}°C" for k, v in doc["temperatures_c"].items())
         or "n/a"),
        ("memory", f"{_gib(doc['memory'].get('available_bytes'))} free of "
                   f"{_gib(doc['memory'].get('total_bytes'))}"),
        ("cache disk free", _gib(doc["disk"]["free_bytes"])),
        ("python", f"{doc['python']['version']} ({doc['python_used']})"),
        ("emulation", _emulation(doc.get("emulation"))),
        ("runtimes", ", ".join(f"{r['name']} {r['version']}" for r in doc["runtimes"])
         or "none: run `edgekit devices setup " + device + "`"),
    ]
    for k, v in rows:
        table.add_row(k, str(v))
    print_table(table)


@devices.command("setup")
@click.argument("device")
@click.option("--package", "packages", multiple=True,
              help="Requirement to install instead of numpy, ai-edge-litert, onnxruntime "
                   "(repeatable).")
@click.option("--index-url", help="PyPI mirror for downloading the wheels on this machine.")
@connection_options
@json_option
def setup_cmd(device, packages, index_url, inventory, ssh_config, known_hosts, trust_new_host,
              connect_timeout, as_json):
    """Install numpy + runtimes on DEVICE from wheels downloaded here (no internet on the device).

    Wheels matching the device's arch and Python are pushed into its cache and installed into
    a venv in its work folder; the agent uses that venv from then on.
    """
    from edgekit.devices.setup import SetupOptions, setup_device

    options = SetupOptions()
    if packages or index_url:
        options = replace(options, packages=tuple(packages) or options.packages,
                          index_url=index_url)
    connect = make_connect(ssh_config, known_hosts, trust_new_host, connect_timeout)
    with open_device(device, inventory, connect) as dev:
        with console.status(f"{device}: setting up") as status:
            report = setup_device(dev, options, lambda m: status.update(f"{device}: {m}"))
    if as_json:
        emit_json(report)
        return
    console.print(f"{device}: {len(report['wheels'])} wheels, {report['upload_bytes']} bytes "
                  f"pushed; agent uses {report['python']}; runtimes: "
                  + ", ".join(f"{r['name']} {r['version']}" for r in report["runtimes"]))


@devices.command("list")
@click.option("--inventory", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--labgrid", "coordinator", metavar="HOST[:PORT]",
              help="List the places of this labgrid coordinator instead: their boards' SSH "
                   "address, who holds them, tags and comment.")
@click.option("--connect-timeout", type=float, default=ConnectOptions.connect_timeout,
              show_default=True, help="Seconds to reach the labgrid coordinator.")
@json_option
def list_cmd(inventory, coordinator, connect_timeout, as_json):
    """Devices in the inventory (devices.toml), or with --labgrid the places of a labgrid lab
    (use them as --device labgrid:PLACE)."""
    if coordinator:
        _list_places(coordinator, connect_timeout, as_json)
        return
    path = inventory_path(inventory)
    inv = load_inventory(path) if path else {}
    rows = [{"name": s.name, "host": s.host, "user": s.user, "port": s.port, "python": s.python,
             "workdir": s.workdir, "tags": list(s.tags)} for s in inv.values()]
    if as_json:
        emit_json({"inventory": str(path) if path else None, "devices": rows})
        return
    table = FitTable(title=f"devices in {path or '(no inventory)'}")
    for col in ("name", "host", "user", "port", "tags"):
        table.add_column(col, wrap=col in ("host", "tags"))
    for r in rows:
        table.add_row(r["name"], r["host"], r["user"] or "", str(r["port"] or 22),
                      ", ".join(r["tags"]))
    print_table(table)


def _list_places(coordinator, connect_timeout, as_json):
    from edgekit.devices.lab import list_places

    places = [p.to_dict() for p in list_places(coordinator, connect_timeout)]
    address = coordinator
    if as_json:
        emit_json({"coordinator": address, "places": places})
        return
    table = FitTable(title=f"labgrid places on {address}")
    for col in ("place", "ssh", "held by", "tags / comment"):
        table.add_column(col, wrap=col in ("held by", "tags / comment"))
    for p in places:
        ns = p["network_service"]
        ssh = f"{ns['username']}@{ns['address']}:{ns['port']}" if ns else "no NetworkService"
        labels = [f"{k}={v}" for k, v in sorted(p["tags"].items())] + \
            ([p["comment"]] if p["comment"] else [])
        table.add_row(p["name"], ssh, p["holder"] or "free", ", ".join(labels))
    print_table(table)


def _emulation(emu):
    if not emu or emu.get("emulated") is None:
        return "unknown"
    if not emu["emulated"]:
        return "none (native)"
    return (f"emulated by {emu.get('emulator') or 'an emulator'} on {emu.get('host_arch') or '?'}: "
            "latencies here are not the board's")


def _gib(n):
    return "n/a" if n is None else f"{n / (1 << 30):.1f} GiB"


commands = [devices]

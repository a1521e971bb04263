"""`edgekit bench` (artifacts x devices); the stored results are `edgekit results` (results_cmds)."""

from __future__ import annotations

import threading
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgekit.bench import BenchOptions, benchmark
from edgekit.cli.common import FitTable, console, emit_json, json_option, print_table
from edgekit.cli.device_cmds import connection_options, inventory_path, make_connect
from edgekit.cli.perlayer_table import print_per_layer
from edgekit.devices.device import ORT_OPT_LEVELS
from edgekit.errors import EdgekitError
from edgekit.results import DEFAULT_DB, mask

db_option = click.option("--db", default=DEFAULT_DB, show_default=True, metavar="PATH|URL",
                         help="Results database: a SQLite file, or an SQLAlchemy URL such as "
                              "postgresql://user@host/db for a database a team shares.")


class BenchFailed(EdgekitError):
    """Some (device, artifact) runs failed; the others' results are printed and stored."""


@click.command("bench")
@click.argument("artifacts", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--device", "devices", multiple=True, default=("local",), show_default=True,
              help="`local`, an inventory name, user@host[:port] or an ssh alias (repeatable).")
@click.option("--runs", type=int, default=BenchOptions.runs, show_default=True)
@click.option("--warmup", type=int, default=BenchOptions.warmup, show_default=True)
@click.option("--threads", type=int, default=BenchOptions.threads, show_default=True)
@click.option("--runtime", help="Force a runtime: ai_edge_litert, tflite_runtime, tensorflow, "
                                "onnxruntime.")
@click.option("--eval", "eval_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=".npz with x (+ y labels) or arrays per input name.")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=".npz of reference outputs for output agreement.")
@click.option("--host-reference/--no-host-reference", default=True, show_default=True,
              help="With --eval and no --reference: report agreement with this host's outputs.")
@click.option("--timeout", type=float, default=BenchOptions.timeout, show_default=True,
              help="Seconds one artifact may take on a device.")
@click.option("--memory-limit-mb", type=int,
              help="Cap each measuring process's memory (address space), e.g. to emulate a "
                   "smaller board.")
@click.option("--xnnpack", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="TFLite: apply LiteRT's default XNNPACK delegate (off: built-in kernels).")
@click.option("--ort-opt-level", type=click.Choice(list(ORT_OPT_LEVELS)),
              default=BenchOptions.ort_opt_level, show_default=True,
              help="ONNX Runtime's graph optimization level.")
@click.option("--parallel", type=int, default=BenchOptions.parallel, show_default=True,
              help="Devices benchmarked at once.")
@click.option("--per-layer", is_flag=True,
              help="Also time each layer on the device (a short pass after the timed runs).")
@db_option
@connection_options
@json_option
def bench(artifacts, devices, runs, warmup, threads, runtime, eval_path, reference, host_reference,
          timeout, memory_limit_mb, xnnpack, ort_opt_level, parallel, per_layer, db, inventory,
          ssh_config, known_hosts, trust_new_host, connect_timeout, as_json):
    """Benchmark ARTIFACTS (a build folder with manifest.json, or .tflite/.onnx/.ort files) on
    every --device; results go to the database and are printed.
    """
    options = BenchOptions(runs=runs, warmup=warmup, threads=threads, runtime=runtime,
                           eval=eval_path, reference=reference, host_reference=host_reference,
                           timeout=timeout, memory_limit_mb=memory_limit_mb,
                           xnnpack=xnnpack == "on", ort_opt_level=ort_opt_level,
                           parallel=parallel, per_layer=per_layer)
    connect = make_connect(ssh_config, known_hosts, trust_new_host, connect_timeout)
    lock = threading.Lock()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
                  transient=as_json) as bar:
        tasks: dict[str, int] = {}

        def progress(device, message, done, total):
            with lock:
                if device not in tasks:
                    tasks[device] = bar.add_task(device, total=total, status="")
                bar.update(tasks[device], completed=done, status=message[:60])

        # The database is opened (created) by benchmark() once devices and data are checked.
        results = benchmark(list(artifacts), devices=list(devices), options=options,
                            connect=connect, store=db, inventory=inventory_path(inventory),
                            progress=progress)
    if as_json:
        emit_json([r.to_dict() for r in results])
    else:
        _print_results(results, f"results (stored in {mask(db)})")
        for r in results if per_layer else ():
            if r.ok:
                print_per_layer(r)
    failed = [r for r in results if r.failed]
    if failed:
        raise BenchFailed(f"{len(failed)} of {len(results)} runs failed; first: "
                          f"{failed[0].device}: {failed[0].error}")


def _print_results(results, title):
    table = FitTable(title=title)
    for col in ("id", "device", "artifact", "runtime", "p50 ms", "p90 ms", "init ms",
                "peak MiB", "top-1", "upload B", "status"):
        table.add_column(col, justify="right" if col.endswith(("ms", "MiB", "B", "1")) else "left",
                         wrap=col in ("device", "artifact", "runtime", "status"))
    for r in results:
        m = r.metrics or {}
        lat = m.get("latency_ms") or {}
        acc = (m.get("accuracy") or {}).get("top1")
        peak = (m.get("memory") or {}).get("peak_rss_bytes")
        name = r.artifact.get("name", "")
        if r.artifact.get("target"):
            name += f" ({r.artifact['target']})"
        table.add_row(
            str(r.id or ""), r.device, name, m.get("runtime", ""), _g(lat.get("p50")),
            _g(lat.get("p90")), _f(m.get("init_ms"), 1), _f(peak / (1 << 20) if peak else None, 1),
            _f(acc, 4), str(r.upload_bytes),
            _status(r))
    print_table(table)


def _g(v):
    """Four significant digits: 0.004268 and 175.3 ms both stay readable."""
    return "" if v is None else f"{v:.4g}"


def _status(r):
    if not r.ok:
        return f"[red]{(r.error or '')[:70]}[/red]"
    emu = (r.metrics or {}).get("emulation") or (r.device_info or {}).get("emulation") or {}
    # An emulated board's latencies are the emulator's, not the hardware's: say so in the row.
    return f"ok, [yellow]emulated ({emu.get('emulator') or '?'})[/yellow]" if emu.get("emulated") \
        else "ok"


def _f(v, digits=3):
    return "" if v is None else f"{v:.{digits}f}"


commands = [bench]

"""`edgekit advise`: measure the cheap recipes on a device, rank them, say which to ship and why."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli.common import FitTable, console, emit_json, json_option, print_table
from edgekit.cli.device_cmds import connection_options, inventory_path, make_connect
from edgekit.errors import EdgekitError

_STATUS_COLOR = {"ok": "green", "over-budget": "yellow", "gate-miss": "yellow",
                 "convert-failed": "red", "run-failed": "red"}


class NoRecipeFits(EdgekitError):
    """No recipe measured on the device met the accuracy budget or constraints (advise and
    optimize; the table says why)."""


@click.command("advise")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--device", default="local", show_default=True,
              help="`local`, an inventory name, user@host[:port] or an ssh alias.")
@click.option("--calibration", type=click.Path(path_type=Path), required=True,
              help="Calibration data for the int8 recipes (.npz/.npy/.csv or an image folder).")
@click.option("--eval", "eval_", type=click.Path(path_type=Path),
              help="Evaluation data; a labelled .npz (x, y) gives accuracy measured on the device.")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), default=1.0, show_default=True,
              metavar="POINTS", help="Accuracy points a recipe may lose vs the source.")
@click.option("--objective", type=click.Choice(["latency", "size"]), default="latency",
              show_default=True, help="What the recipes within budget are ranked by.")
@click.option("--latency-budget-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="A p50 the model must reach; the advice says how far off the best is.")
@click.option("--recipe", "recipes", multiple=True, metavar="NAME",
              help="Only this recipe (repeatable; default: every target for MODEL, plus the "
                   "onnx-int8 variants worth measuring on x86).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D0,D1,...",
              help="Pin an input's dynamic dims (repeatable).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for one build per recipe and results.db (default: advise-<model>).")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True,
              help="Timed inferences per recipe on the device.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runtime threads on the device.")
@click.option("--db", default=None, metavar="PATH|URL",
              help="Results history for the measurements: a SQLite file or an SQLAlchemy URL "
                   "such as a team's postgresql://user@host/db (default: results.db in --out).")
@click.option("--per-layer", is_flag=True,
              help="Also time each layer on the device: the advice names where the time goes.")
@connection_options
@json_option
def advise_cmd(model, device, calibration, eval_, max_accuracy_drop, objective, latency_budget_ms,
               recipes, input_shapes, out, runs, threads, db, per_layer, inventory, ssh_config, known_hosts,
               trust_new_host, connect_timeout, as_json):
    """Build fp32/fp16/dynamic/int8 recipes of MODEL for every runtime, measure them on --device,
    rank those within --max-accuracy-drop by --objective, and explain which to ship and why."""
    from converters.options import ConvertOptions
    from converters.sources import parse_input_shapes
    from edgekit.search.advisor import advise

    connect = make_connect(ssh_config, known_hosts, trust_new_host, connect_timeout)
    with console.status("advise: starting", spinner="dots") as status:
        advice = advise(model, device, calibration=calibration, eval=eval_,
                        max_accuracy_drop=max_accuracy_drop, objective=objective, out=out,
                        runs=runs, threads=threads, connect=connect,
                        inventory=inventory_path(inventory), recipes=list(recipes) or None,
                        options=ConvertOptions(input_shapes=parse_input_shapes(input_shapes)),
                        latency_budget_ms=latency_budget_ms,
                        progress=lambda msg: status.update(f"advise: {msg}"),
                        per_layer=per_layer, db=db)
    if as_json:
        emit_json(advice.to_dict())
    else:
        print_advice(advice)
    if advice.best is None:
        raise NoRecipeFits(f"no recipe ran on {advice.device} within "
                           f"{advice.max_accuracy_drop:g} accuracy points; see the table")


def print_advice(advice) -> None:
    """The ranked table and the advice lines, on the console (stderr)."""
    table = FitTable(title=f"{Path(advice.model).name} on {advice.device}: recipes ranked by "
                        f"{advice.objective} (accuracy budget {advice.max_accuracy_drop:g} points)")
    for col in ("rank", "recipe", "size KiB", "size x", "p50 ms", "p90 ms", "latency x",
                "peak MiB", "top-1 %", "drop pts", "status"):
        table.add_column(col, justify="left" if col in ("recipe", "status") else "right",
                         wrap=col == "status")
    for r in advice.rows:
        color = _STATUS_COLOR.get(r.status, "")
        detail = r.gate_miss or r.error or ""
        status = f"[{color}]{r.status}[/{color}]" + (f" {detail[:90]}" if detail else "")
        table.add_row(
            str(r.rank or ""), r.recipe, _f(r.bytes / 1024 if r.bytes else None, 1),
            _f(r.size_ratio, 2), _g(r.p50_ms), _g(r.p90_ms), _f(r.latency_ratio, 2),
            _f(r.peak_rss_bytes / (1 << 20) if r.peak_rss_bytes else None, 1),
            _f(100 * r.accuracy if r.accuracy is not None else None, 2)
            + ("" if r.accuracy_source in (None, "device") else " (host)"),
            _f(r.accuracy_drop, 2), status)
    print_table(table)
    for line in advice.text:
        console.print(f"• {line}", highlight=False, markup=False)
    console.print(f"builds: {advice.out}; results: {advice.results_db} (`edgekit report --db "
                  f"{advice.results_db}`)", highlight=False, markup=False)


def _g(v):
    return "" if v is None else f"{v:.4g}"


def _f(v, digits):
    return "" if v is None else f"{v:.{digits}f}"


commands = [advise_cmd]

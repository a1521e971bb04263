"""`edgekit results list|show|compare|export|import`: the stored benchmark results, in a SQLite
file or a database a team shares (an SQLAlchemy URL, e.g. PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli.bench_cmds import BenchFailed, _g, _print_results, db_option
from edgekit.cli.common import FitTable, console, emit_json, json_option, print_table
from edgekit.cli.perlayer_table import print_per_layer, print_per_layer_deltas
from edgekit.errors import EdgekitError
from edgekit.perlayer import compare_per_layer
from edgekit.results import (
    ResultStore,
    compare,
    export_results,
    import_results,
    read_result_file,
)

filter_options = [
    click.option("--device", help="Only this device."),
    click.option("--artifact", help="Only this artifact file name or sha256 prefix."),
    click.option("--since", help="Only results started this recently: an age such as 30d, 12h, "
                                 "2w, 90m, or an ISO date (UTC) such as 2026-01-31."),
]


def _filters(f):
    for option in reversed(filter_options):
        f = option(f)
    return f


class ImportConflict(EdgekitError):
    """Some imported results have the uid of a different result already in the database."""


@click.group("results")
def results():
    """Stored benchmark results: list, show, compare; export and import between databases."""


@results.command("list")
@_filters
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many.")
@db_option
@json_option
def list_cmd(device, artifact, since, limit, db, as_json):
    """Newest results first."""
    with ResultStore(db, create=False) as store:
        rows = store.list(device=device, artifact=artifact, since=since, limit=limit)
    if as_json:
        emit_json([r.to_dict() for r in rows])
    else:
        _print_results(rows, f"results in {store.location.shown}")


@results.command("show")
@click.argument("result_id", type=int)
@db_option
@json_option
def show_cmd(result_id, db, as_json):
    """Everything stored for one result."""
    with ResultStore(db, create=False) as store:
        r = store.get(result_id)
    if as_json:
        emit_json(r.to_dict())
        return
    _print_results([r], f"result {r.id}")
    m = r.metrics or {}
    if r.ok:
        lat = m["latency_ms"]
        console.print("latency ms: " + "  ".join(f"{k} {lat[k]:.4f}" for k in
                                                 ("min", "mean", "std", "p50", "p90", "p99", "max"))
                      + f"  runs {lat['runs']}")
        console.print(f"runtime {m['runtime']} {m['runtime_version']}, {m['threads']} threads, "
                      f"{m['provider']}; first inference {m['first_inference_ms']:.3f} ms; model "
                      f"RSS +{(m['memory'].get('model_rss_delta_bytes') or 0) / (1 << 20):.1f} MiB")
        for when in ("before", "after"):
            temps = m["system"][when]["temperatures_c"]
            console.print(f"{when}: " + (", ".join(f"{k} {v:.1f}°C" for k, v in temps.items())
                                         or "no thermal zones"))
    console.print(f"device {r.device}; artifact sha256 {r.artifact.get('sha256')}; settings "
                  f"{r.settings}; {r.started_at} .. {r.finished_at}; uid {r.uid}")
    if r.ok:
        print_per_layer(r)


@results.command("compare")
@click.argument("base_id", type=int)
@click.argument("new_id", type=int)
@click.option("--fail-on-regression", is_flag=True, help="Exit 1 if any metric regressed.")
@db_option
@json_option
def compare_cmd(base_id, new_id, fail_on_regression, db, as_json):
    """Compare NEW_ID against BASE_ID; flags regressions beyond the runs' own noise."""
    with ResultStore(db, create=False) as store:
        base, new = store.get(base_id), store.get(new_id)
    cmp = compare(base, new)
    layers = compare_per_layer(base.metrics, new.metrics)
    if as_json:
        emit_json(dict(cmp.to_dict(), **({"per_layer": [d.to_dict() for d in layers]}
                                         if layers else {})))
    else:
        table = FitTable(title=f"result {new_id} vs {base_id}")
        for col in ("metric", "base", "new", "delta", "noise band", "verdict"):
            table.add_column(col, wrap=col == "metric")
        for m in cmp.metrics:
            color = {"regression": "red", "improvement": "green"}.get(m.verdict, "")
            verdict = f"[{color}]{m.verdict}[/{color}]" if color else m.verdict
            table.add_row(m.name, _g(m.base), _g(m.new), _g(m.delta), _g(m.threshold), verdict)
        print_table(table)
        if layers:
            print_per_layer_deltas(layers, f"per-layer by op type, result {new_id} vs {base_id}")
        if not cmp.same_artifact or not cmp.same_device:
            console.print("note: different " + " and ".join(
                w for w, same in (("artifacts", cmp.same_artifact), ("devices", cmp.same_device))
                if not same))
    if fail_on_regression and cmp.regressions:
        raise BenchFailed(f"regressions in result {new_id} vs {base_id}: "
                          + ", ".join(cmp.regressions))




@results.command("export")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The JSON file to write (a list of result documents).")
@_filters
@db_option
@json_option
def export_cmd(out, device, artifact, since, db, as_json):
    """Write the database's results (oldest first) to a JSON file, for `results import` into
    another database (or `edgekit report`)."""
    with ResultStore(db, create=False) as store:
        n = export_results(store, out, device=device, artifact=artifact, since=since)
    if as_json:
        emit_json({"out": str(out), "results": n, "db": store.location.shown})
    else:
        console.print(f"exported {n} result(s) from {store.location.shown} to {out}",
                      highlight=False, markup=False, soft_wrap=True)


@results.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@db_option
@json_option
def import_cmd(files, db, as_json):
    """Add the results of FILES (`results export`, `bench --json` or `results list --json`
    output) to the database. A result already there (same uid, device and artifact sha256) is
    not added again, so importing twice adds nothing."""
    loaded = [(f, read_result_file(f)) for f in files]  # every file checked before any write
    with ResultStore(db) as store:
        summaries = [(f, import_results(store, rs)) for f, rs in loaded]
    new = sum(s.new for _, s in summaries)
    present = sum(s.present for _, s in summaries)
    conflicts = [u for _, s in summaries for u in s.conflicts]
    if as_json:
        emit_json({"db": store.location.shown, "new": new, "present": present,
                   "conflicts": conflicts,
                   "files": [{"file": str(f), **s.to_dict()} for f, s in summaries]})
    else:
        console.print(f"{new} new, {present} already present"
                      + (f", {len(conflicts)} conflicting" if conflicts else "")
                      + f" (imported into {store.location.shown})",
                      highlight=False, markup=False, soft_wrap=True)
    if conflicts:
        raise ImportConflict(f"{len(conflicts)} result(s) not imported: their uid belongs to "
                             f"another device or artifact in {store.location.shown} (first: "
                             f"{conflicts[0]}); the file was edited or is not an export")


commands = [results]

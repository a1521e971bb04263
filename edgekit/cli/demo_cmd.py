"""`edgekit demo`: the README's main job on shipped data."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli.common import console, emit_json, json_option, print_table


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("edgekit-demo"), show_default=True,
              help="Folder for the trained model, artifacts, results database and report.")
@click.option("--no-bench", is_flag=True, help="Convert and verify only; skip the benchmark on local.")
@click.option("--runs", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True)
@json_option
def demo_cmd(out, no_bench, runs, warmup, as_json):
    """Train a small CNN on the shipped digits, convert it to every target, verify, bench on local."""
    from edgekit.cli.convert_cmds import artifact_table, print_layout_note
    from edgekit.demo import run_demo

    with console.status("starting", spinner="dots") as status:
        def on_event(event, info):
            if event == "stage":
                status.update(info["stage"])
            elif event == "start":
                status.update(f"converting {info['target']}")

        summary = run_demo(out, bench=not no_bench, runs=runs, warmup=warmup, on_event=on_event)
    if as_json:
        emit_json({"model": str(summary["model"]),
                   "artifacts": [a.to_dict() for a in summary["artifacts"]],
                   "results": [r.to_dict() for r in summary["results"] or []],
                   "report": str(summary["report"])})
    else:
        print_table(artifact_table(summary["artifacts"]))
        print_layout_note(summary["artifacts"])
        if summary["results"] is not None:
            from edgekit.cli.bench_cmds import _print_results

            _print_results(summary["results"], "benchmark on local")
        console.print(f"report: {summary['report']}")
    results = summary["results"] or []
    failed = [r for r in results if r.failed]
    if failed:  # the report is written either way; the exit code says the demo did not succeed
        from edgekit.cli.bench_cmds import BenchFailed

        raise BenchFailed(f"demo: {len(failed)} of {len(results)} benchmark runs on local failed; "
                          f"first: {failed[0].artifact.get('name')}: {failed[0].error}")


commands = [demo_cmd]

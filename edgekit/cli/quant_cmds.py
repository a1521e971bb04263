"""`edgekit diagnose`: per-layer sensitivity of int8 quantization."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli.common import FitTable, console, emit_json, json_option, print_table


@click.command("diagnose")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(["onnx-int8", "tflite-int8"]), default="onnx-int8",
              show_default=True)
@click.option("--calibration", type=click.Path(path_type=Path), required=True,
              help="Calibration data (.npz/.npy/.csv or an image folder).")
@click.option("--eval", "eval_", type=click.Path(path_type=Path), help="Evaluation data (labels optional).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D0,D1,...",
              help="Pin an input's dynamic dims (repeatable).")
@click.option("--top", type=click.IntRange(min=1), default=15, show_default=True, help="Rows to print.")
@click.option("--out", type=click.Path(path_type=Path), help="Also write the full ranking as JSON here.")
@json_option
def diagnose_cmd(model, target, calibration, eval_, input_shapes, top, out, as_json):
    """Rank MODEL's ops by the error int8 quantization adds to them (most damaging first)."""
    from converters.options import ConvertOptions
    from converters.sources import parse_input_shapes
    from edgekit.api import diagnose
    from edgekit.fsutil import write_json_atomic

    with console.status(f"quantizing and ranking ({target})", spinner="dots"):
        report = diagnose(model, target, calibration=calibration, eval=eval_,
                          options=ConvertOptions(input_shapes=parse_input_shapes(input_shapes)))
    if out:
        write_json_atomic(out, report)
    if as_json:
        emit_json(report)
        return
    naive = report["naive"]
    acc = "" if naive["accuracy"] is None else (
        f", accuracy {100 * naive['accuracy']:.2f}% (source {100 * naive['source_accuracy']:.2f}%)")
    console.print(f"naive {target}: output SQNR {naive['sqnr_db']:.1f} dB{acc}; gate: "
                  + ("; ".join(report["gate_misses"]) or "passes"))
    table = FitTable(title=f"sensitivity ({len(report['ranking'])} groups, most damaging first)")
    for col in ("rank", "ops kept in float together", "why"):
        table.add_column(col, wrap=col != "rank")
    for r in report["ranking"][:top]:
        table.add_row(str(r["rank"]), "\n".join(r["nodes"]), r["label"])
    print_table(table)
    if out:
        console.print(f"full ranking: {out}")


commands = [diagnose_cmd]

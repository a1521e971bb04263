"""`edgekit diagnose`: per-layer sensitivity of int8 quantization."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli.common import FitTable, console, emit_json, json_option, print_table
from edgekit.cli.device_cmds import connection_options, inventory_path, make_connect
from edgekit.divergence import DEFAULT_SAMPLES, DEPARTS_BELOW_DB


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
@click.option("--device", help="Also run the int8 artifact on this device (`local`, an inventory "
                               "name, user@host[:port]) and name the first layer where its "
                               "tensors depart from this machine's.")
@click.option("--samples", type=click.IntRange(min=1), default=DEFAULT_SAMPLES, show_default=True,
              help="Eval samples compared layer by layer on --device.")
@click.option("--departs-below", type=float, default=DEPARTS_BELOW_DB, show_default=True,
              metavar="DB", help="A layer departs when its device-vs-host SQNR is below this.")
@connection_options
@json_option
def diagnose_cmd(model, target, calibration, eval_, input_shapes, top, out, device, samples,
                 departs_below, inventory, ssh_config, known_hosts, trust_new_host,
                 connect_timeout, as_json):
    """Rank MODEL's ops by the error int8 quantization adds to them (most damaging first);
    with --device, show where the device's kernels depart from this machine's."""
    from converters.options import ConvertOptions
    from converters.sources import parse_input_shapes
    from edgekit.api import diagnose
    from edgekit.divergence import DivergenceOptions
    from edgekit.fsutil import write_json_atomic

    extra = {}
    if device:
        extra = {"device": device, "inventory": inventory_path(inventory),
                 "connect": make_connect(ssh_config, known_hosts, trust_new_host,
                                         connect_timeout),
                 "divergence": DivergenceOptions(samples=samples, threshold_db=departs_below)}
    with console.status(f"quantizing and ranking ({target})", spinner="dots"):
        report = diagnose(model, target, calibration=calibration, eval=eval_,
                          options=ConvertOptions(input_shapes=parse_input_shapes(input_shapes)),
                          **extra)
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
    if "device" in report:
        from edgekit.cli.divergence_table import divergence_summary, divergence_table

        console.print(divergence_summary(report["device"]), highlight=False, markup=False)
        print_table(divergence_table(report["device"]))
    if out:
        console.print(f"full ranking: {out}")


commands = [diagnose_cmd]

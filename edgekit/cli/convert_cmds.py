"""`edgekit convert`, `edgekit inspect`, `edgekit targets`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from converters.cpu_layouts import CpuClass
from converters.options import OnnxQuantFormat
from edgekit.cli.common import FitTable, console, emit_json, json_option, print_table
from edgekit.cli.device_cmds import connection_options, inventory_path, make_connect
from edgekit.spec import format_shape


def _split_targets(value):
    return [t.strip() for t in value.split(",") if t.strip()] if value else None


@click.command("convert")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--to", "targets", metavar="T1,T2,...",
              help="Targets to build (default: every target possible for this model).")
@click.option("--calibration", type=click.Path(path_type=Path),
              help="Calibration data: .npz/.npy/.csv or an image folder (int8 targets need it).")
@click.option("--eval", "eval_", type=click.Path(path_type=Path),
              help="Evaluation data (optionally with labels) for the fidelity check.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("build"), show_default=True,
              help="Output folder for artifacts and manifest.json.")
@click.option("--float-io", is_flag=True, help="tflite-int8: keep float32 inputs and outputs.")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]),
              default="minmax", show_default=True, help="onnx-int8 activation range estimation.")
@click.option("--percentile", type=float, default=None, help="Percentile kept by --calibration-method percentile.")
@click.option("--per-tensor", is_flag=True,
              help="onnx-int8 and tflite-int8: one weight scale per tensor, not per channel "
                   "(keeps a clustered layer's k values; smaller after gzip).")
@click.option("--for", "for_device", metavar="DEVICE", default=None,
              help="Choose the int8 layouts for this device's CPU (probed: `local`, an "
                   "inventory or ~/.ssh/config name, user@host[:port]). Default: this machine.")
@click.option("--for-cpu", type=click.Choice([c.value for c in CpuClass]), default=None,
              metavar="CLASS",
              help="Choose the int8 layouts for this CPU class instead of probing a device: "
                   + ", ".join(c.value for c in CpuClass) + ".")
@click.option("--reduce-range/--no-reduce-range", default=None,
              help="onnx-int8: 7-bit weights (avoids int8 saturation on x86 CPUs without VNNI). "
                   "Default: chosen for the CPU (--for).")
@click.option("--unsigned-activations/--signed-activations", default=None,
              help="onnx-int8: uint8 activations (U8S8) or int8 (S8S8). Default: chosen for the "
                   "CPU (--for).")
@click.option("--onnx-format", type=click.Choice([f.value for f in OnnxQuantFormat]), default=None,
              help="onnx-int8: QDQ pairs or ONNX Runtime's QOperator ops. Default: chosen for "
                   "the CPU (--for).")
@click.option("--equalize", is_flag=True,
              help="onnx-int8: cross-layer equalization of conv pairs before quantizing (the float "
                   "function is unchanged).")
@click.option("--bias-correction", is_flag=True,
              help="onnx-int8: correct each layer's bias for its int8 weights' mean output shift "
                   "(uses the calibration data).")
@click.option("--opset", type=int, default=None, help="ONNX opset for Keras/SavedModel sources.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D0,D1,...",
              help="Pin an input's dynamic dims (repeatable).")
@click.option("--fix-input", "fix_inputs", multiple=True, metavar="NAME=VALUE",
              help="ONNX targets: ship the model for one value of a scalar input (e.g. sr=16000); "
                   "it leaves the graph and the If nodes it decides are folded (repeatable).")
@click.option("--calibration-samples", type=click.IntRange(min=1), default=None,
              help="Calibration samples to use (default: up to 200; a given number is required).")
@click.option("--allow-unsafe", is_flag=True, help="Load Keras Lambda layers (runs code from the file).")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), default=None, metavar="POINTS",
              help="Fidelity gate for quantized artifacts: accuracy points they may lose (needs labels).")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None, metavar="FRACTION",
              help="Fidelity gate: top-1 agreement with the source on the eval set.")
@click.option("--min-sqnr", type=float, default=None, metavar="DB",
              help="Fidelity gate: worst output SQNR in dB against the source.")
@click.option("--task", type=click.Choice(["auto", "classification", "detection", "segmentation",
                                          "embedding", "regression"]),
              default="auto", show_default=True,
              help="What the outputs are for; the gate judges each output by its task's measure "
                   "(auto: detected per output).")
@click.option("--min-task-metric", type=click.FloatRange(0, 1), default=None, metavar="VALUE",
              help="Fidelity gate for quantized artifacts: detection F1, segmentation mask IoU or "
                   "embedding cosine (default: the task's).")
@click.option("--auto-mixed-precision", "repair", is_flag=True,
              help="When a quantized artifact misses the gate, try better calibration, then keep the "
                   "most sensitive ops in float until it passes.")
@connection_options
@click.option("--recipe", "recipe_file", type=click.Path(path_type=Path), default=None,
              metavar="FILE",
              help="Build the target with the options of a recipe (opt/best.recipe.json from "
                   "`edgekit optimize`): the same source and calibration give the same bytes.")
@click.option("--train", type=click.Path(path_type=Path), default=None,
              help="With --recipe: training data for a recipe that prunes and fine-tunes.")
@json_option
def convert_cmd(model, targets, calibration, eval_, out, float_io, calibration_method, percentile,
                per_tensor, for_device, for_cpu, reduce_range, unsigned_activations, onnx_format,
                equalize, bias_correction,
                opset, input_shapes, fix_inputs,
                calibration_samples, allow_unsafe, max_accuracy_drop, min_agreement, min_sqnr,
                task, min_task_metric, repair, inventory, ssh_config, known_hosts, trust_new_host,
                connect_timeout, recipe_file, train, as_json):
    """Convert MODEL to TFLite/ONNX artifacts, verify each against MODEL, write a manifest."""
    from converters.fix_inputs import parse_fix_inputs
    from converters.options import CalibrationMethod, ConvertOptions
    from converters.registry import targets_for
    from converters.sources import detect_format, parse_input_shapes
    from edgekit.api import convert
    from edgekit.errors import ModelLoadError

    if recipe_file is not None:
        given = {"--to": targets, "--float-io": float_io, "--percentile": percentile,
                 "--per-tensor": per_tensor, "--reduce-range": reduce_range,
                 "--unsigned-activations": unsigned_activations, "--onnx-format": onnx_format,
                 "--for": for_device, "--for-cpu": for_cpu, "--equalize": equalize,
                 "--bias-correction": bias_correction, "--opset": opset,
                 "--calibration-samples": calibration_samples, "--fix-input": fix_inputs or None,
                 "--max-accuracy-drop": max_accuracy_drop, "--min-agreement": min_agreement,
                 "--min-sqnr": min_sqnr, "--auto-mixed-precision": repair,
                 "--min-task-metric": min_task_metric,
                 "--calibration-method": calibration_method != "minmax"}
        _replay_recipe(model, recipe_file, calibration, eval_, out, input_shapes, allow_unsafe,
                       [k for k, v in given.items() if v not in (None, False)], as_json, train)
        return
    if train is not None:
        from edgekit.errors import InputError

        raise InputError("--train is for --recipe (a recipe that prunes and fine-tunes); to "
                         "prune a model use `edgekit prune`")

    defaults = ConvertOptions()
    options = ConvertOptions(
        float_io=float_io, calibration_method=CalibrationMethod(calibration_method),
        percentile=percentile if percentile is not None else defaults.percentile,
        per_channel=not per_tensor, reduce_range=reduce_range,
        unsigned_activations=unsigned_activations,
        onnx_quant_format=OnnxQuantFormat(onnx_format) if onnx_format else None, equalize=equalize,
        bias_correction=bias_correction, opset=opset or defaults.opset,
        input_shapes=parse_input_shapes(input_shapes), fix_inputs=parse_fix_inputs(fix_inputs),
        calibration_samples=calibration_samples, allow_unsafe=allow_unsafe, max_accuracy_drop=max_accuracy_drop,
        min_top1_agreement=min_agreement, min_sqnr_db=min_sqnr, repair=repair, task=task,
        min_task_metric=min_task_metric)
    names = _split_targets(targets)
    if names is None:
        if not model.exists():
            raise ModelLoadError(f"model not found: {model}")
        names = [t.name for t in targets_for(detect_format(model))
                 if calibration is not None or not t.needs_calibration]
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=as_json or not console.is_terminal) as progress:
        task = progress.add_task("loading model and data", total=len(names))

        def on_event(event, info):
            if event == "start":
                progress.update(task, description=f"converting {info['target']}")
            else:
                progress.advance(task)

        try:
            artifacts = convert(model, names, calibration=calibration, eval=eval_, out=out,
                                options=options, on_event=on_event, for_device=for_device,
                                for_cpu=for_cpu, inventory=inventory_path(inventory),
                                connect=make_connect(ssh_config, known_hosts, trust_new_host,
                                                     connect_timeout))
            failed = {}
        except Exception as e:
            if not hasattr(e, "artifacts"):
                raise
            artifacts, failed = e.artifacts, e.failures
            error = e
    if as_json:
        emit_json({"out": str(out), "artifacts": [a.to_dict() for a in artifacts],
                   "failures": failed})
    else:
        if artifacts:  # all failed: the error line says it all
            print_table(artifact_table(artifacts, failed))
            print_fidelity_notes(artifacts)
            print_layout_note(artifacts)
    if failed:  # the error line names every failed target and why: one line, not one per target
        raise error


def layout_note(artifacts) -> Optional[str]:
    """One line saying which int8 layout was chosen for which CPU, and why (or None)."""
    for a in artifacts:
        lay = (a.pass_config or {}).get("layout")
        if lay:
            line = (f"{a.target} layout: {lay['chosen']}, chosen for {lay['cpu_class']} "
                    f"({lay['for']}): {lay['why']}")
            if lay.get("verified_with") == "reference int8 arithmetic":
                line += ("; verified with exact int8 arithmetic (this machine's int8 kernels are "
                         "not the device's)")
            if lay.get("fell_back"):
                line += "; " + "; ".join(f"{f['layout']} missed the gate ({f['cause']})"
                                         for f in lay["fell_back"])
            return line
    return None


def print_layout_note(artifacts) -> None:
    line = layout_note(artifacts)
    if line:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _replay_recipe(model, recipe_file, calibration, eval_, out, input_shapes, allow_unsafe,
                   conflicting, as_json, train=None):
    from converters.options import ConvertOptions
    from converters.sources import parse_input_shapes
    from edgekit.errors import InputError
    from edgekit.recipe import load_recipe
    from edgekit.training.replay import replay

    if conflicting:
        raise InputError(f"--recipe sets the target and conversion options; drop "
                         f"{', '.join(conflicting)} (or convert without --recipe)")
    recipe = load_recipe(recipe_file)
    base = ConvertOptions(input_shapes=parse_input_shapes(input_shapes), allow_unsafe=allow_unsafe)
    with console.status(f"building recipe {recipe.name} ({recipe.target})", spinner="dots"):
        result = replay(recipe, model, calibration=calibration, eval=eval_, out=out, base=base,
                        train=train)
    if as_json:
        emit_json({"out": str(out), "recipe": recipe.name, **result.to_dict()})
        return
    print_table(artifact_table([result.artifact]))
    art = result.artifact
    if result.reproduced:
        console.print(f"recipe {recipe.name}: reproduced the recipe's artifact "
                      f"(sha256 {art.sha256[:16]}…)", highlight=False)
    elif result.reproduced is False:
        console.print(f"recipe {recipe.name}: sha256 {art.sha256[:16]}… differs from the "
                      f"recipe's {result.expected_sha256[:16]}…", highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, markup=False)


def artifact_table(artifacts, failed=None) -> Table:
    """A table of artifacts with size relative to the first fp32 one and fidelity figures: each
    artifact's task measure (the main output's), its worst SQNR (worst slice of any judged
    output), accuracy with labels; targets that failed are rows too."""
    base = next((a.bytes for a in artifacts if a.precision == "fp32"), None)
    table = FitTable(title="artifacts")
    for col in ("target", "size", "×fp32", "task", "measure", "worst dB", "acc", "sec"):
        table.add_column(col, justify="left" if col in ("target", "task", "measure") else "right",
                         wrap=col in ("task", "measure"))
    for a in artifacts:
        f = a.fidelity
        table.add_row(
            a.target, _size(a.bytes), f"{a.bytes / base:.2f}" if base else "-",
            (f.task or "-") if f else "-", short_measure(f), _worst_db(f),
            _pct(f.accuracy if f else None),
            f"{a.conversion_seconds:.1f}" if a.conversion_seconds is not None else "-")
    for name in failed or {}:
        table.add_row(name, "-", "-", "-", "[red]failed[/red]", "-", "-", "-")
    return table


_SHORT = {"top1_agreement": ("agree", "pct"), "exact_match": ("exact", "pct"),
          "detection_f1": ("F1", 3), "mask_iou": ("IoU", 3), "cosine": ("cos", 4),
          "sqnr_db": ("SQNR", 1)}


def short_measure(f) -> str:
    """The main output's task measure in a few characters (``F1 0.976``, ``agree 99.5%``)."""
    m = f.task_metric if f is not None else None
    if not m or m.get("value") is None:
        return "cannot judge" if f is not None and f.outputs and f.main_output is None else "-"
    word, fmt = _SHORT.get(m["name"], (m["name"], 3))
    v = m["value"]
    return f"{word} {100 * v:.1f}%" if fmt == "pct" else f"{word} {v:.{fmt}f}"


def _worst_db(f) -> str:
    if f is None:
        return "-"
    judged = [o for o in f.outputs if o.judged] if f.outputs else []
    worst = min((o.worst_sqnr_db for o in judged), default=f.sqnr_db)
    return f"{worst:.1f}"


def print_fidelity_notes(artifacts) -> None:
    """Where the verdicts come from (the data) and what they cannot show (warnings)."""
    origins = {a.fidelity.data_origin for a in artifacts if a.fidelity and a.fidelity.data_origin}
    words = {"calibration-holdout": "calibration samples the quantizer did not use (no --eval)",
             "calibration": "calibration samples, the quantizer's own (none left over to hold "
                            "apart): pass --eval with real samples",
             "synthetic": "made-up inputs: verdicts are advisory; pass --eval with real samples"}
    for o in sorted(origins & set(words)):
        n = next(a.fidelity.samples for a in artifacts if a.fidelity and a.fidelity.data_origin == o)
        console.print(f"verified on {n} {words[o]}", highlight=False, markup=False)
    for a in artifacts:
        for w in (a.fidelity.warnings if a.fidelity else []):
            if not w.startswith("verified on the calibration samples"):  # said once above
                console.print(f"warning: {a.target}: {w}", highlight=False, markup=False)


def _pct(v):
    return "-" if v is None else f"{100 * v:.1f}%"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


@click.command("inspect")
@click.argument("artifact", type=click.Path(path_type=Path))
@json_option
def inspect_cmd(artifact, as_json):
    """Show I/O names, shapes, dtypes, quantization, op counts, parameters and size of ARTIFACT."""
    from edgekit.api import inspect_artifact

    info = inspect_artifact(artifact)
    if as_json:
        emit_json(info)
        return
    console.print(f"[bold]{info['path']}[/bold]  {info['format']}  {_size(info['bytes'])}  "
                  f"{info['params']:,} params  {info['op_count']} ops  sha256 {info['sha256'][:16]}…")
    io = FitTable(title="inputs / outputs")
    for col in ("kind", "name", "shape", "dtype", "scale", "zero point"):
        io.add_column(col, wrap=col in ("name", "scale", "zero point"))
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            q = t.get("quantization")
            io.add_row(kind[:-1], t["name"], format_shape(t["shape"]), t["dtype"],
                       ",".join(f"{s:.6g}" for s in q["scale"][:4]) if q else "-",
                       ",".join(str(z) for z in q["zero_point"][:4]) if q else "-")
    print_table(io)
    ops = FitTable(title="ops")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in info["ops"].items():
        ops.add_row(op, str(n))
    print_table(ops)


@click.command("targets")
@json_option
def targets_cmd(as_json):
    """List every registered conversion target."""
    from converters.registry import TARGETS

    if as_json:
        emit_json([{"name": t.name, "format": t.format, "precision": t.precision,
                    "sources": sorted(t.sources), "needs_calibration": t.needs_calibration,
                    "requires": list(t.requires), "options": list(t.options), "summary": t.summary}
                   for t in TARGETS.values()])
        return
    print_table(targets_table())


def targets_table() -> FitTable:
    """The registry as a table: target, precision, sources, calibration, what it is."""
    from converters.registry import TARGETS

    table = FitTable(title="targets")
    for col in ("target", "precision", "sources", "calibration", "what it is"):
        table.add_column(col, wrap=col in ("sources", "what it is"))
    for t in TARGETS.values():
        table.add_row(t.name, t.precision, ", ".join(sorted(t.sources - {"h5"})),
                      "yes" if t.needs_calibration else "", t.summary)
    return table


commands = [convert_cmd, inspect_cmd, targets_cmd]

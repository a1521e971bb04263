"""`edgekit optimize`: a hardware-in-the-loop recipe search; `--resume` continues one."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import click

from edgekit.cli.advise_cmd import NoRecipeFits
from edgekit.cli.common import FitTable, console, emit_json, json_option, print_table
from edgekit.cli.device_cmds import connection_options, inventory_path, make_connect
from edgekit.devices.device import ORT_OPT_LEVELS
from edgekit.errors import InputError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 1 << 10, "mib": 1 << 20,
          "gib": 1 << 30, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SECONDS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_size(text: str | None, option: str) -> int | None:
    """``2MB`` (10^6), ``64MiB`` / ``64M`` (2^20), ``500kB``, ``1048576`` → bytes.

    Raises:
        InputError: not a positive size.
    """
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = m and m.group(2).lower()
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise InputError(f"{option} {text!r} is not a size: expected e.g. 2MB, 512KiB, 64M or "
                         "a number of bytes")
    return int(float(m.group(1)) * _UNITS[unit])


def parse_duration(text: str | None, option: str) -> float | None:
    """``2h``, ``30m``, ``90s``, ``45`` (seconds) → seconds.

    Raises:
        InputError: not a positive duration.
    """
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = m and m.group(2).lower()
    if not m or unit not in _SECONDS or float(m.group(1)) <= 0:
        raise InputError(f"{option} {text!r} is not a duration: expected e.g. 2h, 30m, 90s")
    return float(m.group(1)) * _SECONDS[unit]


@click.command("optimize")
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option("--device", default="local", show_default=True,
              help="`local`, an inventory name, user@host[:port] or an ssh alias.")
@click.option("--calibration", type=click.Path(path_type=Path),
              help="Calibration data for the int8 recipes (.npz/.npy/.csv or an image folder).")
@click.option("--eval", "eval_", type=click.Path(path_type=Path),
              help="Evaluation data; a labelled .npz (x, y) gives accuracy measured on the device.")
@click.option("--train", type=click.Path(path_type=Path), default=None,
              help="Training data (.npz x, y): also search structured pruning ratios with "
                   "fine-tuning and distillation from MODEL (Keras models).")
@click.option("--arch-scaling", is_flag=True, default=False,
              help="With --train and a keras.applications MobileNetV2/V3 or EfficientNet "
                   "(B0-B7, V2 B0-B3), or a model with one as its backbone: also try smaller "
                   "students (width or variant, resolution; your head and preprocessing kept) "
                   "distilled from MODEL; the training time is estimated and printed first.")
@click.option("--compress", is_flag=True, default=False,
              help="With --train (Keras models): also try magnitude sparsity (50%, 80%) and/or "
                   "weight clustering (16, 32 values per layer) fine-tuned on it; the "
                   "fine-tuning time is estimated and printed first.")
@click.option("--prune-ratio", "prune_ratios", multiple=True, type=float, metavar="R",
              help="Pruning ratios to search with --train (repeatable; default 0, 0.25, 0.5).")
@click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True,
              metavar="POINTS", help="Accuracy points the chosen recipe may lose vs the source.")
@click.option("--objective", default="latency", show_default=True, metavar="latency|size",
              help="What the chosen recipe minimises among those meeting the constraints.")
@click.option("--max-size", default=None, metavar="SIZE",
              help="Largest artifact, e.g. 2MB or 512KiB (measured as --size-metric).")
@click.option("--size-metric", default="bytes", show_default=True, metavar="bytes|gzip|zstd",
              help="How --objective size and --max-size measure an artifact: the file, or the "
                   "file gzip/zstd-compressed (what an app store or OTA update ships).")
@click.option("--max-peak-memory", default=None, metavar="SIZE",
              help="Largest peak resident memory while running, measured on the device.")
@click.option("--budget", type=int, default=20, show_default=True,
              help="Trials in all, the baselines and raw tool defaults included.")
@click.option("--time-budget", default=None, metavar="DURATION",
              help="Wall-clock limit of this run, e.g. 2h or 30m (a resumed run gets a new one).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Study folder (default: opt-<model>).")
@click.option("--storage", default=None, metavar="URL",
              help="SQLAlchemy URL of the study, e.g. postgresql://user@host/db, so workers on "
                   "several machines share it (default: SQLite in --out).")
@click.option("--db", default=None, metavar="PATH|URL",
              help="Results history for the device measurements: a SQLite file or an SQLAlchemy "
                   "URL such as a team's postgresql://user@host/db (default: results.db in "
                   "--out).")
@click.option("--per-layer", is_flag=True,
              help="Each trial also times the artifact's layers on the device: the explanation "
                   "names where the time goes.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Worker processes on this machine sharing the study.")
@click.option("--runs", type=int, default=20, show_default=True,
              help="Timed inferences per trial on the device.")
@click.option("--target", "targets", multiple=True, metavar="NAME",
              help="Search only these targets (repeatable; default: every replayable one).")
@click.option("--threads", "threads", multiple=True, type=int, metavar="N",
              help="Runtime thread counts to search (repeatable; default 1 and 2).")
@click.option("--xnnpack", "xnnpack", multiple=True, type=click.Choice(["on", "off"]),
              help="TFLite runtime settings to search: XNNPACK delegate on and/or off "
                   "(repeatable; default both).")
@click.option("--ort-opt-level", "ort_opt_levels", multiple=True,
              type=click.Choice(list(ORT_OPT_LEVELS)),
              help="ONNX Runtime graph optimization levels to search (repeatable; default all, "
                   "extended, basic).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D0,D1,...",
              help="Pin an input's dynamic dims (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True, help="The sampler's seed.")
@click.option("--remeasure/--no-remeasure", default=True, show_default=True,
              help="After the search, measure the finalists again side by side (interleaved "
                   "rounds on the device) and choose on those numbers; --no-remeasure chooses "
                   "on the per-trial means.")
@click.option("--resume", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Continue the study in DIR: finished trials are kept, interrupted ones re-run.")
@click.option("--worker", is_flag=True, hidden=True,
              help="Run trials of --resume DIR only (started by --workers).")
@connection_options
@json_option
def optimize_cmd(model, device, calibration, eval_, train, arch_scaling, compress, prune_ratios,
                 max_accuracy_drop, objective, max_size, size_metric, max_peak_memory, budget, time_budget, out, storage, db, per_layer, workers, runs, targets,
                 threads, xnnpack, ort_opt_levels, input_shapes, seed, remeasure, resume, worker, inventory,
                 ssh_config, known_hosts, trust_new_host, connect_timeout, as_json):
    """Search recipes of MODEL by measuring them on --device; choose the best one within the
    constraints and explain why (best.recipe.json, report.html in --out)."""
    from edgekit.search import loop
    from edgekit.search.settings import OBJECTIVES, SIZE_METRICS, Constraints, read_settings
    from edgekit.search.space import SearchSpace

    if workers < 1 or budget < 1 or runs < 1:
        raise InputError(f"--workers, --budget and --runs must be >= 1, got {workers}, "
                         f"{budget}, {runs}")
    seconds = parse_duration(time_budget, "--time-budget")
    if resume is not None:
        if model is not None:
            raise InputError("--resume continues a study with its own model and settings: "
                             "drop MODEL (or start a new study without --resume)")
        read_settings(resume)  # InputError now if it is not a study folder
        if worker:
            loop.run_study(resume, worker=True)
            return
        budget_given = click.get_current_context().get_parameter_source("budget")
        new_budget = None if budget_given == click.core.ParameterSource.DEFAULT else budget
        with console.status("optimize: resuming", spinner="dots") as status:
            study = loop.resume(resume, budget=new_budget, time_budget_s=seconds,
                                workers=workers, remeasure=remeasure,
                                progress=lambda m: status.update(f"optimize: {m}"))
        return _show(study, as_json)
    if model is None:
        raise InputError("pass MODEL (or --resume DIR to continue a study)")
    if objective not in OBJECTIVES:
        raise InputError(f"--objective must be one of {', '.join(OBJECTIVES)}, got "
                         f"{objective!r}")
    if size_metric not in SIZE_METRICS:
        raise InputError(f"--size-metric must be one of {', '.join(SIZE_METRICS)}, "
                         f"got {size_metric!r}")
    if calibration is None:
        raise InputError("--calibration is required: the int8 recipes are calibrated on it")
    constraints = Constraints(max_accuracy_drop, parse_size(max_size, "--max-size"),
                              parse_size(max_peak_memory, "--max-peak-memory"))
    from converters.options import ConvertOptions
    from converters.sources import parse_input_shapes

    space = SearchSpace(targets=tuple(targets), threads=tuple(threads) or (1, 2),
                        prune_ratios=tuple(prune_ratios), arch_scaling=arch_scaling)
    if xnnpack:
        space = replace(space, xnnpack=tuple(x == "on" for x in xnnpack))
    if ort_opt_levels:
        space = replace(space, ort_opt_levels=tuple(ort_opt_levels))
    stem = model.stem if model.suffix else model.name
    connect = make_connect(ssh_config, known_hosts, trust_new_host, connect_timeout)
    with console.status("optimize: probing the device", spinner="dots") as status:
        study = loop.optimize(
            model, device, calibration=calibration, eval=eval_, train=train,
            constraints=constraints,
            objective=objective, budget=budget, time_budget_s=seconds,
            out=out or Path(f"opt-{stem}"), storage=storage, workers=workers, runs=runs,
            space=space, connect=connect, inventory=inventory_path(inventory),
            options=ConvertOptions(input_shapes=parse_input_shapes(input_shapes)), seed=seed,
            remeasure=remeasure, compress=compress, size_metric=size_metric, db=db,
            per_layer=per_layer,
            progress=lambda m: _progress(status, m))
    _show(study, as_json)


def _progress(status, message: str) -> None:
    """Cost estimates stay on the screen (printed before the search starts); the rest is the
    spinner's line."""
    if message.startswith("estimate:"):
        console.print(message, highlight=False, markup=False)
    else:
        status.update(f"optimize: {message}")


def _show(study, as_json) -> None:
    if as_json:
        emit_json(study.to_dict())
    else:
        print_study(study)
    if study.best is None:
        raise NoRecipeFits(f"no recipe measured on {study.settings.device} met the constraints; "
                           f"see the table and {study.report}")


def print_study(study) -> None:
    """The measured recipes (fastest first) with their marks, then the explanation."""
    s = study.settings
    table = FitTable(title=f"{Path(s.model).name} on {s.device}: {len(study.trials)} trials, "
                        f"objective {s.objective}"
                        + ("" if s.size_metric == "bytes" else f" ({s.size_metric} size)"))
    for col in ("recipe", "marks", "trials", "p50 ms", "side by side ms", "size KiB", "gzip KiB",
                "peak MiB", "top-1 %", "drop pts", "constraints"):
        table.add_column(col, justify="left" if col in ("recipe", "marks", "constraints")
                         else "right", wrap=col in ("marks", "constraints"))
    for r in sorted(study.candidates, key=lambda r: r.p50_ms):
        marks = [m for m, on in (("chosen", r.chosen), ("pareto", r.pareto),
                                 (r.role or "", bool(r.role))) if on]
        table.add_row(r.name, ", ".join(marks), str(len(r.trials)), f"{r.p50_ms:.4g}",
                      "" if r.side_by_side_ms is None else f"{r.side_by_side_ms:.4g}",
                      f"{r.bytes / 1024:.1f}",
                      "" if r.gzip_bytes is None else f"{r.gzip_bytes / 1024:.1f}",
                      "" if r.peak_rss_bytes is None else f"{r.peak_rss_bytes / (1 << 20):.1f}",
                      "" if r.accuracy is None else f"{100 * r.accuracy:.2f}",
                      "" if r.accuracy_drop is None else f"{r.accuracy_drop:.2f}",
                      "met" if r.feasible else ", ".join(r.misses))
    print_table(table)
    for t in study.failed:
        console.print(f"failed trial {t.number} {t.name} ({t.failed_stage}): {t.error}",
                      highlight=False, markup=False)
    for line in study.text:
        console.print(f"• {line}", highlight=False, markup=False)
    console.print(f"report: {study.report}; recipe: "
                  f"{study.out / 'best.recipe.json' if study.best else 'none'}",
                  highlight=False, markup=False)


commands = [optimize_cmd]

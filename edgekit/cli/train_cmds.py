"""`edgekit prune`, `edgekit distill`, `edgekit qat`, `edgekit profile`: training-side optimization."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import click
from rich.table import Table

from edgekit.cli.common import FitTable, console, emit_json, json_option, print_table

_CRITERIA = ["l1", "l2", "bn-gamma", "taylor"]


def _spinner(text: str, as_json: bool):
    if as_json or not console.is_terminal:
        return contextlib.nullcontext()
    return console.status(text, spinner="dots")


def _default_out(model: Path, tag: str) -> Path:
    return model.with_name(f"{model.stem}.{tag}.keras")


def _ratio(r: float) -> str:
    return f"{r:.2f}x"


def _cost_table(title: str, rows: list) -> Table:
    table = FitTable(title=title)
    for col in ("model", "params", "MACs", "fp32 size", "×params", "×MACs"):
        table.add_column(col, justify="left" if col == "model" else "right")
    base = rows[0][1]
    for name, prof in rows:
        table.add_row(name, f"{prof.params:,}", f"{prof.macs:,}", f"{prof.fp32_bytes / 1024:.1f} KiB",
                      _ratio(prof.params / max(1, base.params)), _ratio(prof.macs / max(1, base.macs)))
    return table


def _print_warnings(caught) -> list:
    from converters.pruning import PruningWarning

    notes = [str(w.message) for w in caught if issubclass(w.category, PruningWarning)]
    for note in notes:
        console.print(f"[yellow]warning[/yellow]: {note}")
    return notes


@click.command("prune")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--ratio", type=float, default=None,
              help="Structured: fraction of channels removed, in (0, 1). Channels are physically "
                   "removed, so size, FLOPs and latency all fall.")
@click.option("--criterion", type=click.Choice(_CRITERIA), default="l1", show_default=True,
              help="Channel importance (taylor needs --train).")
@click.option("--round-to", type=click.IntRange(min=1), default=1, show_default=True,
              help="Round kept channel counts to a multiple of this (8 suits most hardware).")
@click.option("--global", "global_ranking", is_flag=True,
              help="Rank channels of all layers together instead of --ratio per layer.")
@click.option("--min-channels", type=click.IntRange(min=1), default=1, show_default=True,
              help="No layer keeps fewer channels than this.")
@click.option("--protect", multiple=True, metavar="LAYER", help="Leave this layer's channels alone "
              "(repeatable).")
@click.option("--no-protect-first", is_flag=True, help="Allow pruning the first layer's channels.")
@click.option("--plan", "plan_path", type=click.Path(path_type=Path),
              help="Replay a saved pruning plan (JSON) instead of planning.")
@click.option("--plan-only", is_flag=True, help="Write the plan (<out>.plan.json) and stop.")
@click.option("--sparsity", type=float, default=None,
              help="Unstructured: fraction of weights zeroed, in (0, 1). Only the compressed "
                   "(zip/gzip) size shrinks; dense CPU kernels run no faster.")
@click.option("--schedule", type=click.Choice(["polynomial", "constant"]), default="polynomial",
              show_default=True, help="With --sparsity and --epochs: how sparsity ramps up.")
@click.option("--pattern", type=click.Choice(["unstructured", "block4", "2:4"]),
              default="unstructured", show_default=True,
              help="With --sparsity: block4 zeros whole blocks of 4 consecutive input channels "
                   "(stored contiguously, so the file gzips smaller at the same sparsity); 2:4 "
                   "keeps 2 of every 4 weights (50%), which sparse tensor cores (e.g. NVIDIA "
                   "Ampere) run faster; CPUs rarely do.")
@click.option("--lottery", is_flag=True, help="With --sparsity: lottery-ticket pruning (train "
              "--epochs, then --rounds of prune, rewind to --rewind-epoch, retrain).")
@click.option("--rounds", type=click.IntRange(min=1), default=4, show_default=True,
              help="With --lottery: prune-rewind-retrain rounds.")
@click.option("--rewind-epoch", type=click.IntRange(min=0), default=1, show_default=True,
              help="With --lottery: epoch whose weights survivors are reset to (< --epochs).")
@click.option("--sparse-training", type=click.Choice(["rigl"]), default=None,
              help="With --sparsity: train at a fixed sparsity from the start, moving the mask "
                   "(RigL drop-and-grow).")
@click.option("--distribution", type=click.Choice(["erk", "uniform"]), default="erk",
              show_default=True, help="With --lottery or --sparse-training: per-layer sparsity "
              "(erk keeps small layers denser at the same total).")
@click.option("--keep-sensitive/--prune-sensitive", "keep_sensitive", default=None,
              help="With --sparsity: leave the first conv and depthwise kernels dense and reach "
              "the sparsity over the rest [default: keep for magnitude pruning, prune for "
              "--lottery and --sparse-training, whose erk distribution already keeps them "
              "denser].")
@click.option("--train", type=click.Path(path_type=Path), help="Labelled training data (.npz "
              "with x and y, .csv, or an image folder) for fine-tuning.")
@click.option("--epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Fine-tuning epochs after pruning (--lottery: the dense run's epochs, "
                   "default 8; --sparse-training: training epochs, default 10).")
@click.option("--distill", is_flag=True, help="Fine-tune distilled from the original model.")
@click.option("--temperature", type=float, default=4.0, show_default=True)
@click.option("--alpha", type=float, default=0.7, show_default=True,
              help="Weight of the distillation loss (1 - alpha weighs the labels).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", "learning_rate", type=float, default=1e-3, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Output .keras (default "
              "<model>.pruned.keras or <model>.sparse.keras).")
@json_option
def prune_cmd(model, ratio, criterion, round_to, global_ranking, min_channels, protect,
              no_protect_first, plan_path, plan_only, sparsity, schedule, pattern, lottery,
              rounds, rewind_epoch, sparse_training, distribution, keep_sensitive, train, epochs,
              distill, temperature, alpha, batch_size, learning_rate, out, as_json):
    """Prune MODEL: remove channels (--ratio) for a smaller, faster model, or zero weights
    (--sparsity; gradual, --lottery or --sparse-training rigl) for a smaller compressed file.
    Output shapes never change."""
    from edgekit.errors import InputError

    if (lottery or sparse_training) and sparsity is None:
        raise InputError("--lottery and --sparse-training need --sparsity (the target fraction "
                         "of zeros)")
    if (ratio is None) == (sparsity is None) and plan_path is None:
        raise InputError("give either --ratio (structured pruning) or --sparsity (unstructured)")
    if lottery and sparse_training:
        raise InputError("give --lottery or --sparse-training, not both")
    if lottery or sparse_training:
        return _sparse_technique(model, sparsity, lottery, rounds, rewind_epoch, sparse_training,
                                 distribution, bool(keep_sensitive), train, epochs,
                                 batch_size, learning_rate, out, as_json)
    if sparsity is not None:
        return _sparsify(model, sparsity, schedule, pattern, keep_sensitive is not False, train,
                         epochs, batch_size, learning_rate, out, as_json)
    from edgekit import train_api
    from edgekit.profiling import profile_model

    out = out or _default_out(model, "pruned")
    source = train_api.load_keras_model(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if plan_only:
            from converters.pruning import PruneSpec, plan_pruning

            data = train_api.load_training_data(train, source) if train else None
            plan = plan_pruning(source, PruneSpec(
                ratio=ratio, criterion=criterion, round_to=round_to, global_ranking=global_ranking,
                min_channels=min_channels, protect_first_last=not no_protect_first,
                protect=tuple(protect)), data=data)
            path = plan.save(Path(out).with_suffix(".plan.json"))
            notes = _print_warnings(caught)
            if as_json:
                emit_json({"plan": str(path), **plan.summary(), "warnings": notes})
            else:
                console.print(f"plan written to {path}: {plan.summary()}")
            return
        with _spinner("pruning", as_json):
            pruned, plan = train_api.prune(
                source, ratio if ratio is not None else 0.5, criterion=criterion,
                round_to=round_to, global_ranking=global_ranking, min_channels=min_channels,
                protect_first_last=not no_protect_first, protect=protect, train=train,
                epochs=epochs, distill=distill, temperature=temperature, alpha=alpha,
                batch_size=batch_size, learning_rate=learning_rate, plan=plan_path, out=out,
                return_plan=True)
    notes = _print_warnings(caught)
    before, after = profile_model(source), profile_model(pruned)
    plan_file = Path(out).with_suffix(".plan.json")
    if as_json:
        emit_json({"out": str(out), "plan": str(plan_file), **plan.summary(),
                   "before": _totals(before), "after": _totals(after), "warnings": notes})
        return
    print_table(_cost_table("pruning", [("original", before), ("pruned", after)]))
    console.print(f"{len(plan.pruned_groups)} of {len(plan.groups)} channel groups pruned; "
                  f"wrote {out} and {plan_file}")


def _totals(prof) -> dict:
    return {"params": prof.params, "macs": prof.macs, "flops": prof.flops,
            "fp32_bytes": prof.fp32_bytes}


def _sparse_technique(model, sparsity, lottery, rounds, rewind_epoch, sparse_training,
                      distribution, keep_sensitive, train, epochs, batch_size, learning_rate, out, as_json):
    from edgekit import train_api
    from edgekit.cli.compress_cmds import size_table

    if lottery:
        out = out or _default_out(model, "ticket")
        with _spinner("lottery-ticket pruning", as_json):
            _, report = train_api.lottery_ticket(
                model, sparsity, rounds=rounds, rewind_epoch=rewind_epoch, train=train,
                epochs=epochs or 8, batch_size=batch_size, learning_rate=learning_rate,
                distribution=distribution, keep_sensitive=keep_sensitive, out=out)
    else:
        out = out or _default_out(model, "sparse")
        with _spinner(f"sparse training ({sparse_training})", as_json):
            _, report = train_api.sparse_train(
                model, sparsity, method=sparse_training, train=train, epochs=epochs or 10,
                batch_size=batch_size, learning_rate=learning_rate, distribution=distribution,
                keep_sensitive=keep_sensitive, out=out)
    if as_json:
        emit_json({"out": str(out), **report})
        return
    print_table(size_table(f"{report['technique']}: {100 * report['sparsity_measured']:.1f}% "
                             f"zeros in {report['kernels']} kernels", report))
    console.print(f"wrote {out} and {report['record']}; dense formats do not shrink on disk: "
                  f"ship it compressed")


def _sparsify(model, sparsity, schedule, pattern, keep_sensitive, train, epochs, batch_size, learning_rate, out,
              as_json):
    from converters.sparsity import SparsitySpec
    from edgekit import train_api

    out = out or _default_out(model, "sparse")
    spec = SparsitySpec(sparsity=sparsity, schedule=schedule, pattern=pattern,
                        keep_sensitive=keep_sensitive)
    with _spinner("sparsifying", as_json):
        _, report = train_api.sparsify(model, spec, train=train, epochs=epochs,
                                       batch_size=batch_size, learning_rate=learning_rate,
                                       out=out)
    if as_json:
        emit_json({"out": str(out), **report})
        return
    table = FitTable(title="sparsity")
    for col in ("model", "sparsity", "file", "gzip"):
        table.add_column(col, justify="left" if col == "model" else "right")
    table.add_row("original", "-", f"{report['dense_bytes'] / 1024:.1f} KiB",
                  f"{report['dense_gzip_bytes'] / 1024:.1f} KiB")
    table.add_row("sparse", f"{100 * report['sparsity']:.1f}%",
                  f"{report['sparse_bytes'] / 1024:.1f} KiB",
                  f"{report['sparse_gzip_bytes'] / 1024:.1f} KiB")
    print_table(table)
    if report["kept_dense"]:
        console.print(f"kept dense: {', '.join(report['kept_dense'])} (--prune-sensitive to "
                      f"prune them too); {100 * report['sparsity_all_kernels']:.1f}% over all "
                      f"kernels")
    console.print(f"wrote {out}; dense formats do not shrink on disk: ship it compressed")


@click.command("distill")
@click.option("--teacher", type=click.Path(path_type=Path), required=True, help="Teacher .keras.")
@click.option("--student", type=click.Path(path_type=Path), required=True, help="Student .keras.")
@click.option("--train", type=click.Path(path_type=Path), required=True,
              help="Labelled training data (.npz with x and y, .csv, or an image folder).")
@click.option("--eval", "eval_", type=click.Path(path_type=Path), help="Labelled eval data.")
@click.option("--temperature", type=float, default=4.0, show_default=True)
@click.option("--alpha", type=float, default=0.7, show_default=True,
              help="Weight of the distillation loss (1 - alpha weighs the labels).")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", "learning_rate", type=float, default=1e-3, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Output .keras (default "
              "<student>.distilled.keras).")
@json_option
def distill_cmd(teacher, student, train, eval_, temperature, alpha, epochs, batch_size,
                learning_rate, out, as_json):
    """Train STUDENT from a frozen TEACHER: alpha*KL(soft targets at T) + (1-alpha)*labels."""
    from edgekit import train_api

    out = out or _default_out(student, "distilled")
    with _spinner("distilling", as_json):
        _, result = train_api.distill(student, teacher, train, temperature=temperature,
                                      alpha=alpha, epochs=epochs, batch_size=batch_size,
                                      learning_rate=learning_rate, eval=eval_, out=out)
    if as_json:
        emit_json({"out": str(out), **result})
        return
    acc = result["accuracy"]
    console.print(f"wrote {out}; final loss {result['loss']:.4f}"
                  + (f", eval accuracy {100 * acc:.2f}%" if acc is not None else ""))


@click.command("qat")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--train", type=click.Path(path_type=Path), required=True,
              help="Labelled training data (.npz with x and y, .csv, or an image folder).")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", "learning_rate", type=float, default=1e-4, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Output .keras (default "
              "<model>.qat.keras).")
@json_option
def qat_cmd(model, train, epochs, batch_size, learning_rate, out, as_json):
    """Quantization-aware fine-tuning: train MODEL with int8 fake-quantized weights and
    activations, then `edgekit convert OUT --to tflite-int8` keeps the trained ranges."""
    from edgekit import train_api

    out = out or _default_out(model, "qat")
    with _spinner("quantization-aware training", as_json):
        _, result = train_api.qat(model, train, epochs=epochs, batch_size=batch_size,
                                  learning_rate=learning_rate, out=out)
    if as_json:
        emit_json({"out": str(out), **result})
        return
    console.print(f"wrote {out}; convert it with: edgekit convert {out} --to tflite-int8 "
                  f"--calibration <data>")


@click.command("profile")
@click.argument("model", type=click.Path(path_type=Path))
@json_option
def profile_cmd(model, as_json):
    """Parameters, MACs/FLOPs, distinct kernel values and zeros per layer of a Keras MODEL,
    and its file size: as is, gzip and zstd (measured)."""
    from edgekit import train_api

    prof = train_api.profile(model)
    if as_json:
        emit_json(prof.to_dict())
        return
    table = FitTable(title=f"{prof.model}")
    cols = ("layer", "class", "output", "params", "MACs", "% MACs", "unique", "zeros")
    for col in cols:
        table.add_column(col, justify="left" if col in cols[:3] else "right",
                         wrap=col in ("layer", "output"))
    for lp in prof.layers:
        table.add_row(lp.name, lp.class_name, str(list(lp.output_shape)), f"{lp.params:,}",
                      f"{lp.macs:,}", f"{100 * lp.macs / max(1, prof.macs):.1f}",
                      "-" if lp.unique_values is None else f"{lp.unique_values:,}",
                      "-" if lp.sparsity is None else f"{100 * lp.sparsity:.1f}%")
    print_table(table)
    console.print(f"total: {prof.params:,} params, {prof.macs:,} MACs ({prof.flops:,} FLOPs), "
                  f"{prof.fp32_bytes / 1024:.1f} KiB fp32, {prof.int8_bytes / 1024:.1f} KiB int8")
    if prof.file:
        f = prof.file
        console.print(f"file: {f['bytes'] / 1024:.1f} KiB, gzip {f['gzip_bytes'] / 1024:.1f} KiB, "
                      f"zstd {f['zstd_bytes'] / 1024:.1f} KiB (measured)")


commands = [prune_cmd, distill_cmd, qat_cmd, profile_cmd]

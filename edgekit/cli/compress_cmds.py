"""`edgekit cluster` (weight sharing), and the size tables shared with `edgekit prune --lottery`
and `edgekit prune --sparse-training`."""

from __future__ import annotations

import warnings
from pathlib import Path

import click
from rich.table import Table

from edgekit.cli.common import FitTable, console, emit_json, json_option, print_table


def size_table(title: str, report: dict) -> Table:
    """Source vs compressed model file: bytes, gzip and zstd (all measured)."""
    table = FitTable(title=title)
    for col in ("model", "file", "gzip", "zstd", "zstd ×"):
        table.add_column(col, justify="left" if col == "model" else "right")
    src, out = report.get("source_sizes"), report["sizes"]
    base = (src or out)["bytes"]
    for name, sz in (("original", src), ("compressed", out)):
        if sz is None:
            continue
        table.add_row(name, f"{sz['bytes'] / 1024:.1f} KiB", f"{sz['gzip_bytes'] / 1024:.1f} KiB",
                      f"{sz['zstd_bytes'] / 1024:.1f} KiB", f"{sz['zstd_bytes'] / base:.2f}x")
    return table


def caught_notes(caught, category) -> list:
    notes = [str(w.message) for w in caught if issubclass(w.category, category)]
    for note in notes:
        console.print(f"[yellow]warning[/yellow]: {note}")
    return notes


@click.command("cluster")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--clusters", type=int, default=16, show_default=True,
              help="Shared values per layer (or per channel), >= 2.")
@click.option("--per-channel", is_flag=True, help="k values per output channel instead of per "
              "layer (closer to the original; int8 per-channel keeps <= k values per channel).")
@click.option("--init", type=click.Choice(["linear", "density", "kmeans++"]), default="kmeans++",
              show_default=True, help="Centroid initialisation before k-means.")
@click.option("--preserve-sparsity", is_flag=True, help="Zeros stay zero (for pruned models).")
@click.option("--layer", "layers", multiple=True, metavar="NAME",
              help="Cluster only this layer (repeatable; default: every clusterable layer).")
@click.option("--no-fold-bn", "fold_bn", flag_value=False, default=True,
              help="Do not fold BatchNorm into the layer before it first (then the converted "
              "file holds k values per channel, not per layer).")
@click.option("--train", type=click.Path(path_type=Path), help="Labelled training data (.npz "
              "with x and y, .csv, or an image folder) for fine-tuning the centroids.")
@click.option("--epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Fine-tuning epochs (0 = k-means only).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", "learning_rate", type=float, default=3e-4, show_default=True)
@click.option("--out", type=click.Path(path_type=Path),
              help="Output .keras (default <model>.clustered.keras).")
@json_option
def cluster_cmd(model, clusters, per_channel, init, preserve_sparsity, layers, fold_bn, train,
                epochs, batch_size, learning_rate, out, as_json):
    """Cluster MODEL's weights: each layer keeps at most --clusters distinct values, so the
    file compresses far better (gzip/zstd) and converts with every target."""
    from converters.clustering import ClusteringWarning
    from edgekit import train_api

    out = out or model.with_name(f"{model.stem}.clustered.keras")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = train_api.cluster(model, clusters, per_channel=per_channel, init=init,
                                      preserve_sparsity=preserve_sparsity, layers=layers,
                                      fold_batchnorm=fold_bn, train=train, epochs=epochs, batch_size=batch_size,
                                      learning_rate=learning_rate, out=out)
    notes = caught_notes(caught, ClusteringWarning) if not as_json else \
        [str(w.message) for w in caught if issubclass(w.category, ClusteringWarning)]
    if as_json:
        emit_json({"out": str(out), **report, "warnings": notes})
        return
    table = FitTable(title=f"clustering, k = {clusters}{' per channel' if per_channel else ''}")
    for col in ("layer", "weights", "unique values", "max per channel"):
        table.add_column(col, justify="left" if col == "layer" else "right",
                         wrap=col == "layer")
    for name, lr in report["layers"].items():
        table.add_row(name, f"{lr['weights']:,}", str(lr["unique_values"]),
                      str(lr["max_unique_per_channel"]))
    print_table(table)
    print_table(size_table("sizes (measured)", report))
    if report.get("batchnorm_folded"):
        console.print(f"folded {len(report['batchnorm_folded'])} BatchNorm layers into the "
                      f"layer before each (--no-fold-bn to keep them)")
    console.print(f"wrote {out} and {report['record']}; ship it compressed (dense formats store "
                  f"every weight)")


commands = [cluster_cmd]

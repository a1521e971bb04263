"""`edgekit report` (HTML / Markdown / CSV from benchmark results) and `edgekit bundle` (app
bundles for Android and iOS)."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli.common import console, emit_json, json_option
from edgekit.errors import InputError
from edgekit.results import DEFAULT_DB

_EXT = {"html": "html", "md": "md", "csv": "csv"}


@click.command("report")
@click.argument("json_files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--db", default=None, metavar="PATH|URL",
              help="Results database: a SQLite file or an SQLAlchemy URL such as "
                   f"postgresql://user@host/db (default: {DEFAULT_DB} when no JSON files are "
                   "given).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Report file (default: report.html / report.md / report.csv).")
@click.option("--format", "fmt", type=click.Choice(sorted(_EXT)), default="html",
              show_default=True, help="html: self-contained page with plots; md: summary for a "
                                      "PR comment; csv: one row per device and artifact.")
@json_option
def report_cmd(json_files, db, out, fmt, as_json):
    """Write a report from a results database and/or `edgekit bench --json` output JSON_FILES."""
    from edgekit.report import write_report

    for f in json_files:
        if not f.is_file():
            raise InputError(f"results JSON {f} does not exist")
    if db is None and not json_files:
        db = DEFAULT_DB
    out = out or Path(f"report.{_EXT[fmt]}")
    path, data = write_report(out, db=db, json_files=json_files, format=fmt)
    rows = sum(len(d.rows) for d in data.devices)
    if as_json:
        emit_json({"out": str(path), "format": fmt, "devices": [d.device for d in data.devices],
                   "artifacts": rows, "sources": data.sources,
                   "warnings": [w for d in data.devices for w in d.warnings]})
        return
    console.print(f"report: {path} ({len(data.devices)} device(s), {rows} artifact result(s))")
    for d in data.devices:
        for w in d.warnings:
            console.print(f"[yellow]warning[/yellow] {d.device}: {w}")


@click.command("bundle")
@click.argument("build", type=click.Path(path_type=Path))
@click.option("--platform", type=click.Choice(["android", "ios"]), required=True,
              help="android: Kotlin helper (LiteRT / ONNX Runtime Android); ios: Swift helper "
                   "(TensorFlowLiteSwift / onnxruntime-objc).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="App folder: the Android module (app/: model to src/main/assets/edgekit/, "
                   "Kotlin to src/main/java/<package>/) or the iOS target (MyApp/: Resources/, "
                   "Sources/); a folder inside assets/ or Resources/ keeps the model there.")
@click.option("--artifact", "artifacts", multiple=True,
              help="Target or file name from the manifest (repeatable); default: the first of "
                   "tflite-int8, tflite-dynamic, tflite-fp16, tflite-fp32, ... that exists.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path),
              help="labels.txt: one class label per line, for output 0.")
@click.option("--mean", type=float, multiple=True,
              help="Normalization mean of input 0 (repeat once per channel).")
@click.option("--std", type=float, multiple=True,
              help="Normalization std of input 0 (repeat once per channel).")
@click.option("--name", help="Model name for metadata and helper class (default: source stem).")
@click.option("--version", "model_version", default="1", show_default=True,
              help="Model version string recorded in the metadata.")
@click.option("--max-bytes", type=int, help="Fail (exit 1) when the model files exceed this.")
@click.option("--db", metavar="PATH|URL",
              help="Results database (a SQLite file or an SQLAlchemy URL): record measured "
                   "latency/memory/accuracy per device.")
@click.option("--code-out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the generated Kotlin/Swift helper (default: the app's source "
                   "folder, see --out).")
@click.option("--package", default="edgekit.models", show_default=True,
              help="Kotlin package of the Android helper.")
@json_option
def bundle_cmd(build, platform, out, artifacts, labels, mean, std, name, model_version,
               max_bytes, db, code_out, package, as_json):
    """Bundle a model from BUILD (a folder with manifest.json) for an Android or iOS app."""
    from edgekit.bundle import BundleOptions, Platform, build_bundle
    from edgekit.bundle.metadata import read_labels

    if not build.exists():
        raise InputError(f"build folder {build} does not exist: run `edgekit convert` first")
    options = BundleOptions(
        platform=Platform(platform), artifacts=tuple(artifacts),
        labels=tuple(read_labels(labels)) if labels else (), mean=tuple(mean), std=tuple(std),
        name=name, version=model_version, max_bytes=max_bytes, db=db, code_out=code_out,
        package=package)
    result = build_bundle(build, options, out)
    if as_json:
        emit_json(result.to_dict())
        return
    for m in result.models:
        console.print(f"{m['file']}: {m['bytes']:,} bytes ({m['target']}), helper {m['helper']}")
    console.print(f"bundle: {result.out} ({len(result.files)} files, SHA256SUMS); helpers in "
                  f"{result.code}")


commands = [report_cmd, bundle_cmd]

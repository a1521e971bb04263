"""App bundles: a model from a build folder, its metadata and a generated helper for an app.

``build_bundle(build_dir, BundleOptions(platform=Platform.ANDROID), out)`` writes, where the app's
build uses them (``edgekit.bundle.layout``: for Android, ``out`` is the app module and the files go
to ``src/main/assets/edgekit/`` and ``src/main/java/<package>/``; for iOS, ``out`` is the app
target's folder and they go to ``Resources/`` and ``Sources/``):

- the model file(s), with metadata embedded (TFLite: TFLITE_METADATA + labels.txt zipped on;
  ONNX: ``metadata_props``; ``.ort`` files are copied unchanged: their metadata is fixed when
  ORT writes them);
- ``labels.txt`` when labels are given;
- ``edgekit.json`` (schema ``edgekit.bundle`` v1): names, shapes, dtypes, quantization,
  normalization, labels, recipe, fidelity, measured figures, and the sha256 of every file;
- the helper (``<Class>.kt`` or ``<Class>.swift``) in the layout's source folder, or in
  ``code_out`` when given;
- ``SHA256SUMS`` (``sha256sum -c`` format) over the files in the models folder, edgekit.json
  included.

Bundles are byte-reproducible: same build, options and results give the same bytes (sorted
keys, no timestamps, fixed zip dates). Every file is written under a temp name, then renamed.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Optional, Union

from edgekit.artifact import Artifact, read_manifest
from edgekit.errors import EdgekitError, InputError
from edgekit.fsutil import atomic_output, sha256_file

log = logging.getLogger(__name__)

SUMS_FILE = "SHA256SUMS"
JSON_FILE = "edgekit.json"
#: Which artifact a bundle takes when none is named: the first of these the build has.
PREFERENCE = ("tflite-int8", "tflite-dynamic", "tflite-fp16", "tflite-fp32", "tflite-int16x8",
              "ort", "onnx-int8", "onnx-dynamic", "onnx-fp16", "onnx-fp32")


class Platform(str, Enum):
    """App platforms a bundle can target."""

    ANDROID = "android"
    IOS = "ios"


class BundleTooLarge(EdgekitError):
    """The bundled model(s) exceed the app's size budget (``--max-bytes``)."""

    exit_code = 1


@dataclass(frozen=True)
class BundleOptions:
    """What goes into a bundle and how.

    Attributes:
        platform: android or ios.
        artifacts: target names or file names from the manifest; empty: the first of
            ``PREFERENCE`` present in the build.
        labels: class labels of output 0 (``read_labels`` reads a labels.txt).
        mean, std: normalization of input 0, ``(x - mean[c]) / std[c]`` per channel (channels
            last); both empty when the model takes already-normalized values.
        name: model name in metadata and helper class names; default: the source file's stem.
        version: model version string in the metadata.
        max_bytes: fail (``BundleTooLarge``) when the model files together exceed this.
        db: a results database: the newest successful figures per device are recorded.
        code_out: folder for the generated helper; default: the layout's source folder
            (``edgekit.bundle.layout``).
        package: Kotlin package of the Android helper.
    """

    platform: Platform = Platform.ANDROID
    artifacts: tuple = ()
    labels: tuple = ()
    mean: tuple = ()
    std: tuple = ()
    name: Optional[str] = None
    version: str = "1"
    max_bytes: Optional[int] = None
    db: Union[str, Path, None] = None  # a SQLite path or an SQLAlchemy URL
    code_out: Optional[Path] = None
    package: str = "edgekit.models"

    def validate(self) -> "BundleOptions":
        """Raises InputError on inconsistent options."""
        if len(self.mean) != len(self.std):
            raise InputError(f"--mean and --std need the same number of values (one per channel, "
                             f"or one for all), got {len(self.mean)} and {len(self.std)}")
        if any(s == 0 for s in self.std):
            raise InputError("--std values must be non-zero")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise InputError(f"--max-bytes must be a positive byte count, got {self.max_bytes}")
        if not self.version.strip():
            raise InputError("--version must not be empty")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", self.package):
            raise InputError(f"--package {self.package!r} is not a Kotlin package name: expected "
                             "dot-separated identifiers, e.g. com.example.app")
        return self


@dataclass
class BundleResult:
    """What ``build_bundle`` wrote.

    Attributes:
        out: the models folder (model files, labels.txt, edgekit.json, SHA256SUMS).
        platform: android or ios.
        files: path relative to ``out`` → sha256, of the files SHA256SUMS covers.
        models: the edgekit.json model entries.
        model_bytes: bytes of the model files together (what ``max_bytes`` is checked against).
        helpers: paths of the generated Kotlin / Swift helpers.
        root: the folder the bundle was asked for (``--out``).
        code: the folder the helpers went to.
    """

    out: Path
    platform: str
    files: dict
    models: list
    model_bytes: int
    helpers: list = field(default_factory=list)
    root: Optional[Path] = None
    code: Optional[Path] = None

    def to_dict(self) -> dict:
        return {"out": str(self.out), "platform": self.platform, "files": self.files,
                "root": str(self.root or self.out), "code": str(self.code or self.out),
                "model_bytes": self.model_bytes, "helpers": [str(h) for h in self.helpers],
                "models": [{k: m[k] for k in ("file", "class", "target", "format", "sha256",
                                               "bytes")} for m in self.models]}


def select_artifacts(artifacts: list[Artifact], wanted: tuple) -> list[Artifact]:
    """The artifacts named in ``wanted`` (target or file name), or the preferred one.

    Raises:
        InputError: a name the manifest does not have, or a manifest with no artifact.
    """
    if not artifacts:
        raise InputError("the manifest lists no artifacts: run `edgekit convert` first")
    if not wanted:
        by_target = {a.target: a for a in artifacts}
        first = next((by_target[t] for t in PREFERENCE if t in by_target), artifacts[0])
        return [first]
    chosen = []
    for w in wanted:
        match = [a for a in artifacts if w in (a.target, Path(a.path).name)]
        if not match:
            raise InputError(f"no artifact {w!r} in the manifest; it has: "
                             f"{', '.join(a.target for a in artifacts)}")
        if match[0] not in chosen:
            chosen.append(match[0])
    return chosen


def _checked_bytes(a: Artifact) -> bytes:
    path = Path(a.path)
    if not path.is_file():
        raise InputError(f"artifact {path} (target {a.target}) listed in the manifest is missing")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != a.sha256:
        raise InputError(f"{path} changed since it was converted (sha256 differs from the "
                         "manifest): re-run `edgekit convert`")
    return data


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def build_bundle(build_dir, options: BundleOptions, out) -> BundleResult:
    """Write an app bundle for ``options.platform`` from the manifest in ``build_dir``.

    Args:
        build_dir: a folder with manifest.json (or the manifest file).
        options: BundleOptions.
        out: the app folder (``edgekit.bundle.layout``: Android module or source set, iOS
            target folder, or the assets / Resources folder itself); created if missing.

    Returns:
        BundleResult.

    Raises:
        InputError: bad build folder, artifact name, labels or options; nothing is written.
        BundleTooLarge: the models exceed ``options.max_bytes``; nothing is written.
    """
    from edgekit._version import __version__
    from edgekit.bundle import android, ios, metadata
    from edgekit.bundle.codegen import class_name
    from edgekit.bundle.layout import android_layout, ios_layout

    options = options.validate()
    platform = Platform(options.platform)
    chosen = select_artifacts(read_manifest(build_dir), tuple(options.artifacts))
    labels = list(options.labels)
    name = options.name or Path(chosen[0].source.get("path", "model")).stem
    multi = len(chosen) > 1
    store = _open_store(options.db)
    models, payloads = [], {}
    try:
        for a in chosen:
            data = _embed(a, _checked_bytes(a), name, options, labels)
            file_name = Path(a.path).name
            measured = metadata.measured_figures(store, a.sha256) if store else []
            cls = class_name(f"{name} {a.target}" if multi else name)
            entry = metadata.model_entry(a, file_name, cls, labels=labels, mean=options.mean,
                                         std=options.std, measured=measured)
            entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
            entry["metadata_embedded"] = {"tflite": "TFLITE_METADATA", "onnx": "metadata_props"}\
                .get(a.format)
            models.append(entry)
            payloads[file_name] = data
    finally:
        if store:
            store.close()
    total = sum(len(d) for d in payloads.values())
    if options.max_bytes is not None and total > options.max_bytes:
        raise BundleTooLarge(
            f"bundle over budget: {', '.join(f'{k} {len(v):,} B' for k, v in payloads.items())} "
            f"= {total:,} bytes > --max-bytes {options.max_bytes:,}; pick a smaller artifact "
            "(e.g. --artifact tflite-int8) or raise the budget")
    if platform is Platform.ANDROID:
        layout = android_layout(out, options.package, options.code_out)
    else:
        layout = ios_layout(out, options.code_out)
    build_folder = Path(build_dir) if Path(build_dir).is_dir() else Path(build_dir).parent
    for folder in (layout.root, layout.models, layout.code):
        if folder.resolve() == build_folder.resolve():
            raise InputError(f"--out {out} puts bundle files into the build folder itself: "
                             "bundling there would replace the converted artifacts; pick an app "
                             "folder")
    try:
        layout.models.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create bundle folder {layout.models}: {e.strerror or e}") from e
    models_dir = layout.models
    files: dict[str, str] = {}
    for file_name, data in payloads.items():
        files[file_name] = _write(models_dir / file_name, data)
    if labels:
        files[metadata.LABELS_FILE] = _write(models_dir / metadata.LABELS_FILE,
                                             ("\n".join(labels) + "\n").encode())
    plat = android if platform is Platform.ANDROID else ios
    helpers = []
    for entry in models:
        fname, text = plat.helper(entry, out=models_dir, name=name, labels=labels,
                                  package=options.package, generator=f"edgekit {__version__}")
        entry["helper"] = fname
        digest = _write(layout.code / fname, text.encode())
        helpers.append(layout.code / fname)
        if layout.code.resolve() == models_dir.resolve():
            files[fname] = digest
    doc = metadata.bundle_document(name, options.version, platform.value, labels, models, files)
    files[JSON_FILE] = _write(models_dir / JSON_FILE, metadata.dumps(doc))
    sums = "".join(f"{files[k]}  {k}\n" for k in sorted(files))
    _write(models_dir / SUMS_FILE, sums.encode())
    return BundleResult(models_dir, platform.value, dict(sorted(files.items())), models, total,
                        helpers, root=layout.root, code=layout.code)


def _embed(a: Artifact, data: bytes, name: str, options: BundleOptions, labels) -> bytes:
    from edgekit.bundle import metadata

    if a.format == "tflite":
        return metadata.embed_tflite(data, a, name, options.version, labels, options.mean,
                                     options.std)
    if a.format == "onnx":
        return metadata.embed_onnx(data, a, name, options.version, labels, options.mean,
                                   options.std)
    return data


def _open_store(db):
    if db is None:
        return None
    from edgekit.results import ResultStore, is_url

    if not is_url(db) and not Path(db).is_file():
        raise InputError(f"results database {db} does not exist (drop --db to bundle without "
                         "measured figures)")
    return ResultStore(db, create=False)


def verify_bundle(out) -> list[str]:
    """Files in ``out`` whose sha256 no longer matches SHA256SUMS (empty when all match).

    Raises:
        InputError: no SHA256SUMS in ``out``.
    """
    out = Path(out)
    sums = out / SUMS_FILE
    if not sums.is_file():
        raise InputError(f"{out} has no {SUMS_FILE}: not an edgekit bundle")
    bad = []
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        path = out / name
        if not path.is_file() or sha256_file(path) != digest:
            bad.append(name)
    return bad


__all__ = ["BundleOptions", "BundleResult", "BundleTooLarge", "Platform", "build_bundle",
           "select_artifacts", "verify_bundle"]

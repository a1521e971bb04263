"""Where a bundle's files go in an app project, so each lands where the app's build uses it.

Android (Gradle): the model and its metadata under ``src/main/assets/edgekit/`` (packed into
the APK, read with ``context.assets``), the Kotlin helper under ``src/main/java/<package>/``
(compiled by the Kotlin plugin). iOS (Xcode / SwiftPM): the model and its metadata in
``Resources/`` (copied into the app bundle, found by ``Bundle.main``), the Swift helper in
``Sources/`` (compiled into the app target).

``--out`` may name the app module (``app/``), one of its source sets (``app/src/main``) or,
as before, the assets / Resources folder itself (``app/src/main/assets/edgekit/``); the other
folders are found from it. ``--code-out`` overrides where the helper goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

#: Subfolder of the app's assets that holds an Android bundle when ``--out`` is the module.
ASSETS_SUBDIR = "edgekit"


@dataclass(frozen=True)
class Layout:
    """The folders one bundle writes into.

    Attributes:
        root: the folder ``--out`` named.
        models: model file(s), labels.txt, edgekit.json and SHA256SUMS.
        code: the generated helper(s).
    """

    root: Path
    models: Path
    code: Path


def _last(parts: tuple, name: str) -> Optional[int]:
    return len(parts) - 1 - parts[::-1].index(name) if name in parts else None


def android_layout(out, package: str, code_out=None) -> Layout:
    """The Gradle layout for ``out``.

    - ``.../assets/...`` (as before): models there; Kotlin in the source set's ``java/<package>``
      (``app/src/main/assets/edgekit`` → ``app/src/main/java/edgekit/models``);
    - a source set (``app/src/main``): ``assets/edgekit`` and ``java/<package>`` inside it;
    - anything else is the app module: ``src/main/assets/edgekit`` and ``src/main/java/<package>``.
    """
    out = Path(out)
    package_dir = Path(*package.split("."))
    i = _last(out.parts, "assets")
    if i is not None:
        source_set, models = Path(*out.parts[:i]), out
    else:
        source_set = out if out.parent.name == "src" else out / "src" / "main"
        models = source_set / "assets" / ASSETS_SUBDIR
    code = Path(code_out) if code_out else source_set / "java" / package_dir
    return Layout(out, models, code)


def ios_layout(out, code_out=None) -> Layout:
    """The Xcode / SwiftPM layout for ``out`` (the app target's folder, e.g. ``MyApp/``).

    - ``.../Resources/...``: models there; Swift in ``Sources/`` beside that ``Resources``;
    - anything else: ``out/Resources`` and ``out/Sources``.
    """
    out = Path(out)
    i = _last(out.parts, "Resources")
    if i is not None:
        base, models = Path(*out.parts[:i]), out
    else:
        base, models = out, out / "Resources"
    code = Path(code_out) if code_out else base / "Sources"
    return Layout(out, models, code)


def asset_path(models: Path, file_name: str) -> str:
    """The model's path inside the APK's assets: the part of ``models`` after its last
    ``assets`` folder (``app/src/main/assets/edgekit`` → ``edgekit/<file>``), else the file name
    alone."""
    parts = Path(models).resolve().parts
    i = _last(parts, "assets")
    if i is not None:
        return "/".join([*parts[i + 1:], file_name])
    return file_name

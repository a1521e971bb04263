"""Android: the Kotlin helper for one model; where the files go is ``edgekit.bundle.layout``."""

from __future__ import annotations

from pathlib import Path

from edgekit.bundle.codegen import kotlin_source
from edgekit.bundle.layout import asset_path

PLATFORM = "android"
HELPER_SUFFIX = ".kt"


def helper(model: dict, *, out: Path, name: str, labels, package: str,
           generator: str) -> tuple[str, str]:
    """(file name, Kotlin source) of the helper for one model entry (``out``: the folder in the
    app's assets that holds the model)."""
    text = kotlin_source(model, name=name, labels=labels, asset_path=asset_path(out, model["file"]),
                         package=package, generator=generator)
    return model["class"] + HELPER_SUFFIX, text

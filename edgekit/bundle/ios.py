"""iOS: the Swift helper for one model; where the files go is ``edgekit.bundle.layout`` (the
model a resource of the app target, the helper one of its sources)."""

from __future__ import annotations

from pathlib import Path

from edgekit.bundle.codegen import swift_source

PLATFORM = "ios"
HELPER_SUFFIX = ".swift"


def helper(model: dict, *, out: Path, name: str, labels, package: str,
           generator: str) -> tuple[str, str]:
    """(file name, Swift source) of the helper for one model entry (``package`` is unused:
    Swift types live in the app module)."""
    return model["class"] + HELPER_SUFFIX, swift_source(model, name=name, labels=labels,
                                                        generator=generator)

"""One shape for every versioned JSON document edgekit writes, and one reader for it.

Shape (flat)::

    {"schema": "edgekit.manifest", "schema_version": 1, "generated_by": "edgekit 0.1.0", ...data}

Why flat ``schema``/``schema_version`` rather than torchao's nested ``{"_type", "_version",
"_data"}``: eight of the ten document types already on disk use the flat keys, among them the
ones other programs read (``manifest.json`` with its JSON Schema in ``edgekit/schemas/``, the
result documents of docs/results-schema.md, the ``edgekit.json`` shipped inside app bundles). Nesting
them would break every ``jq .artifacts`` and every generated app for no gain: what the torchao
envelope buys is that the type is checked, unknown types are refused and old versions fail with
a hint, and this module does that for the flat shape. The two documents that were written nested
(the pruning plan and the compression record) are now written flat; ``unwrap`` still reads
their nested form, so files written by earlier edgekits keep loading.

Use::

    doc = wrap("edgekit.result", 1, fields)                       # write
    fields = unwrap(doc, "edgekit.result", {1: None})             # read (current version: None)
    fields = unwrap(doc, "edgekit.plan", {1: upgrade_v1, 2: None}, rerun="plan the model again")

``supported`` maps each readable version to a function that turns that version's data into the
current version's (``None`` for the current version, which is the highest key). Any other version
is refused with a :class:`~edgekit.errors.DocumentError` naming the edgekit that wrote it: a newer
one asks to upgrade edgekit, an older one says how to regenerate the file (``rerun``).

This module sits low (it imports only ``edgekit.errors`` and ``edgekit._version``) so converters
and calibration_data can use it as they use ``edgekit.errors``.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

from edgekit._version import __version__
from edgekit.errors import DocumentError

#: The keys the envelope owns; ``wrap`` refuses data that uses them, ``unwrap`` strips them.
TYPE_KEY, VERSION_KEY, GENERATOR_KEY = "schema", "schema_version", "generated_by"
ENVELOPE_KEYS = (TYPE_KEY, VERSION_KEY, GENERATOR_KEY)
# The nested torchao-style form the pruning plan and the compression record were written in.
_LEGACY_KEYS = ("_type", "_version", "_data")

Upgrade = Optional[Callable[[dict], dict]]


def generator() -> str:
    """What ``generated_by`` says for documents this edgekit writes: ``"edgekit X.Y.Z"``."""
    return f"edgekit {__version__}"


def wrap(doc_type: str, version: int, data: Mapping) -> dict:
    """The envelope for ``data``: ``{"schema", "schema_version", "generated_by", **data}``.

    Args:
        doc_type: the document type, ``"edgekit.<name>"``.
        version: the version of ``data``'s layout.
        data: the document's own fields (a mapping that does not use the envelope keys).

    Raises:
        ValueError: ``data`` uses an envelope key (a programming error, not a user one).
    """
    clash = [k for k in ENVELOPE_KEYS if k in data]
    if clash:
        raise ValueError(f"{doc_type} data may not use the envelope keys {clash}")
    return {TYPE_KEY: doc_type, VERSION_KEY: version, GENERATOR_KEY: generator(), **data}


def _label(doc_type: str) -> str:
    return doc_type.split(".", 1)[-1].replace("_", " ")


def unwrap(obj, doc_type: str, supported: Mapping[int, Upgrade], *, where: str = "",
           rerun: str = "regenerate it with this edgekit", aliases: tuple[str, ...] = (),
           label: Optional[str] = None) -> dict:
    """The data of an envelope written by :func:`wrap` (or by an older edgekit), upgraded to
    the current version.

    Args:
        obj: the parsed JSON document.
        doc_type: the type expected; documents of any other type are refused.
        supported: readable versions, each mapped to an upgrade function to the current
            version's data, or ``None`` for the current version (the highest key).
        where: where the document came from (a path), to start error messages with.
        rerun: what regenerates the document, said when it is too old to read.
        aliases: earlier names of ``doc_type`` still accepted.
        label: the document's name in messages (default: from ``doc_type``, e.g. "manifest").

    Returns:
        A new dict of the document's own fields (the envelope keys removed).

    Raises:
        DocumentError: not a JSON object, another type, or a version not in ``supported``.
    """
    label = label or _label(doc_type)
    at = f"{where}: " if where else ""
    if not isinstance(obj, dict):
        raise DocumentError(f"{at}not an edgekit {label}: expected a JSON object with "
                            f"schema {doc_type!r}, got {type(obj).__name__}")
    if TYPE_KEY not in obj and "_type" in obj:
        got, version, data = obj.get("_type"), obj.get("_version"), obj.get("_data")
        data = dict(data) if isinstance(data, dict) else {}
        by = data.pop(GENERATOR_KEY, None)
    else:
        got, version, by = obj.get(TYPE_KEY), obj.get(VERSION_KEY), obj.get(GENERATOR_KEY)
        data = {k: v for k, v in obj.items() if k not in ENVELOPE_KEYS}
    if got != doc_type and got not in aliases:
        raise DocumentError(f"{at}not an edgekit {label} (schema={got!r}; expected {doc_type!r})")
    current = max(supported)
    if supported[current] is not None:
        raise ValueError(f"{doc_type}: the current version {current} must map to None")
    if version not in supported or isinstance(version, bool):
        written = f"written by {by}" if by else "written by another edgekit"
        if isinstance(version, int) and not isinstance(version, bool) and version > current:
            todo = f"upgrade edgekit to read it (this is edgekit {__version__})"
        else:
            todo = rerun
        raise DocumentError(f"{at}{label} schema_version {version!r} is not supported (this "
                            f"edgekit reads version {_versions(supported)}; {written}): {todo}")
    upgrade = supported[version]
    return upgrade(data) if upgrade is not None else data


def _versions(supported: Mapping[int, Upgrade]) -> str:
    return ", ".join(str(v) for v in sorted(supported))

"""The sidecar that records how a model was compressed: ``<model>.compression.json``.

``edgekit cluster`` and ``edgekit prune --lottery / --sparse-training`` write it beside the
``.keras`` they produce: the technique, its parameters, the measured sizes and the sha256 of the
model file it describes. ``edgekit convert`` copies ``technique`` and ``params`` into each
artifact's ``source.compression`` in the manifest when the record's sha256 matches the source
file (a record left beside a file that was later overwritten is ignored, and an unreadable one
is ignored with a warning), so
the manifest says "clustered, k = 16, per channel" next to the artifact it produced.

The file is a versioned envelope (``edgekit.envelope``): ``{"schema":
"edgekit.compression_record", "schema_version": 1, "generated_by": ..., ...}``; records written
by earlier edgekits in the nested ``{"_type": "edgekit.CompressionRecord", "_version": 1,
"_data": {...}}`` form are still read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from edgekit.envelope import unwrap, wrap
from edgekit.errors import InputError

log = logging.getLogger(__name__)

TYPE, VERSION = "edgekit.compression_record", 1
_OLD_TYPE = "edgekit.CompressionRecord"  # the nested envelope's name, before edgekit.envelope
# Report keys that are results, not parameters of the technique.
_RESULTS = {"technique", "layers", "skipped", "loss", "rounds", "sizes", "source_sizes",
            "record", "sparsity_measured", "kernels", "updates", "regrown", "model_sha256",
            "kept_dense", "sparsity_all_kernels"}


def record_path(model) -> Path:
    return Path(model).with_suffix(".compression.json")


def write_record(model, report: dict) -> Path:
    """Write ``<model>.compression.json`` for the model file ``model`` (atomically).

    Returns:
        The sidecar's path.
    """
    from edgekit.fsutil import atomic_output, sha256_file

    data = {**report, "model_sha256": sha256_file(model)}
    path = record_path(model)
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(wrap(TYPE, VERSION, data), indent=2, default=float))
    return path


def read_record(model, sha256: Optional[str] = None) -> Optional[dict]:
    """The record beside ``model``, or ``None`` if there is none or it is for other bytes.

    Raises:
        InputError: a sidecar that is not a compression record or of a newer version.
    """
    path = record_path(model)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable compression record ({e})") from e
    data = unwrap(doc, TYPE, {VERSION: None}, where=str(path), aliases=(_OLD_TYPE,),
                  rerun="re-run the compression that wrote it")
    if sha256 is not None and data.get("model_sha256") != sha256:
        log.info("%s describes other bytes than %s; ignored", path, model)
        return None
    return data


def manifest_entry(data: dict) -> dict:
    """What the manifest keeps of a record: the technique and its parameters."""
    return {"technique": data.get("technique"),
            "params": {k: v for k, v in data.items() if k not in _RESULTS}}


def with_compression(source: dict) -> dict:
    """``source`` (an artifact's source description) plus ``compression`` when the source file
    has a matching record beside it."""
    path = source.get("path")
    if not path:
        return source
    try:
        data = read_record(path, source.get("sha256"))
    except InputError as e:  # a broken sidecar must not stop a conversion: say so, go on
        log.warning("%s; the manifest records no compression for %s", e, path)
        return source
    return {**source, "compression": manifest_entry(data)} if data else source

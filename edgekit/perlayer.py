"""Per-layer latency as the device agent measured it (``agent.py run --per-layer``).

The agent puts one ``per_layer`` object into its run document (a result's ``metrics``); this
module reads it back as plain values for the CLI tables, ``results compare``, the report and
``advise``. It never measures anything itself. The document's fields are described in
docs/results-schema.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

#: The ``per_layer`` object versions this host reads (the agent's PER_LAYER_VERSION).
PER_LAYER_VERSIONS = (1,)


def per_layer_of(metrics: Optional[dict]) -> Optional[dict]:
    """The run document's ``per_layer`` object when it holds figures (None when the run had no
    per-layer pass, the pass failed, or the object is of a version this host does not read)."""
    doc = (metrics or {}).get("per_layer")
    if not isinstance(doc, dict) or doc.get("error") or doc.get("version") not in PER_LAYER_VERSIONS:
        return None
    return doc


def per_layer_error(metrics: Optional[dict]) -> Optional[str]:
    """Why a requested per-layer pass gave no figures (None when it did, or was not asked)."""
    doc = (metrics or {}).get("per_layer")
    if not isinstance(doc, dict):
        return None
    if doc.get("error"):
        return str(doc["error"])
    if doc.get("version") not in PER_LAYER_VERSIONS:
        return (f"per_layer version {doc.get('version')!r} is not one this edgekit reads "
                f"({PER_LAYER_VERSIONS}); upgrade edgekit")
    return None


def top_op_type(metrics: Optional[dict]) -> Optional[tuple[str, float, str]]:
    """(op type, share of the per-layer total, the method that timed it) of the op type that
    takes longest, or None."""
    doc = per_layer_of(metrics)
    kinds = (doc or {}).get("op_types") or []
    return (kinds[0]["op_type"], float(kinds[0]["share"]), doc.get("method")) if kinds else None


@dataclass(frozen=True)
class LayerDelta:
    """One op type (or the per-layer total) of NEW against BASE, in milliseconds."""

    name: str
    base_ms: Optional[float]
    new_ms: Optional[float]
    delta_ms: Optional[float]
    base_share: Optional[float]
    new_share: Optional[float]

    def to_dict(self) -> dict:
        return asdict(self)


def compare_per_layer(base: Optional[dict], new: Optional[dict]) -> Optional[list[LayerDelta]]:
    """Per op type deltas between two results' run documents, the total first.

    Op types are compared (not nodes): node names differ between two conversions of one model,
    op types do not. None unless both documents have per-layer figures of the same ``method``
    (a profiler's kernel times and truncated sub-model differences are not comparable).
    """
    b, n = per_layer_of(base), per_layer_of(new)
    if b is None or n is None or b.get("method") != n.get("method"):
        return None
    out = [LayerDelta("total", b["total_ms"], n["total_ms"], n["total_ms"] - b["total_ms"],
                      1.0, 1.0)]
    bk = {k["op_type"]: k for k in b.get("op_types") or []}
    nk = {k["op_type"]: k for k in n.get("op_types") or []}
    names = sorted(set(bk) | set(nk),
                   key=lambda t: -max(bk.get(t, {}).get("ms", 0.0), nk.get(t, {}).get("ms", 0.0)))
    for name in names:
        x, y = bk.get(name), nk.get(name)
        out.append(LayerDelta(name, x and x["ms"], y and y["ms"],
                              y["ms"] - x["ms"] if x and y else None,
                              x and x["share"], y and y["share"]))
    return out

"""Per-layer tables for people: `bench --per-layer`, `results show` and `results compare`."""

from __future__ import annotations

from edgekit.cli.common import FitTable, console, print_table
from edgekit.perlayer import LayerDelta, per_layer_error, per_layer_of

OP_TYPES_SHOWN = 8


def _provider(name: str) -> str:
    return name.replace("ExecutionProvider", "") if name else ""


def _ms(v) -> str:
    return "" if v is None else f"{v:.4g}"


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.1f} %"


def print_per_layer(result) -> None:
    """The top layers and the op types of one result that has a per-layer document."""
    error = per_layer_error(result.metrics)
    name = result.artifact.get("name", "")
    if error:
        console.print(f"per-layer {name} on {result.device}: no figures ({error})",
                      highlight=False, markup=False)
        return
    doc = per_layer_of(result.metrics)
    if doc is None:
        return
    gap = doc.get("gap_pct")
    console.print(
        f"per-layer {name} on {result.device}: {doc['method']}, sum {_ms(doc['total_ms'])} ms vs "
        f"whole-model p50 {_ms(doc['whole_model_p50_ms'])} ms"
        + (f" (gap {gap:+.1f} %)" if gap is not None else ""), highlight=False, markup=False)
    if doc.get("delegate_groups"):
        console.print(f"XNNPACK ran its ops in {doc['delegate_groups']} delegate group(s); each "
                      "op is timed on its own (layer names: op#index)", highlight=False,
                      markup=False)
    for table in per_layer_tables(doc):
        print_table(table)


def per_layer_tables(doc: dict) -> list[FitTable]:
    """The top layers table and the op types table of one ``per_layer`` document."""
    table = FitTable(title=f"top layers of {doc['node_count']}")
    for col in ("layer", "op type", "provider", "ms", "share"):
        table.add_column(col, wrap=col in ("layer", "op type"),
                         justify="right" if col in ("ms", "share") else "left")
    for node in doc["nodes"]:
        label = node["name"] + (f" ({node['count']} layers)" if node.get("count") else "")
        table.add_row(label, node["op_type"], _provider(node.get("provider", "")),
                      _ms(node["ms"]), _pct(node["share"]))
    tables = [table]
    table = FitTable(title="by op type")
    for col in ("op type", "layers", "provider", "ms", "share"):
        table.add_column(col, wrap=col == "op type",
                         justify="right" if col in ("layers", "ms", "share") else "left")
    kinds = doc["op_types"]
    for kind in kinds[:OP_TYPES_SHOWN]:
        table.add_row(kind["op_type"], str(kind["count"]),
                      ", ".join(_provider(p) for p in kind["providers"]),
                      _ms(kind["ms"]), _pct(kind["share"]))
    if len(kinds) > OP_TYPES_SHOWN:
        rest = kinds[OP_TYPES_SHOWN:]
        table.add_row(f"{len(rest)} other types", str(sum(k["count"] for k in rest)), "",
                      _ms(sum(k["ms"] for k in rest)), _pct(sum(k["share"] for k in rest)))
    return tables + [table]


def print_per_layer_deltas(deltas: list[LayerDelta], title: str) -> None:
    """Per op type: base ms, new ms, delta, shares."""
    table = FitTable(title=title)
    for col in ("op type", "base ms", "new ms", "delta ms", "base share", "new share"):
        table.add_column(col, wrap=col == "op type", justify="left" if col == "op type" else "right",
                         short={"base share": "base %", "new share": "new %"}.get(col, ""))
    for d in deltas:
        table.add_row(d.name, _ms(d.base_ms), _ms(d.new_ms),
                      "" if d.delta_ms is None else f"{d.delta_ms:+.4g}",
                      _pct(d.base_share), _pct(d.new_share))
    print_table(table)

"""The report's per-layer section: per artifact, each device's op-type bars side by side.

Bars are plain HTML (a div's width is the op type's share), so the page stays small and needs no
plot library. Each card is ``<div class="pl-card" data-device=... data-artifact=...>`` and each
bar carries ``data-op-type`` and ``data-share``, for tests and scripts.
"""

from __future__ import annotations

import html

from edgekit.report.data import ReportData

BARS = 8  # op types per card; the rest are one "other" bar

CSS = """
.pl-row{display:flex;flex-wrap:wrap;gap:1.2rem}.pl-card{border:1px solid #ddd;padding:.5rem .8rem;
min-width:280px;flex:1 1 280px;max-width:420px}.pl-card h4{margin:.2rem 0}
.pl-bar{display:grid;grid-template-columns:9rem 1fr 7.5rem;gap:.4rem;align-items:center;
font-size:.85rem;margin:.15rem 0}.pl-track{background:#eef1f6;height:.8rem}
.pl-fill{background:#4c72b0;height:.8rem}.pl-num{text-align:right;font-variant-numeric:tabular-nums}
"""


def _bar(name: str, share: float, ms: float) -> str:
    width = max(0.0, min(100.0, 100 * share))
    return (f'<div class="pl-bar" data-op-type="{html.escape(name)}" data-share="{share!r}">'
            f"<span>{html.escape(name)}</span><div class=\"pl-track\"><div class=\"pl-fill\" "
            f'style="width:{width:.1f}%"></div></div>'
            f'<span class="pl-num">{100 * share:.1f} % · {ms:.3g} ms</span></div>')


def _card(device: str, artifact: str, doc: dict) -> str:
    kinds = doc.get("op_types") or []
    bars = [_bar(k["op_type"], k["share"], k["ms"]) for k in kinds[:BARS]]
    rest = kinds[BARS:]
    if rest:
        bars.append(_bar(f"{len(rest)} other types", sum(k["share"] for k in rest),
                         sum(k["ms"] for k in rest)))
    gap = doc.get("gap_pct")
    note = (f"{doc.get('method')}: sum {doc.get('total_ms', 0):.4g} ms vs p50 "
            f"{doc.get('whole_model_p50_ms', 0):.4g} ms"
            + (f" (gap {gap:+.1f} %)" if gap is not None else ""))
    return (f'<div class="pl-card" data-device="{html.escape(device)}" '
            f'data-artifact="{html.escape(artifact)}"><h4>{html.escape(device)}</h4>'
            f'<p class="muted">{html.escape(note)}</p>{"".join(bars)}</div>')


def per_layer_section(data: ReportData) -> str:
    """The section (empty string when no result has per-layer figures)."""
    by_artifact: dict[str, list[tuple[str, dict]]] = {}
    for d in data.devices:
        for r in d.rows:
            if r.per_layer:
                by_artifact.setdefault(r.label, []).append((d.device, r.per_layer))
    if not by_artifact:
        return ""
    parts = ['<section id="per-layer"><h2>Per-layer latency by op type</h2>',
             '<p class="muted">Measured on each device by <code>bench --per-layer</code>; shares '
             "are of the per-layer total (see the method and its gap to the whole-model p50 on "
             "each card).</p>"]
    for label, cards in by_artifact.items():
        parts.append(f"<h3>{html.escape(label)}</h3><div class=\"pl-row\">"
                     + "".join(_card(dev, label, doc) for dev, doc in cards) + "</div>")
    parts.append("</section>")
    return "\n".join(parts)

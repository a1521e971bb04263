"""The self-contained HTML report: inline CSS, plots as base64 PNG data URIs, no network.

Each device's section is ``<section id="device-<slug>">`` holding tables ``results-<slug>`` and
``fidelity-<slug>`` (``device_slugs``). Every number in the tables is also in a ``data-value``
attribute (Python's ``repr`` of the stored value, so it reads back exactly), on a cell tagged
``data-field``; rows carry ``data-result-id`` and ``data-sha256``. Tests and scripts read the
page through these, not through the formatted text.
The full ``ReportData`` is embedded as JSON in ``<script id="edgekit-report-data">``.
"""

from __future__ import annotations

import base64
import html
import json
import re
from typing import Callable, Optional

from edgekit.fidelity.tasks import metric_text
from edgekit.report import plots
from edgekit.report.data import ArtifactRow, DeviceReport, ReportData
from edgekit.report.perlayer_html import CSS as PER_LAYER_CSS
from edgekit.report.perlayer_html import per_layer_section

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222;
max-width:1200px}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #4c72b0;padding-bottom:.2rem;margin-top:2.5rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .55rem}th{background:#f3f5f9;cursor:pointer;
user-select:none}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.baseline td{background:#fbfbe9}.warn{background:#fff3cd;border:1px solid #e0c36a;
padding:.5rem .8rem;margin:.6rem 0}.fail{background:#f8d7da;border:1px solid #e5a0a7;
padding:.5rem .8rem}.muted{color:#777;font-size:.85rem}img{max-width:100%;display:block;
margin:.8rem 0}dl{display:grid;grid-template-columns:max-content auto;gap:.15rem 1rem}
dt{font-weight:600}dd{margin:0}.good{color:#1a7f37}.bad{color:#b42318}
"""

# Sort a table by the clicked column, numerically on data-value when every cell has one.
_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var asc = th.dataset.dir !== 'asc';
    th.dataset.dir = asc ? 'asc' : 'desc';
    function key(r) {
      var c = r.cells[col];
      var v = c.dataset.value;
      return (v !== undefined && v !== '' && !isNaN(Number(v))) ? Number(v) : c.textContent;
    }
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

# (header, field, value getter, formatter) of the per-device results table.
_Col = tuple[str, str, Callable[[ArtifactRow], object], Callable[[object], str]]


def _num(digits: int) -> Callable[[object], str]:
    return lambda v: "–" if v is None else f"{v:,.{digits}f}"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _pts(v) -> str:
    return "–" if v is None else f"{100 * v:+.2f} pts"


def _mib(v) -> str:
    return "–" if v is None else f"{v / 2**20:,.1f} MiB"


def _ratio(v) -> str:
    return "–" if v is None else f"{v:.2f}×"


RESULT_COLUMNS: list[_Col] = [
    ("artifact", "target", lambda r: r.label, str),
    ("format", "format", lambda r: r.format, lambda v: v or "–"),
    ("precision", "precision", lambda r: r.precision, lambda v: v or "–"),
    ("size", "bytes", lambda r: r.bytes, lambda v: f"{v / 1024:,.1f} KiB"),
    ("p50 ms", "p50_ms", lambda r: r.latency.get("p50"), _num(4)),
    ("p90 ms", "p90_ms", lambda r: r.latency.get("p90"), _num(4)),
    ("p99 ms", "p99_ms", lambda r: r.latency.get("p99"), _num(4)),
    ("peak memory", "peak_rss_bytes", lambda r: r.peak_rss_bytes, _mib),
    ("accuracy", "accuracy", lambda r: r.accuracy, _pct),
    ("Δ accuracy vs FP32", "accuracy_delta", lambda r: r.accuracy_delta, _pts),
    ("speed-up vs FP32", "speedup", lambda r: r.speedup, _ratio),
    ("size vs FP32", "size_ratio", lambda r: r.size_ratio, _ratio),
    ("runtime", "runtime", lambda r: r.runtime, str),
]

FIDELITY_COLUMNS: list[_Col] = [
    ("artifact", "target", lambda r: r.label, str),
    ("samples", "fidelity_samples", lambda r: (r.fidelity or {}).get("samples"), _num(0)),
    ("task", "task", lambda r: (r.fidelity or {}).get("task"), lambda v: v or "–"),
    ("task measure", "task_metric", lambda r: (r.fidelity or {}).get("task_metric"),
     lambda m: metric_text(m) if m else "–"),
    ("worst slice dB", "worst_slice",
     lambda r: ((r.fidelity or {}).get("worst_slice") or {}).get("sqnr_db"), _num(1)),
    ("top-1 agreement", "top1_agreement", lambda r: (r.fidelity or {}).get("top1_agreement"), _pct),
    ("SQNR dB", "sqnr_db", lambda r: (r.fidelity or {}).get("sqnr_db"), _num(1)),
    ("max |error|", "max_abs_error", lambda r: (r.fidelity or {}).get("max_abs_error"),
     lambda v: "–" if v is None else f"{v:.3g}"),
    ("accuracy (host)", "fidelity_accuracy", lambda r: (r.fidelity or {}).get("accuracy"), _pct),
    ("source accuracy", "source_accuracy", lambda r: (r.fidelity or {}).get("source_accuracy"),
     _pct),
]


def slug(text: str) -> str:
    """An id-safe form of a device name (``user@host:22`` → ``user-host-22``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "device"


def _cell(field: str, value, fmt) -> str:
    data = "" if value is None else (repr(value) if isinstance(value, float) else str(value))
    cls = ' class="num"' if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
    if field == "accuracy_delta" and value is not None:
        cls = ' class="num {}"'.format("good" if value >= 0 else "bad")
    return (f'<td data-field="{field}" data-value="{html.escape(data)}"{cls}>'
            f"{html.escape(fmt(value))}</td>")


def _table(table_id: str, rows: list[ArtifactRow], columns: list[_Col]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _, _, _ in columns)
    body = []
    for r in rows:
        cls = ' class="baseline"' if r.baseline == r.label else ""
        cells = "".join(_cell(field, get(r), fmt) for _, field, get, fmt in columns)
        rid = "" if r.result_id is None else str(r.result_id)
        body.append(f'<tr{cls} data-result-id="{rid}" data-sha256="{r.sha256}">{cells}</tr>')
    return (f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _device_info(info: Optional[dict]) -> str:
    if not info:
        return '<p class="muted">device was never reached: no probe facts</p>'
    cpu, mem, osd, py = (info.get(k) or {} for k in ("cpu", "memory", "os", "python"))
    runtimes = ", ".join(f"{r.get('name')} {r.get('version')}" for r in info.get("runtimes") or [])
    facts = [("host", info.get("hostname")), ("arch", info.get("arch")),
             ("OS", " ".join(str(x) for x in (osd.get("release"), osd.get("kernel")) if x)),
             ("CPU", f"{cpu.get('model', '?')}, {cpu.get('cores', '?')} cores"),
             ("memory", _mib(mem.get("total_bytes"))),
             ("Python", f"{py.get('version', '?')} (numpy {py.get('numpy', '?')})"),
             ("runtimes", runtimes or "none")]
    temps = info.get("temperatures_c") or {}
    if temps:
        facts.append(("temperatures", ", ".join(f"{k} {v:.1f} °C" for k, v in sorted(temps.items())
                                                if v is not None)))
    return "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v or '–'))}</dd>"
                            for k, v in facts) + "</dl>"


def _img(png: Optional[bytes], alt: str, img_id: str) -> str:
    if png is None:
        return f'<p class="muted">{html.escape(alt)}: nothing to plot</p>'
    data = base64.b64encode(png).decode()
    return f'<img id="{img_id}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def device_slugs(devices: list[DeviceReport]) -> dict:
    """Device name → element-id suffix, unique within the page (``pi 4`` and ``pi-4`` differ)."""
    out: dict[str, str] = {}
    for d in devices:
        base = s = slug(d.device)
        n = 2
        while s in out.values():
            s, n = f"{base}-{n}", n + 1
        out[d.device] = s
    return out


def _device_section(d: DeviceReport, s: str) -> str:
    parts = [f'<section id="device-{s}" data-device="{html.escape(d.device)}">',
             f"<h2>Device: {html.escape(d.device)}</h2>", _device_info(d.info)]
    for w in d.warnings:
        parts.append(f'<div class="warn" data-warning="throttling">⚠ {html.escape(w)}</div>')
    for f in d.failures:
        parts.append(f'<div class="fail">✗ {html.escape(f["artifact"])}: '
                     f'{html.escape(f["error"])}</div>')
    if d.rows:
        base = sorted({r.baseline for r in d.rows if r.baseline})
        parts += ["<h3>Artifacts</h3>",
                  (f'<p class="muted">Deltas are against the FP32 artifact of the same format '
                   f'({html.escape(", ".join(base) or "none measured")}); latency over '
                   f'{d.rows[0].latency.get("runs", "?")} timed runs.</p>'),
                  _table(f"results-{s}", d.rows, RESULT_COLUMNS),
                  "<h3>Plots</h3>",
                  _img(plots.latency_distribution(d.rows, d.device), "latency distribution",
                       f"plot-latency-{s}"),
                  _img(plots.accuracy_vs_latency(d.rows, d.device), "accuracy vs latency",
                       f"plot-pareto-{s}"),
                  _img(plots.size_bars(d.rows, d.device), "artifact sizes", f"plot-size-{s}"),
                  "<h3>Manifest fidelity (artifact vs source model, on the host)</h3>",
                  _table(f"fidelity-{s}", d.rows, FIDELITY_COLUMNS)]
    parts.append("</section>")
    return "\n".join(parts)


def render_html(data: ReportData, title: str = "edgekit benchmark report") -> str:
    """The report page as one string (no external resources).

    Args:
        data: gathered results (``edgekit.report.data.gather``).
        title: page title and heading.

    Returns:
        The HTML document.
    """
    embedded = json.dumps(data.to_dict(), sort_keys=True, default=str).replace("</", "<\\/")
    slugs = device_slugs(data.devices)
    nav = " · ".join(f'<a href="#device-{slugs[d.device]}">{html.escape(d.device)}</a>'
                     for d in data.devices)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No network: forbid every fetch except inline styles/scripts and data: images.
        ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
         "img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"),
        f"<title>{html.escape(title)}</title><style>{_CSS}{PER_LAYER_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">from {html.escape(", ".join(data.sources))} · devices: {nav}</p>',
        *(_device_section(d, slugs[d.device]) for d in data.devices),
        per_layer_section(data),
        f'<script type="application/json" id="edgekit-report-data">{embedded}</script>',
        f"<script>{_JS}</script>", "</body></html>", ""])

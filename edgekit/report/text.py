"""Markdown (for a PR comment) and CSV (for spreadsheets) forms of the report."""

from __future__ import annotations

import csv
import io

from edgekit.report.data import ReportData

#: CSV columns, one row per (device, artifact).
CSV_FIELDS = ["device", "result_id", "target", "name", "format", "precision", "sha256", "bytes",
              "p50_ms", "p90_ms", "p99_ms", "mean_ms", "runs", "peak_rss_bytes", "init_ms",
              "accuracy", "accuracy_delta", "speedup", "size_ratio", "baseline", "runtime",
              "top1_agreement", "sqnr_db", "max_abs_error", "task", "task_metric",
              "task_metric_value", "worst_slice_sqnr_db"]


def _f(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def render_markdown(data: ReportData) -> str:
    """A compact Markdown summary: per device, one table plus warnings and failures.

    Returns:
        The Markdown text.
    """
    lines = ["## edgekit benchmark report", ""]
    for d in data.devices:
        info = d.info or {}
        cpu = info.get("cpu") or {}
        lines += [f"### {d.device}" + (f" ({info.get('arch')}, {cpu.get('model', '?')}, "
                                        f"{cpu.get('cores', '?')} cores)" if info else ""), ""]
        lines += [f"> ⚠ {w}" for w in d.warnings]
        lines += [f"> ✗ {f['artifact']}: {f['error']}" for f in d.failures]
        if d.warnings or d.failures:
            lines.append("")
        if not d.rows:
            continue
        lines += [("| artifact | size KiB | p50 ms | p90 ms | p99 ms | peak MiB | accuracy | "
                   "Δ acc pts vs FP32 | speed-up | SQNR dB |"),
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in d.rows:
            lat = r.latency
            lines.append(
                f"| {r.label} | {r.bytes / 1024:.1f} | {_f(lat.get('p50'), 4)} | "
                f"{_f(lat.get('p90'), 4)} | {_f(lat.get('p99'), 4)} | "
                f"{_f(r.peak_rss_bytes / 2**20 if r.peak_rss_bytes else None, 1)} | "
                f"{'–' if r.accuracy is None else f'{100 * r.accuracy:.2f}%'} | "
                f"{'–' if r.accuracy_delta is None else f'{100 * r.accuracy_delta:+.2f}'} | "
                f"{'–' if r.speedup is None else f'{r.speedup:.2f}×'} | "
                f"{_f((r.fidelity or {}).get('sqnr_db'), 1)} |")
        lines.append("")
    lines.append(f"_from {', '.join(data.sources)}_")
    return "\n".join(lines) + "\n"


def csv_rows(data: ReportData) -> list[dict]:
    """One dict per (device, artifact) with ``CSV_FIELDS`` keys (None where unknown)."""
    rows = []
    for d in data.devices:
        for r in d.rows:
            lat, fid = r.latency, r.fidelity or {}
            rows.append({
                "device": d.device, "result_id": r.result_id, "target": r.target, "name": r.name,
                "format": r.format, "precision": r.precision, "sha256": r.sha256, "bytes": r.bytes,
                "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"), "p99_ms": lat.get("p99"),
                "mean_ms": lat.get("mean"), "runs": lat.get("runs"),
                "peak_rss_bytes": r.peak_rss_bytes, "init_ms": r.init_ms, "accuracy": r.accuracy,
                "accuracy_delta": r.accuracy_delta, "speedup": r.speedup,
                "size_ratio": r.size_ratio, "baseline": r.baseline, "runtime": r.runtime,
                "top1_agreement": fid.get("top1_agreement"), "sqnr_db": fid.get("sqnr_db"),
                "max_abs_error": fid.get("max_abs_error"), "task": fid.get("task"),
                "task_metric": (fid.get("task_metric") or {}).get("name"),
                "task_metric_value": (fid.get("task_metric") or {}).get("value"),
                "worst_slice_sqnr_db": (fid.get("worst_slice") or {}).get("sqnr_db")})
    return rows


def render_csv(data: ReportData) -> str:
    """CSV with a header row of ``CSV_FIELDS``; floats at full precision (``repr``).

    Returns:
        The CSV text (``\\n`` line ends).
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(data):
        writer.writerow({k: "" if v is None else (repr(v) if isinstance(v, float) else v)
                         for k, v in row.items()})
    return buf.getvalue()

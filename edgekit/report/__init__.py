"""Benchmark reports: self-contained HTML with plots, Markdown for a PR comment, CSV.

``write_report(out, db=..., json_files=[...], format="html")`` is the one call; the parts are
``data.load_results`` / ``data.gather`` (results → ReportData) and the ``render_*`` functions.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Iterable

from edgekit.errors import InputError
from edgekit.report.data import ReportData, gather, load_results


class ReportFormat(str, Enum):
    """Output formats of ``edgekit report``."""

    HTML = "html"
    MARKDOWN = "md"
    CSV = "csv"


def render(data: ReportData, fmt: ReportFormat = ReportFormat.HTML) -> str:
    """The report text in ``fmt``."""
    fmt = ReportFormat(fmt)
    if fmt is ReportFormat.HTML:
        from edgekit.report.html import render_html

        return render_html(data)
    from edgekit.report.text import render_csv, render_markdown

    return render_markdown(data) if fmt is ReportFormat.MARKDOWN else render_csv(data)


def write_report(out, *, db=None, json_files: Iterable = (), results=None,
                 format: ReportFormat = ReportFormat.HTML) -> tuple[Path, ReportData]:
    """Gather results and write the report atomically.

    Args:
        out: the file to write.
        db: a results database (a SQLite path or an SQLAlchemy URL) to read every result
            from.
        json_files: ``edgekit bench --json`` output files.
        results: ``Result`` values to use instead of (or besides) db and files.
        format: html, md or csv.

    Returns:
        (out path, the ReportData shown).

    Raises:
        InputError: no results, unreadable inputs, or an output folder that cannot be written.
    """
    from edgekit.fsutil import atomic_output

    try:
        fmt = ReportFormat(format)
    except ValueError:
        raise InputError(f"unknown report format {format!r}; expected one of "
                         f"{', '.join(f.value for f in ReportFormat)}") from None
    gathered, sources = [], []
    if db is not None or list(json_files) or not results:
        gathered, sources = load_results(db, json_files)
    gathered += list(results or [])
    if results:
        sources.append("benchmark run")
    data = gather(gathered, sources)
    out = Path(out)
    if not out.parent.is_dir():
        raise InputError(f"cannot write report {out}: folder {out.parent} does not exist")
    text = render(data, fmt)
    try:
        with atomic_output(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot write report {out}: {e.strerror or e}") from e
    return out, data


__all__ = ["ReportData", "ReportFormat", "gather", "load_results", "render", "write_report"]

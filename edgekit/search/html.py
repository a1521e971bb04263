"""``report.html`` of an ``optimize`` study: the search section (every trial with the Pareto
front, the fp32 baselines, the raw tools' defaults and the chosen recipe marked; the finalists
re-measured side by side; the explanation; an accuracy-vs-latency plot) above the benchmark
report of every measurement in results.db."""

from __future__ import annotations

import html
from pathlib import Path

from edgekit.search.settings import RESULTS_DB
from edgekit.search.study import ROLE_BASELINE, ROLE_TOOL_DEFAULT, Study, TrialRow


def write_study_report(study: Study, path: Path) -> Path | None:
    """``report.html``: the search section (trials with the Pareto front, baselines, raw tool
    defaults and the chosen recipe marked, the explanation, an accuracy-vs-latency plot) above
    the benchmark report of every measurement in results.db."""
    from edgekit.fsutil import atomic_output
    from edgekit.report.data import gather, load_results
    from edgekit.report.html import render_html

    shared = getattr(study.settings, "results_db", None)
    db = shared or study.out / RESULTS_DB
    if shared:  # a team's history: this study's measurements only
        from edgekit.results import ResultStore
        from edgekit.results.location import mask

        ids = sorted({t.result_id for t in study.trials if t.result_id is not None})
        with ResultStore(shared, create=False) as store:
            results = [store.get(i) for i in ids]
        shown = mask(shared)
    else:
        results = load_results(db)[0] if Path(db).is_file() else []
        shown = str(db)
    page = render_html(gather(results, [shown]), title="edgekit optimize report")
    section = _search_section(study)
    page = page.replace("</h1>", "</h1>\n" + section, 1)
    with atomic_output(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def _search_section(study: Study) -> str:
    s = study.settings
    best = study.best
    head = (f"<section id=\"search\"><h2>Search: {html.escape(Path(s.model).name)} on "
            f"{html.escape(s.device)}, objective {s.objective}</h2>")
    c = s.constraints
    limits = [f"accuracy drop ≤ {c.max_accuracy_drop:g} points"]
    if c.max_size_bytes:
        limits.append(f"size ≤ {c.max_size_bytes} bytes"
                      + ("" if s.size_metric == "bytes" else f" {s.size_metric}"))
    if c.max_peak_memory_bytes:
        limits.append(f"peak memory ≤ {c.max_peak_memory_bytes} bytes")
    parts = [head, f"<p>constraints (measured on the device): {html.escape(', '.join(limits))}"
                   f"</p>"]
    if best is not None:
        parts.append(f'<p id="chosen" data-recipe="{html.escape(best.name)}"><b>Chosen: '
                     f"{html.escape(best.name)}</b> — see best.recipe.json</p>")
    else:
        parts.append('<p class="fail">No recipe met the constraints.</p>')
    parts.append("<ul id=\"explanation\">" + "".join(f"<li>{html.escape(t)}</li>"
                                                     for t in study.text) + "</ul>")
    png = _plot(study)
    if png:
        import base64

        parts.append(f'<img id="plot-search" alt="accuracy vs latency" src="data:image/png;'
                     f'base64,{base64.b64encode(png).decode()}">')
    parts.append('<table id="candidates" class="sortable"><thead><tr>' + "".join(
        f"<th>{h}</th>" for h in ("recipe", "marks", "trials", "p50 ms", "size KiB",
                                  "gzip KiB", "peak MiB", "top-1 %", "drop pts",
                                  "constraints"))
        + "</tr></thead><tbody>")
    for r in sorted(study.candidates, key=lambda r: r.p50_ms):
        marks = _marks(r)
        parts.append(
            f'<tr data-recipe="{html.escape(r.name)}" data-marks="{" ".join(marks)}"'
            f'{" class=baseline" if r.role == ROLE_BASELINE else ""}>'
            f"<td>{html.escape(r.name)}</td><td>{', '.join(marks)}</td>"
            f"<td>{len(r.trials)}</td><td class=num data-value=\"{r.p50_ms!r}\">"
            f"{r.p50_ms:.4g}</td><td class=num data-value=\"{r.bytes!r}\">"
            f"{r.bytes / 1024:.1f}</td><td class=num data-value=\"{r.gzip_bytes!r}\">"
            f"{'' if r.gzip_bytes is None else f'{r.gzip_bytes / 1024:.1f}'}</td><td class=num>"
            f"{'' if r.peak_rss_bytes is None else f'{r.peak_rss_bytes / (1 << 20):.1f}'}</td>"
            f"<td class=num>{'' if r.accuracy is None else f'{100 * r.accuracy:.2f}'}</td>"
            f"<td class=num>{'' if r.accuracy_drop is None else f'{r.accuracy_drop:.2f}'}</td>"
            f"<td>{'met' if r.feasible else html.escape(', '.join(r.misses))}</td></tr>")
    parts.append("</tbody></table>")
    parts += _finalists_table(study)
    failed = [t for t in study.trials if t.state in ("failed", "interrupted")]
    if failed:
        parts.append('<h3>Failed trials</h3><table id="failed-trials"><thead><tr><th>trial</th>'
                     "<th>recipe</th><th>state</th><th>stage</th><th>cause</th></tr></thead>"
                     "<tbody>")
        for t in failed:
            parts.append(f'<tr data-trial="{t.number}"><td>{t.number}</td>'
                         f"<td>{html.escape(t.name)}</td><td>{t.state}</td>"
                         f"<td>{html.escape(t.failed_stage or '')}</td>"
                         f"<td>{html.escape((t.error or '')[:300])}</td></tr>")
        parts.append("</tbody></table>")
    parts.append("</section>")
    return "\n".join(parts)


def _finalists_table(study: Study) -> list[str]:
    """The finalists' side-by-side rounds, the choice's evidence (none if not re-measured)."""
    side = study.finalists
    if side is None or not side.finalists:
        return []
    ref = side.get(side.reference) if side.reference else None
    out = [f'<h3>Finalists re-measured side by side</h3><p>{side.rounds} interleaved round(s) '
           f"of {side.runs} runs each, in a rotated order; the choice is made on the median of "
           "the rounds.</p>",
           '<table id="finalists"><thead><tr>' + "".join(
               f"<th>{h}</th>" for h in ("recipe", "marks", "rounds p50 ms", "median ms",
                                         "vs fp32", "trials p50 ms", "status")) +
           "</tr></thead><tbody>"]
    for f in side.finalists:
        marks = [m for m, on in (("chosen", f.name == side.chosen),
                                 ("reference", f.name == side.reference),
                                 ("baseline", f.baseline)) if on]
        vs = (f"{f.p50_ms / ref.p50_ms:.2f}x" if f.ok and ref is not None else "")
        status = "measured" if f.ok else f"dropped: {f.error}"
        out.append(
            f'<tr data-recipe="{html.escape(f.name)}" data-marks="{" ".join(marks)}">'
            f"<td>{html.escape(f.name)}</td><td>{', '.join(marks)}</td>"
            f"<td>{' / '.join(f'{x:.4g}' for x in f.rounds_ms)}</td>"
            f"<td class=num>{'' if f.p50_ms is None else f'{f.p50_ms:.4g}'}</td>"
            f"<td class=num>{vs}</td><td class=num>"
            f"{'' if f.search_p50_ms is None else f'{f.search_p50_ms:.4g}'}</td>"
            f"<td>{html.escape(status[:300])}</td></tr>")
    out.append("</tbody></table>")
    return out


def _marks(r: TrialRow) -> list[str]:
    marks = []
    if r.chosen:
        marks.append("chosen")
    if r.pareto:
        marks.append("pareto")
    if r.role:
        marks.append(r.role)
    return marks


def _plot(study: Study) -> bytes | None:
    from edgekit.report.plots import png_bytes, pyplot

    pts = [r for r in study.candidates if r.accuracy is not None and r.p50_ms]
    if not pts:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in pts:
        style = ("*", "#c44e52", 14) if r.chosen else ("s", "#4c72b0", 8) \
            if r.role == ROLE_BASELINE else ("^", "#dd8452", 8) \
            if r.role == ROLE_TOOL_DEFAULT else ("o", "#c44e52" if r.pareto else "#8c8c8c", 6)
        ax.plot(r.p50_ms, 100 * r.accuracy, style[0], color=style[1], ms=style[2])
        if r.chosen or r.role or r.pareto:
            ax.annotate(r.name, (r.p50_ms, 100 * r.accuracy), textcoords="offset points",
                        xytext=(5, 4), fontsize=7)
    front = sorted((r for r in pts if r.pareto), key=lambda r: r.p50_ms)
    if front:
        ax.step([r.p50_ms for r in front], [100 * r.accuracy for r in front], where="post",
                color="#c44e52", lw=1, label="Pareto front (feasible)")
    ax.plot([], [], "s", color="#4c72b0", label="fp32 baseline")
    ax.plot([], [], "^", color="#dd8452", label="raw tool default int8")
    ax.plot([], [], "*", color="#c44e52", ms=10, label="chosen")
    ax.set_xlabel("p50 latency (ms)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"Recipes measured on {study.settings.device}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return png_bytes(fig)


__all__ = ["write_study_report"]

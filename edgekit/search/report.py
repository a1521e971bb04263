"""What an ``optimize`` study concludes and writes: the choice (on the finalists' side-by-side
re-measurement when there is one), the explanation (``advice_text``), ``best.recipe.json`` and
``report.html``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from edgekit.recipe import TRAINING_STEPS, FileRef, Recipe, save_recipe
from edgekit.search.advice_text import advice_lines
from edgekit.search.advisor import AdviceRow
from edgekit.search.html import write_study_report
from edgekit.search.settings import BEST_RECIPE, FINALISTS_FILE, REPORT
from edgekit.search.study import (
    ROLE_BASELINE,
    ROLE_TOOL_DEFAULT,
    Study,
    apply_side_by_side,
    choose,
    merge_repeats,
    pareto_front,
    trial_rows,
)


def finish(study, settings, out: Path, tell, remeasure=None) -> Study:
    """Rows, front, choice, advice; write best.recipe.json and report.html.

    Args:
        remeasure: called as ``remeasure(candidates, search_pick)`` to measure the finalists
            side by side; returns the ``SideBySide`` the choice is made on. None: the choice
            rests on the per-trial means (and a ``finalists.json`` of an earlier run is removed).
    """
    trials = trial_rows(study)
    candidates = merge_repeats(trials, settings.constraints, settings.size_key)
    front = pareto_front(candidates, settings.size_key)
    best = choose(candidates, settings.objective, settings.size_key)
    side = None
    if remeasure is not None:
        side = remeasure(candidates, best.name if best else None)
        best = apply_side_by_side(candidates, side) or best
    elif (out / FINALISTS_FILE).exists():
        (out / FINALISTS_FILE).unlink()
    for r in front:
        r.pareto = True
    if best is not None:
        best.chosen = True
    info = study.user_attrs.get("device_info") or {}
    text = explanation(trials, candidates, best, settings, info, side)
    recipe = None
    if best is not None:
        measured_side = None
        if best.side_by_side_ms is not None:
            ref = side.get(side.reference) if side.reference else None
            measured_side = {"p50_ms": best.side_by_side_ms,
                             "rounds_ms": best.side_by_side_rounds_ms, "runs": side.runs,
                             "fp32": side.reference,
                             "fp32_p50_ms": ref.p50_ms if ref is not None else None}
        recipe = replace(
            best.recipe, source=FileRef(settings.model_sha256, settings.model),
            calibration=FileRef.of(settings.calibration),
            artifact={"sha256": best.sha256, "bytes": best.bytes,
                      "file": Path(best.artifact).name if best.artifact else None},
            measured={"device": settings.device, "p50_ms": best.p50_ms, "p90_ms": best.p90_ms,
                      "bytes": best.bytes, "gzip_bytes": best.gzip_bytes,
                      "zstd_bytes": best.zstd_bytes, "peak_rss_bytes": best.peak_rss_bytes,
                      "accuracy": best.accuracy, "accuracy_source": best.accuracy_source,
                      "source_accuracy": best.source_accuracy,
                      "accuracy_drop": best.accuracy_drop, "trials": best.trials,
                      "side_by_side": measured_side},
            constraints={**asdict(settings.constraints), "size_metric": settings.size_metric},
            objective=settings.objective,
            advice=tuple(text))
        save_recipe(recipe, out / BEST_RECIPE)
        tell(f"chose {best.name}: {out / BEST_RECIPE}")
    elif (out / BEST_RECIPE).exists():
        (out / BEST_RECIPE).unlink()
    result = Study(out, settings, trials, candidates, front, best, recipe, text, info,
                   finalists=side)
    result.report = write_study_report(result, out / REPORT)
    return result


def explanation(trials, candidates, best, settings, info, side=None) -> list[str]:
    """``advice_text``'s lines over the merged recipes, plus what the search itself did and
    (``side``) the finalists' side-by-side re-measurement."""
    base_of = {c.format: c for c in candidates if c.role == ROLE_BASELINE}
    base_of.setdefault("ort", base_of.get("onnx"))
    rows, by_name = [], {}
    for c in candidates:
        base = base_of.get(c.format)
        # Ratios from one measuring session only: side by side when both were re-measured.
        both = base is not None and c.side_by_side_ms is not None and \
            base.side_by_side_ms is not None
        p50, base_p50 = ((c.side_by_side_ms, base.side_by_side_ms) if both else
                         (c.p50_ms, base.p50_ms if base is not None else None))
        # A pruned model is another model: advice_text must not take a pruned fp32 recipe for
        # an fp32 baseline of the source ("0.33x faster than ...-pruned75").
        precision = (c.precision or "") + ("+pruned" if c.recipe.prune else "") + \
            ("+compressed" if c.recipe.compress else "")
        row = AdviceRow(
            c.name, c.recipe.target, c.format or "", precision,
            baseline=base.name if base else None, bytes=c.bytes, p50_ms=p50,
            p90_ms=c.p90_ms, peak_rss_bytes=c.peak_rss_bytes, accuracy=c.accuracy,
            accuracy_source=c.accuracy_source, source_accuracy=c.source_accuracy,
            accuracy_drop=c.accuracy_drop, sqnr_db=c.sqnr_db, gate_passed=True,
            within_budget=c.feasible, artifact=c.artifact, result_id=c.result_id,
            note=", ".join(c.misses), variant=variant_of(c.recipe, c.format, c.precision),
            trial_p50_ms=c.p50_ms if both else None, top_op=c.top_op)
        if base is not None:
            row.size_ratio = c.bytes / base.bytes if base.bytes else None
            row.latency_ratio = p50 / base_p50 if base_p50 else None
        rows.append(row)
        by_name[c.name] = row
    for t in trials:  # failed builds and runs are rows too: advice_text names gate misses
        if t.state == "failed" and t.recipe is not None and t.name not in by_name:
            from converters.registry import get_target

            ti = get_target(t.recipe.target)
            row = AdviceRow(t.name, t.recipe.target, ti.format, ti.precision,
                            failed_stage=t.failed_stage, error=t.error)
            if t.failed_stage == "gate":
                row.gate_passed, row.gate_miss, row.error = False, t.error, None
            rows.append(row)
            by_name[t.name] = row
    size_of = {c.name: c.size(settings.size_key) for c in candidates}

    def size(r):  # the study's size metric (AdviceRow.bytes is the file's)
        return size_of.get(r.recipe, r.bytes)

    ranked = sorted((r for r in rows if r.within_budget),
                    key=(lambda r: (size(r), r.p50_ms)) if settings.objective == "size"
                    else (lambda r: (r.p50_ms, size(r))))
    for i, r in enumerate(ranked, 1):
        r.rank = i
    best_row = by_name.get(best.name) if best else None
    lines = advice_lines(ranked + [r for r in rows if r.rank is None], best_row, info,
                         objective=settings.objective,
                         max_accuracy_drop=settings.constraints.max_accuracy_drop,
                         device=settings.device, model=settings.model,
                         threads=best.recipe.threads if best else 1)
    lines.insert(1, _search_line(trials, candidates, best, settings))
    if best is not None and settings.size_key != "bytes":
        lines.insert(2, _size_line(best, candidates, settings))
    head = list(side.lines) if side is not None else []
    if best is not None:
        head += _versus_marked(best, candidates, settings.size_key)
    lines[2:2] = head
    return lines


# Fidelity-gate fields: a raw tool default is built with the gate open, sampled recipes with
# it set; the same bytes either way when the gate passes, so they do not make another variant.
_GATE_FIELDS = ("max_accuracy_drop", "min_top1_agreement", "min_sqnr_db")


def variant_of(recipe: Recipe, fmt: str | None, precision: str | None) -> dict:
    """``AdviceRow.variant``: the recipe as plain values, with the runtime and format settings
    that apply to it (XNNPACK for TFLite, the ORT level for ONNX, QDQ/QOperator for onnx-int8)
    as their own keys, so rows that differ in one of them alone can be compared."""
    opts = {k: v for k, v in recipe.convert_options.items() if k not in _GATE_FIELDS}
    qformat = str(opts.pop("onnx_quant_format", "qdq")).lower()
    v = {"target": recipe.target, "options": json.dumps(opts, sort_keys=True),
         "threads": recipe.threads}
    for step in TRAINING_STEPS:
        value = getattr(recipe, step)
        v[step] = json.dumps(value.to_dict() if value else None, sort_keys=True)
    if fmt == "tflite":
        v["xnnpack"] = bool(recipe.xnnpack)
    elif fmt in ("onnx", "ort"):
        v["ort_opt_level"] = recipe.ort_opt_level
        if precision == "int8":
            v["quant_format"] = qformat
    return v


def _search_line(trials, candidates, best, settings) -> str:
    done = [t for t in trials if t.state in ("complete", "failed", "pruned")]
    failed = [t for t in trials if t.state == "failed"]
    pruned = [t for t in trials if t.state == "pruned"]
    causes: dict[str, int] = {}
    for t in failed:
        causes[t.failed_stage or "error"] = causes.get(t.failed_stage or "error", 0) + 1
    text = (f"Search: {len(done)} trial(s) of a budget of {settings.budget} on "
            f"{settings.device}, {len(candidates)} distinct recipe(s) measured")
    if failed:
        text += "; failed: " + ", ".join(f"{n} {k}" for k, n in causes.items())
    if pruned:
        text += f"; {len(pruned)} fine-tune(s) stopped early as hopeless (pruned)"
    infeasible = [c for c in candidates if not c.feasible]
    if infeasible:
        text += (f"; {len(infeasible)} over the constraints ("
                 + "; ".join(f"{c.name}: {', '.join(c.misses)}" for c in infeasible[:3])
                 + ("…" if len(infeasible) > 3 else "") + ")")
    return text + "."


def _size_line(best, candidates, settings) -> str:
    """The chosen recipe's size as the study measured it (gzip/zstd), against the fp32
    baselines' and its own file: the advice's sizes are the files'."""
    metric, key = settings.size_metric, settings.size_key
    text = (f"Size by {metric} (what an app store or OTA update ships): {best.name} is "
            f"{best.size(key) / 1024:.1f} KiB {metric} of a {best.bytes / 1024:.1f} KiB file")
    bases = [c for c in candidates if c.role == ROLE_BASELINE and c.size(key)]
    if bases:
        text += "; " + ", ".join(f"{best.size(key) / c.size(key):.3f}x {c.name}'s "
                                 f"{c.size(key) / 1024:.1f} KiB {metric}" for c in bases)
    if settings.constraints.max_size_bytes is not None:
        text += f"; limit {settings.constraints.max_size_bytes} bytes {metric}"
    return text + "."


def _versus_marked(best, candidates, size_key: str = "bytes") -> list[str]:
    """The chosen recipe against each baseline and raw tool default, measured (sizes by the
    study's size metric, ``size_key``)."""
    what_size = {"bytes": "size", "gzip_bytes": "gzip size", "zstd_bytes": "zstd size"}[size_key]
    out = []
    for c in candidates:
        if c.role not in (ROLE_BASELINE, ROLE_TOOL_DEFAULT) or c is best:
            continue
        what = "fp32 baseline" if c.role == ROLE_BASELINE else "raw tool default"
        drop = "" if c.accuracy_drop is None else f", {c.accuracy_drop:.2f} points"
        side = c.side_by_side_ms is not None and best.side_by_side_ms is not None
        mine, theirs = ((best.side_by_side_ms, c.side_by_side_ms) if side
                        else (best.p50_ms, c.p50_ms))
        ratio = theirs / mine
        speed = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
        size, mine_size = c.size(size_key), best.size(size_key)
        unit = "" if size_key == "bytes" else f" {what_size.split()[0]}"
        out.append(f"vs {what} {c.name} ({theirs:.4g} ms{' side by side' if side else ''}, "
                   f"{size / 1024:.1f} KiB{unit}{drop}"
                   f"{'' if c.feasible else ', over the constraints'}): chosen is {speed} and "
                   f"{mine_size / size:.2f}x the {what_size}.")
    return out



__all__ = ["finish", "explanation", "variant_of"]

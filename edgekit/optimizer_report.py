"""What an ``optimize`` study found: its trials as rows, the Pareto front, the chosen recipe, the
explanation (``advice_text``), ``best.recipe.json`` and ``report.html``.

Repeated measurements of one recipe (samplers propose a recipe again) are merged: its p50 is the
mean of its trials, so one lucky run does not win. The choice itself is made on the finalists'
side-by-side re-measurement when there is one (``optimizer_finalists``): trials measured minutes
apart on a loaded host are not comparable.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from edgekit.optimizer_finalists import FINALISTS_FILE, SideBySide
from edgekit.recipe import FileRef, Recipe

log = logging.getLogger(__name__)

ROLE_BASELINE, ROLE_TOOL_DEFAULT = "baseline", "tool-default"


@dataclass
class TrialRow:
    """One trial of the study (or, in ``Study.candidates``, one recipe over its trials).

    Attributes:
        number: Optuna's trial number (the first one for a merged recipe).
        state: complete, failed, pruned (a fine-tune stopped as hopeless), interrupted,
            running or skipped.
        recipe: the Recipe tried (None if the trial died before sampling one).
        role: "baseline" (a runtime's fp32), "tool-default" (a raw tool's default int8) or None.
        p50_ms / p90_ms / peak_rss_bytes: measured on the device.
        bytes / sha256 / artifact: the built artifact.
        gzip_bytes / zstd_bytes: the artifact file compressed (gzip level 9, zstd level 19),
            measured: what an app store download or OTA update carries.
        accuracy / source_accuracy / accuracy_drop: top-1 and points lost vs the source.
        accuracy_source: "device" (labelled eval data run there) or "host".
        feasible: complete and every constraint met; misses says which were not.
        error / failed_stage: why a failed trial failed ("convert", "gate", "benchmark").
        pareto / chosen: on the Pareto front of feasible recipes; the recipe chosen.
        trials / p50_repeats_ms: for a merged recipe, its trial numbers and p50s.
        seconds: build + measure time of the trial.
        side_by_side_ms: a finalist's median p50 re-measured side by side with the others
            (``side_by_side_rounds_ms``: each round's p50); None if it was not a finalist.
    """

    number: int
    state: str
    recipe: Recipe | None = None
    role: str | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    peak_rss_bytes: int | None = None
    bytes: int | None = None
    gzip_bytes: int | None = None
    zstd_bytes: int | None = None
    sha256: str | None = None
    artifact: str | None = None
    format: str | None = None
    precision: str | None = None
    accuracy: float | None = None
    source_accuracy: float | None = None
    accuracy_drop: float | None = None
    accuracy_source: str | None = None
    sqnr_db: float | None = None
    feasible: bool = False
    misses: list = field(default_factory=list)
    error: str | None = None
    failed_stage: str | None = None
    result_id: int | None = None
    pareto: bool = False
    chosen: bool = False
    trials: list = field(default_factory=list)
    p50_repeats_ms: list = field(default_factory=list)
    seconds: float | None = None
    side_by_side_ms: float | None = None
    side_by_side_rounds_ms: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.recipe.name if self.recipe else f"trial-{self.number}"

    def size(self, key: str = "bytes") -> int | None:
        """The size by a study's size metric (``Settings.size_key``: bytes, gzip_bytes or
        zstd_bytes)."""
        return getattr(self, key)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["recipe"] = self.recipe.to_dict() if self.recipe else None
        d["name"] = self.name
        return d


@dataclass
class Study:
    """The outcome of ``edgekit.optimize``.

    Attributes:
        out: the study folder.
        settings: the search settings (``study.json``).
        trials: every trial, in number order.
        candidates: one row per recipe that completed (repeats merged).
        pareto: feasible candidates no other feasible one beats on latency, size and accuracy.
        best: the chosen candidate for the objective (None: no recipe met the constraints),
            chosen on ``finalists`` when they were re-measured.
        recipe: the chosen recipe with its measurements and advice (``best.recipe.json``).
        text: the explanation, one line per finding.
        device_info: the agent's probe of the device.
        report: ``report.html``'s path.
        finalists: the side-by-side re-measurement the choice rests on (``finalists.json``),
            None when it was skipped (``remeasure=False``).
    """

    out: Path
    settings: object
    trials: list[TrialRow]
    candidates: list[TrialRow]
    pareto: list[TrialRow]
    best: TrialRow | None
    recipe: Recipe | None
    text: list[str]
    device_info: dict = field(default_factory=dict)
    report: Path | None = None
    finalists: SideBySide | None = None

    def explain(self) -> str:
        """Why the chosen recipe won, naming measured numbers (the lines of ``text``)."""
        return "\n".join(self.text)

    @property
    def failed(self) -> list[TrialRow]:
        return [t for t in self.trials if t.state == "failed"]

    def to_dict(self) -> dict:
        from edgekit.advisor import _device_summary

        return {"schema": "edgekit.optimize", "schema_version": 1, "out": str(self.out),
                "settings": self.settings.to_dict(),
                "best": self.best.name if self.best else None,
                "recipe": self.recipe.to_dict() if self.recipe else None,
                "pareto": [r.name for r in self.pareto],
                "trials": [t.to_dict() for t in self.trials],
                "candidates": [c.to_dict() for c in self.candidates],
                "text": list(self.text), "report": str(self.report) if self.report else None,
                "finalists": self.finalists.to_dict() if self.finalists else None,
                "device_info": _device_summary(self.device_info)}


def trial_rows(study) -> list[TrialRow]:
    """Rows for every trial of an Optuna study (skipped: stopped because the budget was spent)."""
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if t.state == TrialState.WAITING:
            continue
        if a.get("over_budget"):
            state = "skipped"
        elif t.state == TrialState.PRUNED:
            state = "pruned" if a.get("pruned_reason") else "skipped"
        elif a.get("interrupted"):
            state = "interrupted"
        elif a.get("failed_stage"):  # told to the sampler as infeasible, but a failure
            state = "failed"
        elif t.state == TrialState.COMPLETE:
            state = "complete"
        elif t.state == TrialState.FAIL:
            state = "failed"
        else:
            state = "running"
        recipe = Recipe.from_dict(a["recipe"]) if a.get("recipe") else None
        row = TrialRow(t.number, state, recipe, a.get("role"), trials=[t.number],
                       **{k: a.get(k) for k in (
                           "p50_ms", "p90_ms", "peak_rss_bytes", "bytes", "gzip_bytes",
                           "zstd_bytes", "sha256", "artifact",
                           "format", "precision", "accuracy", "source_accuracy",
                           "accuracy_drop", "accuracy_source", "sqnr_db", "error",
                           "failed_stage", "result_id", "seconds")})
        if state == "pruned":
            row.error = a["pruned_reason"]
        if state == "failed" and row.error is None:
            row.error = "the trial raised (see the log)"
        if state == "complete":
            row.p50_repeats_ms = [row.p50_ms]
        rows.append(row)
    return rows


def merge_repeats(rows: list[TrialRow], constraints, size_key: str = "bytes") -> list[TrialRow]:
    """One row per recipe over its completed trials: p50/p90 are means; feasibility is judged
    on the merged values (the size constraint on ``size_key``)."""
    by_name: dict[str, TrialRow] = {}
    for r in rows:
        if r.state != "complete" or r.recipe is None:
            continue
        if r.name not in by_name:
            by_name[r.name] = replace(r, trials=[r.number], p50_repeats_ms=[r.p50_ms],
                                      misses=[])
            continue
        m = by_name[r.name]
        m.trials.append(r.number)
        m.p50_repeats_ms.append(r.p50_ms)
        m.role = m.role or r.role
        n = len(m.p50_repeats_ms)
        m.p50_ms = sum(m.p50_repeats_ms) / n
        if r.p90_ms is not None and m.p90_ms is not None:
            m.p90_ms = (m.p90_ms * (n - 1) + r.p90_ms) / n
        if r.peak_rss_bytes is not None:
            m.peak_rss_bytes = max(m.peak_rss_bytes or 0, r.peak_rss_bytes)
    out = list(by_name.values())
    for m in out:
        values = {"accuracy_drop": m.accuracy_drop or 0.0, "bytes": m.bytes,
                  "gzip_bytes": m.gzip_bytes, "zstd_bytes": m.zstd_bytes,
                  "peak_rss_bytes": m.peak_rss_bytes}
        m.misses = constraints.describe_misses(values, size_key)
        m.feasible = not m.misses
    return out


def pareto_front(rows: list[TrialRow], size_key: str = "bytes") -> list[TrialRow]:
    """Feasible rows that no other feasible row beats on p50, size (``size_key``) and accuracy
    drop."""
    feas = [r for r in rows if r.feasible]

    def key(r):
        return (r.p50_ms, r.size(size_key), round(r.accuracy_drop or 0.0, 9))

    def dominates(a, b):
        ka, kb = key(a), key(b)
        return all(x <= y for x, y in zip(ka, kb)) and ka != kb

    return sorted((r for r in feas if not any(dominates(o, r) for o in feas)), key=key)


def choose(rows: list[TrialRow], objective: str, size_key: str = "bytes") -> TrialRow | None:
    """The feasible row with the least p50 (objective "latency") or size (``size_key``)."""
    feas = [r for r in rows if r.feasible]
    if objective == "size":
        return min(feas, key=lambda r: (r.size(size_key), r.p50_ms), default=None)
    return min(feas, key=lambda r: (r.p50_ms, r.size(size_key)), default=None)


def finish(study, settings, out: Path, tell, remeasure=None) -> Study:
    """Rows, front, choice, advice; write best.recipe.json and report.html.

    Args:
        remeasure: called as ``remeasure(candidates, search_pick)`` to measure the finalists
            side by side; returns the ``SideBySide`` the choice is made on. None: the choice
            rests on the per-trial means (and a ``finalists.json`` of an earlier run is removed).
    """
    from edgekit.optimizer_html import write_study_report

    from edgekit.optimizer import BEST_RECIPE, REPORT
    from edgekit.recipe import save_recipe

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


def apply_side_by_side(candidates: list[TrialRow], side: SideBySide) -> TrialRow | None:
    """Copy the finalists' side-by-side numbers onto their rows; the row chosen on them (None
    when none could be chosen: the per-trial means decide)."""
    by_name = {c.name: c for c in candidates}
    for f in side.finalists:
        row = by_name.get(f.name)
        if row is not None and f.ok:
            row.side_by_side_ms, row.side_by_side_rounds_ms = f.p50_ms, list(f.rounds_ms)
    return by_name.get(side.chosen) if side.chosen else None


def explanation(trials, candidates, best, settings, info, side=None) -> list[str]:
    """``advice_text``'s lines over the merged recipes, plus what the search itself did and
    (``side``) the finalists' side-by-side re-measurement."""
    from edgekit.advice_text import advice_lines
    from edgekit.advisor import AdviceRow

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
            trial_p50_ms=c.p50_ms if both else None)
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
    import json

    opts = {k: v for k, v in recipe.convert_options.items() if k not in _GATE_FIELDS}
    qformat = str(opts.pop("onnx_quant_format", "qdq")).lower()
    v = {"target": recipe.target, "options": json.dumps(opts, sort_keys=True),
         "threads": recipe.threads, "prune": json.dumps(recipe.prune, sort_keys=True),
         "student": json.dumps(recipe.student, sort_keys=True),
         "compress": json.dumps(recipe.compress, sort_keys=True)}
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


__all__ = ["Study", "TrialRow", "finish", "pareto_front", "choose", "trial_rows",
           "apply_side_by_side", "variant_of"]

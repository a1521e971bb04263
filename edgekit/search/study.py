"""What an ``optimize`` study found: its trials as rows, the Pareto front and the choice
(``report`` writes the explanation, ``best.recipe.json`` and ``report.html`` from them).

Repeated measurements of one recipe (samplers propose a recipe again) are merged: its p50 is the
mean of its trials, so one lucky run does not win. The choice itself is made on the finalists'
side-by-side re-measurement when there is one (``finalists``): trials measured minutes apart on
a loaded host are not comparable.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from edgekit.envelope import wrap
from edgekit.recipe import Recipe
from edgekit.search.advisor import device_summary
from edgekit.search.finalists import SideBySide

log = logging.getLogger(__name__)

ROLE_BASELINE, ROLE_TOOL_DEFAULT = "baseline", "tool-default"
#: The document ``edgekit optimize --json`` prints (``Study.to_dict``).
OPTIMIZE_SCHEMA, OPTIMIZE_VERSION = "edgekit.optimize", 1


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
    top_op: list | None = None  # [op type, share, method] of the per-layer figures, if timed

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
        """The ``edgekit optimize --json`` document (``OPTIMIZE_SCHEMA``)."""
        return wrap(OPTIMIZE_SCHEMA, OPTIMIZE_VERSION, {
            "out": str(self.out), "settings": self.settings.to_dict(),
            "best": self.best.name if self.best else None,
            "recipe": self.recipe.to_dict() if self.recipe else None,
            "pareto": [r.name for r in self.pareto],
            "trials": [t.to_dict() for t in self.trials],
            "candidates": [c.to_dict() for c in self.candidates],
            "text": list(self.text), "report": str(self.report) if self.report else None,
            "finalists": self.finalists.to_dict() if self.finalists else None,
            "device_info": device_summary(self.device_info)})


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
                           "failed_stage", "result_id", "seconds", "top_op")})
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
        return all(x <= y for x, y in zip(ka, kb, strict=True)) and ka != kb

    return sorted((r for r in feas if not any(dominates(o, r) for o in feas)), key=key)


def choose(rows: list[TrialRow], objective: str, size_key: str = "bytes") -> TrialRow | None:
    """The feasible row with the least p50 (objective "latency") or size (``size_key``)."""
    feas = [r for r in rows if r.feasible]
    if objective == "size":
        return min(feas, key=lambda r: (r.size(size_key), r.p50_ms), default=None)
    return min(feas, key=lambda r: (r.p50_ms, r.size(size_key)), default=None)


def apply_side_by_side(candidates: list[TrialRow], side: SideBySide) -> TrialRow | None:
    """Copy the finalists' side-by-side numbers onto their rows; the row chosen on them (None
    when none could be chosen: the per-trial means decide)."""
    by_name = {c.name: c for c in candidates}
    for f in side.finalists:
        row = by_name.get(f.name)
        if row is not None and f.ok:
            row.side_by_side_ms, row.side_by_side_rounds_ms = f.p50_ms, list(f.rounds_ms)
    return by_name.get(side.chosen) if side.chosen else None



__all__ = ["Study", "TrialRow", "trial_rows", "merge_repeats", "pareto_front", "choose",
           "apply_side_by_side", "ROLE_BASELINE", "ROLE_TOOL_DEFAULT", "OPTIMIZE_SCHEMA",
           "OPTIMIZE_VERSION"]

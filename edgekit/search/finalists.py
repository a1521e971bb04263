"""The finalists of an ``optimize`` study measured again, side by side, before one is chosen.

Each trial's p50 was measured when its trial ran; on a shared host (or a board that warms up)
two trials minutes apart are not comparable, and the choice would rest on that noise. So once
the search's budget is spent, the best few feasible recipes by the objective (``MAX_FINALISTS``)
and the fp32 baselines are measured again on the device in interleaved rounds (A B C, B C A,
C A B...: every round measures each once, in a rotated order, so a slow drift or a first-run
effect hits all of them alike). Each run is the agent's usual fresh-process measurement through
``edgekit.bench.benchmark`` with the finalist's own runtime settings (threads, XNNPACK, ORT
level); the latency inputs are generated from the I/O spec (accuracy was measured in the trial
and does not change). The choice is made on the median of the rounds, and "never slower than
fp32" is checked on those numbers: the chosen recipe must be faster than the fastest fp32
baseline side by side, or that baseline is chosen.

The re-measurements are not stored in ``results.db``: the benchmark report keeps the newest
result per artifact, and these latency-only runs would replace the trials' (with accuracy).
They go to ``finalists.json`` in the study folder, written atomically.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from edgekit.envelope import unwrap, wrap
from edgekit.errors import EdgekitError, InputError
from edgekit.search.advice_text import ms_text, ratio_text  # the advice's number formats
from edgekit.search.settings import FINALISTS_FILE

log = logging.getLogger(__name__)

#: Feasible recipes re-measured (the fp32 baselines come on top).
MAX_FINALISTS = 4
#: Interleaved rounds; each round measures every finalist once with the study's ``runs``.
ROUNDS = 3
FINALISTS_SCHEMA, FINALISTS_VERSION = "edgekit.finalists", 1
#: For the size objective, a smaller recipe up to this much slower than fp32 side by side counts
#: as "not slower" (run-to-run noise); the latency objective needs strictly faster.
NOISE = 0.10
_BASELINE = "baseline"


@dataclass
class Finalist:
    """One recipe measured side by side.

    Attributes:
        name / role / sha256 / bytes: the recipe (role "baseline" for an fp32 baseline) and
            its size by the study's size metric (the file's bytes, or gzip/zstd bytes).
        feasible: met the constraints in its trials (a baseline that did not is measured as
            the reference of "never slower than fp32" only).
        search_p50_ms: its p50 from the trials (mean over repeats).
        rounds_ms / rounds_p90_ms: p50 and p90 of each round, in round order.
        error: why it was dropped (its artifact is gone, or a run failed); None if measured.
    """

    name: str
    role: str | None
    sha256: str | None
    bytes: int | None
    feasible: bool
    search_p50_ms: float | None
    rounds_ms: list = field(default_factory=list)
    rounds_p90_ms: list = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.rounds_ms)

    @property
    def p50_ms(self) -> float | None:
        """The median of the rounds' p50s."""
        return statistics.median(self.rounds_ms) if self.ok else None

    @property
    def baseline(self) -> bool:
        return self.role == _BASELINE


@dataclass
class SideBySide:
    """The finalists' re-measurement and the choice made on it.

    Attributes:
        rounds / runs: interleaved rounds, and timed inferences per finalist per round.
        finalists: every finalist, measured or dropped, in the order they were picked.
        reference: the fp32 baseline the chosen recipe is compared with (the fastest one side
            by side), None when no baseline could be measured.
        chosen: the recipe chosen on these numbers; None when none could be chosen (then the
            per-trial means decide).
        search_pick: what the per-trial means would have chosen.
        lines: the explanation, naming the measured numbers.
    """

    rounds: int
    runs: int
    finalists: list[Finalist]
    reference: str | None = None
    chosen: str | None = None
    search_pick: str | None = None
    lines: list = field(default_factory=list)

    def get(self, name: str) -> Finalist | None:
        return next((f for f in self.finalists if f.name == name), None)

    def to_dict(self) -> dict:
        return wrap(FINALISTS_SCHEMA, FINALISTS_VERSION, {
            "rounds": self.rounds, "runs": self.runs, "reference": self.reference,
            "chosen": self.chosen, "search_pick": self.search_pick,
            "lines": list(self.lines),
            "finalists": [{**asdict(f), "p50_ms": f.p50_ms} for f in self.finalists]})

    @classmethod
    def from_dict(cls, doc: dict, where: str = "") -> SideBySide:
        """The side-by-side of a ``finalists.json`` document.

        Raises:
            DocumentError: not a finalists document, or one from another version.
        """
        doc = unwrap(doc, FINALISTS_SCHEMA, {FINALISTS_VERSION: None}, where=where,
                     rerun="re-run `edgekit optimize` to re-measure the finalists")
        known = set(Finalist.__dataclass_fields__)
        return cls(doc["rounds"], doc["runs"],
                   [Finalist(**{k: v for k, v in f.items() if k in known})
                    for f in doc["finalists"]],
                   doc.get("reference"), doc.get("chosen"), doc.get("search_pick"),
                   list(doc.get("lines") or []))


def pick(candidates, objective: str, limit: int = MAX_FINALISTS,
         size_key: str = "bytes") -> list:
    """The rows to re-measure: the first ``limit`` feasible candidates by the objective (size
    by the study's ``size_key``), then every fp32 baseline that ran (feasible or not: it is
    the reference)."""
    feasible = [c for c in candidates if c.feasible and c.p50_ms is not None]
    key = (lambda c: (c.size(size_key), c.p50_ms)) if objective == "size" else \
        (lambda c: (c.p50_ms, c.size(size_key)))
    out = sorted(feasible, key=key)[:max(0, limit)]
    out += [c for c in candidates if c.role == _BASELINE and c.p50_ms is not None
            and all(c is not o for o in out)]
    return out


def remeasure(candidates, settings, *, spec, connect=None, out: Path | None = None,
              rounds: int = ROUNDS, limit: int = MAX_FINALISTS,
              search_pick: str | None = None,
              tell: Callable[[str], None] | None = None) -> SideBySide:
    """Measure the finalists of ``candidates`` side by side on ``spec`` and choose on it.

    Args:
        candidates: the study's merged rows (``study.merge_repeats``).
        settings: the study's ``Settings`` (objective, runs, trial timeout).
        spec: the DeviceSpec to measure on. connect: its ``ConnectOptions``.
        out: the study folder: ``finalists.json`` is written there (None: not written).
        rounds / limit: interleaved rounds, and feasible finalists at most.
        search_pick: the name the per-trial means chose (for the explanation).
        tell: progress lines.

    Returns:
        SideBySide. A finalist whose re-measure fails is dropped with its cause, never raised.
    """
    tell = tell or (lambda msg: None)
    rows = pick(candidates, settings.objective, limit, settings.size_key)
    finalists = [Finalist(r.name, r.role, r.sha256, r.size(settings.size_key), r.feasible,
                          r.p50_ms) for r in rows]
    arts = {}
    for row, f in zip(rows, finalists, strict=True):
        try:
            arts[f.name] = _artifact_of(row)
        except EdgekitError as e:
            f.error = str(e)
    live = [(row, f) for row, f in zip(rows, finalists, strict=True) if f.error is None]
    if live:
        tell(f"re-measuring {len(live)} finalist(s) side by side on {spec.name}: "
             f"{rounds} interleaved round(s) of {settings.runs} runs")
    for r in range(rounds):
        shift = r % len(live) if live else 0
        for row, f in live[shift:] + live[:shift]:
            if f.error is not None:
                continue
            tell(f"side by side, round {r + 1}/{rounds}: {f.name}")
            try:
                p50, p90 = _measure_once(row, arts[f.name], settings, spec, connect)
            except EdgekitError as e:
                f.error = f"round {r + 1}: {e}"
                log.warning("finalist %s dropped: %s", f.name, f.error)
                continue
            f.rounds_ms.append(p50)
            f.rounds_p90_ms.append(p90)
    side = decide(finalists, settings.objective, rounds=rounds, runs=settings.runs,
                  search_pick=search_pick)
    if out is not None:
        write(Path(out), side)
    return side


class _Dropped(EdgekitError):
    """A finalist that cannot be re-measured (the message says why)."""


def _artifact_of(row):
    """The finalist's artifact in the build cache: its manifest entry (target, precision for
    the benchmark), or the bare file."""
    from edgekit.artifact import MANIFEST_NAME, read_manifest
    from edgekit.fsutil import sha256_file

    path = Path(row.artifact) if row.artifact else None
    if path is None or not path.is_file():
        raise _Dropped(f"its artifact {path} is no longer in the build cache")
    if (path.parent / MANIFEST_NAME).is_file():
        for a in read_manifest(path.parent):
            if Path(a.path).name == path.name and a.sha256 == row.sha256:
                return a
    sha = sha256_file(path)
    if row.sha256 and sha != row.sha256:
        raise _Dropped(f"{path} changed since its trial (sha256 {sha[:12]}, measured "
                       f"{row.sha256[:12]})")
    return path


def _measure_once(row, artifact, settings, spec, connect) -> tuple[float, float | None]:
    """One fresh-process run of the agent with the recipe's runtime settings: (p50, p90) ms.

    Raises:
        _Dropped: the run failed or reported no latency (the agent's cause in the message).
    """
    from edgekit.bench import benchmark

    recipe = row.recipe
    res = benchmark([artifact], devices=[spec], connect=connect, store=None,
                    runs=settings.runs, warmup=max(2, min(10, settings.runs // 5)),
                    threads=recipe.threads, xnnpack=recipe.xnnpack,
                    ort_opt_level=recipe.ort_opt_level, eval=None, host_reference=False,
                    timeout=settings.trial_timeout_s)[0]
    if not res.ok:
        raise _Dropped(res.error or "the device run failed")
    lat = (res.metrics or {}).get("latency_ms") or {}
    if lat.get("p50") is None:
        raise _Dropped("the agent reported no latency")
    return float(lat["p50"]), lat.get("p90")


def decide(finalists: list[Finalist], objective: str, *, rounds: int, runs: int,
           search_pick: str | None = None) -> SideBySide:
    """The choice on side-by-side numbers, and why (a pure function of the measurements).

    Latency: the fastest feasible finalist, if it is faster than the fastest fp32 baseline
    side by side (the reference); else the next one that is, or the baseline itself. Size: the
    smallest feasible finalist not slower than the reference (within ``NOISE``); if every
    smaller one is slower, the smallest, and the explanation says so. A reference that missed
    the constraints is still the yardstick but cannot be chosen.
    """
    side = SideBySide(rounds, runs, finalists, search_pick=search_pick)
    ok = [f for f in finalists if f.ok]
    ref = min((f for f in ok if f.baseline), key=lambda f: f.p50_ms, default=None)
    side.reference = ref.name if ref else None
    lines = side.lines
    if ok:
        lines.append(f"Re-measured side by side ({rounds} interleaved round(s) of {runs} runs "
                     "each on the device, median of the rounds): " + ", ".join(
                         f"{f.name} {ms_text(f.p50_ms)}"
                         + (" (fp32 baseline)" if f.baseline else "")
                         for f in sorted(ok, key=lambda f: f.p50_ms)) + ".")
    for f in finalists:
        if not f.ok:
            lines.append(f"Finalist {f.name} could not be re-measured and was left out: "
                         f"{f.error or 'no measurement'}.")
    feasible = [f for f in ok if f.feasible]
    if not feasible:
        if finalists:
            lines.append("No finalist within the constraints could be re-measured: the choice "
                         "rests on the per-trial means.")
        return side
    if objective == "size":
        order = sorted(feasible, key=lambda f: (f.bytes, f.p50_ms))
        smaller = [f for f in order if f is not ref]
        fit = [f for f in smaller if ref is None or f.p50_ms <= ref.p50_ms * (1 + NOISE)]
        chosen = fit[0] if fit else (smaller or order)[0]
        if ref is not None and chosen is not ref:
            ratio = chosen.p50_ms / ref.p50_ms
            if fit:
                skipped = [f for f in smaller if f.bytes < chosen.bytes]
                lines.append(
                    f"Side by side, {chosen.name} is {ratio_text(ratio)} {ref.name} "
                    f"({ms_text(chosen.p50_ms)} vs {ms_text(ref.p50_ms)}): not slower than fp32"
                    + (": " + ", ".join(f"{f.name} is smaller but "
                                        f"{ratio_text(f.p50_ms / ref.p50_ms)} {ref.name}"
                                        for f in skipped)
                       + ", so it was passed over" if skipped else "") + ".")
            else:
                lines.append(f"Side by side, every smaller recipe within the constraints was "
                             f"slower than fp32: {chosen.name} {ratio_text(ratio)} {ref.name} "
                             f"({ms_text(chosen.p50_ms)} vs {ms_text(ref.p50_ms)}); chosen for "
                             "size anyway.")
    else:
        order = sorted(feasible, key=lambda f: (f.p50_ms, f.bytes))
        chosen = next((f for f in order if ref is None or f is ref or f.p50_ms < ref.p50_ms),
                      None)
        # Ranked ahead of the choice but not faster than fp32 (ties with it).
        slower = order[:order.index(chosen)] if chosen is not None else []
        if chosen is None:
            chosen = order[0]
            lines.append(f"Side by side, no finalist within the constraints was faster than "
                         f"fp32 {ref.name} ({ms_text(ref.p50_ms)}), which misses the constraints: "
                         f"chose the fastest that meets them, {chosen.name} "
                         f"({ms_text(chosen.p50_ms)}, {ratio_text(chosen.p50_ms / ref.p50_ms)}).")
        elif ref is None:
            lines.append(f"Side by side, {chosen.name} was fastest ({ms_text(chosen.p50_ms)}); no "
                         "fp32 baseline could be re-measured to compare with.")
        elif chosen is ref:
            lines.append(f"Side by side, no recipe was faster than fp32: {ref.name} "
                         f"({ms_text(ref.p50_ms)}) is chosen" + (
                             " (" + ", ".join(f"{f.name} {ratio_text(f.p50_ms / ref.p50_ms)}"
                                              for f in order if f is not ref) + ")"
                             if len(order) > 1 else "") + ".")
        else:
            lines.append(f"Side by side, {chosen.name} is "
                         f"{ratio_text(chosen.p50_ms / ref.p50_ms)} fp32 {ref.name} "
                         f"({ms_text(chosen.p50_ms)} vs {ms_text(ref.p50_ms)}): faster than fp32 "
                         "on this device.")
        for f in slower:
            if not f.baseline:
                lines.append(f"{f.name} was not faster than fp32 side by side "
                             f"({ratio_text(f.p50_ms / ref.p50_ms)} {ref.name}): passed over.")
    side.chosen = chosen.name
    if search_pick and search_pick != chosen.name:
        pick_f = side.get(search_pick)
        was = (f" ({ms_text(pick_f.p50_ms)} side by side, {ms_text(pick_f.search_p50_ms)} in its "
               "trials)") if pick_f is not None and pick_f.ok else ""
        lines.append(f"The per-trial means would have chosen {search_pick}{was}; the side-by-"
                     f"side numbers chose {chosen.name} ({ms_text(chosen.p50_ms)} side by side, "
                     f"{ms_text(chosen.search_p50_ms)} in its trials).")
    return side


def write(out: Path, side: SideBySide) -> Path:
    """``finalists.json`` in ``out`` (temp name, then rename)."""
    from edgekit.fsutil import write_json_atomic

    path = Path(out) / FINALISTS_FILE
    write_json_atomic(path, side.to_dict())
    return path


def read(out: Path) -> SideBySide | None:
    """The ``finalists.json`` of a study folder, None if there is none.

    Raises:
        InputError: the file is unreadable, not a finalists document, or another version.
    """
    import json

    path = Path(out) / FINALISTS_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    return SideBySide.from_dict(doc, where=str(path))


__all__ = ["SideBySide", "Finalist", "pick", "remeasure", "decide", "read", "write",
           "MAX_FINALISTS", "ROUNDS"]

"""The fidelity gate: an artifact that drifts too far from its source is not shipped, and a sound
one is not refused.

Each output is judged by its task's measure (``edgekit.fidelity.tasks``): classification by
accuracy (with labels) or top-1 agreement, detection by F1 against the source's detections,
segmentation by mask IoU, embeddings by cosine, anything else by the SQNR of its worst slice.
A float conversion must be near-exact on every output. A figure below its bar refuses the artifact
only when the data show it: a miss that the samples cannot tell from a pass (its 95 % interval
reaches the bar), and any miss on made-up inputs, is reported as a warning naming the figure and
what would settle it. A broken output (NaN/Inf, one value for every sample) is refused always.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

from edgekit.artifact import Fidelity, OutputFidelity
from edgekit.fidelity.stats import (
    CI_BOOTSTRAP,
    samples_to_decide_interval,
    samples_to_decide_mean,
    samples_to_decide_rate,
)
from edgekit.fidelity.tasks import FLAT_REL_ERROR

QUANTIZED = ("int8", "dynamic-int8", "int16x8")
EVAL_HINT = "pass --eval with real samples to judge"


@dataclass(frozen=True)
class Gate:
    """Thresholds an artifact must meet; ``None`` means not checked.

    Attributes:
        max_accuracy_drop: accuracy points (0-100 scale) a classification output may lose vs the
            source (needs labels).
        min_top1_agreement: fraction of samples whose top-1 class matches the source's
            (classification outputs without labels; integer outputs' exact matches).
        min_sqnr_db: SQNR of every judged output's worst slice (a float conversion's bar, or the
            user's); ``regression_min_sqnr_db`` is the bar of outputs with no other measure.
        regression_min_sqnr_db: SQNR of a regression output's worst slice.
        min_detection_f1: F1 at IoU 0.5 of the artifact's detections vs the source's.
        min_mask_iou: mean IoU of segmentation masks.
        min_cosine: mean cosine similarity of embeddings.
        precision_kind: ``"quantized"`` or ``"float"``: how much error a slice without a signal
            of its own may carry.
    """

    max_accuracy_drop: Optional[float] = None
    min_top1_agreement: Optional[float] = None
    min_sqnr_db: Optional[float] = None
    regression_min_sqnr_db: Optional[float] = None
    min_detection_f1: Optional[float] = None
    min_mask_iou: Optional[float] = None
    min_cosine: Optional[float] = None
    precision_kind: str = "quantized"

    def misses(self, f: Fidelity, *, strict: bool = False) -> list[str]:
        """One phrase per threshold ``f`` misses in a way that refuses it (empty: it ships).
        ``strict`` also counts figures below their bar that the samples cannot tell from a pass
        (the repair aims at the bar itself, not at its interval)."""
        v = self.check(f)
        return v.misses + (v.uncertain if strict else [])

    def check(self, f: Fidelity) -> "Verdict":
        """Refusing misses and advisory warnings for ``f``."""
        v = Verdict()
        if not f.outputs:  # a record without per-output figures (older manifests)
            v.misses += self._model_level(f)
            return v
        multi = sum(o.judged for o in f.outputs) > 1
        for o in f.outputs:
            label = f"output {o.name!r}: " if multi else ""
            if o.task == "passthrough":
                continue
            if o.nonfinite:
                v.misses.append(f"{label}{o.nonfinite} NaN/Inf values in the artifact's output")
                continue
            if o.collapsed:
                # On made-up inputs nothing else can be trusted, so this alone refuses; on real
                # data the task's measure decides (and its misses are then certain).
                text = f"{label}the artifact gives the same output for every sample (the source does not)"
                (v.misses if f.data_origin == "synthetic" else v.warnings).append(text)
            if o.task == "constant":
                v.warnings.append(f"{label}cannot judge: {o.note}")
                continue
            for text, decisive, needed in self._output_misses(o, f):
                if o.collapsed:
                    v.misses.append(label + text)
                elif f.data_origin == "synthetic" and not _catastrophic(o, self):
                    v.warnings.append(f"{label}{text} on made-up inputs (advisory); {EVAL_HINT}")
                elif decisive:
                    v.misses.append(label + text)
                else:
                    v.uncertain.append(label + text)
                    more = f"; about {needed} samples would decide it" if needed else ""
                    v.warnings.append(f"{label}{text}, but {f.samples} samples cannot tell it from "
                                      f"a pass{more} (pass more --eval samples)")
        if not any(o.judged for o in f.outputs):
            v.warnings.append("no output could be judged: the figures prove nothing about this "
                              "artifact")
        return v

    def margin(self, f: Fidelity) -> float:
        """How far the closest output is above its bar, relative to the bar (negative: below).
        The repair maximises it: it optimises the measure the gate judges by."""
        margins = []
        for o in f.outputs:
            if not o.judged:
                continue
            m = (o.metric or {}).get("value")
            bar = {"detection": self.min_detection_f1, "segmentation": self.min_mask_iou,
                   "embedding": self.min_cosine, "integer": self.min_top1_agreement,
                   "regression": self.regression_min_sqnr_db}.get(o.task)
            if o.task == "classification":
                acc, src = o.details.get("accuracy"), o.details.get("source_accuracy")
                if self.max_accuracy_drop is not None and acc is not None:
                    margins.append((self.max_accuracy_drop - 100 * (src - acc))
                                   / max(self.max_accuracy_drop, 1.0))
                    continue
                bar = self.min_top1_agreement
            if m is not None and bar is not None:
                margins.append((m - bar) / max(abs(bar), 1e-9 if o.task != "regression" else 1.0))
            if self.min_sqnr_db is not None:
                margins.append((o.worst_sqnr_db - self.min_sqnr_db) / max(abs(self.min_sqnr_db), 1.0))
        return min(margins) if margins else f.sqnr_db

    def _output_misses(self, o: OutputFidelity, f: Fidelity) -> list[tuple[str, bool, Optional[int]]]:
        out: list[tuple[str, bool, Optional[int]]] = []
        m = o.metric or {}
        value, ci = m.get("value"), m.get("ci")
        if o.task == "classification":
            if self.max_accuracy_drop is not None and o.details.get("accuracy") is not None:
                out += self._accuracy_drop(o)
            elif self.min_top1_agreement is not None and value is not None:
                out += _rate_miss("top-1 agreement", value, ci, self.min_top1_agreement)
        elif o.task == "integer" and value is not None:
            out += _rate_miss("exact matches", value, ci, self.min_top1_agreement or 0.97)
        elif o.task == "detection" and value is not None and self.min_detection_f1 is not None:
            d = o.details
            miss = _rate_miss("detection F1", value, ci, self.min_detection_f1, percent=False,
                              metric=m)
            out += [(f"{t} ({d.get('true_positives')} of the source's "
                     f"{d.get('reference_detections')} detections found, "
                     f"{d.get('artifact_detections')} reported)", dec, n) for t, dec, n in miss]
        elif o.task == "segmentation" and value is not None and self.min_mask_iou is not None:
            out += _mean_miss("mask IoU", m, self.min_mask_iou)
        elif o.task == "embedding" and value is not None and self.min_cosine is not None:
            out += _mean_miss("cosine similarity", m, self.min_cosine)
        elif o.task == "regression" and self.regression_min_sqnr_db is not None \
                and self.min_sqnr_db is None:
            out += self._sqnr(o, self.regression_min_sqnr_db)
        if self.min_sqnr_db is not None and o.task not in ("integer",):
            out += self._sqnr(o, self.min_sqnr_db)
        ws = o.worst_slice or {}
        limit = FLAT_REL_ERROR[self.precision_kind]
        if ws.get("judged_by") == "rel_error" and ws.get("rel_error", 0) > limit:
            out.append((f"slice {ws['slice']} of axis {ws['axis']} has an RMS error of "
                        f"{100 * ws['rel_error']:.2f}% of the output's range "
                        f"(> {100 * limit:g}%)", True, None))
        return out

    def _sqnr(self, o: OutputFidelity, bar: float) -> list[tuple[str, bool, Optional[int]]]:
        ws = o.worst_slice or {}
        if o.sqnr_db < bar:
            return [(f"output SQNR {o.sqnr_db:.1f} dB < {bar:g} dB", True, None)]
        if ws.get("sqnr_db") is not None and ws["sqnr_db"] < bar:
            return [(f"SQNR {ws['sqnr_db']:.1f} dB < {bar:g} dB in slice {ws['slice']} of axis "
                     f"{ws['axis']} (whole output {o.sqnr_db:.1f} dB)", True, None)]
        return []

    def _accuracy_drop(self, o: OutputFidelity):
        acc, src = o.details["accuracy"], o.details["source_accuracy"]
        drop = src - acc
        n = o.samples or 0
        # Rounded: 0.905 - 0.895 is 1.0000000000000009 points, and exactly 1 point is within 1.
        if round(100 * drop, 9) <= self.max_accuracy_drop:
            return []
        text = (f"accuracy drop {100 * drop:.2f} points > {self.max_accuracy_drop:g} "
                f"({100 * acc:.2f}% vs source {100 * src:.2f}%)")
        net = round(drop * n) if n else None
        # One sample's worth over the budget cannot be told from noise when a sample is worth
        # more than the whole budget.
        if n and net is not None and net <= 1 and 100.0 / n > self.max_accuracy_drop:
            return [(text, False, math.ceil(300.0 / self.max_accuracy_drop))]
        return [(text, True, None)]

    def _model_level(self, f: Fidelity) -> list[str]:
        out = []
        drop = f.accuracy_drop
        if (self.max_accuracy_drop is not None and drop is not None
                and round(100 * drop, 9) > self.max_accuracy_drop):
            out.append(f"accuracy drop {100 * drop:.2f} points > {self.max_accuracy_drop:g} "
                       f"({100 * f.accuracy:.2f}% vs source {100 * f.source_accuracy:.2f}%)")
        if (self.min_top1_agreement is not None and f.top1_agreement is not None
                and f.top1_agreement < self.min_top1_agreement):
            out.append(f"top-1 agreement {100 * f.top1_agreement:.2f}% < "
                       f"{100 * self.min_top1_agreement:.2f}%")
        bar = self.min_sqnr_db if self.min_sqnr_db is not None else (
            self.regression_min_sqnr_db if f.top1_agreement is None else None)
        if bar is not None and f.sqnr_db < bar:
            out.append(f"output SQNR {f.sqnr_db:.1f} dB < {bar:g} dB")
        return out

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Verdict:
    """What the gate found: misses refuse the artifact, warnings are shown and recorded."""

    misses: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    uncertain: list[str] = field(default_factory=list)  # below the bar, within the interval


def _rate_miss(name, value, ci, bar, percent=True, metric=None):
    if value >= bar:
        return []
    if percent:
        text = f"{name} {100 * value:.2f}% < {100 * bar:.2f}%"
        if ci:
            text += f" (95% CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f}%)"
    else:
        text = f"{name} {value:.3f} < {bar:g}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
    decisive = ci is None or ci[1] < bar
    if decisive:
        return [(text, True, None)]
    if (metric or {}).get("ci_method") == CI_BOOTSTRAP:
        # A pooled figure: its interval narrows with the eval samples, not with the detections.
        return [(text, False, samples_to_decide_interval(value, ci, metric.get("samples"), bar))]
    return [(text, False, samples_to_decide_rate(value, bar))]


def _mean_miss(name, m, bar):
    value, ci = m["value"], m.get("ci")
    if value >= bar:
        return []
    text = f"{name} {value:.4f} < {bar:g}"
    if ci:
        text += f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})"
    decisive = ci is None or ci[1] < bar
    needed = None if decisive or m.get("sd") is None else samples_to_decide_mean(value, m["sd"], bar)
    return [(text, decisive, needed)]


def _catastrophic(o: OutputFidelity, gate: Gate) -> bool:
    """Broken whatever the inputs: noise above the signal in a float conversion."""
    return gate.precision_kind == "float" and o.worst_sqnr_db < 0.0


# Defaults. Float conversions must be near-exact: 40 dB is ~1% RMS error, far above what fp32
# (>100 dB here) or fp16 (>60 dB) conversions give, so a miss means a broken conversion.
FLOAT_SQNR_DB = {"fp32": 40.0, "fp16": 30.0}
# Quantized artifacts, by task: a classifier may lose 1 point of accuracy (or 3 % of top-1
# agreement without labels); a detector must find 90 % (F1) of the source's detections; masks keep
# 0.85 IoU; embeddings 0.98 cosine (ONNX Runtime's per-channel dynamic INT8 of MiniLM: 0.996);
# other outputs 15 dB SQNR on their worst slice (naive int8 that collapses measures < 5 dB,
# healthy int8 above 20 dB).
QUANTIZED_DEFAULTS = dict(min_top1_agreement=0.97, regression_min_sqnr_db=15.0,
                          min_detection_f1=0.90, min_mask_iou=0.85, min_cosine=0.98)
DEFAULT_MAX_ACCURACY_DROP = 1.0


def gate_for(precision: str, fidelity: Fidelity, *, max_accuracy_drop=None, min_top1_agreement=None,
             min_sqnr_db=None, min_task_metric=None) -> Gate:
    """The gate for an artifact: per-task defaults, with the user's thresholds in their place.

    User thresholds apply to quantized artifacts; float artifacts keep their near-exact gate.
    ``min_task_metric`` is the bar of the detection / segmentation / embedding measure.
    """
    if precision not in QUANTIZED:
        return Gate(min_sqnr_db=FLOAT_SQNR_DB.get(precision, 30.0), precision_kind="float")
    d = dict(QUANTIZED_DEFAULTS)
    if fidelity.accuracy is not None and min_top1_agreement is None:
        d["max_accuracy_drop"] = DEFAULT_MAX_ACCURACY_DROP
    if max_accuracy_drop is not None:
        d["max_accuracy_drop"] = max_accuracy_drop
    if min_top1_agreement is not None:
        d["min_top1_agreement"] = min_top1_agreement
    if min_sqnr_db is not None:
        d["min_sqnr_db"] = min_sqnr_db
    if min_task_metric is not None:
        d.update(min_detection_f1=min_task_metric, min_mask_iou=min_task_metric,
                 min_cosine=min_task_metric)
    return Gate(**d)

"""What a report shows, gathered from a results database or ``edgekit bench --json`` files.

The report is a pure function of ``Result`` values: ``gather`` groups them per device, keeps the
newest successful result per (device, artifact), finds each device's FP32 baseline and works out
deltas and throttling warnings. The HTML, Markdown and CSV writers only format these values.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from edgekit.errors import InputError
from edgekit.perlayer import per_layer_of
from edgekit.results import Result, ResultStore

log = logging.getLogger(__name__)

#: A CPU whose clock after the runs is below this fraction of its maximum was throttled (or idle
#: at a powersave governor) while measuring.
FREQ_DROP_RATIO = 0.85
#: Temperatures at or above this, in °C, are reported as a throttling risk.
HOT_C = 80.0
#: A temperature rise over the runs larger than this, in °C, is reported.
TEMP_RISE_C = 10.0


@dataclass
class ArtifactRow:
    """One artifact measured on one device (the newest successful result for it).

    Attributes:
        result_id: the row id in the results database (None for results read from JSON files).
        name, target, format, precision, sha256, bytes: the artifact.
        latency: the agent's ``latency_ms`` statistics (min, mean, std, p50, p90, p99, max, runs).
        peak_rss_bytes, model_rss_delta_bytes, init_ms: memory and load time.
        accuracy: top-1 on the device's eval data, or None without labels.
        accuracy_samples: how many eval samples the accuracy is over.
        fidelity: the manifest's fidelity against the source model, or None.
        runtime: ``name version`` of the runtime that ran it.
        baseline: name of the FP32 artifact the deltas are against (None when there is none).
        accuracy_delta: accuracy minus the baseline's, in fractions (None when either is unknown).
        speedup: baseline p50 / this p50 (> 1 is faster).
        size_ratio: bytes / baseline bytes.
        per_layer: the run's per-layer summary when measured with ``--per-layer`` (method,
            total_ms, whole_model_p50_ms, gap_pct, op_types), else None.
    """

    result_id: Optional[int]
    name: str
    target: Optional[str]
    format: Optional[str]
    precision: Optional[str]
    sha256: str
    bytes: int
    latency: dict
    peak_rss_bytes: Optional[int]
    model_rss_delta_bytes: Optional[int]
    init_ms: Optional[float]
    accuracy: Optional[float]
    accuracy_samples: Optional[int]
    fidelity: Optional[dict]
    runtime: str
    baseline: Optional[str] = None
    accuracy_delta: Optional[float] = None
    speedup: Optional[float] = None
    size_ratio: Optional[float] = None
    per_layer: Optional[dict] = None

    @property
    def label(self) -> str:
        return self.target or self.name

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class DeviceReport:
    """Everything the report shows for one device.

    Attributes:
        device: the device name as benchmarked.
        info: the agent's probe document (None if never reached).
        rows: artifacts measured, smallest first.
        failures: ``{"artifact", "error"}`` for runs that failed and never succeeded later.
        warnings: throttling and measurement warnings, one line each.
    """

    device: str
    info: Optional[dict]
    rows: list[ArtifactRow] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"device": self.device, "info": self.info, "rows": [r.to_dict() for r in self.rows],
                "failures": self.failures, "warnings": self.warnings}


@dataclass
class ReportData:
    """The whole report: one ``DeviceReport`` per device, in name order."""

    devices: list[DeviceReport]
    sources: list[str]

    def to_dict(self) -> dict:
        return {"sources": self.sources, "devices": [d.to_dict() for d in self.devices]}


def load_results(db=None, json_files: Iterable = ()) -> tuple[list[Result], list[str]]:
    """Results from a database and/or ``edgekit bench --json`` / ``results ... --json`` files.

    Args:
        db: a results database (a SQLite path or an SQLAlchemy URL), or None.
        json_files: files holding one result document or a list of them.

    Returns:
        (results, source descriptions).

    Raises:
        InputError: a missing database or file, a file that is not result JSON, or no results.
    """
    results: list[Result] = []
    sources: list[str] = []
    if db is not None:
        with ResultStore(db, create=False) as store:  # a missing file or no results: InputError
            results += store.list(limit=None)
        sources.append(store.location.shown)
    for f in json_files:
        results += _read_json_results(Path(f))
        sources.append(str(f))
    if not results:
        raise InputError(f"no benchmark results in {', '.join(sources) or 'nothing'}: run "
                         "`edgekit bench` first")
    return results, sources


def _read_json_results(path: Path) -> list[Result]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read results JSON {path}: {e}") from e
    docs = doc if isinstance(doc, list) else [doc]
    out = []
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise InputError(f"{path}: item {i} is not a result document (expected the output "
                             "of `edgekit bench --json`)")
        try:
            out.append(Result.from_dict(d))
        except TypeError as e:
            raise InputError(f"{path}: item {i} is not a result document: {e}") from e
    return out


def gather(results: Iterable[Result], sources: Iterable[str] = ()) -> ReportData:
    """Group results per device, keep the newest successful one per artifact file, add deltas.

    Args:
        results: any mix of devices and artifacts; per device and artifact path, the later
            ``finished_at`` (then higher id) wins, so a re-converted file shows its new figures.
        sources: where they came from (shown in the report).

    Returns:
        ReportData with devices sorted by name and rows sorted by size then name.
    """
    by_device: dict[str, list[Result]] = {}
    for r in results:
        by_device.setdefault(r.device, []).append(r)
    devices = []
    for name in sorted(by_device):
        runs = sorted(by_device[name], key=lambda r: (r.finished_at or "", r.id or 0))
        newest_ok: dict[str, Result] = {}
        last_error: dict[str, Result] = {}
        info = None
        for r in runs:
            info = r.device_info or info
            # Keyed by the artifact's path: a re-converted file replaces its older results.
            key = r.artifact.get("path") or r.artifact.get("sha256", "")
            if r.ok:
                newest_ok[key] = r
                last_error.pop(key, None)
            elif key not in newest_ok:
                last_error[key] = r
        rows = sorted((_row(r) for r in newest_ok.values()), key=lambda x: (x.bytes, x.name))
        _add_deltas(rows)
        report = DeviceReport(name, info, rows,
                              [{"artifact": r.artifact.get("name", ""), "error": r.error or ""}
                               for r in last_error.values()])
        report.warnings = throttling_warnings(list(newest_ok.values()))
        devices.append(report)
    return ReportData(devices, list(sources))


def _row(r: Result) -> ArtifactRow:
    m = r.metrics or {}
    mem = m.get("memory") or {}
    acc = m.get("accuracy") or {}
    art = r.artifact
    return ArtifactRow(
        result_id=r.id, name=art.get("name", ""), target=art.get("target"),
        format=art.get("format"), precision=art.get("precision"), sha256=art.get("sha256", ""),
        bytes=int(art.get("bytes") or 0), latency=dict(m.get("latency_ms") or {}),
        peak_rss_bytes=mem.get("peak_rss_bytes"), model_rss_delta_bytes=mem.get("model_rss_delta_bytes"),
        init_ms=m.get("init_ms"), accuracy=acc.get("top1"), accuracy_samples=acc.get("samples"),
        fidelity=art.get("fidelity"),
        runtime=f"{m.get('runtime', '')} {m.get('runtime_version', '')}".strip(),
        per_layer=_per_layer_summary(m))


def _per_layer_summary(metrics: dict) -> Optional[dict]:
    doc = per_layer_of(metrics)
    if doc is None:
        return None
    return {k: doc.get(k) for k in ("method", "total_ms", "whole_model_p50_ms", "gap_pct",
                                    "op_types")}


def _add_deltas(rows: list[ArtifactRow]) -> None:
    """Deltas against the FP32 artifact of the same format (else any FP32 artifact)."""
    fp32 = [r for r in rows if r.precision == "fp32"]
    for row in rows:
        same = [b for b in fp32 if b.format == row.format]
        base = (same or fp32 or [None])[0]
        if base is None:
            continue
        row.baseline = base.label
        if row.accuracy is not None and base.accuracy is not None:
            row.accuracy_delta = row.accuracy - base.accuracy
        if row.latency.get("p50") and base.latency.get("p50"):
            row.speedup = base.latency["p50"] / row.latency["p50"]
        if base.bytes:
            row.size_ratio = row.bytes / base.bytes


def throttling_warnings(results: list[Result]) -> list[str]:
    """Lines saying where the CPU clock dropped or the board ran hot while measuring.

    Reads the agent's ``system.before`` / ``system.after`` snapshots of every result.
    """
    warnings: list[str] = []
    for r in sorted(results, key=lambda r: r.artifact.get("name", "")):
        system = (r.metrics or {}).get("system") or {}
        before, after = system.get("before") or {}, system.get("after") or {}
        name = r.artifact.get("name", "")
        for cpu, f in sorted((after.get("frequencies") or {}).items()):
            cur, top = f.get("cur_khz"), f.get("max_khz")
            if cur and top and cur < FREQ_DROP_RATIO * top:
                gov = f.get("governor")
                warnings.append(f"{name}: {cpu} at {cur / 1000:.0f} MHz after the runs, "
                                f"{100 * cur / top:.0f}% of its {top / 1000:.0f} MHz maximum"
                                + (f" (governor {gov})" if gov else "")
                                + ": throttled or not boosted; latency may be inflated")
        temps_before = before.get("temperatures_c") or {}
        for zone, t in sorted((after.get("temperatures_c") or {}).items()):
            if t is None:
                continue
            if t >= HOT_C:
                warnings.append(f"{name}: {zone} reached {t:.1f} °C (>= {HOT_C:.0f} °C): "
                                "thermal throttling likely")
            t0 = temps_before.get(zone)
            if t0 is not None and t - t0 > TEMP_RISE_C:
                warnings.append(f"{name}: {zone} rose {t - t0:.1f} °C during the runs "
                                f"({t0:.1f} → {t:.1f} °C)")
    return warnings

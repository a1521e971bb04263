"""Benchmark results: the ``Result`` value, its versioned JSON form, and ``ResultStore`` (SQLite).

One row per (device, artifact, settings) run. The database uses WAL and one transaction per
result, so a bench that crashes keeps every result written before the crash. The JSON form is
documented in docs/results-schema.md.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from edgekit.envelope import unwrap, wrap
from edgekit.errors import InputError

log = logging.getLogger(__name__)

RESULT_SCHEMA = "edgekit.result"
RESULT_VERSION = 1
DEFAULT_DB = "edgekit-results.db"

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    schema_version INTEGER NOT NULL,
    device TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    artifact_name TEXT NOT NULL,
    target TEXT,
    settings_key TEXT NOT NULL,
    ok INTEGER NOT NULL,
    error TEXT,
    p50_ms REAL,
    mean_ms REAL,
    peak_rss_bytes INTEGER,
    accuracy REAL,
    upload_bytes INTEGER NOT NULL DEFAULT 0,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_key ON results (device, artifact_sha256, settings_key);
"""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Result:
    """One artifact benchmarked on one device (or the error that stopped it).

    Attributes:
        device: the device name as given (``local``, ``pi4``, ``user@host:port``).
        artifact: {path, name, sha256, target, format, precision, bytes, fidelity}.
        settings: {runs, warmup, threads, runtime, eval_sha256}.
        ok: whether the agent produced measurements.
        error: why not (one line, naming the cause), else None.
        metrics: the agent's run document (latency_ms, memory, accuracy...), None on error.
        device_info: the agent's probe document for the device, None if unreachable.
        upload_bytes: bytes sent to the device for this result (0 on a cache hit).
        started_at, finished_at: UTC ISO-8601 timestamps.
        id: the row id once stored.
        lease: for a ``labgrid:PLACE`` device, how the place was held while measuring
            (``edgekit.devices.lab.lease.LeaseInfo``: place, coordinator, holder, waited_s,
            lock_s, acquired_at, took_over_pid); None otherwise.
    """

    device: str
    artifact: dict
    settings: dict
    ok: bool
    error: Optional[str] = None
    metrics: Optional[dict] = None
    device_info: Optional[dict] = None
    upload_bytes: int = 0
    started_at: str = field(default_factory=_now)
    finished_at: str = field(default_factory=_now)
    id: Optional[int] = None
    lease: Optional[dict] = None

    @property
    def succeeded(self) -> bool:
        return self.ok

    @property
    def failed(self) -> bool:
        return not self.ok

    @property
    def settings_key(self) -> str:
        return json.dumps(self.settings, sort_keys=True)

    def latency(self, stat: str = "p50") -> Optional[float]:
        return (self.metrics or {}).get("latency_ms", {}).get(stat)

    def to_dict(self) -> dict:
        """The versioned JSON envelope (docs/results-schema.md)."""
        return wrap(RESULT_SCHEMA, RESULT_VERSION, asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "Result":
        """Read a ``to_dict`` document.

        Raises:
            DocumentError: another schema or an unsupported version.
        """
        return cls(**unwrap(d, RESULT_SCHEMA, {RESULT_VERSION: None},
                            rerun="re-run `edgekit bench` to measure it again"))


class ResultStore:
    """Results in a SQLite file (WAL mode, one transaction per result).

    Args:
        path: the database file (created if missing). Default ``edgekit-results.db``.

    Raises:
        InputError: the file is not a SQLite database.
    """

    def __init__(self, path=DEFAULT_DB):
        self.path = Path(path)
        try:
            # check_same_thread=False: devices finish in worker threads; writes are serialised by
            # SQLite's own lock and each add() is one short transaction.
            self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA_SQL)
        except sqlite3.DatabaseError as e:
            raise InputError(f"{self.path} is not a usable results database: {e}") from e

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add(self, result: Result) -> int:
        """Store ``result`` in its own transaction; set and return its id."""
        acc = ((result.metrics or {}).get("accuracy") or {}).get("top1")
        doc = result.to_dict()
        doc["id"] = None  # the row id is the id; get() puts it back
        try:
            with self._db:  # BEGIN ... COMMIT (ROLLBACK on error): one transaction per result
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute(
                    "INSERT INTO results (schema_version, device, artifact_sha256, artifact_name, "
                    "target, settings_key, ok, error, p50_ms, mean_ms, peak_rss_bytes, accuracy, "
                    "upload_bytes, started_at, finished_at, doc) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (RESULT_VERSION, result.device, result.artifact.get("sha256", ""),
                     result.artifact.get("name", ""), result.artifact.get("target"),
                     result.settings_key, int(result.ok), result.error, result.latency("p50"),
                     result.latency("mean"),
                     ((result.metrics or {}).get("memory") or {}).get("peak_rss_bytes"), acc,
                     result.upload_bytes, result.started_at, result.finished_at,
                     json.dumps(doc, default=str)))
        except sqlite3.DatabaseError as e:
            raise InputError(f"cannot write to results database {self.path}: {e}") from e
        result.id = cur.lastrowid
        return result.id

    def get(self, result_id: int) -> Result:
        """The stored result with this id.

        Raises:
            InputError: no such id.
        """
        row = self._db.execute("SELECT id, doc FROM results WHERE id=?",
                               (int(result_id),)).fetchone()
        if row is None:
            raise InputError(f"no result with id {result_id} in {self.path} "
                             "(see `edgekit results list`)")
        return _from_row(row)

    def list(self, device: Optional[str] = None, artifact: Optional[str] = None,
             limit: int = 50) -> list[Result]:
        """Newest results first, optionally filtered by device name and artifact name/sha prefix."""
        sql, args = "SELECT id, doc FROM results WHERE 1=1", []
        if device:
            sql += " AND device=?"
            args.append(device)
        if artifact:
            sql += " AND (artifact_name=? OR artifact_sha256 LIKE ?)"
            args += [artifact, artifact + "%"]
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(int(limit))
        return [_from_row(r) for r in self._db.execute(sql, args)]

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]


def _from_row(row) -> Result:
    result = Result.from_dict(json.loads(row[1]))
    result.id = row[0]
    return result


# ----------------------------------------------------------------------------------------------
# Compare
# ----------------------------------------------------------------------------------------------

@dataclass
class MetricDelta:
    """One metric of NEW against BASE, with the noise band used to judge it."""

    name: str
    base: Optional[float]
    new: Optional[float]
    delta: Optional[float]
    threshold: Optional[float]
    verdict: str  # "regression", "improvement", "within noise", "n/a"
    higher_is_better: bool = False


@dataclass
class Comparison:
    """BASE vs NEW; ``regressions`` lists the metric names that got worse beyond noise."""

    base_id: int
    new_id: int
    same_artifact: bool
    same_device: bool
    metrics: list[MetricDelta]

    @property
    def regressions(self) -> list[str]:
        return [m.name for m in self.metrics if m.verdict == "regression"]

    def to_dict(self) -> dict:
        return {"base_id": self.base_id, "new_id": self.new_id, "same_artifact": self.same_artifact,
                "same_device": self.same_device, "regressions": self.regressions,
                "metrics": [asdict(m) for m in self.metrics]}


def latency_noise(lat: dict) -> float:
    """The noise band of a latency median, from the spread of the runs themselves.

    The jitter of one run is taken as the larger of the inter-run std and the p50..p90 gap; the
    median's uncertainty shrinks with sqrt(runs) but never below a quarter of that jitter, since
    runs on one board are not independent (thermal state, background load, frequency changes).
    """
    spread = max(lat.get("std") or 0.0, (lat.get("p90") or 0.0) - (lat.get("p50") or 0.0))
    runs = max(int(lat.get("runs") or 1), 1)
    return max(1.2533 * spread / math.sqrt(runs), 0.25 * spread)


def _judge(name, base, new, threshold, higher_is_better=False) -> MetricDelta:
    if base is None or new is None:
        return MetricDelta(name, base, new, None, threshold, "n/a", higher_is_better)
    delta = new - base
    worse = -delta if higher_is_better else delta
    verdict = ("regression" if worse > threshold else
               "improvement" if worse < -threshold else "within noise")
    return MetricDelta(name, base, new, delta, threshold, verdict, higher_is_better)


def compare(base: Result, new: Result) -> Comparison:
    """Judge NEW against BASE, metric by metric, with noise-aware thresholds.

    Latency (p50, mean): the combined noise band of both runs (``latency_noise``) times 3.
    Peak RSS: 2% of BASE or 1 MiB, whichever is larger (allocators round up).
    Accuracy: two binomial standard errors of the two eval sets combined.

    Raises:
        InputError: one of the results has no measurements.
    """
    for r in (base, new):
        if not r.ok:
            raise InputError(f"result {r.id} has no measurements ({r.error}); compare two "
                             "successful results")
    bl, nl = base.metrics["latency_ms"], new.metrics["latency_ms"]
    lat_thr = 3 * math.hypot(latency_noise(bl), latency_noise(nl))
    metrics = [_judge("latency_p50_ms", bl["p50"], nl["p50"], lat_thr),
               _judge("latency_mean_ms", bl["mean"], nl["mean"], lat_thr)]
    bm, nm = base.metrics.get("memory") or {}, new.metrics.get("memory") or {}
    if bm.get("peak_rss_bytes") and nm.get("peak_rss_bytes"):
        thr = max(0.02 * bm["peak_rss_bytes"], 1 << 20)
        metrics.append(_judge("peak_rss_bytes", bm["peak_rss_bytes"], nm["peak_rss_bytes"], thr))
    ba, na = base.metrics.get("accuracy"), new.metrics.get("accuracy")
    if ba and na:
        p = (ba["top1"] + na["top1"]) / 2
        se = math.sqrt(max(p * (1 - p), 1e-6) * (1 / ba["samples"] + 1 / na["samples"]))
        metrics.append(_judge("accuracy_top1", ba["top1"], na["top1"], 2 * se, True))
    return Comparison(base.id, new.id, base.artifact.get("sha256") == new.artifact.get("sha256"),
                      base.device == new.device, metrics)

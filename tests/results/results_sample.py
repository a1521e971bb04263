"""Results to store in the tests of ``edgekit.results``, and the results table exactly as
edgekit 0.1 created it (raw sqlite3, before migrations), to write old-format files with."""

from __future__ import annotations

import sqlite3

from edgekit.results import Result

# Frozen copy of edgekit 0.1's ``_SCHEMA_SQL`` and ``ResultStore.add`` statement: never edit.
LEGACY_SCHEMA_SQL = """
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
LEGACY_INSERT = (
    "INSERT INTO results (schema_version, device, artifact_sha256, artifact_name, "
    "target, settings_key, ok, error, p50_ms, mean_ms, peak_rss_bytes, accuracy, "
    "upload_bytes, started_at, finished_at, doc) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")


def make(p50: float, spread: float = 0.2, device: str = "pi4", sha: str = "a" * 64,
         started_at: str = "2026-01-01T00:00:00Z", runs: int = 200) -> Result:
    lat = {"min": p50 - spread / 2, "mean": p50 + spread / 4, "std": spread, "p50": p50,
           "p90": p50 + spread, "p99": p50 + 2 * spread, "max": p50 + 3 * spread, "runs": runs}
    metrics = {"latency_ms": lat, "memory": {"peak_rss_bytes": 50 << 20,
                                             "model_rss_delta_bytes": 1},
               "accuracy": {"samples": 1000, "top1": 0.9}}
    return Result(device, {"name": f"m-{sha[:4]}.tflite", "sha256": sha, "target": "tflite-int8"},
                  {"runs": runs, "warmup": 10, "threads": 1, "runtime": None,
                   "eval_sha256": None, "reference": None},
                  True, None, metrics, started_at=started_at, finished_at=started_at)


def write_legacy(path, results) -> None:
    """Store ``results`` as edgekit 0.1 did (its schema, its INSERT, its document)."""
    import json

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(LEGACY_SCHEMA_SQL)
    for r in results:
        doc = r.to_dict()
        doc["id"] = None
        doc.pop("uid")  # edgekit 0.1 had no uid
        db.execute(LEGACY_INSERT, (
            1, r.device, r.artifact.get("sha256", ""), r.artifact.get("name", ""),
            r.artifact.get("target"), r.settings_key, int(r.ok), r.error, r.latency("p50"),
            r.latency("mean"), r.metrics["memory"]["peak_rss_bytes"],
            r.metrics["accuracy"]["top1"], r.upload_bytes, r.started_at, r.finished_at,
            json.dumps(doc)))
    db.close()

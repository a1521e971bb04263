"""The results tables, in SQLAlchemy Core: one definition for SQLite and PostgreSQL.

This is the schema at the newest migration (``edgekit/results/migrations/versions``); a change
here is a new migration there, never an edit of an old one. Column types keep to what both
backends store alike (``ok`` is an integer 0/1, timestamps are ISO-8601 text, which sorts as
time does), so an exported row reads back the same from either.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

# SQLite's rowid alias must be exactly INTEGER; PostgreSQL gets a 64-bit id.
_ID = BigInteger().with_variant(Integer(), "sqlite")

results = Table(
    "results", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("schema_version", Integer, nullable=False),
    Column("device", Text, nullable=False),
    Column("artifact_sha256", Text, nullable=False),
    Column("artifact_name", Text, nullable=False),
    Column("target", Text),
    Column("settings_key", Text, nullable=False),
    Column("ok", Integer, nullable=False),
    Column("error", Text),
    Column("p50_ms", Float),
    Column("mean_ms", Float),
    Column("peak_rss_bytes", BigInteger),
    Column("accuracy", Float),
    Column("upload_bytes", BigInteger, nullable=False, server_default="0"),
    Column("started_at", Text, nullable=False),
    Column("finished_at", Text, nullable=False),
    Column("doc", Text, nullable=False),
    # Added by migration 0002; NULL only in rows written by an edgekit from before it.
    Column("uid", String(36)),
    Index("results_key", "device", "artifact_sha256", "settings_key"),
    Index("results_uid", "uid", unique=True),
    Index("results_started", "started_at"),
    sqlite_autoincrement=True,
)

#: The columns that identify a result across databases.
IDENTITY = ("uid", "device", "artifact_sha256")

"""``ResultStore``: benchmark results in SQLite (a file, the default) or PostgreSQL (a URL).

One row per (device, artifact, settings) run, written in its own transaction: a writer that
dies mid-write (killed, power lost, network gone) leaves every earlier result and no part of
its last one, since the database rolls back a transaction whose client is gone. Many writers,
on one machine (SQLite, WAL) or on many (PostgreSQL), may add results to one database at once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from pathlib import Path
from typing import Iterator, Optional, Union

from edgekit.errors import EdgekitError, InputError
from edgekit.results.location import WRITE, create_engine_for, parse_location
from edgekit.results.migrate import ensure_schema
from edgekit.results.model import RESULT_VERSION, Result, content_uid, new_uid
from edgekit.results.schema import results as table

log = logging.getLogger(__name__)

DEFAULT_DB = "edgekit-results.db"


class ResultsDatabaseError(EdgekitError):
    """A results database could not be reached or written (server down, disk full, lock held
    too long); the message names the location, its password hidden."""


def _db_error(loc, doing: str, e: Exception) -> EdgekitError:
    """One line for an SQLAlchemy error: the driver's first line, never the URL or the SQL."""
    from sqlalchemy.exc import DBAPIError

    cause = e.orig if isinstance(e, DBAPIError) and e.orig is not None else e
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    if loc.backend == "sqlite" and doing == "open" and "locked" not in first:
        # a path that is no SQLite file, or where no file can be made: the user's to fix
        return InputError(f"{loc.shown} is not a usable results database: {first}")
    return ResultsDatabaseError(f"cannot {doing} results database {loc.shown}: {first}")


_SINCE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def since_cutoff(since: str, now: Optional[dt.datetime] = None) -> str:
    """The ``started_at`` from which ``--since`` keeps results: ``30d``, ``12h``, ``2w``,
    ``90m`` back from now, or an ISO-8601 date or time (UTC).

    Raises:
        InputError: neither form.
    """
    m = _SINCE.match(since.strip())
    if m:
        now = now or dt.datetime.now(dt.timezone.utc)
        start = now - dt.timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
        return start.strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        when = dt.datetime.fromisoformat(since.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"--since {since!r}: expected an age such as 30d, 12h, 2w, 90m or an "
                         "ISO date such as 2026-01-31") from None
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class ResultStore:
    """Benchmark results in a database: a SQLite file or an SQLAlchemy URL.

    Args:
        path: a file path (SQLite; created if missing) or a URL such as
            ``postgresql://user@host/db`` or ``sqlite:///results.db``. Default
            ``edgekit-results.db``. A database written by an earlier edgekit is migrated.
        create: create the database or its tables when missing (False: refuse, for readers).

    Attributes:
        location: the parsed location (``location.shown`` for messages: no password).
        path: the SQLite file, None for a server.
        engine: the SQLAlchemy engine.

    Raises:
        InputError: a bad URL, a file that is not SQLite, a database that is not edgekit's
            (or has no results and ``create`` is False), or one from a newer edgekit.
        ResultsDatabaseError: the server cannot be reached.
    """

    def __init__(self, path: Union[str, Path] = DEFAULT_DB, create: bool = True):
        from sqlalchemy.exc import SQLAlchemyError

        self.location = parse_location(path)
        self.path = self.location.path
        if not create and self.path is not None and not self.path.is_file():
            raise InputError(f"results database {self.location.shown} does not exist: run "
                             f"`edgekit bench ... --db {self.location.shown}` first")
        self.engine = create_engine_for(self.location)
        try:
            ensure_schema(self.engine, self.location, create=create)
        except SQLAlchemyError as e:
            self.engine.dispose()
            raise _db_error(self.location, "open", e) from e
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"ResultStore({self.location.shown!r})"

    def add(self, result: Result) -> int:
        """Store ``result`` in its own transaction; give it a uid if it has none; set and
        return its row id.

        Raises:
            ResultsDatabaseError: the write failed (nothing of it was stored).
        """
        from sqlalchemy.exc import SQLAlchemyError

        uid = result.uid or new_uid()
        try:
            with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
                row_id = conn.execute(table.insert().values(**row_values(result, uid))) \
                    .inserted_primary_key[0]
        except SQLAlchemyError as e:
            raise _db_error(self.location, "write to", e) from e
        result.id, result.uid = int(row_id), uid
        return result.id

    def get(self, result_id: int) -> Result:
        """The stored result with this id.

        Raises:
            InputError: no such id.
        """
        rows = self._select(table.c.id == int(result_id))
        if not rows:
            raise InputError(f"no result with id {result_id} in {self.location.shown} "
                             "(see `edgekit results list`)")
        return rows[0]

    def list(self, device: Optional[str] = None, artifact: Optional[str] = None,
             limit: Optional[int] = 50, since: Optional[str] = None) -> list[Result]:
        """Newest results first.

        Args:
            device: only this device name.
            artifact: only this artifact file name or sha256 prefix.
            limit: at most this many (None: all).
            since: only results started at or after this (``30d``, ``12h``, an ISO date:
                :func:`since_cutoff`).
        """
        return self._select(*self._filters(device, artifact, since), newest_first=True,
                            limit=limit)

    def iter_all(self, device: Optional[str] = None, artifact: Optional[str] = None,
                 since: Optional[str] = None, batch: int = 500) -> Iterator[Result]:
        """Every (matching) result, oldest first, read ``batch`` rows at a time."""
        after = 0
        filters = self._filters(device, artifact, since)
        while True:
            rows = self._select(table.c.id > after, *filters, limit=batch)
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1].id

    def count(self) -> int:
        from sqlalchemy import func, select

        return self._read(lambda conn: conn.execute(select(func.count()).select_from(table))
                          .scalar_one())

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def _filters(device, artifact, since) -> list:
        from sqlalchemy import or_

        where = []
        if device:
            where.append(table.c.device == device)
        if artifact:
            prefix = artifact.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(or_(table.c.artifact_name == artifact,
                             table.c.artifact_sha256.like(prefix + "%", escape="\\")))
        if since:
            where.append(table.c.started_at >= since_cutoff(since))
        return where

    def _select(self, *where, newest_first: bool = False, limit: Optional[int] = None):
        from sqlalchemy import select

        query = select(table.c.id, table.c.uid, table.c.doc).where(*where).order_by(
            table.c.id.desc() if newest_first else table.c.id)
        if limit is not None:
            query = query.limit(int(limit))
        return self._read(lambda conn: [_from_row(r) for r in conn.execute(query)])

    def _read(self, work):
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with self.engine.connect() as conn:
                return work(conn)
        except SQLAlchemyError as e:
            raise _db_error(self.location, "read", e) from e


def row_values(result: Result, uid: str) -> dict:
    """The column values of ``result``'s row (its JSON document, plus the columns queries
    filter and sort on)."""
    metrics = result.metrics or {}
    doc = result.to_dict()
    doc["id"] = None  # the row id is the id; reading puts it back
    doc["uid"] = uid
    return {
        "schema_version": RESULT_VERSION, "device": result.device,
        "artifact_sha256": result.sha256, "artifact_name": result.artifact.get("name", ""),
        "target": result.artifact.get("target"), "settings_key": result.settings_key,
        "ok": int(result.ok), "error": result.error, "p50_ms": result.latency("p50"),
        "mean_ms": result.latency("mean"),
        "peak_rss_bytes": (metrics.get("memory") or {}).get("peak_rss_bytes"),
        "accuracy": (metrics.get("accuracy") or {}).get("top1"),
        "upload_bytes": result.upload_bytes, "started_at": result.started_at,
        "finished_at": result.finished_at, "uid": uid,
        "doc": json.dumps(doc, default=str),
    }


def _from_row(row) -> Result:
    result = Result.from_dict(json.loads(row.doc))
    result.id = int(row.id)
    # A row an edgekit from before uids wrote into a migrated database has none: derive it,
    # as the migration did for the rows it found.
    result.uid = row.uid or content_uid(result)
    return result

"""Bring a results database to the schema of this edgekit, in place, with Alembic.

Why Alembic rather than a few ``ALTER TABLE`` lines: the same migrations must run on SQLite and
PostgreSQL, on databases at any earlier revision, by several processes (a board lab's hosts)
opening one database at once; Alembic records the revision in the database and renders each
operation for the dialect (SQLite's limited ``ALTER TABLE`` included). The migration scripts
live in the package (``migrations/versions``) and run programmatically: users never run
``alembic``.

Every open checks the revision (one query); only a database behind this edgekit takes the
lock and migrates, all in one transaction, so a migration that fails or is killed leaves the
database as it was. The lock: ``BEGIN IMMEDIATE`` on SQLite, an advisory transaction lock on
PostgreSQL; a second process waits, then finds the work done.

A database written by edgekit 0.1 (the ``results`` table, created by raw sqlite3, no revision
recorded) is stamped at revision ``0001``, which is that table, and upgraded from there.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Optional

from edgekit.errors import InputError
from edgekit.results.location import WRITE, DbLocation

log = logging.getLogger(__name__)

#: Alembic's version table. Not ``alembic_version``: a team's database may also hold an Optuna
#: study (``optimize --storage``), whose own Alembic revision lives in that table.
VERSION_TABLE = "edgekit_results_version"
LEGACY_REVISION = "0001"
# pg_advisory_xact_lock key: the bytes of "edgkit" (any constant no other tool uses).
_PG_LOCK_KEY = 0x6564676B6974
_LEGACY_COLUMNS = {"id", "device", "artifact_sha256", "settings_key", "started_at", "doc"}


@functools.lru_cache(maxsize=1)
def _scripts():
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(Path(__file__).parent / "migrations"))


def head_revision() -> str:
    """The schema revision this edgekit writes."""
    return _scripts().get_current_head()


def current_revision(conn) -> Optional[str]:
    """The revision recorded in the database of ``conn`` (None: none recorded)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}) \
        .get_current_revision()


def ensure_schema(engine, loc: DbLocation, create: bool = True) -> None:
    """Create or migrate the results tables of ``engine`` to this edgekit's revision.

    Args:
        engine: the SQLAlchemy engine of ``loc``.
        loc: the location, for messages.
        create: create the tables in a database that has none (False: refuse it).

    Raises:
        InputError: a database with no results (and ``create`` False), a ``results`` table
            edgekit did not write, or a revision from a newer edgekit.
    """
    head = head_revision()
    with engine.connect() as conn:
        revision = current_revision(conn)
        conn.rollback()
    if revision == head:
        return
    _check_known(revision, loc)
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
        revision = current_revision(conn)  # another process may have migrated meanwhile
        if revision == head:
            return
        _check_known(revision, loc)
        if revision is None:
            _adopt_or_create(conn, loc, create)
        _alembic("upgrade", conn, "head")
        log.info("results database %s migrated from %s to %s", loc.shown, revision, head)


def _check_known(revision: Optional[str], loc: DbLocation) -> None:
    from alembic.util import CommandError

    if revision is None:
        return
    try:
        _scripts().get_revision(revision)
    except CommandError:
        raise InputError(f"results database {loc.shown} has schema revision {revision!r}, "
                         f"newer than this edgekit's ({head_revision()}): upgrade edgekit "
                         "to use it") from None


def _adopt_or_create(conn, loc: DbLocation, create: bool) -> None:
    """No revision recorded: stamp an edgekit 0.1 table as ``0001``; refuse a foreign one."""
    from sqlalchemy import inspect

    insp = inspect(conn)
    if "results" in insp.get_table_names():
        columns = {c["name"] for c in insp.get_columns("results")}
        if not _LEGACY_COLUMNS <= columns:
            raise InputError(f"{loc.shown} has a `results` table that edgekit did not write "
                             f"(no {', '.join(sorted(_LEGACY_COLUMNS - columns))} column): "
                             "use another database for edgekit's results")
        log.info("results database %s: edgekit 0.1 schema, migrating", loc.shown)
        _alembic("stamp", conn, LEGACY_REVISION)
    elif not create:
        raise InputError(f"{loc.shown} holds no edgekit results (no results table): check the "
                         "--db value, or write results with `edgekit bench --db ...` first")


def _alembic(verb: str, conn, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection"] = conn
    getattr(command, verb)(cfg, revision)

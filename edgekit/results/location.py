"""Where a results database lives: a file path (SQLite) or an SQLAlchemy URL, and the engine
that reaches it.

A location with ``://`` is a URL (``postgresql://user@host/db``, ``postgresql+psycopg2://...``,
``sqlite:///results.db``); anything else is a SQLite file path, as before URLs were accepted.
Messages show a location as ``DbLocation.shown``, which hides the password.

SQLite is set up as edgekit has always used it: WAL (readers never wait for the writer),
``synchronous=NORMAL``, 30 s waiting for another writer's lock. Its transactions are begun by
edgekit (the driver's implicit transactions are off) so a write takes the lock at ``BEGIN
IMMEDIATE`` instead of half way through, where two writers could deadlock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from edgekit.errors import InputError

log = logging.getLogger(__name__)

#: Seconds a SQLite writer waits for another's lock, and a PostgreSQL client for the server.
SQLITE_LOCK_TIMEOUT_S = 30
CONNECT_TIMEOUT_S = 10

#: Execution option that makes a SQLite transaction take the write lock at BEGIN.
WRITE = {"edgekit_write": True}


@dataclass(frozen=True)
class DbLocation:
    """A parsed results-database location.

    Attributes:
        url: the SQLAlchemy URL (password included: never print it, use ``shown``).
        backend: the dialect name, ``sqlite`` or ``postgresql``.
        path: the SQLite file, None for a server (or an in-memory SQLite database).
        shown: the location for messages, its password hidden.
    """

    url: object  # sqlalchemy.engine.URL (imported lazily)
    backend: str
    path: Optional[Path]
    shown: str  # for messages: the path as given, or the URL with ``***`` for a password

    @property
    def is_server(self) -> bool:
        return self.backend != "sqlite"


def is_url(location: Union[str, Path]) -> bool:
    """Whether ``location`` is an SQLAlchemy URL rather than a file path."""
    return isinstance(location, str) and "://" in location


def mask(location: Union[str, Path]) -> str:
    """``location`` with any password replaced by ``***`` (for messages about a location
    that may not even parse)."""
    text = str(location)
    if not is_url(text):
        return text
    scheme, _, rest = text.partition("://")
    cred, at, host = rest.rpartition("@")
    if not at or ":" not in cred:
        return text
    return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"


def with_edgekit_driver(url):
    """``url`` (a SQLAlchemy ``URL``) with a plain ``postgresql://`` read as psycopg2:
    edgekit's dependency. SQLAlchemy 2.1 reads it as psycopg (3), which need not be installed."""
    return url.set(drivername="postgresql+psycopg2") if url.drivername == "postgresql" else url


def parse_location(location: Union[str, Path]) -> DbLocation:
    """Parse a ``--db`` value.

    Raises:
        InputError: a URL SQLAlchemy cannot parse, or a backend other than SQLite/PostgreSQL.
    """
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError

    if not is_url(location):
        path = Path(location)
        return DbLocation(URL.create("sqlite", database=str(path)), "sqlite", path, str(path))
    try:
        url = make_url(str(location))
    except ArgumentError:
        # the error's message repeats the URL, password included: not shown
        raise InputError(f"{mask(location)} is not a database URL: expected a file path or "
                         "e.g. postgresql://user@host/db") from None
    shown = url.render_as_string(hide_password=True)  # as given, before the driver is named
    backend = url.get_backend_name()
    url = with_edgekit_driver(url)
    if backend not in ("sqlite", "postgresql"):
        raise InputError(f"results database {mask(location)}: backend {backend!r} is not "
                         "supported; use a SQLite file path or a postgresql:// URL")
    path = Path(url.database) if backend == "sqlite" and url.database not in (None, "",
                                                                              ":memory:") else None
    return DbLocation(url, backend, path, shown)


def create_engine_for(loc: DbLocation):
    """The SQLAlchemy engine of ``loc``, set up for edgekit's transactions (module docstring).

    Raises:
        InputError: the URL names a driver that is not installed.
    """
    import sqlalchemy
    from sqlalchemy import event
    from sqlalchemy.exc import NoSuchModuleError

    try:
        if loc.backend == "sqlite":
            engine = sqlalchemy.create_engine(
                loc.url, connect_args={"timeout": SQLITE_LOCK_TIMEOUT_S,
                                       "check_same_thread": False})
            event.listen(engine, "connect", _sqlite_connect)
            event.listen(engine, "begin", _sqlite_begin)
        else:
            engine = sqlalchemy.create_engine(
                loc.url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    except (NoSuchModuleError, ImportError) as e:
        raise InputError(f"results database {loc.shown}: {e} (the URL's driver is not "
                         "installed; postgresql:// and postgresql+psycopg2:// use psycopg2, "
                         "an edgekit dependency)") from None
    return engine


def _sqlite_connect(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # edgekit begins its transactions (_sqlite_begin)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_begin(conn) -> None:
    write = conn.get_execution_options().get("edgekit_write")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

"""Results databases written by earlier edgekits open and are migrated in place (Alembic, in the
package); foreign or newer databases are refused with one line."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from results_sample import make, write_legacy

from edgekit.cli.main import main
from edgekit.errors import InputError
from edgekit.results import ResultStore
from edgekit.results.migrate import VERSION_TABLE, head_revision


def test_an_edgekit_0_1_file_is_migrated_in_place(tmp_path):
    old = [make(10.0), make(11.0, device="jetson"), make(12.0, sha="b" * 64)]
    path = tmp_path / "old.db"
    write_legacy(path, old)
    copy = tmp_path / "copy.db"
    shutil.copy(path, copy)

    with ResultStore(path) as store:
        got = store.list(limit=None)
        assert [r.latency() for r in got] == [12.0, 11.0, 10.0]  # newest first, all there
        assert [r.id for r in got] == [3, 2, 1]  # row ids kept
        for r, o in zip(reversed(got), old, strict=True):
            assert (r.device, r.artifact, r.metrics, r.started_at) == \
                (o.device, o.artifact, o.metrics, o.started_at)
        uids = [r.uid for r in got]
        assert len(set(uids)) == 3 and all(uids)
        new_id = store.add(make(13.0))  # and it takes new results
        assert new_id == 4

    raw = sqlite3.connect(path)
    assert raw.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()[0] == head_revision()
    assert raw.execute("SELECT COUNT(*) FROM results WHERE uid IS NULL").fetchone()[0] == 0
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    # Another copy of the same old file migrates to the same uids: the same results.
    with ResultStore(copy) as store:
        assert [r.uid for r in store.list(limit=None)] == uids


def test_rows_an_older_edgekit_adds_after_the_migration_still_read(tmp_path):
    path = tmp_path / "r.db"
    with ResultStore(path) as store:
        store.add(make(1.0))
    # edgekit 0.1 still opens the file (CREATE TABLE IF NOT EXISTS) and writes without a uid.
    r = make(2.0, device="old-host")
    write_legacy(path, [r])
    with ResultStore(path) as store:
        got = store.list()
    assert [x.device for x in got] == ["old-host", "pi4"]
    assert got[0].uid and got[0].uid != got[1].uid
    with ResultStore(path) as store:  # derived from the content: the same at every read
        assert store.get(got[0].id).uid == got[0].uid


def test_a_migration_runs_once_and_opens_are_read_only(tmp_path):
    path = tmp_path / "old.db"
    write_legacy(path, [make(1.0)])
    with ResultStore(path):  # migrates
        pass
    before = path.stat().st_mtime_ns
    with ResultStore(path, create=False) as store:  # at the head: nothing written
        assert store.count() == 1
    assert path.stat().st_mtime_ns == before


def test_foreign_and_newer_databases_are_refused(tmp_path, capsys):
    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE results (x INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(InputError, match="`results` table that edgekit did not write"):
        ResultStore(foreign)

    newer = tmp_path / "newer.db"
    with ResultStore(newer) as store:
        store.add(make(1.0))
    db = sqlite3.connect(newer)
    db.execute(f"UPDATE {VERSION_TABLE} SET version_num = 'f00d'")
    db.commit()
    db.close()
    assert main(["results", "list", "--db", str(newer)]) == 2
    err = capsys.readouterr().err
    assert "schema revision 'f00d', newer than this edgekit's" in err and "Traceback" not in err

    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE other (x)").connection.close()
    assert main(["results", "list", "--db", str(empty)]) == 2
    assert "holds no edgekit results" in capsys.readouterr().err


def schema_drift(store) -> list:
    """What Alembic's autogenerate sees between ``store``'s tables and ``schema.py``."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from edgekit.results.schema import metadata

    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                     "version_table": VERSION_TABLE})
        return compare_metadata(ctx, metadata)


def test_the_migrations_build_the_schema_the_code_declares(tmp_path):
    with ResultStore(tmp_path / "new.db") as store:
        assert schema_drift(store) == []
    write_legacy(tmp_path / "old.db", [make(1.0)])
    with ResultStore(tmp_path / "old.db") as store:
        # edgekit 0.1's REAL/INTEGER spellings are the same storage in SQLite: only those differ
        kinds = {d[0][0] if isinstance(d, list) else d[0] for d in schema_drift(store)}
    assert kinds <= {"modify_type", "modify_nullable"}

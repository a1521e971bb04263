"""The results history in a real PostgreSQL server (started by the test on loopback): writers
on several processes at once, one killed mid-transaction; SQLite -> PostgreSQL export/import;
the results and report commands against the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from results_sample import make, write_legacy

from edgekit.cli.main import main
from edgekit.results import ResultStore

WRITER = Path(__file__).with_name("results_writer.py")
pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def postgres():
    from conftest_pg import start_postgres

    # No skip: a CI machine where PostgreSQL cannot start fails here with the reason.
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres, request):
    """A fresh, empty database on the server for one test."""
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:50]
    admin = sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return postgres.url.rsplit("/", 1)[0] + "/" + name


def _writer(db, device, n, *hold):
    return subprocess.Popen([sys.executable, str(WRITER), db, device, str(n), *map(str, hold)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def _wait_for(check, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_two_writers_one_killed_mid_transaction(backend, pg_url, tmp_path):
    db = pg_url if backend == "postgresql" else str(tmp_path / "r.db")
    marker = tmp_path / "holding"
    # Both start on an empty database at once: one creates the tables, the other waits for it.
    a = _writer(db, "board-a", 40, 11, marker)
    b = _writer(db, "board-b", 40)
    _wait_for(marker.exists, what="writer A to hold a transaction open")
    held_uid = marker.read_text()
    with ResultStore(db) as store:
        assert held_uid not in {r.uid for r in store.list(limit=None)}  # not visible
        if backend == "postgresql":  # row locks only: B goes on writing while A holds
            start = len(store.list(device="board-b", limit=None))
            _wait_for(lambda: len(store.list(device="board-b", limit=None)) > start + 3,
                      what="writer B to write while A holds its transaction")
    a.send_signal(signal.SIGKILL)
    a_out, _ = a.communicate(timeout=30)
    b_out, b_err = b.communicate(timeout=120)
    assert a.returncode == -signal.SIGKILL
    assert b.returncode == 0, b_err[-2000:]
    a_uids, b_uids = a_out.split(), b_out.split()
    assert len(a_uids) == 10 and len(b_uids) == 40 and held_uid not in a_uids

    with ResultStore(db) as store:
        stored = store.list(limit=None)
    uids = [r.uid for r in stored]
    assert len(uids) == len(set(uids)) == 50  # nothing duplicated
    assert sorted(uids) == sorted(a_uids + b_uids)  # nothing lost, nothing half-written
    assert sorted(r.latency() for r in stored if r.device == "board-a") == \
        [float(i) for i in range(1, 11)]
    if backend == "postgresql":  # the server rolled back the killed client's transaction
        engine = sa.create_engine(pg_url)
        with engine.connect() as conn:
            _wait_for(lambda: not conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' "
                "AND datname = current_database()")).scalar(), what="the server's rollback")
        engine.dispose()


def test_sqlite_to_postgresql_import_is_idempotent(pg_url, tmp_path, capsys):
    old = tmp_path / "laptop.db"
    write_legacy(old, [make(10.0), make(11.0, device="jetson")])  # an edgekit 0.1 file
    with ResultStore(old) as store:
        store.add(make(12.0, sha="b" * 64))
        local = store.list(limit=None)
    out = tmp_path / "export.json"
    assert main(["results", "export", "--db", str(old), "--out", str(out)]) == 0
    assert "exported 3 result(s)" in capsys.readouterr().err
    assert main(["results", "import", str(out), "--db", pg_url]) == 0
    assert "3 new, 0 already present" in capsys.readouterr().err
    assert main(["results", "import", str(out), "--db", pg_url, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["new"], again["present"], again["conflicts"]) == (0, 3, [])
    # bench --json style documents from before uids existed are the same results too
    bench_json = tmp_path / "bench.json"
    legacy_docs = [{k: v for k, v in r.to_dict().items() if k != "uid"} for r in local[1:]]
    bench_json.write_text(json.dumps(legacy_docs))
    assert main(["results", "import", str(bench_json), "--db", pg_url]) == 0
    assert "0 new, 2 already present" in capsys.readouterr().err

    with ResultStore(pg_url) as store:
        shared = store.list(limit=None)
    assert store.count() == 3
    key = lambda r: r.uid  # noqa: E731
    for mine, theirs in zip(sorted(local, key=key), sorted(shared, key=key), strict=True):
        assert (mine.uid, mine.device, mine.sha256, mine.metrics, mine.started_at) == \
            (theirs.uid, theirs.device, theirs.sha256, theirs.metrics, theirs.started_at)


def test_results_and_report_commands_read_postgresql(pg_url, tmp_path, capsys):
    from test_results_migrate import schema_drift

    with ResultStore(pg_url) as store:
        assert schema_drift(store) == []  # the migrations build schema.py's tables here too
        store.add(make(10.0, started_at="2020-01-01T00:00:00Z"))  # long ago
        base = make(10.0, started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        new = make(12.0, started_at=base.started_at)
        store.add(base)
        store.add(new)
        store.add(make(5.0, device="jetson", sha="c" * 64, started_at=base.started_at))

    assert main(["results", "list", "--db", pg_url, "--device", "pi4", "--since", "30d",
                 "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [new.id, base.id]
    assert main(["results", "list", "--db", pg_url, "--artifact", "cccc", "--json"]) == 0
    assert [r["device"] for r in json.loads(capsys.readouterr().out)] == ["jetson"]
    assert main(["results", "list", "--db", pg_url]) == 0
    table = capsys.readouterr().err
    assert "jetson" in table and "results in postgresql" in table

    assert main(["results", "show", str(new.id), "--db", pg_url, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["uid"] == new.uid and shown["metrics"]["latency_ms"]["p50"] == 12.0
    assert main(["results", "compare", str(base.id), str(new.id), "--db", pg_url,
                 "--fail-on-regression"]) == 1
    assert "latency_p50_ms" in capsys.readouterr().err

    md = tmp_path / "report.md"
    assert main(["report", "--db", pg_url, "--format", "md", "--out", str(md), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(doc["devices"]) == ["jetson", "pi4"] and doc["sources"] == [pg_url]
    assert "jetson" in md.read_text()


def test_bench_writes_into_postgresql(pg_url, tmp_path, capsys):
    from conftest_ssh import build_digits_models

    digits = build_digits_models()
    capsys.readouterr()
    inv = tmp_path / "devices.toml"
    inv.write_text(f'[devices.here]\nhost = "local"\nworkdir = "{tmp_path / "cache"}"\n')
    assert main(["bench", str(digits.tflite_int8), "--device", "here", "--runs", "10",
                 "--warmup", "1", "--db", pg_url, "--inventory", str(inv), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1 and out[0]["ok"] and out[0]["uid"]
    with ResultStore(pg_url, create=False) as store:
        stored = store.get(out[0]["id"])
    assert stored.uid == out[0]["uid"] and stored.metrics == out[0]["metrics"]


def test_passwords_are_never_printed_and_errors_are_one_line(postgres, capsys):
    port = postgres.port
    bad = f"postgresql://someone:hunter2@127.0.0.1:{port}/no_such_db"
    assert main(["results", "list", "--db", bad]) == 1
    err = capsys.readouterr().err
    assert "hunter2" not in err and "someone:***@" in err and "no_such_db" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["results", "import", "/nonexistent.json", "--db", bad]) == 2
    assert "hunter2" not in capsys.readouterr().err
    assert main(["report", "--db", "mysql://u:hunter2@h/db"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "not supported" in err


def test_advise_and_optimize_write_to_a_team_history(pg_url, digits_cnn, tmp_path, capsys):
    """`advise --db URL` and `optimize --db URL`: the device measurements go to the team's
    PostgreSQL history (no results.db in the output folders), the study report shows this study's
    rows of it, and the history lists both."""
    from calibration_data.digits import digits_path
    from edgekit.cli.main import main
    from edgekit.search.space import SearchSpace

    calib, evl = digits_path("calibration"), digits_path("eval")
    code = main(["advise", str(digits_cnn.keras), "--calibration", str(calib), "--eval", str(evl),
                 "--recipe", "tflite-fp32", "--recipe", "tflite-int8", "--runs", "5",
                 "--out", str(tmp_path / "adv"), "--db", pg_url, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["results_db"] == pg_url  # no password in this URL to hide
    assert not (tmp_path / "adv" / "results.db").exists()
    with ResultStore(pg_url) as store:
        advised = store.count()
        # tflite-fp32 twice (first and last: the drift check), tflite-int8 once
        assert sorted(r.artifact["target"] for r in store.list()) == \
            ["tflite-fp32", "tflite-fp32", "tflite-int8"]

    from edgekit.search.loop import optimize

    space = SearchSpace(targets=("tflite-int8",), threads=(1,), repair=False, xnnpack=(False,))
    study = optimize(digits_cnn.keras, calibration=calib, eval=evl, budget=2, runs=5,
                     space=space, out=tmp_path / "opt", remeasure=False, db=pg_url)
    assert not (tmp_path / "opt" / "results.db").exists()
    ids = {t.result_id for t in study.trials if t.result_id is not None}
    with ResultStore(pg_url) as store:
        assert store.count() == advised + len(ids) and len(ids) >= 1
        assert all(store.get(i).device == "local" for i in ids)
    assert study.settings.results_db == pg_url
    page = (tmp_path / "opt" / "report.html").read_text()
    assert "tflite-int8" in page and "127.0.0.1" in page  # the history named, its password hidden
    # A bad URL is refused before anything is built.
    code = main(["advise", str(digits_cnn.keras), "--calibration", str(calib),
                 "--out", str(tmp_path / "adv2"), "--db", "mysql://u:secret@h/db"])
    err = capsys.readouterr().err
    assert code == 2 and "secret" not in err and not (tmp_path / "adv2").exists()

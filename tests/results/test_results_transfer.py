"""Export and import between results databases (SQLite here; PostgreSQL in
test_results_postgres.py), ``--since`` and the locations ``--db`` takes."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from results_sample import make

from edgekit.cli.main import main
from edgekit.errors import InputError
from edgekit.results import ResultStore, export_results, import_results, mask, since_cutoff
from edgekit.results.location import parse_location


def test_export_import_round_trip_and_filters(tmp_path, capsys):
    src = tmp_path / "a.db"
    with ResultStore(src) as store:
        for i, device in enumerate(["pi4", "jetson", "pi4"]):
            store.add(make(float(i + 1), device=device, started_at=f"2026-0{i + 1}-01T00:00:00Z"))
        out = tmp_path / "pi4.json"
        assert export_results(store, out, device="pi4", since="2026-02-15") == 1
        assert [r["settings"]["runs"] for r in json.loads(out.read_text())] == [200]
        assert export_results(store, tmp_path / "all.json") == 3
    docs = json.loads((tmp_path / "all.json").read_text())
    assert [d["metrics"]["latency_ms"]["p50"] for d in docs] == [1.0, 2.0, 3.0]  # oldest first

    dst = tmp_path / "b.db"
    assert main(["results", "import", str(tmp_path / "all.json"), "--db", str(dst)]) == 0
    assert "3 new, 0 already present" in capsys.readouterr().err
    # the same results twice in one call, and again later: nothing is added
    assert main(["results", "import", str(tmp_path / "all.json"), str(tmp_path / "pi4.json"),
                 "--db", str(dst), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["new"], summary["present"]) == (0, 4)
    with ResultStore(dst) as store:
        assert store.count() == 3
        assert [r.uid for r in store.list(limit=None)] == [d["uid"] for d in reversed(docs)]
    # `edgekit report` reads an export as it reads bench --json output
    assert main(["report", str(tmp_path / "all.json"), "--format", "csv",
                 "--out", str(tmp_path / "r.csv")]) == 0
    assert "jetson" in (tmp_path / "r.csv").read_text()


def test_a_uid_held_by_another_result_is_a_conflict(tmp_path, capsys):
    with ResultStore(tmp_path / "a.db") as store:
        r = make(1.0)
        store.add(r)
        import_results(store, [make(1.0)])  # no uid: identified by content, a new result
        forged = make(2.0, device="elsewhere")
        forged.uid = r.uid
        summary = import_results(store, [forged])
    assert (summary.new, summary.present, summary.conflicts) == (0, 0, [r.uid])
    bad = tmp_path / "forged.json"
    bad.write_text(json.dumps([forged.to_dict()]))
    assert main(["results", "import", str(bad), "--db", str(tmp_path / "a.db")]) == 1
    assert "1 conflicting" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("not json", "not a results JSON file"),
    ('[{"schema": "edgekit.manifest"}]', "not edgekit result documents"),
])
def test_import_refuses_bad_files_before_writing(tmp_path, capsys, content, message):
    f = tmp_path / "in.json"
    if content is not None:
        f.write_text(content)
    assert main(["results", "import", str(f), "--db", str(tmp_path / "r.db")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.db").exists()


def test_since_and_locations():
    now = dt.datetime(2026, 3, 31, 12, 0, tzinfo=dt.timezone.utc)
    assert since_cutoff("30d", now) == "2026-03-01T12:00:00Z"
    assert since_cutoff("12h", now) == "2026-03-31T00:00:00Z"
    assert since_cutoff("2026-01-31") == "2026-01-31T00:00:00Z"
    with pytest.raises(InputError, match="expected an age such as 30d"):
        since_cutoff("last week")
    assert mask("postgresql://bob:pw@h:5432/db") == "postgresql://bob:***@h:5432/db"
    assert mask("results.db") == "results.db"
    loc = parse_location("postgresql://bob:pw@h/db")
    assert loc.backend == "postgresql" and loc.shown == "postgresql://bob:***@h/db"
    assert loc.url.drivername == "postgresql+psycopg2"
    assert parse_location("sqlite:///x/r.db").path.name == "r.db"
    assert parse_location("r.db").shown == "r.db"
    with pytest.raises(InputError, match="not supported"):
        parse_location("mysql://u:pw@h/db")


def test_every_results_command_has_help(capsys):
    for cmd in ("list", "show", "compare", "export", "import"):
        assert main(["results", cmd, "--help"]) == 0
        assert "--db PATH|URL" in capsys.readouterr().out

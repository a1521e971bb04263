"""ResultStore (SQLite), the result envelope, noise-aware compare, and the results/bench CLI."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from pathlib import Path

import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest_ssh import build_digits_models

from edgekit.cli.main import main
from edgekit.devices.device import check_protocol
from edgekit.errors import AgentError, InputError
from edgekit.results import Result, ResultStore, compare

DOC = Path(__file__).resolve().parent.parent / "docs" / "results-schema.md"


def result_schema() -> dict:
    block = re.search(r"```json\n(.*?)```", DOC.read_text(), re.S).group(1)
    return json.loads(block)


def make(p50, spread, runs=200, device="pi4", sha="a" * 64, top1=0.9, peak=50 << 20, ok=True):
    lat = {"min": p50 - spread / 2, "mean": p50 + spread / 4, "std": spread, "p50": p50,
           "p90": p50 + spread, "p99": p50 + 2 * spread, "max": p50 + 3 * spread, "runs": runs}
    metrics = {"latency_ms": lat, "memory": {"peak_rss_bytes": peak, "model_rss_delta_bytes": 1},
               "accuracy": {"samples": 1000, "top1": top1}} if ok else None
    return Result(device, {"name": "m.tflite", "sha256": sha, "target": "tflite-int8"},
                  {"runs": runs, "warmup": 10, "threads": 1, "runtime": None, "eval_sha256": None,
                   "reference": None},
                  ok, None if ok else "Crashed: SIGKILL", metrics)


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path / "r.db") as s:
        yield s


def test_store_round_trip_and_wal(store, tmp_path):
    a = make(10.0, 0.5)
    rid = store.add(a)
    assert rid == a.id == 1
    got = store.get(rid)
    assert got == a
    other = sqlite3.connect(tmp_path / "r.db")  # the file itself says WAL, to any reader
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.add(make(11.0, 0.5, device="jetson"))
    assert [r.device for r in store.list()] == ["jetson", "pi4"]
    assert [r.id for r in store.list(device="pi4")] == [1]
    assert store.list(artifact="aaaa")[0].artifact["name"] == "m.tflite"
    with pytest.raises(InputError, match="no result with id 99"):
        store.get(99)


def test_rows_are_committed_one_by_one(store, tmp_path):
    store.add(make(1.0, 0.1))
    other = sqlite3.connect(tmp_path / "r.db")  # another process would see the same
    assert other.execute("SELECT COUNT(*), MAX(p50_ms) FROM results").fetchone() == (1, 1.0)


def test_not_a_database(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_text("this is not sqlite" * 100)
    with pytest.raises(InputError, match="not a usable results database"):
        ResultStore(bad)


def test_envelope_versions_are_checked():
    d = make(1.0, 0.1).to_dict()
    assert Result.from_dict(d) == make(1.0, 0.1)
    with pytest.raises(InputError, match="schema_version 2 is not supported"):
        Result.from_dict({**d, "schema_version": 2})
    with pytest.raises(InputError, match="not an edgekit result"):
        Result.from_dict({**d, "schema": "other"})


def test_agent_protocol_mismatch_is_refused():
    from device_agents.agent import PROTOCOL_VERSION as AGENT_PROTOCOL
    from edgekit.devices.device import PROTOCOL_VERSION as HOST_PROTOCOL

    assert AGENT_PROTOCOL == HOST_PROTOCOL == 1
    check_protocol({"protocol": 1}, "pi4")
    with pytest.raises(AgentError, match="protocol 2, this edgekit speaks 1"):
        check_protocol({"protocol": 2}, "pi4")
    with pytest.raises(AgentError, match="pi4"):
        check_protocol({}, "pi4")


def test_compare_uses_the_spread_of_the_runs():
    base = make(10.0, 0.2)
    assert compare(base, make(10.05, 0.2)).regressions == []  # inside the noise
    assert "latency_p50_ms" in compare(base, make(11.0, 0.2)).regressions
    assert compare(base, make(9.0, 0.2)).metrics[0].verdict == "improvement"
    # the same +1 ms is noise when the runs themselves jitter by several ms
    noisy = compare(make(10.0, 8.0), make(11.0, 8.0))
    assert noisy.metrics[0].verdict == "within noise"
    acc = compare(base, make(10.0, 0.2, top1=0.8))
    assert acc.regressions == ["accuracy_top1"]
    mem = compare(base, make(10.0, 0.2, peak=80 << 20))
    assert mem.regressions == ["peak_rss_bytes"]


def test_compare_refuses_failed_results():
    with pytest.raises(InputError, match="no measurements"):
        compare(make(1.0, 0.1), make(1.0, 0.1, ok=False))


def test_results_cli(tmp_path, capsys):
    db = tmp_path / "r.db"
    with ResultStore(db) as s:
        s.add(make(10.0, 0.2))
        s.add(make(12.0, 0.2))
    assert main(["results", "list", "--db", str(db), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [2, 1]
    assert main(["results", "show", "2", "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["latency_ms"]["p50"] == 12.0
    assert main(["results", "compare", "1", "2", "--db", str(db), "--json"]) == 0
    assert "latency_p50_ms" in json.loads(capsys.readouterr().out)["regressions"]
    assert main(["results", "compare", "1", "2", "--db", str(db), "--fail-on-regression"]) == 1
    assert main(["results", "show", "7", "--db", str(db)]) == 2
    assert "no result with id 7" in capsys.readouterr().err


def test_bench_cli_json_matches_the_documented_schema(tmp_path, capsys):
    digits = build_digits_models()
    capsys.readouterr()  # TensorFlow's conversion chatter on stdout, when built here first
    inv = tmp_path / "devices.toml"
    inv.write_text(f'[devices.here]\nhost = "local"\nworkdir = "{tmp_path / "cache"}"\n')
    db = tmp_path / "r.db"
    code = main(["bench", str(digits.tflite_int8), str(digits.onnx_fp32), "--device", "here",
                 "--runs", "20", "--warmup", "2", "--eval", str(digits.eval_npz),
                 "--reference", str(digits.reference_npz), "--db", str(db),
                 "--inventory", str(inv), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and len(out) == 2 and all(r["ok"] for r in out)
    for r in out:
        jsonschema.validate(r, result_schema())
    assert out[0]["metrics"]["agreement"][0]["top1_agreement"] > 0.95
    with ResultStore(db) as s:
        assert s.count() == 2 and s.get(out[1]["id"]).artifact["name"] == "digits_fp32.onnx"


def test_bench_cli_bad_input_exits_2(tmp_path, capsys):
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"x")
    assert main(["bench", str(odd), "--db", str(tmp_path / "r.db")]) == 2
    assert "cannot benchmark" in capsys.readouterr().err

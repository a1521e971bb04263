"""`edgekit optimize`: a real search (Optuna, real conversions, real runs on this machine and over
a real sshd) with tiny budgets; recipes replayed byte-identically; failures recorded as results;
a search killed mid-trial and resumed. No mocks: the one fault injection is named
(``EDGEKIT_OPTIMIZE_FAULT``) and makes a real device run crash."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calibration_data.digits import digits_path
from edgekit.cli.main import main
from edgekit.recipe import Recipe, load_recipe
from edgekit.search.build import FAULT_ENV
from edgekit.search.loop import optimize
from edgekit.search.settings import BEST_RECIPE, REPORT, Constraints
from edgekit.search.space import SearchSpace
from edgekit.training.replay import replay

CALIB, EVAL = digits_path("calibration"), digits_path("eval")
MAX_SIZE = 15_000  # bytes: the fp32 artifacts (~21 KB) do not fit, the 8-bit ones (~10 KB) do


@pytest.fixture(scope="module")
def study(digits_cnn, tmp_path_factory):
    """Six trials of the default search space for the digits CNN on this machine."""
    out = tmp_path_factory.mktemp("opt") / "opt"
    return optimize(digits_cnn.keras, "local", calibration=CALIB, eval=EVAL,
                    constraints=Constraints(1.0, max_size_bytes=MAX_SIZE), budget=6, runs=10,
                    out=out)


def test_budget_spent_and_every_trial_measured(study):
    assert len([t for t in study.trials if t.state in ("complete", "failed")]) == 6
    done = [t for t in study.trials if t.state == "complete"]
    assert len(done) >= 5, [(t.name, t.error) for t in study.trials]
    for t in done:
        assert t.p50_ms > 0 and t.bytes > 0 and t.peak_rss_bytes > 10_000_000
        assert t.accuracy_source == "device" and 0.8 < t.accuracy <= 1.0
    with sqlite3.connect(study.out / "results.db") as db:
        assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == len(
            [t for t in study.trials if t.result_id is not None])


def test_baselines_and_tool_defaults_always_measured(study):
    roles = {t.name: t.role for t in study.trials if t.role}
    assert roles == {"tflite-fp32": "baseline", "onnx-fp32": "baseline",
                     "tflite-int8": "tool-default", "onnx-int8": "tool-default"}
    # Measured first, in the seeded order.
    assert [t.name for t in study.trials[:4]] == ["tflite-fp32", "onnx-fp32", "tflite-int8",
                                                  "onnx-int8"]


def test_chosen_recipe_meets_constraints_on_measured_values(study):
    best = study.best
    assert best is not None and best.chosen and best.feasible
    assert best.bytes <= MAX_SIZE and best.accuracy_drop <= 1.0
    fp32 = [c for c in study.candidates if c.name in ("tflite-fp32", "onnx-fp32")]
    assert fp32 and all(not c.feasible and "size over" in c.misses[0] for c in fp32)
    feasible = [c for c in study.candidates if c.feasible]
    # Objective latency, chosen on the finalists' side-by-side medians (fp32 is over the size
    # limit here, so it is the yardstick only).
    measured = [c for c in feasible if c.side_by_side_ms is not None]
    assert best.side_by_side_ms == min(c.side_by_side_ms for c in measured)
    assert all(p.feasible for p in study.pareto)
    from edgekit.search.study import choose

    smallest = choose(study.candidates, "size")  # the same trials, objective size
    assert smallest.bytes == min(c.bytes for c in feasible) and smallest.bytes <= MAX_SIZE


def test_best_recipe_file_and_explanation(study):
    recipe = load_recipe(study.out / BEST_RECIPE)
    assert recipe == study.recipe and recipe.name == study.best.name
    assert recipe.artifact["sha256"] == study.best.sha256
    assert recipe.measured["p50_ms"] == pytest.approx(study.best.p50_ms)
    assert recipe.constraints["max_size_bytes"] == MAX_SIZE
    text = study.explain()
    assert f"Choose {recipe.name} for latency on local" in text
    assert "vs fp32 baseline tflite-fp32" in text and "vs raw tool default onnx-int8" in text
    assert "Device: x86_64" in text or "Device: " in text
    assert list(recipe.advice) == study.text
    doc = json.loads(json.dumps(study.to_dict()))
    assert doc["best"] == recipe.name and len(doc["trials"]) == len(study.trials)


def test_finalists_remeasured_side_by_side_and_recorded(study):
    from edgekit.search.finalists import MAX_FINALISTS, ROUNDS, read
    from edgekit.search.settings import FINALISTS_FILE

    side = study.finalists
    assert side is not None and side.rounds == ROUNDS and side.runs == 10
    assert read(study.out) is not None and read(study.out).to_dict() == side.to_dict()
    doc = json.loads((study.out / FINALISTS_FILE).read_text())
    assert doc["chosen"] == study.best.name == side.chosen
    names = [f.name for f in side.finalists]
    # At most MAX_FINALISTS within the constraints, plus both fp32 baselines as the yardstick.
    assert len([f for f in side.finalists if f.feasible]) <= MAX_FINALISTS
    assert {"tflite-fp32", "onnx-fp32"} <= set(names)
    assert all(f.ok and len(f.rounds_ms) == ROUNDS for f in side.finalists), side.lines
    assert side.reference in ("tflite-fp32", "onnx-fp32")
    rows = {c.name: c for c in study.candidates}
    for f in side.finalists:  # the rows carry the side-by-side median
        assert rows[f.name].side_by_side_ms == f.p50_ms and f.search_p50_ms == rows[f.name].p50_ms
    # Never slower than fp32: faster than the fp32 yardstick, or the text says none was.
    ref, best = side.get(side.reference), side.get(side.chosen)
    text = study.explain()
    assert "Re-measured side by side (3 interleaved round(s) of 10 runs" in text
    if best.p50_ms < ref.p50_ms:
        assert "faster than fp32 on this device" in text
    else:
        assert "no finalist within the constraints was faster than fp32" in text
    assert study.recipe.measured["side_by_side"]["p50_ms"] == best.p50_ms
    assert study.recipe.measured["side_by_side"]["fp32"] == side.reference
    page = (study.out / REPORT).read_text()
    assert 'id="finalists"' in page and f'data-recipe="{side.chosen}" data-marks="chosen' in page
    assert study.to_dict()["finalists"]["chosen"] == side.chosen
    # Not in results.db: the benchmark report keeps the trials' results (with accuracy).
    with sqlite3.connect(study.out / "results.db") as db:
        assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == len(
            [t for t in study.trials if t.result_id is not None])


def test_failing_finalist_is_recorded_not_fatal(study, tmp_path):
    from dataclasses import replace

    from edgekit.fsutil import sha256_file
    from edgekit.search.finalists import remeasure

    garbage = tmp_path / "broken.tflite"
    garbage.write_bytes(b"not a flatbuffer" * 64)
    best = study.best
    base = next(c for c in study.candidates if c.name == "tflite-fp32")
    broken = replace(best, artifact=str(garbage), sha256=sha256_file(garbage))
    gone = replace(base, artifact=str(tmp_path / "gone.tflite"))
    side = remeasure([broken, gone, *[c for c in study.candidates if c.name == "onnx-fp32"]],
                     study.settings, spec=study.settings.spec(), rounds=1, out=tmp_path)
    by = {f.name: f for f in side.finalists}
    assert not by[best.name].ok and "round 1" in by[best.name].error  # the agent's failure
    assert "no longer in the build cache" in by["tflite-fp32"].error
    assert by["onnx-fp32"].ok and side.reference == "onnx-fp32"
    assert side.chosen is None  # nothing within the constraints left: the trials decide
    assert any(t.startswith(f"Finalist {best.name} could not be re-measured") for t in side.lines)
    assert json.loads((tmp_path / "finalists.json").read_text())["finalists"][0]["error"]


def test_report_marks_front_baselines_defaults_and_choice(study):
    page = (study.out / REPORT).read_text()
    assert f'id="chosen" data-recipe="{study.best.name}"' in page
    assert 'data-recipe="tflite-fp32" data-marks="baseline"' in page
    assert 'data-marks="' + " ".join(
        m for m in ("chosen", "pareto") if m) in page
    assert "tool-default" in page and 'id="plot-search"' in page
    assert "edgekit-report-data" in page  # the benchmark report of results.db follows


def test_every_built_recipe_replays_byte_identically(study, digits_cnn, tmp_path):
    # Same process as the search (tf2onnx's name counter has moved on): still equal bytes.
    for c in study.candidates:
        rep = replay(c.recipe, digits_cnn.keras, calibration=CALIB, eval=EVAL,
                     out=tmp_path / c.name)
        assert rep.artifact.sha256 == c.sha256, c.name


def test_cli_convert_recipe_in_a_fresh_process(study, digits_cnn, tmp_path):
    out = tmp_path / "build"
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli.main", "convert",
                           str(digits_cnn.keras), "--recipe", str(study.out / BEST_RECIPE),
                           "--calibration", str(CALIB), "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["reproduced"] is True and doc["artifact"]["sha256"] == study.best.sha256
    assert doc["artifact"]["target"] == study.recipe.target


def test_repeated_recipe_is_not_rebuilt(study, digits_cnn):
    from edgekit.fsutil import sha256_tree
    from edgekit.search.build import BuildCache

    cache = BuildCache(study.out / "cache", sha256_tree(digits_cnn.keras), sha256_tree(CALIB))
    folder = cache.path_for(study.recipe)
    before = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    art = cache.build(study.recipe, digits_cnn.keras, calibration=CALIB, eval=EVAL,
                      base=study.recipe.options())
    assert cache.hits == 1 and art.sha256 == study.best.sha256
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_failures_are_results_and_the_search_goes_on(digits_cnn, tmp_path, monkeypatch):
    # The tool-default tflite-int8 trial runs on the device under a 1 MiB address-space cap
    # (a real crash of the measuring process); onnx-int8's build is refused.
    monkeypatch.setenv(FAULT_ENV, "run:tflite-int8")
    space = SearchSpace(targets=("tflite-fp32", "tflite-int8", "onnx-int8"), threads=(1,),
                        onnx_int8_variants=False, repair=False)
    s = optimize(digits_cnn.keras, calibration=CALIB, eval=EVAL, budget=3, runs=5,
                 space=space, out=tmp_path / "opt", remeasure=False)
    rows = {t.name: t for t in s.trials}
    assert rows["tflite-int8"].state == "failed"
    assert rows["tflite-int8"].failed_stage == "benchmark" and rows["tflite-int8"].error
    assert rows["onnx-int8"].state == "complete" and rows["tflite-fp32"].state == "complete"
    assert "failed: 1 benchmark" in s.text[1]
    assert "tflite-int8" in (tmp_path / "opt" / REPORT).read_text().split('id="failed-trials"')[1]
    monkeypatch.setenv(FAULT_ENV, "build:onnx-int8")
    s2 = optimize(digits_cnn.keras, calibration=CALIB, eval=EVAL, budget=3, runs=5,
                  space=space, out=tmp_path / "opt2", remeasure=False)
    fail = next(t for t in s2.trials if t.name == "onnx-int8")
    assert fail.state == "failed" and fail.failed_stage == "convert"
    assert FAULT_ENV in fail.error
    assert s2.best is not None and s2.best.name in ("tflite-fp32", "tflite-int8")


def _trials(db: Path) -> list[tuple]:
    with sqlite3.connect(db, timeout=30) as con:
        return con.execute("SELECT number, state, datetime_complete FROM trials "
                           "ORDER BY number").fetchall()


def _running_with_recipe(db: Path) -> bool:
    try:
        with sqlite3.connect(db, timeout=30) as con:
            return bool(con.execute(
                "SELECT COUNT(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = "
                "t.trial_id WHERE t.state = 'RUNNING' AND a.key = 'recipe'").fetchone()[0])
    except sqlite3.OperationalError:  # Optuna is still creating its tables
        return False


def test_resume_after_kill_mid_trial(digits_cnn, tmp_path):
    out = tmp_path / "opt"
    cmd = [sys.executable, "-m", "edgekit.cli.main", "optimize", str(digits_cnn.keras),
           "--calibration", str(CALIB), "--eval", str(EVAL), "--budget", "4", "--runs", "400",
           "--target", "tflite-fp32", "--target", "tflite-int8", "--target", "onnx-fp32",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            try:
                rows = _trials(out / "study.db") if (out / "study.db").exists() else []
            except sqlite3.OperationalError:  # Optuna is still creating its tables
                rows = []
            # Mid-trial: a RUNNING trial inside the objective (its recipe sampled), not one
            # Optuna has just created (before edgekit has tagged it with its worker).
            if any(s == "COMPLETE" for _, s, _ in rows) and _running_with_recipe(out / "study.db"):
                break
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("no trial finished within 180 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {n: done for n, s, done in _trials(out / "study.db") if s == "COMPLETE"}
    running = [n for n, s, _ in _trials(out / "study.db") if s == "RUNNING"]
    assert before and running

    code = main(["optimize", "--resume", str(out), "--json"])
    assert code == 0
    after = _trials(out / "study.db")
    # Finished trials untouched; the interrupted one failed as "interrupted" and re-run.
    assert all((n, "COMPLETE", done) in after for n, done in before.items())
    study_doc = json.loads((out / "study.json").read_text())
    assert study_doc["budget"] == 4
    from edgekit.search.loop import load_study
    from edgekit.search.runner import counted
    from edgekit.search.settings import read_settings

    s = load_study(read_settings(out), create=False)
    trials = s.get_trials(deepcopy=False)
    assert sum(counted(t) for t in trials) == 4
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    assert [t.number for t in interrupted] == running
    assert "interrupted" in interrupted[0].user_attrs["error"]
    redone = [t for t in trials if t.params == interrupted[0].params and t.state.name == "COMPLETE"]
    assert redone, "the interrupted recipe was not measured again"
    # The resumed run ended with the finalists measured side by side, and chose on them.
    side = json.loads((out / "finalists.json").read_text())
    assert side["chosen"] == json.loads((out / BEST_RECIPE).read_text())["name"]
    assert {"tflite-fp32", "onnx-fp32"} <= {f["name"] for f in side["finalists"]}
    # Budget spent, --no-remeasure: the per-trial means choose; the stale finalists are gone.
    assert main(["optimize", "--resume", str(out), "--no-remeasure", "--json"]) == 0
    assert not (out / "finalists.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--objective", "speed"], "--objective must be one of latency, size"),
    (["--max-size", "2 parsecs"], "--max-size '2 parsecs' is not a size"),
    (["--time-budget", "soon"], "--time-budget 'soon' is not a duration"),
])
def test_cli_bad_input_one_line_exit_2(digits_cnn, tmp_path, capsys, args, message):
    code = main(["optimize", str(digits_cnn.keras), "--calibration", str(CALIB), "--out",
                 str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_cli_resume_on_a_non_study_folder(tmp_path, capsys):
    code = main(["optimize", "--resume", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "is not an optimize folder" in err and len(err.strip().splitlines()) == 1


def test_cli_convert_recipe_rejects_bad_files_and_conflicts(digits_cnn, tmp_path, capsys):
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps({"schema": "edgekit.manifest", "schema_version": 1}))
    assert main(["convert", str(digits_cnn.keras), "--recipe", str(bad)]) == 2
    assert "not an edgekit recipe" in capsys.readouterr().err
    good = tmp_path / "r.recipe.json"
    good.write_text(json.dumps(Recipe("tflite-fp32", "tflite-fp32").to_dict()))
    assert main(["convert", str(digits_cnn.keras), "--recipe", str(good), "--to",
                 "onnx-fp32"]) == 2
    assert "drop --to" in capsys.readouterr().err


def test_recipe_round_trip_and_versions(tmp_path):
    r = Recipe("onnx-int8-u8s8-t2", "onnx-int8",
               {"unsigned_activations": True, "calibration_method": "percentile",
                "float_nodes": ["a", "b"]}, threads=2, advice=("x",))
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    opts = r.options()
    assert opts.unsigned_activations and opts.calibration_method.value == "percentile"
    assert opts.float_nodes == ("a", "b")
    from edgekit.errors import InputError, UnknownTargetError

    newer = {**r.to_dict(), "schema_version": 2}
    with pytest.raises(InputError, match="upgrade edgekit"):
        Recipe.from_dict(newer)
    with pytest.raises(UnknownTargetError):
        Recipe.from_dict({**r.to_dict(), "target": "tflite-int3"})
    with pytest.raises(InputError, match="unknown conversion option"):
        Recipe.from_dict({**r.to_dict(), "convert_options": {"turbo": True}})
    with pytest.raises(InputError, match="not a valid recipe at runtime/threads"):
        Recipe.from_dict({**r.to_dict(), "runtime": {"threads": 0}})


@pytest.mark.ssh
def test_optimize_over_ssh(digits_cnn, tmp_path):
    from conftest_ssh import connect_options, ssh_device, start_sshd, user_key

    server = start_sshd(user_key(), alias="optbox")
    try:
        s = optimize(digits_cnn.keras, ssh_device(server, tmp_path / "remote"),
                     calibration=CALIB, eval=EVAL, budget=3, runs=5, out=tmp_path / "opt",
                     space=SearchSpace(targets=("tflite-fp32", "tflite-int8"), threads=(1,),
                                       repair=False),
                     connect=connect_options(server))
    finally:
        server.stop()
    assert s.settings.device == "box"
    done = [t for t in s.trials if t.state == "complete"]
    assert len(done) == 3 and all(t.accuracy_source == "device" for t in done)
    assert s.best is not None and s.best.name in s.text[0]
    assert os.path.isfile(tmp_path / "opt" / BEST_RECIPE)
    with sqlite3.connect(tmp_path / "opt" / "results.db") as db:
        devices = {d for (d,) in db.execute("SELECT device FROM results")}
    assert devices == {"box"}


@pytest.mark.ssh
def test_device_that_disappears_pauses_the_search_and_resume_finishes_it(digits_cnn, tmp_path):
    from conftest_ssh import SSHD, connect_options, ssh_device, start_sshd, user_key, wait_port

    from edgekit.search.loop import resume
    from edgekit.search.settings import DevicePaused

    server = start_sshd(user_key(), alias="pausebox")
    stopped = []

    def progress(msg):  # the board is unplugged just before trial 1 is measured
        if msg.startswith("trial 1: measuring") and not stopped:
            server.stop()
            stopped.append(msg)

    space = SearchSpace(targets=("tflite-fp32", "tflite-int8"), threads=(1,), repair=False)
    try:
        with pytest.raises(DevicePaused, match=r"stopped answering .*--resume"):
            optimize(digits_cnn.keras, ssh_device(server, tmp_path / "remote"),
                     calibration=CALIB, eval=EVAL, budget=3, runs=5, out=tmp_path / "opt",
                     space=space, connect=connect_options(server, connect_timeout=3.0),
                     progress=progress)
        assert stopped
        # The board is back on the same address; the study folder is all resume needs.
        with open(server.folder / "sshd.log", "a") as log:
            server.proc = subprocess.Popen([SSHD, "-D", "-e", "-f",
                                            str(server.folder / "sshd_config")],
                                           stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        wait_port(server.port)
        s = resume(tmp_path / "opt", remeasure=False)
    finally:
        server.stop()
    states = {t.number: t.state for t in s.trials}
    assert states[0] == "complete" and states[1] == "interrupted"
    done = [t for t in s.trials if t.state == "complete"]
    assert len(done) == 3 and s.trials[0].p50_ms is not None
    lost = next(t for t in s.trials if t.number == 1)
    assert "device lost" in lost.error
    # The lost trial's recipe is the first one measured after the pause, with its role.
    redo = next(t for t in done if t.number > 1)
    assert redo.name == lost.name and redo.role == lost.role == "tool-default"


def test_pruning_dimension_and_its_replay(digits_cnn, tmp_path):
    from edgekit.errors import InputError
    from edgekit.fsutil import sha256_tree

    train = digits_path("train")
    space = SearchSpace(targets=("tflite-fp32", "tflite-int8"), threads=(1,), repair=False,
                        prune_ratios=(0.0, 0.5))
    s = optimize(digits_cnn.keras, calibration=CALIB, eval=EVAL, train=train, budget=3, runs=5,
                 space=space, out=tmp_path / "opt", remeasure=False)
    rows = {t.name: t for t in s.trials}
    probe = rows["tflite-fp32-pruned50-l1-e1-lr0.001"]
    assert probe.state == "complete" and probe.role == "pruning-probe"
    prune = probe.recipe.prune
    assert prune["ratio"] == 0.5 and prune["epochs"] == 1 and prune["train"]["sha256"] == \
        sha256_tree(train)
    fp32 = rows["tflite-fp32"]
    assert probe.bytes < 0.9 * fp32.bytes  # channels really removed
    # The drop is against the original model, not the pruned one the conversion compared with.
    assert probe.source_accuracy == fp32.source_accuracy
    assert probe.accuracy_drop == pytest.approx(100 * (fp32.source_accuracy - probe.accuracy))
    rep = replay(probe.recipe, digits_cnn.keras, calibration=CALIB, train=train,
                 out=tmp_path / "replay")
    assert rep.artifact.sha256 == probe.sha256  # pruned + fine-tuned again: the same bytes
    with pytest.raises(InputError, match="--train"):
        replay(probe.recipe, digits_cnn.keras, calibration=CALIB, out=tmp_path / "r2")


def test_runtime_settings_are_searched_measured_and_replayed(digits_cnn, tmp_path):
    import onnx

    from converters.options import OnnxQuantFormat
    from edgekit.results import ResultStore

    space = SearchSpace(targets=("tflite-int8", "onnx-int8"), threads=(1,), repair=False,
                        xnnpack=(False,), ort_opt_levels=("basic",))
    s = optimize(digits_cnn.keras, calibration=CALIB, eval=EVAL, budget=2, runs=5, space=space,
                 out=tmp_path / "opt", remeasure=False)
    assert s.finalists is None and not (tmp_path / "opt" / "finalists.json").exists()
    rows = {t.name: t for t in s.trials}
    tfl, ort = rows["tflite-int8-no-xnnpack"], rows["onnx-int8-ort-basic"]
    assert tfl.state == ort.state == "complete"
    assert not tfl.recipe.xnnpack and ort.recipe.ort_opt_level == "basic"
    with ResultStore(tmp_path / "opt" / "results.db") as store:
        measured = {r.artifact["target"]: r for r in store.list()}
    # Measured on the device with the setting: the agent reports what the runtime did.
    assert measured["tflite-int8"].settings["xnnpack"] is False
    assert measured["tflite-int8"].metrics["runtime_settings"]["delegated_nodes"] == 0
    assert measured["onnx-int8"].metrics["runtime_settings"] == {"ort_opt_level": "basic"}
    doc = json.loads((tmp_path / "opt" / BEST_RECIPE).read_text())
    assert doc["runtime"] in ({"threads": 1, "xnnpack": False},
                              {"threads": 1, "ort_opt_level": "basic"})
    # Runtime settings are not build inputs: the replayed bytes are the measured ones.
    for t in (tfl, ort):
        rt = Recipe.from_dict(json.loads(json.dumps(t.recipe.to_dict())))
        assert rt == t.recipe
        rep = replay(rt, digits_cnn.keras, calibration=CALIB, out=tmp_path / t.name)
        assert rep.reproduced is None or rep.reproduced
        assert rep.artifact.sha256 == t.sha256

    # QOperator onnx-int8: ORT's QLinear* ops instead of QDQ pairs; its recipe replays too.
    qop = Recipe("onnx-int8-qop", "onnx-int8", {"onnx_quant_format": "qoperator"})
    assert qop.options().onnx_quant_format is OnnxQuantFormat.QOPERATOR
    a = replay(qop, digits_cnn.keras, calibration=CALIB, out=tmp_path / "qop1").artifact
    b = replay(Recipe.from_dict(qop.to_dict()), digits_cnn.keras, calibration=CALIB,
               out=tmp_path / "qop2").artifact
    assert a.sha256 == b.sha256 and a.sha256 != ort.sha256
    ops = [n.op_type for n in onnx.load(a.path).graph.node]
    qdq = [n.op_type for n in onnx.load(ort.artifact).graph.node]
    assert "QLinearConv" in ops and "QLinearConv" not in qdq
    assert ops.count("DequantizeLinear") < qdq.count("DequantizeLinear")


def test_old_recipes_without_runtime_settings_still_read(tmp_path):
    old = Recipe("tflite-int8", "tflite-int8").to_dict()
    assert old["runtime"] == {"threads": 1}  # the defaults are not written
    r = Recipe.from_dict(old)
    assert r.xnnpack is True and r.ort_opt_level == "all"
    from edgekit.errors import InputError

    with pytest.raises(InputError, match="runtime/ort_opt_level"):
        Recipe.from_dict({**old, "runtime": {"threads": 1, "ort_opt_level": "max"}})


def test_hopeless_finetune_is_pruned_not_failed(digits_cnn, tmp_path):
    import optuna

    from edgekit.search.loop import load_study
    from edgekit.search.runner import counted
    from edgekit.search.settings import read_settings

    # 90% of the channels removed: one epoch leaves it far below the source, so with no margin
    # past the 1-point budget the 2-epoch fine-tune is stopped after its first epoch.
    space = SearchSpace(targets=("tflite-fp32",), threads=(1,), xnnpack=(True,),
                        prune_ratios=(0.0, 0.9), finetune_epochs=(2,), finetune_stop_margin=0.0)
    s = optimize(digits_cnn.keras, calibration=CALIB, eval=EVAL, train=digits_path("train"),
                 budget=2, runs=5, space=space, out=tmp_path / "opt", remeasure=False)
    probe = next(t for t in s.trials if t.role == "pruning-probe")
    assert probe.state == "pruned" and probe not in s.failed
    assert "stopped after epoch 1" in probe.error and probe.p50_ms is None
    assert "1 fine-tune(s) stopped early" in s.text[1]
    study = load_study(read_settings(tmp_path / "opt"), create=False)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE,
                                         optuna.trial.TrialState.PRUNED]
    assert sum(counted(t) for t in trials) == 2  # it spent budget
    drops = trials[1].user_attrs["epoch_drops"]
    assert len(drops) == 1 and drops[0] > 1.0
    # The per-epoch values sit in the companion study, through Optuna's report/should_prune.
    comp = optuna.load_study(study_name=study.study_name + "-finetune",
                             storage=read_settings(tmp_path / "opt").storage)
    (ft,) = comp.get_trials(deepcopy=False)
    assert ft.state == optuna.trial.TrialState.PRUNED and ft.intermediate_values == {0: drops[0]}
    assert ft.user_attrs["main_trial"] == 1
    # Remembered in the cache: the same recipe is pruned again at once, not fine-tuned again.
    from edgekit.fsutil import sha256_tree
    from edgekit.search.build import BuildCache

    cache = BuildCache(tmp_path / "opt" / "cache", sha256_tree(digits_cnn.keras),
                       sha256_tree(CALIB), str(digits_path("train")))
    with pytest.raises(optuna.TrialPruned, match="epoch 1"):
        cache.build(probe.recipe, digits_cnn.keras, calibration=CALIB, eval=EVAL,
                    base=probe.recipe.options())
    assert cache.hits == 1


def test_recipes_differing_in_one_runtime_setting_are_paired_in_the_advice():
    from converters.options import ConvertOptions
    from edgekit.search.advice_text import CpuFacts, setting_lines
    from edgekit.search.advisor import AdviceRow
    from edgekit.search.report import variant_of
    from edgekit.search.settings import OPEN_GATE
    from edgekit.search.space import recipe_from_params

    gate = Constraints(1.0)
    # The raw tool default is built with the gate open, a sampled recipe with the budget as its
    # gate: the same bytes, so only the ORT level tells them apart.
    default = recipe_from_params({"target": "onnx-int8", "ort_opt_level": "all"}, OPEN_GATE)
    basic = recipe_from_params({"target": "onnx-int8", "ort_opt_level": "basic"},
                               ConvertOptions(max_accuracy_drop=gate.max_accuracy_drop))
    qop = recipe_from_params({"target": "onnx-int8", "ort_opt_level": "basic",
                              "onnx_int8_format": "qoperator"})
    on = recipe_from_params({"target": "tflite-fp32"})
    off = recipe_from_params({"target": "tflite-fp32", "xnnpack": False})
    v = {r.name: variant_of(r, "onnx" if r.target.startswith("onnx") else "tflite",
                            "int8" if r.target.endswith("int8") else "fp32")
         for r in (default, basic, qop, on, off)}
    diff = lambda a, b: {k for k in v[a].keys() | v[b].keys() if v[a].get(k) != v[b].get(k)}  # noqa: E731
    assert diff(default.name, basic.name) == {"ort_opt_level"}
    assert diff(basic.name, qop.name) == {"quant_format"}
    assert diff(on.name, off.name) == {"xnnpack"} and "ort_opt_level" not in v[on.name]
    rows = [AdviceRow(name, "x", "onnx" if "onnx" in name else "tflite",
                      "int8" if "int8" in name else "fp32", p50_ms=p50, variant=v[name])
            for name, p50 in ((default.name, 0.6), (basic.name, 0.9), (qop.name, 0.5),
                              (on.name, 0.4), (off.name, 0.9))]
    lines = setting_lines(rows, CpuFacts.from_probe({"arch": "x86_64",
                                                     "cpu": {"features": ["avx2"]}}))
    assert [t.split(" ")[0] for t in lines] == ["tflite-fp32", "ONNX", "onnx-int8"]


def test_optimize_per_layer_names_where_the_time_goes(digits_cnn, tmp_path):
    """`optimize --per-layer`: each trial times the artifact's layers on the device, the trial
    rows keep the op type that takes longest, and the explanation names it."""
    space = SearchSpace(targets=("tflite-int8",), threads=(1,), repair=False, xnnpack=(False,))
    s = optimize(digits_cnn.keras, calibration=CALIB, eval=EVAL, budget=2, runs=5, space=space,
                 out=tmp_path / "opt", remeasure=False, per_layer=True)
    done = [t for t in s.trials if t.state == "complete"]
    assert done and all(t.top_op and 0 < t.top_op[1] <= 1 for t in done)
    line = next(x for x in s.text if "% of " in x and " takes " in x)
    assert f"{done[0].top_op[0]} takes" in line and "on local" in line
    assert s.settings.per_layer

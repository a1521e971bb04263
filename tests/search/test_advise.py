"""`edgekit advise`: every cheap recipe built, measured on a real device (local, and over a real
sshd), ranked within the accuracy budget, explained. Real conversions and runs, small runs."""

from __future__ import annotations

import json
import platform
import sqlite3

import pytest

from calibration_data.digits import digits_path
from converters.options import ConvertOptions
from edgekit.cli.main import main
from edgekit.search.advisor import advise, recipes_for
from edgekit.search.settings import RESULTS_DB

CALIB, EVAL = digits_path("calibration"), digits_path("eval")
BUDGET = 1.0


@pytest.fixture(scope="module")
def full(digits_cnn, tmp_path_factory):
    """Every recipe for the digits CNN, measured on this machine (runs=10)."""
    out = tmp_path_factory.mktemp("advise-full")
    return advise(digits_cnn.keras, "local", calibration=CALIB, eval=EVAL,
                  max_accuracy_drop=BUDGET, out=out, runs=10)


def test_every_recipe_has_a_row(full):
    from converters.cpu_layouts import this_machine

    expected = [r.name for r in recipes_for("keras", this_machine())]
    assert sorted(r.recipe for r in full.rows) == sorted(expected)
    # onnx-int8 is the layout table's first choice for this CPU; its next ones are variants
    assert sum(n.startswith("onnx-int8-") for n in expected) >= 1
    # One build folder per recipe, and every built recipe's result in the results DB.
    built = [r for r in full.rows if r.artifact]
    with sqlite3.connect(f"{full.out}/{RESULTS_DB}") as db:
        stored = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    # The fp32 baselines are measured twice: first, and again after the others (drift check).
    repeated = [r.recipe for r in full.rows if r.p50_repeats_ms]
    assert sorted(repeated) == ["onnx-fp32", "tflite-fp32"]
    assert stored == len(built) + len(repeated)
    assert len({r.artifact.rsplit("/", 2)[-2] for r in built}) == len(built)
    import onnx

    def zero_point_types(row):
        model = onnx.load(row.artifact)
        return {i.data_type for i in model.graph.initializer if "zero_point" in i.name}

    int8 = [r for r in full.rows if r.target == "onnx-int8" and r.artifact]
    assert len({r.layout for r in int8}) == len(int8) >= 2
    for row in int8:  # each layout really is in its file: uint8 activations exactly for U8S8
        assert (onnx.TensorProto.UINT8 in zero_point_types(row)) == row.layout.startswith("U8S8")
    first = next(r for r in int8 if r.recipe == "onnx-int8")
    assert first.layout == this_machine().choice.onnx_int8[0].label


def test_rows_that_ran_have_measurements(full):
    ran = [r for r in full.rows if r.ran]
    assert len(ran) >= len(full.rows) - 1, [(r.recipe, r.status, r.error) for r in full.rows]
    for r in ran:
        assert 0 < r.p50_ms <= r.p90_ms
        assert r.bytes > 0 and r.peak_rss_bytes > 10_000_000
        assert r.accuracy_source == "device" and 0.8 < r.accuracy <= 1.0
        assert r.accuracy_drop is not None and r.size_ratio > 0 and r.latency_ratio > 0
    for base in ("tflite-fp32", "onnx-fp32"):
        row = next(r for r in full.rows if r.recipe == base)
        assert row.baseline == base and row.latency_ratio == pytest.approx(1.0)
    int8 = next(r for r in full.rows if r.recipe == "tflite-int8")
    assert int8.size_ratio < 0.6  # int8 weights: well under half of fp32's plus overhead


def test_best_meets_budget_and_ranking_follows_latency(full):
    best = full.best
    assert best is not None and best.rank == 1 and best.within_budget
    assert best.accuracy_drop <= BUDGET
    ranked = [r for r in full.rows if r.rank is not None]
    assert [r.rank for r in ranked] == list(range(1, len(ranked) + 1))
    assert full.rows[:len(ranked)] == ranked  # ranked rows first
    p50s = [r.p50_ms for r in ranked]
    assert p50s == sorted(p50s)
    assert all(not r.within_budget for r in full.rows[len(ranked):])


def test_advice_names_winner_ratio_and_cpu_features(full):
    best, text = full.best, full.text
    assert best.recipe in text[0] and "Choose" in text[0]
    if best.recipe != best.baseline:
        assert f"{best.latency_ratio:.2f}x {best.baseline}" in text[0]
    # Every runtime's ratios are listed with measured numbers.
    assert any(line.startswith("LiteRT latency vs tflite-fp32") for line in text)
    assert any(line.startswith("ONNX Runtime latency vs onnx-fp32") for line in text)
    features = full.device_info["cpu"]["features"]
    device_line = next(line for line in text if line.startswith("Device:"))
    if "avx2" in features:
        assert "AVX2" in device_line
    if platform.machine() == "x86_64" and not {"avx512_vnni", "avx_vnni"} & set(features):
        assert "no AVX512-VNNI/AVX-VNNI" in device_line
    doc = json.loads(json.dumps(full.to_dict()))
    assert doc["schema"] == "edgekit.advice" and doc["best"] == best.recipe
    assert len(doc["rows"]) == len(full.rows) and doc["text"] == text


def test_gate_miss_is_a_row_not_an_exception(digits_cnn, tmp_path):
    # No int8 model reaches 200 dB output SQNR: the onnx-int8 gate fails for certain.
    advice = advise(digits_cnn.keras, calibration=CALIB, eval=EVAL, max_accuracy_drop=0.0,
                    out=tmp_path, runs=5, recipes=["tflite-fp32", "onnx-int8"],
                    options=ConvertOptions(min_sqnr_db=200.0))
    rows = {r.recipe: r for r in advice.rows}
    miss = rows["onnx-int8"]
    assert miss.status == "gate-miss" and miss.gate_passed is False and not miss.ran
    assert "missed the fidelity gate" in miss.gate_miss and "200" in miss.gate_miss
    assert miss.rank is None and advice.best.recipe == "tflite-fp32"
    assert any("onnx-int8 missed the accuracy gate" in t and "--auto-mixed-precision" in t
               for t in advice.text)


def test_cli_json_size_objective(digits_cnn, tmp_path, capsys):
    code = main(["advise", str(digits_cnn.keras), "--calibration", str(CALIB), "--eval",
                 str(EVAL), "--recipe", "tflite-fp32", "--recipe", "tflite-int8", "--runs", "5",
                 "--objective", "size", "--out", str(tmp_path / "adv"), "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["objective"] == "size" and [r["recipe"] for r in doc["rows"]] == \
        ["tflite-int8", "tflite-fp32"]  # ranked by bytes: int8 is the smaller
    assert doc["best"] == "tflite-int8" and doc["rows"][0]["rank"] == 1
    assert doc["rows"][0]["bytes"] < doc["rows"][1]["bytes"]
    assert doc["text"][0].startswith("Choose tflite-int8 for size")


def test_cli_missing_model_exits_2(tmp_path, capsys):
    code = main(["advise", str(tmp_path / "nope.keras"), "--calibration", str(CALIB), "--json"])
    assert code == 2
    captured = capsys.readouterr()
    assert "model not found" in captured.err and captured.out == ""


def test_cli_unknown_recipe_exits_2(digits_cnn, tmp_path, capsys):
    code = main(["advise", str(digits_cnn.keras), "--calibration", str(CALIB), "--recipe",
                 "tflite-int4", "--out", str(tmp_path)])
    assert code == 2 and "unknown recipe" in capsys.readouterr().err


@pytest.mark.ssh
def test_advise_over_ssh(digits_cnn, tmp_path):
    from conftest_ssh import connect_options, ssh_device, start_sshd, user_key

    server = start_sshd(user_key(), alias="advisebox")
    try:
        advice = advise(digits_cnn.keras, ssh_device(server, tmp_path / "remote"),
                        calibration=CALIB, eval=EVAL, out=tmp_path / "adv", runs=5,
                        recipes=["tflite-fp32", "tflite-int8"], connect=connect_options(server))
    finally:
        server.stop()
    assert advice.device == "box" and all(r.ran for r in advice.rows), advice.rows
    assert all(r.accuracy_source == "device" for r in advice.rows)
    assert advice.best is not None and advice.best.recipe in advice.text[0]
    assert advice.device_info["cpu"]["features"] is not None

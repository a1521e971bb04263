"""The choice on the finalists' side-by-side numbers, "never slower than fp32", dropped
finalists (no device: the measurements are constructed; the real re-measure runs in
tests/test_optimize.py)."""

from __future__ import annotations

import json

import pytest

from edgekit.search.finalists import Finalist, SideBySide, decide, pick, read, write
from edgekit.search.settings import FINALISTS_FILE


def _f(name, rounds, *, role=None, nbytes=10_000, feasible=True, trial=None, error=None):
    return Finalist(name, role, "0" * 64, nbytes, feasible, trial, list(rounds),
                    [x * 1.1 for x in rounds], error)


def _fp32(rounds, **kw):
    return _f("tflite-fp32", rounds, role="baseline", nbytes=21_000, **kw)


def test_median_of_rounds_chooses_and_beats_fp32():
    side = decide([_f("tflite-int8", [0.5, 0.9, 0.55], trial=0.6), _fp32([1.0, 1.1, 0.9])],
                  "latency", rounds=3, runs=20, search_pick="tflite-int8")
    assert side.chosen == "tflite-int8" and side.reference == "tflite-fp32"
    assert side.get("tflite-int8").p50_ms == 0.55
    assert any("tflite-int8 is 0.55x fp32 tflite-fp32 (0.55 ms vs 1 ms): faster than fp32" in t
               for t in side.lines)
    assert side.lines[0].startswith("Re-measured side by side (3 interleaved round(s) of 20 runs")


def test_winner_of_the_trials_not_faster_than_fp32_side_by_side_gives_fp32():
    # The per-trial means put int8 first (0.8 ms vs 1.0); side by side it ties fp32.
    side = decide([_f("onnx-int8-u8s8", [1.0, 1.0, 1.0], trial=0.8),
                   _fp32([1.0, 1.0, 1.0], trial=1.0)],
                  "latency", rounds=3, runs=20, search_pick="onnx-int8-u8s8")
    assert side.chosen == "tflite-fp32"
    text = "\n".join(side.lines)
    assert "no recipe was faster than fp32: tflite-fp32 (1 ms) is chosen" in text
    assert "onnx-int8-u8s8 was not faster than fp32 side by side (1.00x tflite-fp32)" in text
    assert "The per-trial means would have chosen onnx-int8-u8s8 (1 ms side by side, 0.8 ms " \
           "in its trials)" in text


def test_fp32_over_the_constraints_is_the_yardstick_not_a_choice():
    side = decide([_f("tflite-int8", [1.3]), _f("onnx-int8", [1.6]),
                   _fp32([1.0], feasible=False)], "latency", rounds=1, runs=5)
    assert side.chosen == "tflite-int8" and side.reference == "tflite-fp32"
    assert any("no finalist within the constraints was faster than fp32 tflite-fp32" in t
               and "which misses the constraints" in t and "1.30x" in t for t in side.lines)


def test_size_objective_passes_over_a_smaller_recipe_slower_than_fp32():
    side = decide([_f("onnx-int8", [1.5], nbytes=5_000), _f("tflite-int8", [0.9], nbytes=6_000),
                   _fp32([1.0])], "size", rounds=1, runs=5)
    assert side.chosen == "tflite-int8"
    assert any("onnx-int8 is smaller but 1.50x tflite-fp32" in t for t in side.lines)
    # Every smaller recipe slower: the smallest is kept for size, and the text says so.
    side = decide([_f("onnx-int8", [1.5], nbytes=5_000), _fp32([1.0])], "size", rounds=1,
                  runs=5)
    assert side.chosen == "onnx-int8"
    assert any("every smaller recipe within the constraints was slower than fp32" in t
               for t in side.lines)


def test_dropped_finalists_are_recorded_and_the_rest_decide():
    side = decide([_f("tflite-int8", [], error="round 2: RunFailed: killed"),
                   _f("onnx-int8", [0.7]), _fp32([1.0])], "latency", rounds=1, runs=5,
                  search_pick="tflite-int8")
    assert side.chosen == "onnx-int8"
    assert "Finalist tflite-int8 could not be re-measured and was left out: round 2: " \
           "RunFailed: killed." in side.lines
    # Nothing re-measured: no choice here, the caller keeps the per-trial means' pick.
    none = decide([_f("tflite-int8", [], error="gone")], "latency", rounds=1, runs=5)
    assert none.chosen is None and "rests on the per-trial means" in none.lines[-1]
    # No fp32 baseline re-measured: the fastest is chosen and the text says what is missing.
    alone = decide([_f("tflite-int8", [0.5]), _fp32([], error="gone")], "latency", rounds=1,
                   runs=5)
    assert alone.chosen == "tflite-int8" and alone.reference is None
    assert any("no fp32 baseline could be re-measured" in t for t in alone.lines)


def test_finalists_json_round_trip_atomic(tmp_path):
    side = decide([_f("tflite-int8", [0.5, 0.6]), _fp32([1.0, 1.0])], "latency", rounds=2,
                  runs=5)
    path = write(tmp_path, side)
    assert path == tmp_path / FINALISTS_FILE
    assert [p.name for p in tmp_path.iterdir()] == [FINALISTS_FILE]  # no temp file left
    doc = json.loads(path.read_text())
    assert doc["schema"] == "edgekit.finalists" and doc["chosen"] == "tflite-int8"
    assert doc["finalists"][0]["p50_ms"] == pytest.approx(0.55)
    again = read(tmp_path)
    assert isinstance(again, SideBySide) and again.to_dict() == side.to_dict()
    assert read(tmp_path / "nowhere") is None


def test_pick_caps_feasible_finalists_and_adds_the_baselines():
    from edgekit.recipe import Recipe
    from edgekit.search.study import TrialRow

    def row(name, p50, nbytes, feasible=True, role=None):
        return TrialRow(0, "complete", Recipe(name, "tflite-fp32"), role, p50_ms=p50,
                        bytes=nbytes, feasible=feasible)

    rows = [row(f"r{i}", 1.0 + i, 1000 - i) for i in range(6)]
    rows += [row("tflite-fp32", 3.0, 5000, feasible=False, role="baseline"),
             row("onnx-fp32", 0.5, 5000, role="baseline"), row("slow-big", 9.0, 9000, False)]
    names = [r.name for r in pick(rows, "latency", limit=4)]
    assert names == ["onnx-fp32", "r0", "r1", "r2", "tflite-fp32"]
    assert [r.name for r in pick(rows, "size", limit=2)] == ["r5", "r4", "tflite-fp32",
                                                             "onnx-fp32"]

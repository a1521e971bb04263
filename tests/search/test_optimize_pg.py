"""`edgekit optimize --storage postgresql://... --workers 2`: one study in a real PostgreSQL
server (started by the test on loopback), two worker processes sharing it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from calibration_data.digits import digits_path

CALIB, EVAL = digits_path("calibration"), digits_path("eval")
BUDGET = 6


@pytest.fixture(scope="module")
def postgres():
    from conftest_pg import start_postgres

    # No skip: a CI machine where PostgreSQL cannot start fails here with the reason.
    server = start_postgres()
    yield server
    server.stop()


@pytest.mark.postgres
def test_two_workers_share_one_study_in_postgresql(postgres, digits_cnn, tmp_path):
    import optuna

    out = tmp_path / "opt"
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", "optimize", str(digits_cnn.keras),
         "--calibration", str(CALIB), "--eval", str(EVAL), "--budget", str(BUDGET), "--runs",
         "10", "--storage", postgres.url, "--workers", "2", "--threads", "1",
         "--target", "tflite-fp32", "--target", "tflite-int8", "--target", "tflite-dynamic",
         "--target", "onnx-fp32", "--target", "onnx-int8", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    settings = json.loads((out / "study.json").read_text())
    assert settings["storage"] == postgres.url and "sqlite" not in settings["storage"]
    assert not (out / "study.db").exists()

    # The study is in PostgreSQL: read it back from there, independently of edgekit.
    study = optuna.load_study(study_name=settings["study_name"], storage=postgres.url)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "FAIL")
                and not t.user_attrs.get("interrupted")]
    assert len(finished) == BUDGET
    workers = {t.user_attrs["worker"] for t in finished}
    assert len(workers) == 2, workers  # both processes ran trials of the one study
    assert sorted(t["number"] for t in doc["trials"] if t["state"] in ("complete", "failed")) \
        == sorted(t.number for t in finished)
    assert doc["best"] is not None and (out / "best.recipe.json").is_file()
    # The seeded baselines and defaults were measured once each, not once per worker.
    roles = [t.user_attrs.get("role") for t in finished if t.user_attrs.get("role")]
    assert sorted(roles) == ["baseline", "baseline", "tool-default", "tool-default"]

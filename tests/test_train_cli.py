"""`edgekit prune`, `edgekit distill`, `edgekit profile` from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from calibration_data.digits import digits_path
from edgekit.cli.main import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, [ln for ln in err.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def cnn_path(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(), keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10, activation="softmax")],
        name="cli_cnn")
    path = tmp_path_factory.mktemp("cli") / "cnn.keras"
    model.save(path)
    return path


def test_prune_fine_tune_distill_json(cnn_path, tmp_path, capsys):
    import keras

    out = tmp_path / "p.keras"
    code, stdout, _ = run_cli(capsys, "prune", cnn_path, "--ratio", "0.5", "--round-to", "8",
                              "--train", digits_path("train"), "--epochs", "1", "--distill",
                              "--out", out, "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["after"]["params"] < 0.5 * doc["before"]["params"]
    assert doc["after"]["macs"] < doc["before"]["macs"] and doc["pruned_groups"] == 2
    pruned = keras.saving.load_model(out, safe_mode=True)
    assert tuple(pruned.outputs[0].shape) == (None, 10)
    assert json.loads((tmp_path / "p.plan.json").read_text())["schema"] == "edgekit.pruning_plan"


def test_plan_only_then_replay(cnn_path, tmp_path, capsys):
    code, stdout, _ = run_cli(capsys, "prune", cnn_path, "--ratio", "0.25", "--plan-only",
                              "--out", tmp_path / "q.keras", "--json")
    assert code == 0 and not (tmp_path / "q.keras").exists()
    plan = json.loads(stdout)["plan"]
    code, stdout, _ = run_cli(capsys, "prune", cnn_path, "--plan", plan, "--out",
                              tmp_path / "q.keras", "--json")
    assert code == 0 and json.loads(stdout)["channels_after"] < json.loads(stdout)["channels_before"]


@pytest.mark.parametrize("args, needle", [
    (["--ratio", "1.5"], "ratio must be in (0, 1)"),
    (["--ratio", "0.5", "--round-to", "128"], "round_to=128 is larger than every prunable layer"),
    ([], "give either --ratio"),
    (["--ratio", "0.5", "--epochs", "1"], "needs training data"),
])
def test_prune_bad_options_exit_2_with_one_line(cnn_path, capsys, args, needle):
    code, _, err = run_cli(capsys, "prune", cnn_path, *args)
    errors = [ln for ln in err if ln.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and needle in errors[0], err


def test_prune_training_data_that_does_not_fit(cnn_path, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((8, 5, 5, 1), "float32"), y=np.zeros(8, "int64"))
    code, _, err = run_cli(capsys, "prune", cnn_path, "--ratio", "0.5", "--train", bad,
                           "--epochs", "1")
    assert code == 2 and any(ln.startswith("error: ") and "train data" in ln for ln in err), err


def test_prune_missing_model(tmp_path, capsys):
    code, _, err = run_cli(capsys, "prune", tmp_path / "nope.keras", "--ratio", "0.5")
    assert code == 2 and "model not found" in err[-1]


def test_prune_warns_about_layers_it_does_not_understand(tmp_path, capsys):
    import keras

    i = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(8, 3, padding="same", name="a")(i)
    x = keras.layers.Conv2D(8, 3, padding="same", name="b")(x)
    x = keras.layers.Reshape((36, 8), name="odd_reshape")(x)
    o = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    path = tmp_path / "r.keras"
    keras.Model(i, o).save(path)
    code, _, err = run_cli(capsys, "prune", path, "--ratio", "0.5", "--no-protect-first",
                           "--out", tmp_path / "r.pruned.keras")
    assert code == 0
    assert any("warning" in ln and "odd_reshape" in ln for ln in err), err


def test_profile_json(cnn_path, capsys):
    code, stdout, _ = run_cli(capsys, "profile", cnn_path, "--json")
    doc = json.loads(stdout)
    assert code == 0 and doc["params"] == sum(lp["params"] for lp in doc["layers"])
    conv2 = doc["layers"][1]
    assert conv2["macs"] == 8 * 8 * 9 * 16 * 32 and doc["flops"] == 2 * doc["macs"]


def test_distill_cli(cnn_path, tmp_path, capsys):
    import keras

    student = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(10, activation="softmax")], name="tiny")
    student.save(tmp_path / "s.keras")
    code, stdout, _ = run_cli(capsys, "distill", "--teacher", cnn_path, "--student",
                              tmp_path / "s.keras", "--train", digits_path("train"), "--eval",
                              digits_path("eval"), "--epochs", "1", "--out",
                              tmp_path / "s2.keras", "--json")
    doc = json.loads(stdout)
    assert code == 0 and (tmp_path / "s2.keras").is_file() and 0 <= doc["accuracy"] <= 1

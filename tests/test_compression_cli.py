"""`edgekit cluster`, `edgekit prune --lottery / --sparse-training`, `edgekit profile` sizes:
JSON output, help, and bad input as one line with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from compression_helpers import fresh_cnn, trained_digits

from calibration_data.digits import digits_path
from edgekit.cli.main import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, [ln for ln in err.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return trained_digits(tmp_path_factory)


@pytest.fixture(scope="module")
def fresh_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("fresh") / "fresh.keras"
    fresh_cnn().save(path)
    return path


def test_cluster_json_record_and_profile(model_path, tmp_path, capsys):
    out = tmp_path / "c.keras"
    code, stdout, _ = run_cli(capsys, "cluster", model_path, "--clusters", "16", "--per-channel",
                              "--init", "density", "--train", digits_path("train"), "--epochs",
                              "1", "--out", out, "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["technique"] == "clustering" and doc["clusters"] == 16 and doc["per_channel"]
    assert "conv2d" not in doc["layers"] and any("conv2d" in w for w in doc["warnings"])
    assert all(v["max_unique_per_channel"] <= 16 for v in doc["layers"].values())
    record = json.loads(out.with_suffix(".compression.json").read_text())
    assert record["schema"] == "edgekit.compression_record" and record["schema_version"] == 1
    assert record["clusters"] == 16 and record["init"] == "density"
    code, stdout, _ = run_cli(capsys, "profile", out, "--json")
    prof = json.loads(stdout)
    assert code == 0 and prof["file"]["bytes"] == out.stat().st_size
    assert prof["file"]["zstd_bytes"] < prof["file"]["bytes"] / 3
    by_name = {lp["name"]: lp for lp in prof["layers"]}
    assert by_name["dense"]["unique_values"] <= 16 * 64 and by_name["conv2d"]["unique_values"] > 100


def test_prune_rigl_and_lottery_json(model_path, fresh_path, tmp_path, capsys):
    import keras

    code, stdout, _ = run_cli(capsys, "prune", model_path, "--sparse-training", "rigl",
                              "--sparsity", "0.9", "--epochs", "1", "--train",
                              digits_path("train"), "--out", tmp_path / "r.keras", "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["technique"] == "rigl" and doc["sparsity_measured"] == pytest.approx(0.9, abs=0.01)
    assert doc["sizes"]["gzip_bytes"] < 0.4 * doc["source_sizes"]["gzip_bytes"]
    code, stdout, _ = run_cli(capsys, "prune", fresh_path, "--lottery", "--rounds", "2",
                              "--sparsity", "0.5", "--rewind-epoch", "0", "--epochs", "1",
                              "--train", digits_path("train"), "--out", tmp_path / "t.keras",
                              "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["technique"] == "lottery-ticket" and len(doc["rounds"]) == 3
    ticket = keras.saving.load_model(tmp_path / "t.keras", safe_mode=True)
    w = ticket.get_layer("dense").kernel.numpy() if "dense" in [lyr.name for lyr in
                                                                 ticket.layers] else None
    kernels = [lyr.kernel.numpy() for lyr in ticket.layers if hasattr(lyr, "kernel")
               and lyr.kernel.numpy().size >= 256]
    assert w is None or np.mean(w == 0) > 0.3
    assert np.mean(np.concatenate([k.ravel() for k in kernels]) == 0) == pytest.approx(0.5,
                                                                                       abs=0.01)


@pytest.mark.parametrize("argv, message", [
    (["cluster", "{m}", "--clusters", "1"], "clusters must be an integer >= 2"),
    (["cluster", "{m}", "--layer", "nope"], "no layer named nope"),
    (["cluster", "{m}", "--layer", "probs", "--clusters", "200", "--per-channel"],
     "clusters=200"),
    (["cluster", "{m}", "--epochs", "1"], "needs training data"),
    (["prune", "{m}", "--lottery", "--sparsity", "0.8", "--epochs", "2", "--rewind-epoch", "3",
      "--train", "{t}"], "beyond training"),
    (["prune", "{m}", "--sparse-training", "rigl", "--sparsity", "1.5", "--train", "{t}"],
     "sparsity must be in (0, 1)"),
    (["prune", "{m}", "--lottery", "--train", "{t}"], "need --sparsity"),
    (["prune", "{m}", "--lottery", "--sparse-training", "rigl", "--sparsity", "0.5"],
     "not both"),
])
def test_bad_input_is_one_line_and_exit_2(model_path, tmp_path, capsys, argv, message):
    argv = [a.format(m=model_path, t=digits_path("train")) for a in argv]
    code, stdout, err = run_cli(capsys, *argv, "--out", tmp_path / "x.keras")
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert "Traceback" not in stdout and not (tmp_path / "x.keras").exists()


@pytest.mark.parametrize("cmd", [["cluster"], ["prune"], ["profile"]])
def test_help_names_the_new_options(cmd, capsys):
    code, out, _ = run_cli(capsys, *cmd, "--help")
    assert code == 0
    want = {"cluster": ["--clusters", "--per-channel", "--init", "--preserve-sparsity",
                        "--no-fold-bn"],
            "prune": ["--lottery", "--rounds", "--rewind-epoch", "--sparse-training",
                      "--keep-sensitive", "--prune-sensitive"],
            "profile": ["gzip", "zstd"]}[cmd[0]]
    assert all(w in out for w in want), out


def test_compression_record_is_versioned_and_tied_to_the_model_bytes(tmp_path, caplog):
    from edgekit.compression_record import read_record, with_compression, write_record
    from edgekit.errors import InputError
    from edgekit.fsutil import sha256_file

    model = tmp_path / "m.keras"
    model.write_bytes(b"model bytes")
    side = write_record(model, {"technique": "rigl", "sparsity": 0.9, "loss": 0.1})
    digest = sha256_file(model)
    entry = with_compression({"path": str(model), "sha256": digest})["compression"]
    assert entry == {"technique": "rigl", "params": {"sparsity": 0.9}}
    model.write_bytes(b"other bytes")  # overwritten later: the record no longer applies
    assert read_record(model, sha256_file(model)) is None
    doc = json.loads(side.read_text())
    side.write_text(json.dumps({**doc, "schema_version": 99}))
    with pytest.raises(InputError, match="version 99"):
        read_record(model)
    side.write_text(json.dumps({**doc, "schema": "something.else"}))
    with pytest.raises(InputError, match="expected 'edgekit.compression_record'"):
        read_record(model)
    assert "compression" not in with_compression({"path": str(model), "sha256": digest})


def test_inspect_reports_compressed_sizes_and_distinct_weight_values(model_path, tmp_path, capsys):
    from converters.tflite_weights import convert_sparse
    from edgekit.train_api import cluster

    model, _ = cluster(model_path, 4)
    path = convert_sparse(model, tmp_path / "c.tflite")  # not sparse: stored dense
    capsys.readouterr()  # the converter's own chatter
    code, stdout, _ = run_cli(capsys, "inspect", path, "--json")
    info = json.loads(stdout)
    assert code == 0 and info["bytes"] == path.stat().st_size
    assert info["zstd_bytes"] < 0.3 * info["bytes"] and info["gzip_bytes"] < 0.3 * info["bytes"]
    assert len(info["weights"]) == 4 and all(w["unique"] <= 4 for w in info["weights"])

"""`edgekit convert` / `inspect` / `targets` from the command line, bad inputs above all.

Every bad input must give exactly one line on stderr, no traceback, exit 2 for bad input or usage
and 1 for a job that was attempted and failed, and leave nothing half-written behind. Most cases
call ``main(argv)`` in-process (fast); a few run the real entry point in a subprocess, where
TensorFlow's own start-up chatter would show.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
from conftest_convert import files_in, tflite_tensors

from edgekit.artifact import manifest_schema
from edgekit.cli.main import main


def run_cli(capsys, *argv):
    """``main(argv)`` in-process: (exit code, stdout, stderr lines that are not blank)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, [ln for ln in err.splitlines() if ln.strip()]


def assert_one_error_line(err_lines, *needles):
    assert len(err_lines) == 1, err_lines
    line = err_lines[0]
    assert line.startswith("error: ") and "Traceback" not in line
    for needle in needles:
        assert needle in line, line
    return line


# --- corrupt / odd model files, built from the session model --------------------------------------

def _truncate(src: Path, dest: Path, keep: float = 0.3) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * keep)])
    return dest


@pytest.fixture
def bad_models(tmp_path, digits_cnn, digits_build):
    """Corrupt copies of real models, one per format."""
    d = tmp_path / "models"
    d.mkdir()
    sm = d / "broken_savedmodel"
    sm.mkdir()
    (sm / "saved_model.pb").write_bytes(b"\x08\x01garbage that is not a SavedModel proto")
    not_keras_zip = d / "other.keras"
    with zipfile.ZipFile(not_keras_zip, "w") as z:
        z.writestr("readme.txt", "a zip, but not a Keras model")
    plain_dir = d / "plain_folder"
    plain_dir.mkdir()
    (plain_dir / "weights.bin").write_bytes(b"\0" * 16)
    return {
        "truncated .keras": (_truncate(digits_cnn.keras, d / "t.keras"), "not a valid .keras file"),
        "zip without config": (not_keras_zip, "without config.json"),
        "truncated .h5": (_truncate(digits_cnn.h5, d / "t.h5"), "cannot load Keras model"),
        "text as .h5": (_write(d / "x.h5", b"hello"), "not an HDF5 file"),
        "truncated .onnx": (_truncate(digits_cnn.onnx, d / "t.onnx"), "cannot parse ONNX model"),
        "empty .onnx": (_write(d / "e.onnx", b""), "holds no graph"),
        "truncated .tflite": (_truncate(digits_build.artifacts["tflite-fp32"].path, d / "t.tflite"),
                              "cannot load TFLite model"),
        "text as .tflite": (_write(d / "x.tflite", b"not a flatbuffer"), "not a TFLite flatbuffer"),
        "corrupt SavedModel": (sm, "cannot load SavedModel"),
        "folder that is no SavedModel": (plain_dir, "not a TensorFlow SavedModel"),
        "unknown format": (_write(d / "model.pt", b"\x80\x02torch"), "unknown model format '.pt'"),
        "no suffix": (_write(d / "model", b"???"), "unknown model format '(no suffix)'"),
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


CORRUPT_CASES = ["truncated .keras", "zip without config", "truncated .h5", "text as .h5",
                 "truncated .onnx", "empty .onnx", "truncated .tflite", "text as .tflite",
                 "corrupt SavedModel", "folder that is no SavedModel", "unknown format", "no suffix"]


@pytest.mark.parametrize("case", CORRUPT_CASES)
def test_corrupt_or_unknown_model_is_one_line_exit_2(capsys, tmp_path, bad_models, case):
    path, needle = bad_models[case]
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "convert", path, "--to", "tflite-fp32" if "onnx" not in case
                           else "onnx-fp32", "--out", out)
    assert code == 2
    assert_one_error_line(err, needle)
    assert files_in(out) == []


def test_missing_model_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "convert", tmp_path / "nope.keras", "--out", tmp_path / "out")
    assert code == 2
    assert_one_error_line(err, "model not found", "nope.keras")
    assert not (tmp_path / "out").exists()


def test_unknown_target_lists_the_known_ones(capsys, tmp_path, digits_cnn):
    code, _, err = run_cli(capsys, "convert", digits_cnn.keras, "--to", "tflite-int4",
                           "--out", tmp_path / "out")
    assert code == 2
    assert_one_error_line(err, "unknown target 'tflite-int4'", "tflite-int8", "onnx-fp16")
    assert files_in(tmp_path / "out") == []


@pytest.mark.parametrize("model_attr,target,needle", [
    ("onnx", "tflite-int8", "target 'tflite-int8' cannot be built from a onnx source"),
    ("tflite", "onnx-fp32", "no TensorFlow graph left to re-trace"),
])
def test_target_not_possible_for_this_source(capsys, tmp_path, digits_cnn, digits_build, model_attr,
                                             target, needle):
    model = digits_cnn.onnx if model_attr == "onnx" else digits_build.artifacts["tflite-fp32"].path
    code, _, err = run_cli(capsys, "convert", model, "--to", target, "--out", tmp_path / "out")
    assert code == 2
    assert_one_error_line(err, needle, "possible targets:")
    assert files_in(tmp_path / "out") == []


def _bad_calibration_files(folder: Path, digits_cnn) -> dict:
    import numpy as np

    x = np.load(digits_cnn.calibration)["x"]
    nan = x.copy()
    nan[3, 2, 2, 0] = np.nan
    cases = {
        "missing file": (folder / "nope.npz", "not found"),
        "wrong shape": (folder / "flat.npz", "shape mismatch"),
        "NaN": (folder / "nan.npz", "NaN"),
        "wrong input name": (folder / "named.npz", "image"),
        "not an npz": (folder / "junk.npz", "junk.npz"),
        "strings": (folder / "text.csv", "text.csv"),
    }
    np.savez(folder / "flat.npz", x=x.reshape(len(x), 64))
    np.savez(folder / "nan.npz", x=nan)
    np.savez(folder / "named.npz", pixels=x, other=x)
    (folder / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (folder / "text.csv").write_text("a,b\nfoo,bar\n")
    return cases


@pytest.mark.parametrize("case", ["missing file", "wrong shape", "NaN", "wrong input name",
                                  "not an npz", "strings"])
def test_bad_calibration_data_is_one_line_exit_2(capsys, tmp_path, digits_cnn, case):
    path, needle = _bad_calibration_files(tmp_path, digits_cnn)[case]
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "convert", digits_cnn.keras, "--to", "tflite-int8",
                           "--calibration", path, "--out", out)
    assert code == 2
    line = assert_one_error_line(err, needle)
    assert "calibration" in line
    assert files_in(out) == []


def test_bad_eval_data_is_one_line_exit_2(capsys, tmp_path, digits_cnn):
    import numpy as np

    code, _, err = run_cli(capsys, "convert", digits_cnn.keras, "--to", "tflite-fp32", "--eval",
                           tmp_path / "nope.npz", "--out", tmp_path / "out")
    assert code == 2
    assert_one_error_line(err, "eval data", "nope.npz", "not found")
    np.savez(tmp_path / "bad_labels.npz", x=np.zeros((4, 8, 8, 1), np.float32), y=np.arange(3))
    code, _, err = run_cli(capsys, "convert", digits_cnn.keras, "--to", "tflite-fp32", "--eval",
                           tmp_path / "bad_labels.npz", "--out", tmp_path / "out")
    assert code == 2
    assert_one_error_line(err, "eval data", "bad_labels.npz")
    assert files_in(tmp_path / "out") == []


def test_too_few_calibration_samples_when_a_number_is_asked(capsys, tmp_path, digits_cnn):
    code, _, err = run_cli(capsys, "convert", digits_cnn.keras, "--to", "onnx-int8", "--calibration",
                           digits_cnn.calibration, "--calibration-samples", "5000", "--out", tmp_path)
    assert code == 2
    assert_one_error_line(err, "5000")
    assert files_in(tmp_path) == []


def test_int8_target_without_calibration_says_how_to_give_it(capsys, tmp_path, digits_cnn):
    code, _, err = run_cli(capsys, "convert", digits_cnn.keras, "--to", "onnx-int8", "--out", tmp_path)
    assert code == 2
    assert_one_error_line(err, "onnx-int8 need calibration data", "--calibration")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("make_out", ["under a file", "is a file"])
def test_unwritable_out_is_one_line_exit_2(capsys, tmp_path, digits_cnn, make_out):
    # Made unwritable by a file in the way, not by chmod: tests and CI run as root.
    blocker = tmp_path / "a_file"
    blocker.write_text("I am a file")
    out = blocker / "sub" if make_out == "under a file" else blocker
    code, _, err = run_cli(capsys, "convert", digits_cnn.keras, "--to", "tflite-fp32", "--out", out)
    assert code == 2
    assert_one_error_line(err, "cannot write to output folder")
    assert blocker.read_text() == "I am a file"


@pytest.mark.parametrize("flag,needle", [
    ("image=1,8", "does not fit input 'image'"),
    ("image", "bad --input-shape 'image'"),
    ("image=1,8,8,0", "positive integers"),
    ("pixels=1,8,8,1", "--input-shape names pixels"),
])
def test_bad_input_shape_flags(capsys, tmp_path, digits_cnn, flag, needle):
    code, _, err = run_cli(capsys, "convert", digits_cnn.keras, "--to", "tflite-fp32",
                           "--input-shape", flag, "--out", tmp_path)
    assert code == 2
    assert_one_error_line(err, needle)
    assert files_in(tmp_path) == []


def test_usage_error_is_exit_2(capsys, tmp_path, digits_cnn):
    code, _, err = run_cli(capsys, "convert", digits_cnn.keras, "--calibration-method", "median")
    assert code == 2
    assert any("median" in ln for ln in err) and not any("Traceback" in ln for ln in err)


def test_lambda_model_needs_allow_unsafe(capsys, tmp_path):
    import keras

    inp = keras.Input(shape=(3,), name="x")
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t + 1.0)(inp))
    path = tmp_path / "lam.keras"
    model.save(path)
    code, _, err = run_cli(capsys, "convert", path, "--to", "tflite-fp32", "--out", tmp_path / "a")
    assert code == 2
    assert_one_error_line(err, "Lambda", "--allow-unsafe")
    assert files_in(tmp_path / "a") == []
    code, _, err = run_cli(capsys, "convert", path, "--to", "tflite-fp32", "--allow-unsafe",
                           "--out", tmp_path / "b")
    assert code == 0
    assert (tmp_path / "b" / "lam.tflite-fp32.tflite").is_file()


def test_dynamic_dims_error_names_input_and_flag(capsys, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["frames"], ["y"])], "g",
        [helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["n", "t", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "t", 4])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    code, _, err = run_cli(capsys, "convert", path, "--to", "onnx-fp32", "--out", tmp_path / "out")
    assert code == 2
    assert_one_error_line(err, "'frames'", "--input-shape frames=1,N,4")
    code, _, err = run_cli(capsys, "convert", path, "--to", "onnx-fp32", "--input-shape",
                           "frames=1,10,4", "--out", tmp_path / "out")
    assert code == 0


# --- a failed job (exit 1) ------------------------------------------------------------------------

@pytest.mark.slow
def test_failed_job_is_one_line_exit_1_and_writes_nothing(capsys, tmp_path, sequence_model):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "convert", sequence_model.keras, "--to", "tflite-int16x8",
                           "--calibration", sequence_model.calibration, "--out", out)
    assert code == 1
    assert_one_error_line(err, "1 of 1 targets failed", "tflite-int16x8", "tokens (int64)")
    assert files_in(out) == []  # no artifact, no temp file, no manifest


@pytest.mark.slow
def test_partly_failed_job_keeps_what_succeeded_and_reports_json(capsys, tmp_path, sequence_model):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "convert", sequence_model.keras, "--to",
                                "tflite-fp32,tflite-int16x8", "--calibration",
                                sequence_model.calibration, "--out", out, "--json")
    assert code == 1
    assert_one_error_line(err, "1 of 2 targets failed")
    doc = json.loads(stdout)
    assert [a["target"] for a in doc["artifacts"]] == ["tflite-fp32"]
    assert list(doc["failures"]) == ["tflite-int16x8"]
    assert files_in(out) == ["manifest.json", "tokens.tflite-fp32.tflite"]
    manifest = json.loads((out / "manifest.json").read_text())
    jsonschema.validate(manifest, manifest_schema())
    assert [a["target"] for a in manifest["artifacts"]] == ["tflite-fp32"]


# --- happy paths ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_convert_json_output_and_manifest(capsys, tmp_path, digits_cnn):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "convert", digits_cnn.keras, "--to", "tflite-int8,onnx-fp16",
                              "--calibration", digits_cnn.calibration, "--eval", digits_cnn.eval,
                              "--float-io", "--out", out, "--json")
    assert code == 0
    doc = json.loads(stdout)  # stdout holds the JSON and nothing else (tool chatter is kept off)
    assert doc["failures"] == {}
    arts = {a["target"]: a for a in doc["artifacts"]}
    assert set(arts) == {"tflite-int8", "onnx-fp16"}
    int8 = arts["tflite-int8"]
    assert int8["pass"]["config"]["float_io"] is True
    assert int8["inputs"][0]["dtype"] == "float32"  # --float-io keeps float32 I/O
    assert int8["outputs"][0]["dtype"] == "float32"
    _, ins, outs, ops = tflite_tensors(out / "digits.tflite-int8.tflite")
    assert ins == ["float32"] and outs == ["float32"]
    assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 1  # the int8 core, converted at the edges
    assert ops["CONV_2D"] == 1
    assert int8["fidelity"]["samples"] == 450 and int8["fidelity"]["accuracy"] > 0.85
    manifest = json.loads((out / "manifest.json").read_text())
    jsonschema.validate(manifest, manifest_schema())
    assert sorted(a["path"] for a in manifest["artifacts"]) == [
        "digits.onnx-fp16.onnx", "digits.tflite-int8.tflite"]


def test_default_targets_without_calibration_skip_int8(capsys, tmp_path, digits_cnn):
    from converters.registry import targets_for

    code, stdout, _ = run_cli(capsys, "convert", digits_cnn.onnx, "--out", tmp_path, "--json")
    assert code == 0
    # every target possible for an ONNX source that needs no calibration data
    built = [a["target"] for a in json.loads(stdout)["artifacts"]]
    assert built == [t.name for t in targets_for("onnx") if not t.needs_calibration]
    assert {"onnx-fp32", "onnx-fp16", "onnx-dynamic"} <= set(built) and "onnx-int8" not in built


def test_inspect_json_and_errors(capsys, tmp_path, digits_build):
    path = digits_build.artifacts["onnx-int8"].path
    code, stdout, _ = run_cli(capsys, "inspect", path, "--json")
    assert code == 0
    info = json.loads(stdout)
    assert info["format"] == "onnx" and info["ops"]["QuantizeLinear"] >= 3
    assert info["sha256"] == digits_build.artifacts["onnx-int8"].sha256
    code, _, err = run_cli(capsys, "inspect", tmp_path / "none.tflite")
    assert code == 2
    assert_one_error_line(err, "no such artifact")
    (tmp_path / "model.bin").write_bytes(b"x")
    code, _, err = run_cli(capsys, "inspect", tmp_path / "model.bin")
    assert code == 2
    assert_one_error_line(err, "expected a .tflite or .onnx file")
    _truncate(path, tmp_path / "t.onnx")
    code, _, err = run_cli(capsys, "inspect", tmp_path / "t.onnx")
    assert code == 2
    assert_one_error_line(err, "not a readable ONNX model")


def test_inspect_table_shows_quantization(capsys, digits_build):
    code, _, err = run_cli(capsys, "inspect", digits_build.artifacts["tflite-int8"].path)
    assert code == 0
    text = "\n".join(err)
    assert "int8" in text and "CONV_2D" in text and "FULLY_CONNECTED" in text


def test_targets_json_is_the_registry(capsys):
    from converters.registry import TARGETS

    code, stdout, _ = run_cli(capsys, "targets", "--json")
    assert code == 0
    listed = json.loads(stdout)
    assert [t["name"] for t in listed] == list(TARGETS)
    by_name = {t["name"]: t for t in listed}
    assert by_name["onnx-int8"]["needs_calibration"] is True
    assert "onnx" in by_name["onnx-int8"]["sources"] and "keras" in by_name["tflite-fp16"]["sources"]


# --- the real entry point, in a subprocess --------------------------------------------------------

def _edgekit(*argv, cwd):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    # oneDNN on whatever the CPU: TensorFlow then prints its banner on every machine.
    env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return subprocess.run([sys.executable, "-m", "edgekit.cli.main", *map(str, argv)],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env=env,
                          check=False)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "bad calibration", "failed job"])
def test_entry_point_prints_exactly_one_line(tmp_path, digits_cnn, sequence_model, case):
    """Through the real process: TensorFlow's own start-up lines must not reach stderr either."""
    out = tmp_path / "out"
    if case == "missing":
        argv, code = ["convert", tmp_path / "nope.onnx", "--out", out], 2
    elif case == "bad calibration":
        import numpy as np

        np.savez(tmp_path / "c.npz", x=np.zeros((4, 3), np.float32))
        argv = ["convert", digits_cnn.keras, "--to", "tflite-int8", "--calibration",
                tmp_path / "c.npz", "--out", out]
        code = 2
    else:
        argv = ["convert", sequence_model.keras, "--to", "tflite-int16x8", "--calibration",
                sequence_model.calibration, "--out", out]
        code = 1
    proc = _edgekit(*argv, cwd=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stdout == ""
    assert files_in(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p for p in ("out", "c.npz") if (tmp_path / p).exists())

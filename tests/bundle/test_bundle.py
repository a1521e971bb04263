"""edgekit bundle: contents and metadata match the manifest and the bench database, embedded
TFLite/ONNX metadata reads back without changing outputs, reproducible bytes, checksums, size
budget, generated Kotlin/Swift parse with real grammars, CLI contract."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from ship_build import DIGIT_LABELS

from calibration_data.digits import load_split
from edgekit.artifact import read_manifest
from edgekit.bundle import (
    BundleOptions,
    BundleTooLarge,
    Platform,
    build_bundle,
    tflite_metadata,
    verify_bundle,
)
from edgekit.bundle.metadata import read_onnx_metadata
from edgekit.results import ResultStore

MEAN, STD = (0.5,), (0.25,)


def _android(ship, out, **kw):
    opts = {"platform": Platform.ANDROID, "labels": DIGIT_LABELS, "mean": MEAN, "std": STD,
            "db": ship.db, "version": "2.1"}
    opts.update(kw)
    return build_bundle(ship.out, BundleOptions(**opts), out)


@pytest.fixture(scope="module")
def android(ship, tmp_path_factory):
    out = tmp_path_factory.mktemp("app") / "src" / "main" / "assets" / "edgekit"
    return _android(ship, out)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_android_bundle_files_and_checksums(android):
    out = android.out
    assert sorted(p.name for p in out.iterdir()) == [
        "SHA256SUMS", "digits.tflite-int8.tflite", "edgekit.json", "labels.txt"]
    # --out inside assets: the Kotlin goes to the same source set's java/<package>, where Gradle
    # compiles it (never into assets/, which is packed into the APK as data).
    main = out.parent.parent
    assert [h.relative_to(main).as_posix() for h in android.helpers] == [
        "java/edgekit/models/DigitsModel.kt"]
    assert android.code == main / "java" / "edgekit" / "models"
    assert (out / "labels.txt").read_text() == "".join(f"{i}\n" for i in range(10))
    assert verify_bundle(out) == []
    doc = json.loads((out / "edgekit.json").read_text())
    assert doc["files"] == {name: _sha(out / name) for name in doc["files"]}
    assert set(doc["files"]) == {"digits.tflite-int8.tflite", "labels.txt"}
    assert doc["models"][0]["helper"] == "DigitsModel.kt"
    (out / "labels.txt").write_text("tampered\n")
    assert verify_bundle(out) == ["labels.txt"]
    (out / "labels.txt").write_text("".join(f"{i}\n" for i in range(10)))


def test_edgekit_json_matches_manifest_and_results(android, ship):
    doc = json.loads((android.out / "edgekit.json").read_text())
    [art] = [a for a in read_manifest(ship.out) if a.target == "tflite-int8"]
    assert (doc["schema"], doc["schema_version"], doc["platform"]) == ("edgekit.bundle", 1, "android")
    assert (doc["name"], doc["version"], doc["labels"]) == ("digits", "2.1", list(DIGIT_LABELS))
    [m] = doc["models"]
    assert m["target"] == "tflite-int8" and m["artifact_sha256"] == art.sha256
    assert m["sha256"] == _sha(android.out / m["file"]) and m["bytes"] > art.bytes
    for got, spec in zip(m["inputs"] + m["outputs"], art.inputs + art.outputs, strict=True):
        assert got["name"] == spec.name and got["dtype"] == spec.dtype == "int8"
        assert tuple(got["shape"]) == tuple(spec.shape)
        assert got["quantization"]["scale"] == list(spec.quantization.scale)
        assert got["quantization"]["zero_point"] == list(spec.quantization.zero_point)
    assert m["inputs"][0]["normalization"] == {"mean": list(MEAN), "std": list(STD)}
    assert m["outputs"][0]["labels_file"] == "labels.txt"
    assert m["recipe"]["pass"] == {"target": "tflite-int8", "config": art.pass_config}
    assert m["recipe"]["source"]["sha256"] == art.source["sha256"]
    assert m["recipe"]["calibration"]["sha256"] == art.calibration["sha256"]
    assert m["fidelity"] == art.fidelity.to_dict()
    with ResultStore(ship.db) as store:
        [r] = [r for r in store.list() if r.artifact["sha256"] == art.sha256]
    [fig] = m["measured"]
    assert (fig["device"], fig["result_id"]) == ("local", r.id)
    assert fig["p50_ms"] == r.metrics["latency_ms"]["p50"]
    assert fig["p99_ms"] == r.metrics["latency_ms"]["p99"]
    assert fig["peak_rss_bytes"] == r.metrics["memory"]["peak_rss_bytes"]
    assert fig["accuracy"] == r.metrics["accuracy"]["top1"]
    assert "/" not in m["recipe"]["source"]["file"]  # no build-machine paths in an app


def test_embedded_tflite_metadata_reads_back(android):
    data = (android.out / "digits.tflite-int8.tflite").read_bytes()
    meta = tflite_metadata.read(data)
    assert (meta["name"], meta["version"], meta["author"]) == ("digits", "2.1", "edgekit")
    assert meta["min_parser_version"] == "1.0.0" and "tflite-int8" in meta["description"]
    [sg] = meta["subgraphs"]
    [inp], [out] = sg["inputs"], sg["outputs"]
    assert inp["content"] == {"image": "GRAYSCALE"}
    assert inp["normalization"] == {"mean": [0.5], "std": [0.25]}
    assert out["associated_files"] == [{"name": "labels.txt", "type": 2,
                                        "description": "Labels of the output classes, one per line."}]
    assert meta["associated_files"] == {"labels.txt": "".join(f"{i}\n" for i in range(10))}


def _run_tflite(model: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    it.allocate_tensors()
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    outs = []
    for sample in x:
        it.set_tensor(d["index"], sample[None])
        it.invoke()
        outs.append(it.get_tensor(o["index"]).copy())
    return np.concatenate(outs)


def test_embedded_tflite_still_loads_with_identical_outputs(android, ship):
    x, _ = load_split("eval")
    art = ship.artifacts["tflite-int8"]
    q = art.inputs[0].quantization
    xq = np.clip(np.round(x[:40] / q.scale[0] + q.zero_point[0]), -128, 127).astype(np.int8)
    original = _run_tflite(art.path.read_bytes(), xq)
    bundled = _run_tflite((android.out / art.path.name).read_bytes(), xq)
    assert original.dtype == np.int8 and np.array_equal(original, bundled)


def test_ios_onnx_and_ort_bundle(ship, tmp_path):
    import onnxruntime as ort

    res = build_bundle(ship.out, BundleOptions(platform=Platform.IOS, artifacts=("onnx-fp32", "ort"),
                                               labels=DIGIT_LABELS), tmp_path / "Models")
    # The models are the target's resources, the helpers its sources.
    assert res.out == tmp_path / "Models" / "Resources"
    names = sorted(p.name for p in res.out.iterdir())
    assert names == ["SHA256SUMS", "digits.onnx-fp32.onnx", "digits.ort.ort", "edgekit.json",
                     "labels.txt"]
    assert sorted(p.name for p in (tmp_path / "Models" / "Sources").iterdir()) == [
        "DigitsOnnxFp32Model.swift", "DigitsOrtModel.swift"]
    swift = tmp_path / "Models" / "Sources" / "DigitsOrtModel.swift"
    props = read_onnx_metadata(res.out / "digits.onnx-fp32.onnx")
    assert json.loads(props["edgekit.labels"]) == list(DIGIT_LABELS)
    assert props["edgekit.target"] == "onnx-fp32" and props["edgekit.normalization"] == "null"
    x = load_split("eval")[0][:32].astype(np.float32)
    orig = ort.InferenceSession(str(ship.artifacts["onnx-fp32"].path))
    new = ort.InferenceSession(str(res.out / "digits.onnx-fp32.onnx"))
    assert new.get_modelmeta().custom_metadata_map["edgekit.name"] == "digits"
    name = orig.get_inputs()[0].name
    assert np.array_equal(orig.run(None, {name: x})[0], new.run(None, {name: x})[0])
    doc = json.loads((res.out / "edgekit.json").read_text())
    by_target = {m["target"]: m for m in doc["models"]}
    # .ort is copied unchanged (its metadata is fixed when ORT writes it).
    assert by_target["ort"]["sha256"] == ship.artifacts["ort"].sha256
    assert by_target["ort"]["metadata_embedded"] is None
    assert "import onnxruntime_objc" in swift.read_text()
    assert 'modelExtension = "ort"' in swift.read_text()


def test_bundles_are_reproducible(ship, tmp_path):
    a = _android(ship, tmp_path / "a" / "assets" / "edgekit", artifacts=("tflite-int8", "ort"))
    b = _android(ship, tmp_path / "b" / "assets" / "edgekit", artifacts=("tflite-int8", "ort"))
    files_a = sorted(p.name for p in a.out.iterdir())
    assert files_a == sorted(p.name for p in b.out.iterdir()) and len(files_a) == 5
    for name in files_a:
        assert (a.out / name).read_bytes() == (b.out / name).read_bytes(), name
    assert [h.name for h in a.helpers] == ["DigitsTfliteInt8Model.kt", "DigitsOrtModel.kt"]
    for ha, hb in zip(a.helpers, b.helpers, strict=True):
        assert ha.read_bytes() == hb.read_bytes(), ha.name
    again = _android(ship, a.out, artifacts=("tflite-int8", "ort"))  # over an existing bundle
    assert again.files == a.files
    assert not [p for p in a.out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_size_budget(ship, tmp_path):
    size = len(tflite_metadata.embed(ship.artifacts["tflite-int8"].path.read_bytes(),
                                     tflite_metadata.ModelInfo("x", "", "1")))
    with pytest.raises(BundleTooLarge, match="over budget"):
        build_bundle(ship.out, BundleOptions(platform=Platform.IOS, max_bytes=1000), tmp_path / "o")
    assert not (tmp_path / "o").exists()
    ok = build_bundle(ship.out, BundleOptions(platform=Platform.IOS, max_bytes=size + 4096),
                      tmp_path / "o")
    assert ok.model_bytes <= size + 4096


def _syntax_errors(lang_module, source: bytes) -> list:
    from tree_sitter import Language, Parser

    tree = Parser(Language(lang_module.language())).parse(source)
    errors, stack = [], [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            errors.append((node.start_point, node.text[:60]))
        stack.extend(node.children)
    return errors


@pytest.mark.parametrize("platform, target", [("android", "tflite-int8"), ("android", "onnx-fp32"),
                                              ("android", "ort"), ("ios", "tflite-fp32"),
                                              ("ios", "tflite-int8"), ("ios", "onnx-fp32")])
def test_generated_code_parses(ship, tmp_path, platform, target):
    import tree_sitter_kotlin
    import tree_sitter_swift

    res = build_bundle(ship.out, BundleOptions(platform=Platform(platform), artifacts=(target,),
                                               labels=("a$b", 'q"uote', "back\\slash"),
                                               mean=(0.1,), std=(0.2,)), tmp_path / "b")
    [helper] = res.helpers
    src = helper.read_bytes()
    grammar = tree_sitter_kotlin if platform == "android" else tree_sitter_swift
    assert _syntax_errors(grammar, src) == []
    broken = src[:src.rstrip().rfind(b"}")]  # drop the class's closing brace
    assert _syntax_errors(grammar, broken) != []  # the parser does catch a broken file
    text = src.decode()
    assert res.models[0]["sha256"] in text
    art = ship.artifacts[target]
    if art.inputs[0].quantization:
        scale = repr(art.inputs[0].quantization.scale[0])
        assert (scale + "f" if platform == "android" else scale) in text
    if platform == "android":
        # --out is the app module: the model is packed from src/main/assets/edgekit/.
        assert '"a\\$b"' in text and f'MODEL_ASSET = "edgekit/{art.path.name}"' in text
        runtime = "org.tensorflow.lite.Interpreter" if art.format == "tflite" else "ai.onnxruntime"
    else:
        assert '"a$b"' in text
        runtime = "import TensorFlowLite" if art.format == "tflite" else "import onnxruntime_objc"
    assert runtime in text


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgekit.cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300, check=False)


def test_cli_bundle(ship, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(DIGIT_LABELS) + "\n\n")
    out = tmp_path / "MyApp" / "Models"
    p = _cli("bundle", ship.out, "--platform", "ios", "--out", out, "--labels", labels,
             "--artifact", "tflite-int8", "--db", ship.db, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["platform"] == "ios" and doc["models"][0]["target"] == "tflite-int8"
    assert doc["out"] == str(out / "Resources") and doc["code"] == str(out / "Sources")
    assert json.loads((out / "Resources" / "edgekit.json").read_text())["labels"] == list(
        DIGIT_LABELS)
    assert verify_bundle(out / "Resources") == []
    assert doc["helpers"] == [str(out / "Sources" / "DigitsModel.swift")]
    p = _cli("bundle", ship.out, "--platform", "android", "--out", tmp_path / "small",
             "--max-bytes", "1000")
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "over budget" in p.stderr
    assert not (tmp_path / "small").exists()


@pytest.mark.parametrize("args", [
    ("missing-build", "--platform", "android", "--out", "o"),
    ("{build}", "--platform", "android", "--out", "o", "--artifact", "nope"),
    ("{build}", "--platform", "android", "--out", "o", "--mean", "0.5"),
    ("{build}", "--platform", "android", "--out", "o", "--labels", "empty.txt"),
    ("{build}", "--platform", "android", "--out", "o", "--db", "missing.db"),
    ("{build}", "--platform", "ios", "--out", "{build}"),
    ("{build}", "--platform", "android", "--out", "o", "--package", "com.my-app"),
])
def test_cli_bundle_bad_input_is_one_line_exit_2(ship, tmp_path, args):
    (tmp_path / "empty.txt").write_text("\n")
    p = _cli("bundle", *(a.format(build=ship.out) for a in args), cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("error: ")
    assert not (tmp_path / "o").exists()
    assert sorted(p.name for p in ship.out.iterdir()) == [
        "digits.onnx-fp32.onnx", "digits.ort.ort", "digits.ort.required_operators.config",
        "digits.tflite-fp32.tflite", "digits.tflite-int8.tflite", "manifest.json"]


def test_cli_bundle_help():
    p = _cli("bundle", "--help")
    assert p.returncode == 0 and "--max-bytes" in p.stdout and "--json" in p.stdout

"""manifest.json: validated against the JSON Schema in the repo, round-tripped, merged, and
written atomically (temp name, then rename)."""

from __future__ import annotations

import copy
import json
import shutil
import stat

import jsonschema
import pytest
from conftest_convert import ALL_TARGETS, files_in

from edgekit.artifact import (
    MANIFEST_SCHEMA,
    MANIFEST_VERSION,
    Artifact,
    Fidelity,
    manifest_schema,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from edgekit.errors import InputError
from edgekit.fsutil import atomic_output, sha256_file, write_json_atomic
from edgekit.spec import Quantization, TensorSpec


@pytest.fixture
def build_copy(tmp_path, digits_build):
    """A private copy of the session build folder (tests here change it)."""
    dest = tmp_path / "build"
    shutil.copytree(digits_build.out, dest)
    return dest


def test_session_manifest_validates_against_the_repo_schema(digits_build):
    doc = json.loads((digits_build.out / "manifest.json").read_text())
    jsonschema.Draft202012Validator.check_schema(manifest_schema())
    jsonschema.validate(doc, manifest_schema())
    assert doc["schema"] == MANIFEST_SCHEMA and doc["schema_version"] == MANIFEST_VERSION
    assert doc["generated_by"].startswith("edgekit ")
    assert [a["target"] for a in doc["artifacts"]] == list(ALL_TARGETS)


def test_manifest_entries_describe_the_files_truly(digits_build):
    doc = json.loads((digits_build.out / "manifest.json").read_text())
    for entry in doc["artifacts"]:
        path = digits_build.out / entry["path"]
        assert not entry["path"].startswith("/")  # relative to the manifest's folder
        assert path.is_file()
        assert entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == sha256_file(path)
        assert entry["source"]["sha256"] == sha256_file(digits_build.artifacts[entry["target"]].source["path"])
        assert entry["pass"]["target"] == entry["target"]
        assert entry["tools"] and all(isinstance(v, str) for v in entry["tools"].values())
        assert entry["fidelity"]["samples"] == 450


def test_manifest_records_provenance_per_target(digits_build):
    doc = {a["target"]: a for a in json.loads((digits_build.out / "manifest.json").read_text())["artifacts"]}
    assert doc["tflite-fp32"]["calibration"] is None
    for target in ("tflite-int8", "tflite-int16x8", "onnx-int8"):
        cal = doc[target]["calibration"]
        assert cal["samples"] == 200 and len(cal["sha256"]) == 64 and cal["method"] == "minmax"
        assert cal["path"].endswith("calibration.npz")
    assert doc["onnx-int8"]["pass"]["config"]["per_channel"] is True
    assert doc["onnx-int8"]["pass"]["config"]["opset"] == 17
    assert doc["tflite-int8"]["pass"]["config"]["float_io"] is False
    assert "tensorflow" in doc["tflite-int8"]["tools"] and "ai_edge_litert" in doc["tflite-int8"]["tools"]
    assert {"tf2onnx", "onnxruntime"} <= set(doc["onnx-int8"]["tools"])
    q = doc["tflite-int8"]["inputs"][0]["quantization"]
    assert q["scale"][0] > 0 and isinstance(q["zero_point"][0], int)


def test_read_manifest_round_trips_every_artifact(digits_build):
    path = digits_build.out / "manifest.json"
    doc = json.loads(path.read_text())
    arts = read_manifest(digits_build.out)
    assert [a.target for a in arts] == list(ALL_TARGETS)
    for art, entry in zip(arts, doc["artifacts"], strict=True):
        assert art.path == digits_build.out / entry["path"]
        assert art.to_dict(relative_to=digits_build.out) == entry
        again = Artifact.from_dict(json.loads(json.dumps(art.to_dict())))
        assert again.to_dict() == art.to_dict()
    assert read_manifest(path)[0].sha256 == arts[0].sha256  # the file itself works too


def test_spec_and_fidelity_round_trip():
    q = Quantization((0.5, 0.25), (0, -3), axis=0)
    spec = TensorSpec("x", (None, 3, 8, 8), "int8", q)
    assert TensorSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.dynamic_dims == [0]
    assert Quantization.from_dict(None) is None
    f = Fidelity(10, 0.9, 0.1, 30.0, accuracy=0.8, source_accuracy=0.85)
    assert Fidelity.from_dict(f.to_dict()) == f
    assert f.accuracy_drop == pytest.approx(0.05)


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.update(schema="something.else"), "not an edgekit manifest"),
    (lambda d: d.update(schema_version=2), "schema_version 2 is not supported"),
    (lambda d: d["artifacts"][0].pop("sha256"), "'sha256' is a required property"),
    (lambda d: d["artifacts"][0].update(sha256="xyz"), "does not match"),
    (lambda d: d["artifacts"][0].update(format="pt"), "is not one of"),
    (lambda d: d["artifacts"][0].update(bytes=0), "less than the minimum"),
    (lambda d: d["artifacts"][0]["inputs"][0].update(shape=["a"]), "is not of type"),
])
def test_invalid_manifests_are_refused_with_where(digits_build, mutate, needle):
    doc = json.loads((digits_build.out / "manifest.json").read_text())
    bad = copy.deepcopy(doc)
    mutate(bad)
    with pytest.raises(InputError, match=needle):
        validate_manifest(bad)
    validate_manifest(doc)  # the untouched document still passes


def test_old_manifest_version_fails_with_a_hint(tmp_path, digits_build):
    doc = json.loads((digits_build.out / "manifest.json").read_text())
    doc["schema_version"] = 0
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="re-run `edgekit convert`"):
        read_manifest(tmp_path)


def test_missing_or_corrupt_manifest(tmp_path):
    with pytest.raises(InputError, match="no manifest at .*run `edgekit convert"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read manifest"):
        read_manifest(tmp_path)


def test_write_manifest_merges_replaces_and_drops_vanished_files(build_copy):
    arts = read_manifest(build_copy)
    by_target = {a.target: a for a in arts}
    (build_copy / by_target["onnx-dynamic"].path.name).unlink()  # a vanished file is dropped
    replaced = by_target["tflite-fp32"]
    replaced.fidelity.samples = 7  # a re-run of the same path replaces its entry
    write_manifest(build_copy, [replaced])
    again = {a.target: a for a in read_manifest(build_copy)}
    assert set(again) == set(ALL_TARGETS) - {"onnx-dynamic"}
    assert again["tflite-fp32"].fidelity.samples == 7
    assert again["onnx-int8"].sha256 == by_target["onnx-int8"].sha256
    assert list(again)[-1] == "tflite-fp32"  # re-written entries go last


def test_unreadable_old_manifest_is_replaced_not_merged(build_copy):
    arts = read_manifest(build_copy)
    (build_copy / "manifest.json").write_text("garbage")
    write_manifest(build_copy, arts[:1])
    assert [a.target for a in read_manifest(build_copy)] == [arts[0].target]


def test_manifest_write_failure_leaves_old_manifest_and_no_temp(build_copy):
    before = (build_copy / "manifest.json").read_bytes()
    with pytest.raises(TypeError):
        write_json_atomic(build_copy / "manifest.json", {"not json": object()})
    assert (build_copy / "manifest.json").read_bytes() == before
    assert not [p for p in files_in(build_copy) if ".part" in p]


def test_atomic_output_renames_only_on_success(tmp_path):
    final = tmp_path / "model.tflite"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".tflite") and tmp != final
        tmp.write_bytes(b"half")
        raise RuntimeError("converter died")
    assert final.read_bytes() == b"old" and files_in(tmp_path) == ["model.tflite"]
    with atomic_output(final) as tmp:
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"new" and files_in(tmp_path) == ["model.tflite"]


def test_artifacts_and_manifest_are_readable_like_normal_files(digits_build):
    # mkstemp creates 0600 files; the rename must not leave artifacts private to their creator.
    for path in [digits_build.out / "manifest.json", *(a.path for a in digits_build.artifacts.values())]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044, (path.name, oct(mode))

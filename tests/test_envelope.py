"""edgekit.envelope: the one shape of every versioned JSON document, written and read back."""

import json

import pytest

from edgekit import __version__
from edgekit.compression_record import read_record, record_path, write_record
from edgekit.envelope import unwrap, wrap
from edgekit.errors import DocumentError, InputError


def test_write_then_read_round_trips_through_json():
    doc = json.loads(json.dumps(wrap("edgekit.thing", 2, {"a": 1, "b": [1, 2]})))
    assert doc == {"schema": "edgekit.thing", "schema_version": 2,
                   "generated_by": f"edgekit {__version__}", "a": 1, "b": [1, 2]}
    assert unwrap(doc, "edgekit.thing", {2: None}) == {"a": 1, "b": [1, 2]}


def test_data_may_not_use_the_envelope_keys():
    with pytest.raises(ValueError, match="envelope keys"):
        wrap("edgekit.thing", 1, {"schema": "x"})


@pytest.mark.parametrize("obj,needle", [
    ({"schema": "edgekit.other", "schema_version": 1}, r"thing \(schema='edgekit.other'"),
    ({"schema_version": 1}, "not an edgekit thing"),
    ([1, 2], "expected a JSON object"),
    ({"_type": "edgekit.Other", "_version": 1, "_data": {}}, "not an edgekit thing"),
])
def test_unknown_document_types_are_refused(obj, needle):
    with pytest.raises(DocumentError, match=needle) as e:
        unwrap(obj, "edgekit.thing", {1: None}, where="x.json")
    assert isinstance(e.value, InputError) and str(e.value).startswith("x.json: ")


def test_an_old_version_is_upgraded_when_an_upgrade_is_given():
    old = {"schema": "edgekit.thing", "schema_version": 1, "generated_by": "edgekit 0.0.1",
           "size": 3}
    got = unwrap(old, "edgekit.thing", {1: lambda d: {"bytes": d["size"]}, 2: None})
    assert got == {"bytes": 3}


def test_an_old_version_without_an_upgrade_fails_with_who_wrote_it_and_what_to_do():
    old = {"schema": "edgekit.thing", "schema_version": 1, "generated_by": "edgekit 0.0.1"}
    with pytest.raises(DocumentError, match=r"thing schema_version 1 is not supported .*"
                                            r"written by edgekit 0\.0\.1\): re-run `make thing`"):
        unwrap(old, "edgekit.thing", {2: None}, rerun="re-run `make thing`")


def test_a_newer_version_asks_to_upgrade_edgekit():
    new = {"schema": "edgekit.thing", "schema_version": 7, "generated_by": "edgekit 9.0"}
    with pytest.raises(DocumentError, match=r"schema_version 7 .*written by edgekit 9\.0\): "
                                            r"upgrade edgekit"):
        unwrap(new, "edgekit.thing", {1: None, 2: None})
    with pytest.raises(DocumentError, match="schema_version True"):
        unwrap({**new, "schema_version": True}, "edgekit.thing", {1: None})


def test_the_nested_form_and_an_earlier_name_are_still_read():
    nested = {"_type": "edgekit.OldThing", "_version": 1, "_data": {"a": 1}}
    assert unwrap(nested, "edgekit.thing", {1: None}, aliases=("edgekit.OldThing",)) == {"a": 1}
    with pytest.raises(DocumentError, match="schema_version 1"):
        unwrap(nested, "edgekit.thing", {2: None}, aliases=("edgekit.OldThing",))


def test_the_current_version_must_be_the_highest_key():
    with pytest.raises(ValueError, match="current version 2 must map to None"):
        unwrap(wrap("edgekit.thing", 1, {}), "edgekit.thing", {1: None, 2: lambda d: d})


def test_compression_record_round_trips_and_reads_the_nested_form(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"weights")
    write_record(model, {"technique": "clustering", "clusters": 16})
    doc = json.loads(record_path(model).read_text())
    assert (doc["schema"], doc["schema_version"]) == ("edgekit.compression_record", 1)
    data = read_record(model)
    assert data["clusters"] == 16 and "schema" not in data
    assert read_record(model, sha256=data["model_sha256"]) == data
    nested = {"_type": "edgekit.CompressionRecord", "_version": 1, "_data": data}
    record_path(model).write_text(json.dumps(nested))
    assert read_record(model) == data
    record_path(model).write_text(json.dumps({**doc, "schema_version": 5}))
    with pytest.raises(DocumentError, match=r"m\.compression\.json: .*upgrade edgekit"):
        read_record(model)

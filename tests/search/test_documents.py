"""The search documents in the one envelope (``edgekit.envelope``): the recipe, ``study.json``,
``finalists.json``, the advice and the optimize result are written by ``wrap`` and read by
``unwrap``: each round-trips, another type is refused, a newer version asks to upgrade edgekit,
and files written before ``generated_by`` was added to them still read."""

from __future__ import annotations

import json

import pytest

from edgekit.cli.main import main
from edgekit.envelope import ENVELOPE_KEYS, generator, unwrap
from edgekit.errors import DocumentError, InputError
from edgekit.recipe import RECIPE_SCHEMA, Recipe, load_recipe, save_recipe
from edgekit.search import finalists
from edgekit.search.advisor import ADVICE_SCHEMA, ADVICE_VERSION, Advice
from edgekit.search.finalists import FINALISTS_SCHEMA, Finalist, SideBySide
from edgekit.search.settings import (
    STUDY_FILE,
    STUDY_SCHEMA,
    STUDY_VERSION,
    Constraints,
    Settings,
    read_settings,
)
from edgekit.search.space import SearchSpace
from edgekit.search.study import OPTIMIZE_SCHEMA, OPTIMIZE_VERSION, Study


def _settings() -> Settings:
    return Settings(model="m.keras", model_sha256="0" * 64, device="local",
                    calibration="c.npz", eval=None, objective="latency",
                    constraints=Constraints(max_accuracy_drop=2.0, max_size_bytes=1000),
                    budget=4, storage="sqlite:///x.db", study_name="s",
                    space=SearchSpace(), connect={"ssh_config": None})


def _side() -> SideBySide:
    return SideBySide(3, 10, [Finalist("tflite-int8", None, "a" * 64, 1234, True, 1.5,
                                       [1.4, 1.5, 1.6], [2.0, 2.1, 2.2]),
                              Finalist("tflite-fp32", "baseline", None, None, True, 3.0,
                                       error="artifact gone")],
                      reference="tflite-fp32", chosen="tflite-int8", search_pick="tflite-int8",
                      lines=["one line"])


def _head(doc: dict, schema: str, version: int) -> None:
    """The envelope keys lead the document, as they always did."""
    assert list(doc)[:3] == list(ENVELOPE_KEYS)
    assert (doc["schema"], doc["schema_version"], doc["generated_by"]) == (
        schema, version, generator())


# -- the recipe ------------------------------------------------------------------------------


def test_recipe_round_trips_through_its_file(tmp_path):
    r = Recipe("onnx-int8-u8s8", "onnx-int8", {"unsigned_activations": True}, threads=2,
               advice=("x",))
    path = save_recipe(r, tmp_path / "best.recipe.json")
    _head(json.loads(path.read_text()), RECIPE_SCHEMA, 1)
    assert load_recipe(path) == r


@pytest.mark.parametrize("change, message", [
    ({"schema": "edgekit.manifest"}, "not an edgekit recipe"),
    ({"schema_version": 2}, "schema_version 2 is not supported.*upgrade edgekit"),
    ({"schema_version": 0}, "schema_version 0 is not supported.*re-run `edgekit optimize`"),
])
def test_recipe_of_another_type_or_version_is_refused(tmp_path, change, message):
    path = tmp_path / "r.recipe.json"
    path.write_text(json.dumps({**Recipe("tflite-fp32", "tflite-fp32").to_dict(), **change}))
    with pytest.raises(DocumentError, match=message) as e:
        load_recipe(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_recipe_that_is_not_an_object_is_refused():
    with pytest.raises(InputError, match="not an edgekit recipe.*got list"):
        Recipe.from_dict([1, 2])


def test_recipe_written_without_generated_by_still_reads(tmp_path):
    old = Recipe("tflite-int8", "tflite-int8", threads=1).to_dict()
    del old["generated_by"]
    assert Recipe.from_dict(old) == Recipe("tflite-int8", "tflite-int8", threads=1)


# -- study.json (what `edgekit optimize --resume` reads) ------------------------------------


def test_study_settings_round_trip_through_study_json(tmp_path):
    s = _settings()
    doc = s.to_dict()
    _head(doc, STUDY_SCHEMA, STUDY_VERSION)
    (tmp_path / STUDY_FILE).write_text(json.dumps(doc))
    assert read_settings(tmp_path) == s


def test_study_json_of_an_earlier_edgekit_still_reads(tmp_path):
    """A study.json written before ``generated_by`` (an interrupted search to resume)."""
    doc = {k: v for k, v in _settings().to_dict().items() if k != "generated_by"}
    doc["space"].pop("tflite_int8_per_tensor")  # older still: before that dimension existed
    (tmp_path / STUDY_FILE).write_text(json.dumps(doc))
    s = read_settings(tmp_path)
    assert s.model == "m.keras" and s.space.tflite_int8_per_tensor is False


@pytest.mark.parametrize("change, message", [
    ({"schema": "edgekit.recipe"}, "not an edgekit study"),
    ({"schema_version": 7}, "schema_version 7 is not supported.*upgrade edgekit"),
    ({"constraints": None}, "not a valid edgekit study"),
])
def test_study_json_of_another_type_or_version_is_refused(tmp_path, change, message):
    (tmp_path / STUDY_FILE).write_text(json.dumps({**_settings().to_dict(), **change}))
    with pytest.raises(InputError, match=message) as e:
        read_settings(tmp_path)
    assert str(e.value).startswith(str(tmp_path / STUDY_FILE))


def test_cli_resume_of_a_newer_study_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / STUDY_FILE).write_text(json.dumps({**_settings().to_dict(),
                                                   "schema_version": 2}))
    code = main(["optimize", "--resume", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "upgrade edgekit" in err and len(err.strip().splitlines()) == 1, err


# -- finalists.json ----------------------------------------------------------------------------


def test_finalists_round_trip_through_their_file(tmp_path):
    side = _side()
    path = finalists.write(tmp_path, side)
    _head(json.loads(path.read_text()), FINALISTS_SCHEMA, 1)
    assert finalists.read(tmp_path) == side
    assert finalists.read(tmp_path / "none") is None


def test_finalists_of_another_type_or_version_are_refused(tmp_path):
    path = finalists.write(tmp_path, _side())
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "schema_version": 2}))
    with pytest.raises(DocumentError, match="upgrade edgekit"):
        finalists.read(tmp_path)
    path.write_text(json.dumps({**doc, "schema": "edgekit.study"}))
    with pytest.raises(DocumentError, match="not an edgekit finalists"):
        finalists.read(tmp_path)
    path.write_text("{")
    with pytest.raises(InputError, match="cannot read"):
        finalists.read(tmp_path)


# -- the documents --json prints: the advice and the optimize result --------------------------


def test_advice_document_round_trips_through_the_envelope():
    advice = Advice("m.keras", "local", "latency", 1.0, [], None, ["no recipe ran"],
                    out="advise-m", settings={"runs": 5})
    doc = json.loads(json.dumps(advice.to_dict()))
    _head(doc, ADVICE_SCHEMA, ADVICE_VERSION)
    data = unwrap(doc, ADVICE_SCHEMA, {ADVICE_VERSION: None})
    assert data["model"] == "m.keras" and data["text"] == ["no recipe ran"]
    with pytest.raises(DocumentError, match="upgrade edgekit"):
        unwrap({**doc, "schema_version": 2}, ADVICE_SCHEMA, {ADVICE_VERSION: None})
    with pytest.raises(DocumentError, match="not an edgekit advice"):
        unwrap(doc, OPTIMIZE_SCHEMA, {OPTIMIZE_VERSION: None}, label="advice")


def test_optimize_document_round_trips_through_the_envelope(tmp_path):
    recipe = Recipe("tflite-int8", "tflite-int8")
    study = Study(tmp_path, _settings(), [], [], [], None, recipe, ["why"], finalists=_side())
    doc = json.loads(json.dumps(study.to_dict()))
    _head(doc, OPTIMIZE_SCHEMA, OPTIMIZE_VERSION)
    data = unwrap(doc, OPTIMIZE_SCHEMA, {OPTIMIZE_VERSION: None})
    # The documents inside are themselves enveloped, and read back.
    assert Settings.from_dict(data["settings"]) == _settings()
    assert Recipe.from_dict(data["recipe"]) == recipe
    assert SideBySide.from_dict(data["finalists"]) == _side()
    with pytest.raises(DocumentError, match="not an edgekit optimize"):
        unwrap({**doc, "schema": "edgekit.advice"}, OPTIMIZE_SCHEMA, {OPTIMIZE_VERSION: None})


def test_study_keeps_the_device_proxy_settings():
    """A study measured through jump hosts or a ProxyCommand resumes through the same ones;
    a study saved before ``proxy_command`` existed still reads."""
    from dataclasses import replace

    from edgekit.devices.spec import DeviceSpec
    from edgekit.search.loop import _spec_dict

    spec = DeviceSpec(name="pi", host="10.0.0.5", user="pi", port=2222, keys=("/k",),
                      proxy_jump="gw1,bob@gw2:2200")
    via_command = replace(spec, proxy_jump=None, proxy_command="ssh -W 10.0.0.5:2222 gw")
    for s in (spec, via_command):
        settings = replace(_settings(), device="pi", device_spec=_spec_dict(s))
        back = Settings.from_dict(json.loads(json.dumps(settings.to_dict())))
        assert back.spec() == s
    old = _spec_dict(spec)
    del old["proxy_command"]
    assert replace(_settings(), device_spec=old).spec() == spec

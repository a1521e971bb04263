"""Architecture scaling in ``optimize``: a tiny keras.applications MobileNetV2 (alpha 0.35,
32×32) gets a smaller student (alpha 0.25) distilled from it for one epoch, converted, measured
on this machine, and its recipe replayed. Real training, conversion and device runs.

The other families (MobileNetV3 Small/Large, EfficientNet B0-B7 and V2 B0-B3) and backbones
(nested, flat, in a Sequential) are tested piece by piece on tiny ``weights=None`` models saved
to ``.keras`` and reloaded: detection, candidates, the student's input/output and head, seeded
rebuilds, the source's preprocessing carried over, and the reasons a model is refused. (A
MobileNetV3 student distilled and replayed costs about two minutes here; the slow test above
covers that path for MobileNetV2, and it is the same code.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.recipe import load_recipe
from edgekit.search.loop import optimize
from edgekit.search.space import SearchSpace
from edgekit.training.replay import replay
from edgekit.training.students import candidates, detect


@pytest.fixture(scope="module")
def mnv2(tmp_path_factory):
    """An untrained-ish MobileNetV2 0.35 at 32×32 over 10 classes, with tiny data sets."""
    import keras

    folder = tmp_path_factory.mktemp("mnv2")
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                           classes=10)
    rng = np.random.default_rng(0)
    x = rng.random((96, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, 96)
    model.save(folder / "mnv2.keras")
    np.savez(folder / "train.npz", x=x[:64], y=y[:64])
    np.savez(folder / "eval.npz", x=x[64:], y=y[64:])
    np.savez(folder / "calib.npz", x=x[:16])
    return folder


@pytest.mark.slow
def test_student_is_estimated_built_measured_and_replayed(mnv2, tmp_path):
    lines = []
    space = SearchSpace(targets=("tflite-fp32",), threads=(1,), xnnpack=(True,),
                        arch_scaling=True, arch_alphas=(0.25,), arch_resolution_scales=(1.0,),
                        arch_epochs=1, prune_ratios=(0.0,))  # --train alone would also prune
    s = optimize(mnv2 / "mnv2.keras", calibration=mnv2 / "calib.npz", eval=mnv2 / "eval.npz",
                 train=mnv2 / "train.npz", budget=2, runs=3, space=space, out=tmp_path / "opt",
                 constraints=None, progress=lines.append)
    # The cost estimate is told before the first trial runs.
    first_trial = next(i for i, m in enumerate(lines) if m.startswith("trial "))
    est = [m for m in lines[:first_trial] if m.startswith("estimate:")]
    assert len(est) == 2 and "mobilenetv2-a0.25-r32" in est[0] and "ms/step measured" in est[0]
    doc = json.loads((tmp_path / "opt" / "arch_estimate.json").read_text())
    assert doc["seconds"] > 0 and doc["students"]["mobilenetv2-a0.25-r32"]["steps_per_epoch"] == 2
    rows = {t.name: t for t in s.trials}
    base, student = rows["tflite-fp32"], rows["tflite-fp32-mobilenetv2-a0.25-r32-e1"]
    assert student.role == "arch-probe" and student.state == "complete", student.error
    assert student.recipe.student["alpha"] == 0.25 and student.recipe.student["epochs"] == 1
    assert student.bytes < 0.8 * base.bytes and student.p50_ms > 0
    assert student.accuracy_source == "device"
    assert student.source_accuracy == base.source_accuracy  # drop vs the user's model
    # Replayed from the recipe: distilled again (seeded, deterministic ops), the same bytes.
    from edgekit.recipe import Recipe

    recipe = Recipe.from_dict(json.loads(json.dumps(student.recipe.to_dict())))
    assert recipe == student.recipe
    rep = replay(recipe, mnv2 / "mnv2.keras", train=mnv2 / "train.npz", out=tmp_path / "replay")
    assert rep.artifact.sha256 == student.sha256
    if s.best is not None:
        assert load_recipe(tmp_path / "opt" / "best.recipe.json").name == s.best.name


def test_detection_and_candidates(mnv2):
    import keras

    from edgekit.errors import InputError

    fam = detect(keras.models.load_model(mnv2 / "mnv2.keras"))
    assert (fam.family, fam.alpha, fam.input_shape, fam.classes) == ("mobilenetv2", 0.35,
                                                                     (32, 32, 3), 10)
    assert fam.layout == "applications"  # students built as the first version built them
    assert candidates(fam, (0.25, 0.35, 0.5), (1.0, 0.5)) == ("mobilenetv2-a0.25-r32",)
    plain = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    assert detect(plain) is None
    plain.save(mnv2 / "plain.keras")
    with pytest.raises(InputError, match="arch scaling: the model is not a keras.applications"):
        optimize(mnv2 / "plain.keras", calibration=mnv2 / "calib.npz", train=mnv2 / "train.npz",
                 space=SearchSpace(arch_scaling=True), out=mnv2 / "o", budget=1)


# --- other families and backbones: the pieces, on tiny models -----------------------------------

def _reloaded(model, path):
    """``model`` saved to ``path`` (.keras) and loaded back, as ``optimize`` reads it."""
    import keras

    model.save(path)
    keras.backend.clear_session()
    return keras.models.load_model(path)


def _student(fam, name, seed=0):
    """The student ``name`` of ``fam``, built as ``train_student`` builds it."""
    import keras

    from edgekit.training.students import build_student, parse_student

    keras.utils.set_random_seed(seed)
    return build_student(fam, parse_student(name))


@pytest.mark.parametrize("kind", ["small", "large-minimalistic"])
def test_mobilenetv3_is_detected_after_reload(kind, tmp_path):
    import keras

    if kind == "small":
        model = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), alpha=0.35,
                                                    weights=None, classes=5)
    else:
        model = keras.applications.MobileNetV3Large(input_shape=(32, 32, 3), alpha=0.5,
                                                    minimalistic=True, weights=None, classes=5,
                                                    include_preprocessing=False)
    fam = detect(_reloaded(model, tmp_path / "v3.keras"))
    small = kind == "small"
    assert (fam.family, fam.variant, fam.minimalistic, fam.alpha) == (
        "mobilenetv3", "small" if small else "large", not small, 0.35 if small else 0.5)
    assert (fam.input_shape, fam.resolution, fam.classes) == ((32, 32, 3), (32, 32), 5)
    # Its own preprocessing (include_preprocessing) is what the student is fed through.
    assert [type(x).__name__ for x in fam.pre] == (["Rescaling"] if small else [])
    assert [type(x).__name__ for x in fam.head][-3:] == ["Conv2D", "Flatten", "Activation"]
    names = candidates(fam, (0.25, 0.35, 0.5, 0.75), (1.0, 0.5))
    assert names == (("mobilenetv3small-a0.25-r32",) if small else
                     ("mobilenetv3large-min-a0.35-r32", "mobilenetv3large-min-a0.25-r32"))
    student = _student(fam, names[0])
    assert student.input_shape == (None, 32, 32, 3) and student.output_shape == (None, 5)
    assert student.count_params() < model.count_params()
    if small:
        rescale = student.get_layer(fam.pre[0].name)
        assert (rescale.scale, rescale.offset) == (fam.pre[0].scale, fam.pre[0].offset)


def test_efficientnet_is_detected_after_reload_and_scaled_by_variant(tmp_path):
    import keras

    b1 = _reloaded(keras.applications.EfficientNetB1(input_shape=(64, 64, 3), weights=None,
                                                     classes=3), tmp_path / "b1.keras")
    fam = detect(b1)
    assert (fam.family, fam.variant, fam.resolution, fam.classes) == ("efficientnet", "b1",
                                                                      (64, 64), 3)
    assert [type(x).__name__ for x in fam.pre] == ["Rescaling", "Normalization"]
    assert [x.name for x in fam.head] == ["avg_pool", "top_dropout", "predictions"]
    assert candidates(fam, (0.5,), (1.0, 0.5)) == ("efficientnetb0-r64", "efficientnetb1-r32",
                                                   "efficientnetb0-r32")
    # The source's Normalization (adapted, or ImageNet statistics) is carried over as it is.
    norm = b1.get_layer(fam.pre[1].name)
    norm.set_weights([np.full_like(w, 0.5 + i) for i, w in enumerate(norm.get_weights())])
    student = _student(fam, "efficientnetb0-r32")
    assert student.input_shape == (None, 64, 64, 3) and student.output_shape == (None, 3)
    assert student.get_layer("student_resize").get_config()["height"] == 32
    x = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32) * 255
    seen = [keras.Model(m.inputs, m.get_layer(norm.name).output)(x) for m in (b1, student)]
    np.testing.assert_allclose(*seen, rtol=1e-6)
    assert student.count_params() < b1.count_params()


def test_efficientnetv2_is_detected():
    import keras

    fam = detect(keras.applications.EfficientNetV2B1(input_shape=(64, 64, 3), weights=None,
                                                     classes=4))
    assert (fam.family, fam.variant, fam.resolution) == ("efficientnetv2", "b1", (64, 64))
    assert candidates(fam, (), (1.0,)) == ("efficientnetv2b0-r64",)
    student = _student(fam, "efficientnetv2b0-r64")
    assert student.input_shape == (None, 64, 64, 3) and student.output_shape == (None, 4)


def test_backbone_nested_keeps_the_users_head(tmp_path):
    import keras

    base = keras.applications.MobileNetV2(input_shape=(48, 48, 3), alpha=0.5,
                                          include_top=False, weights=None)
    inp = keras.Input((48, 48, 3), name="photo")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(base(inp))
    x = keras.layers.Dropout(0.3, name="drop")(x)
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax", name="cls")(x))
    fam = detect(_reloaded(model, tmp_path / "nested.keras"))
    assert (fam.family, fam.alpha, fam.layout, fam.resolution) == ("mobilenetv2", 0.5,
                                                                   "backbone", (48, 48))
    assert [x.name for x in fam.head] == ["pool", "drop", "cls"] and fam.pre == ()
    names = candidates(fam, (0.35,), (1.0, 0.75))
    assert names == ("mobilenetv2-a0.35-r48", "mobilenetv2-a0.5-r32", "mobilenetv2-a0.35-r32")
    student = _student(fam, "mobilenetv2-a0.35-r32")
    assert student.input_shape == (None, 48, 48, 3) and student.output_shape == (None, 4)
    assert student.inputs[0].name == student.layers[0].name == "photo"
    assert [x.name for x in student.layers[-3:]] == ["pool", "drop", "cls"]
    assert student.get_layer("drop").rate == 0.3
    assert student.get_layer("cls").get_config()["activation"] == "softmax"


def test_backbone_flat(tmp_path):
    import keras

    base = keras.applications.MobileNetV3Small(input_shape=(40, 40, 3), alpha=0.75,
                                               include_top=False, weights=None)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(base.output)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    flat = keras.Model(base.input, keras.layers.Dense(3, name="out")(x))
    fam = detect(_reloaded(flat, tmp_path / "flat.keras"))
    assert (fam.family, fam.variant, fam.alpha, fam.resolution) == ("mobilenetv3", "small",
                                                                    0.75, (40, 40))
    assert [x.name for x in fam.head] == ["gap", "hidden", "out"]
    student = _student(fam, "mobilenetv3small-a0.5-r32")
    assert student.input_shape == (None, 40, 40, 3) and student.output_shape == (None, 3)
    assert student.get_layer("hidden").units == 16


def test_backbone_in_a_sequential(tmp_path):
    """A backbone built for any size, inside a Sequential after the user's own scaling."""
    import keras

    base = keras.applications.MobileNetV2(input_shape=(None, None, 3), alpha=0.35,
                                          include_top=False, weights=None, pooling="avg")
    seq = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Rescaling(1 / 255, name="u8"),
                            base, keras.layers.Dense(7, name="out")])
    fam = detect(_reloaded(seq, tmp_path / "seq.keras"))
    assert (fam.family, fam.resolution) == ("mobilenetv2", (64, 64))
    assert [x.name for x in fam.pre] == ["u8"] and [x.name for x in fam.head][-1] == "out"
    student = _student(fam, "mobilenetv2-a0.35-r48")
    assert student.input_shape == (None, 64, 64, 3) and student.output_shape == (None, 7)
    assert [x.name for x in student.layers[1:3]] == ["u8", "student_resize"]


def test_student_rebuilt_from_its_dict_is_deterministic():
    import keras

    fam = detect(keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), alpha=0.5,
                                                     weights=None, classes=4))
    name = "mobilenetv3small-a0.35-r32"

    def weights(seed):
        keras.backend.clear_session()  # as train_student does: the same layer names too
        student = _student(fam, name, seed)
        return student.to_json(), student.get_weights()

    (json_a, a), (json_b, b), (_, c) = weights(0), weights(0), weights(1)
    assert json_a == json_b and len(a) == len(b)
    for i in (0, len(a) // 2, -2, -1):  # the first conv, a middle one, the head's Dense
        np.testing.assert_array_equal(a[i], b[i])
    assert not np.array_equal(a[0], c[0])


def test_student_names_and_recipe_documents_round_trip():
    from edgekit.errors import InputError
    from edgekit.recipe import Recipe
    from edgekit.training.students import parse_student, student_name

    cases = {"mobilenetv2-a0.35-r96": (0.35, 96, "mobilenetv2", "", False),
             "mobilenetv3small-a0.5-r64": (0.5, 64, "mobilenetv3", "small", False),
             "mobilenetv3large-min-a0.75-r160": (0.75, 160, "mobilenetv3", "large", True),
             "efficientnetb0-r192": (1.0, 192, "efficientnet", "b0", False),
             "efficientnetv2b3-r224": (1.0, 224, "efficientnetv2", "b3", False)}
    for name, args in cases.items():
        assert student_name(*args) == name
        student = parse_student(name)
        assert student["family"] == args[2] and student["resolution"] == args[1]
        assert student.get("variant", "") == args[3]
        doc = Recipe(name, "tflite-fp32", student={**student, "epochs": 1, "seed": 0}).to_dict()
        assert Recipe.from_dict(json.loads(json.dumps(doc))).student == doc["student"]
    # A recipe from the first version (family + alpha, no variant) still reads.
    old = {"family": "mobilenetv2", "alpha": 0.25, "resolution": 32, "epochs": 1,
           "learning_rate": 0.001, "temperature": 4.0, "kd_alpha": 0.7, "seed": 0, "train": None}
    doc = Recipe("old", "tflite-fp32", student=old).to_dict()
    assert Recipe.from_dict(doc).student == old
    bad = Recipe("bad", "tflite-fp32", student={"family": "efficientnet", "variant": "b9",
                                                 "resolution": 64, "epochs": 1}).to_dict()
    with pytest.raises(InputError, match="not a valid recipe at student"):
        Recipe.from_dict(bad)
    for name in ("efficientnetb0-a0.5-r64", "mobilenetv3small-r64", "resnet50-a1-r224"):
        with pytest.raises(InputError, match="is not a student"):
            parse_student(name)


def test_unscalable_models_are_refused_with_the_reason():
    import keras

    from edgekit.errors import InputError
    from edgekit.training.students import recognise

    plain = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    with pytest.raises(InputError, match="not a keras.applications MobileNetV2/V3/EfficientNet"):
        recognise(plain, "plain.keras")
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35,
                                          include_top=False, weights=None)
    feats = keras.layers.GlobalAveragePooling2D()(base.output)
    both = keras.layers.Concatenate()([keras.layers.Dense(2)(feats), keras.layers.Dense(3)(feats)])
    branched = keras.Model(base.input, both)
    assert detect(branched) is None
    with pytest.raises(InputError, match="not a chain of single-input layers.*2 inputs"):
        recognise(branched, "branched.keras")
    extra = keras.Input((4,))
    two = keras.Model([base.input, extra], keras.layers.Concatenate()([feats, extra]))
    with pytest.raises(InputError, match="2 inputs"):
        recognise(two, "two.keras")

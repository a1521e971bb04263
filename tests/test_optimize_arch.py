"""Architecture scaling in ``optimize``: a tiny keras.applications MobileNetV2 (alpha 0.35,
32×32) gets a smaller student (alpha 0.25) distilled from it for one epoch, converted, measured
on this machine, and its recipe replayed. Real training, conversion and device runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.optimizer import SearchSpace, optimize
from edgekit.optimizer_arch import candidates, detect
from edgekit.recipe import load_recipe, replay


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
    assert candidates(fam, (0.25, 0.35, 0.5), (1.0, 0.5)) == ("mobilenetv2-a0.25-r32",)
    plain = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    assert detect(plain) is None
    plain.save(mnv2 / "plain.keras")
    with pytest.raises(InputError, match="arch scaling: the model is not a keras.applications"):
        optimize(mnv2 / "plain.keras", calibration=mnv2 / "calib.npz", train=mnv2 / "train.npz",
                 space=SearchSpace(arch_scaling=True), out=mnv2 / "o", budget=1)

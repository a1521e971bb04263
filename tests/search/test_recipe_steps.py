"""Recipe training steps are typed (PruneStep, StudentStep, CompressStep) with their defaults in
one place, and the document on disk keeps its shape: a recipe written before the steps were
typed reads, writes back the same JSON and has the same build key."""

from __future__ import annotations

import json

import pytest

from converters.distill import DistillSpec, FitSpec
from edgekit.recipe import CompressStep, FileRef, PruneStep, Recipe, StudentStep, check_compress

SHA = "a" * 64
TRAIN = {"path": "train.npz", "sha256": SHA}
# As the search wrote them before the steps were typed (plain dicts).
OLD_PRUNE = {"ratio": 0.5, "criterion": "l2", "epochs": 3, "learning_rate": 0.0003,
             "distill": True, "seed": 0, "train": TRAIN, "temperature": 2.0, "alpha": 0.9}
OLD_STUDENT = {"family": "mobilenetv3", "variant": "small", "minimalistic": False, "alpha": 0.5,
               "resolution": 64, "epochs": 1, "learning_rate": 0.001, "temperature": 4.0,
               "kd_alpha": 0.7, "seed": 0, "train": TRAIN}
OLD_COMPRESS = {"sparsity": 0.8, "clusters": 16, "epochs": 1, "learning_rate": 0.0003,
                "seed": 0, "train": TRAIN}


@pytest.mark.parametrize("field,doc,cls", [("prune", OLD_PRUNE, PruneStep),
                                           ("student", OLD_STUDENT, StudentStep),
                                           ("compress", OLD_COMPRESS, CompressStep)])
def test_an_old_recipe_document_reads_typed_and_writes_back_the_same(field, doc, cls):
    old = {**Recipe("r", "tflite-fp32").to_dict(), field: doc}
    recipe = Recipe.from_dict(json.loads(json.dumps(old)))
    step = getattr(recipe, field)
    assert isinstance(step, cls) and step.train == FileRef(SHA, "train.npz")
    assert recipe.to_dict()[field] == doc
    assert step == doc and step["epochs"] == doc["epochs"]  # reads like its document too
    # The build key hashes the document: the same as a recipe given the plain dict.
    assert recipe.build_key(SHA, None) == Recipe("r", "tflite-fp32", **{field: doc}).build_key(
        SHA, None)


def test_step_defaults_come_from_the_specs_that_run_them():
    prune = PruneStep(0.25)
    assert (prune.temperature, prune.alpha) == (DistillSpec().temperature, DistillSpec().alpha)
    assert prune.learning_rate == FitSpec().learning_rate and prune.criterion == "l1"
    assert "temperature" not in prune.to_dict()  # only written when it distills
    student = StudentStep("mobilenetv2", 96, alpha=0.35)
    assert (student.temperature, student.kd_alpha) == (DistillSpec().temperature,
                                                       DistillSpec().alpha)
    assert student.architecture == {"family": "mobilenetv2", "alpha": 0.35, "resolution": 96}
    compress = CompressStep(sparsity=0.5)
    assert check_compress(compress.to_dict()) == compress.to_dict()

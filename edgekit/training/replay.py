"""Replaying a recipe: its training steps (prune, student, compress), then the conversion.

``edgekit convert MODEL --recipe FILE`` and the search's build cache both build a recipe here,
so a recipe the search measured replays to the same artifact bytes: every step is seeded and
runs with TensorFlow's deterministic ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from converters.options import ConvertOptions
from edgekit.errors import InputError
from edgekit.recipe import PruneStep, Recipe


@dataclass
class Replay:
    """What ``replay`` built and whether it reproduced the recipe's artifact.

    Attributes:
        artifact: the built Artifact.
        expected_sha256: the recipe's artifact sha256 (None: the recipe records none).
        reproduced: the bytes are equal to the recipe's (None when there is nothing to compare).
        notes: why a difference may be expected (other source or calibration data).
    """

    artifact: object
    expected_sha256: str | None
    reproduced: bool | None
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"artifact": self.artifact.to_dict(), "expected_sha256": self.expected_sha256,
                "reproduced": self.reproduced, "notes": list(self.notes)}


def prune_source(model, prune: PruneStep, train, path, callbacks=None) -> Path:
    """Write ``model`` pruned and fine-tuned as ``prune`` (a ``PruneStep`` or its document)
    says to ``path`` (``.keras``).

    Seeded, with TensorFlow's deterministic ops, so the same inputs give the same weights (and
    the artifact converted from them the same bytes).

    Args:
        callbacks: called with the pruned model before its fine-tune, returns Keras callbacks
            for it (``optimize`` reports each epoch's accuracy to its pruner this way; they
            only read the model, so the weights are the same with or without them).

    Raises:
        InputError: no training data for a fine-tune, or a model that cannot be pruned.
        optuna.TrialPruned: a callback stopped the fine-tune (nothing is written).
    """
    import keras
    import tensorflow as tf

    from edgekit.train_api import prune as prune_model

    prune = PruneStep.of(prune)
    if train is None and (prune.epochs or prune.distill):
        raise InputError("this recipe prunes and fine-tunes the model: pass the training data "
                         "(--train)" + (f", e.g. {prune.train.path}"
                                        if prune.train and prune.train.path else ""))
    keras.utils.set_random_seed(int(prune.seed))
    tf.config.experimental.enable_op_determinism()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if callbacks is not None and int(prune.epochs):
        return _prune_and_finetune(model, prune, train, path, callbacks)
    prune_model(model, float(prune.ratio), criterion=prune.criterion, train=train,
                epochs=int(prune.epochs), distill=bool(prune.distill),
                temperature=float(prune.temperature), alpha=float(prune.alpha),
                learning_rate=float(prune.learning_rate), out=path)
    return path


def _prune_and_finetune(model, prune: PruneStep, train, path: Path, callbacks) -> Path:
    """``train_api.prune``'s steps in its order (load, data, plan + apply, fit), with callbacks
    on the fit, which its API does not take; the same seed gives the same weights."""
    from converters.distill import DistillSpec, FitSpec, fit
    from edgekit.train_api import load_keras_model, load_training_data, save_model
    from edgekit.train_api import prune as prune_model

    source = load_keras_model(model)
    x, y = load_training_data(train, source)
    pruned = prune_model(source, float(prune.ratio), criterion=prune.criterion, train=(x, y),
                         epochs=0)
    distill = bool(prune.distill)
    fit(pruned, x, y, FitSpec(epochs=int(prune.epochs), batch_size=32,
                              learning_rate=float(prune.learning_rate)),
        teacher=source if distill else None,
        distill_spec=DistillSpec(float(prune.temperature), float(prune.alpha))
        if distill else None,
        callbacks=list(callbacks(pruned)))
    return save_model(pruned, path)  # weights only, as train_api writes


def _note_other_train(notes: list | None, train, step, what: str) -> None:
    """A note in ``notes`` (None: none wanted) when ``train`` is not the data a training step
    (its ``train`` FileRef) used."""
    from edgekit.fsutil import sha256_tree

    ref = step.train.sha256 if step.train else None
    if notes is not None and train is not None and ref and sha256_tree(train) != ref:
        notes.append(f"training data {train} is not the data {what} (sha256 differs): the "
                     "bytes will differ")


class CompressRefused(InputError):
    """A recipe's compress step refused the model (e.g. nothing to cluster)."""


def trained_source(recipe: Recipe, model, train, folder, *, callbacks=None, notes=None):
    """What ``recipe`` converts: ``model`` after the recipe's training steps (prune or student,
    then compress), each model written under ``folder``; ``model`` itself when it has none.

    Args:
        callbacks: ``prune_source``'s callbacks for the pruning fine-tune.
        notes: a list to which a note is added when ``train`` is not the data a step used.

    Raises:
        InputError: no training data, or a model a step cannot take; CompressRefused when it
            is the compress step that refuses.
    """
    folder = Path(folder)
    source = model
    if recipe.prune:
        _note_other_train(notes, train, recipe.prune, "the recipe was fine-tuned on")
        stem = Path(model).stem if Path(model).is_file() else Path(model).name
        source = prune_source(model, recipe.prune, train, folder / "pruned" / f"{stem}.keras",
                              callbacks)
    if recipe.student:
        from edgekit.training.students import train_student

        _note_other_train(notes, train, recipe.student, "the student was distilled on")
        source = train_student(model, recipe.student, train, folder / "student" /
                               "student.keras")
    if recipe.compress:
        from edgekit.training.compress import compress_source

        if not any(n.startswith(f"training data {train} ") for n in notes or ()):
            _note_other_train(notes, train, recipe.compress, "the recipe was compressed on")
        stem = Path(source).stem if Path(source).is_file() else Path(source).name
        try:
            source = compress_source(source, recipe.compress, train,
                                     folder / "compressed" / f"{stem}.keras")
        except InputError as e:
            raise CompressRefused(str(e)) from e
    return source


def replay(recipe: Recipe, model, *, calibration=None, eval=None, out="build",
           base: ConvertOptions | None = None, train=None) -> Replay:
    """Build ``recipe`` from ``model``: the same target and options, verified and gated as
    ``convert`` does.

    Args:
        recipe: a Recipe (``load_recipe``).
        model: the source model; the recipe's own hash tells whether it is the same one.
        calibration: calibration data; default: the path the recipe records, if it exists.
        eval: evaluation data for the fidelity check (does not change the bytes).
        out: output folder.
        base: options the recipe's are applied over (e.g. ``input_shapes``).
        train: training data, for a recipe that fine-tunes (``recipe.prune``, ``student``,
            ``compress``).

    Returns:
        Replay: the artifact and whether its sha256 equals the recipe's.

    Raises:
        InputError: missing calibration data for a target that needs it, bad model or data.
        ConversionError: the build failed or missed the recipe's fidelity gate.
    """
    from converters.registry import get_target
    from edgekit.api import convert
    from edgekit.fsutil import sha256_tree

    notes = []
    info = get_target(recipe.target)
    if calibration is None and info.needs_calibration and recipe.calibration \
            and recipe.calibration.path and Path(recipe.calibration.path).exists():
        calibration = recipe.calibration.path
    if recipe.source is not None and Path(model).exists() \
            and sha256_tree(model) != recipe.source.sha256:
        notes.append(f"{model} is not the model the recipe was chosen for (sha256 differs): "
                     "the bytes will differ")
    if info.needs_calibration and calibration is not None and recipe.calibration is not None \
            and Path(calibration).exists() and sha256_tree(calibration) != recipe.calibration.sha256:
        notes.append(f"calibration data {calibration} is not the data the recipe was built with "
                     "(sha256 differs): the bytes will differ")
    source = trained_source(recipe, model, train, out, notes=notes)
    art = convert(source, [recipe.target], calibration=calibration, eval=eval, out=out,
                  options=recipe.options(base))[0]
    expected = (recipe.artifact or {}).get("sha256")
    reproduced = None if expected is None else art.sha256 == expected
    if reproduced is False and not notes:
        notes.append("same source and calibration data but other bytes: another edgekit or "
                     "converter version? (the manifest lists the tool versions)")
    return Replay(art, expected, reproduced, notes)


__all__ = ["CompressRefused", "Replay", "prune_source", "replay", "trained_source"]

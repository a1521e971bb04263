"""``Recipe``: one artifact to build and how to run it, as typed, versioned data.

``edgekit optimize`` writes the winner to ``best.recipe.json``; ``edgekit convert MODEL --recipe
FILE`` (``replay``) builds the same target with the same options from the same source and
calibration data, which gives the same artifact bytes (the recipe records the sha256 it expects,
and replay says whether it got it).

The document is a versioned envelope (``{"schema": "edgekit.recipe", "schema_version": 1, ...}``,
JSON Schema in ``edgekit/schemas/recipe.schema.json``): unknown schemas and newer versions are
refused with a hint, never half-read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from functools import lru_cache
from importlib import resources
from pathlib import Path

from converters.options import CalibrationMethod, ConvertOptions, OnnxQuantFormat
from edgekit.errors import InputError

log = logging.getLogger(__name__)

RECIPE_SCHEMA = "edgekit.recipe"
RECIPE_VERSION = 1
RECIPE_SUFFIX = ".recipe.json"
_TUPLE_FIELDS = ("float_nodes", "quantize_op_types")  # tuples in ConvertOptions, lists in JSON
TRAINING_STEPS = ("prune", "student", "compress")  # recipe fields that train a new model
_ENUM_FIELDS = {"calibration_method": CalibrationMethod, "onnx_quant_format": OnnxQuantFormat}


def options_to_json(options: ConvertOptions) -> dict:
    """The ``ConvertOptions`` fields that differ from the defaults, as plain JSON values."""
    defaults = ConvertOptions()
    out = {}
    for f in fields(ConvertOptions):
        v = getattr(options, f.name)
        if v == getattr(defaults, f.name):
            continue
        if isinstance(v, Enum):
            v = v.value
        elif isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, dict):
            v = {k: list(s) if isinstance(s, tuple) else s for k, s in v.items()}
        out[f.name] = v
    return out


def options_from_json(doc: dict, base: ConvertOptions | None = None) -> ConvertOptions:
    """``ConvertOptions`` from :func:`options_to_json`'s output (over ``base``, default values).

    Raises:
        InputError: an unknown option name or a value of the wrong kind.
    """
    known = {f.name for f in fields(ConvertOptions)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise InputError(f"recipe sets unknown conversion option(s) {unknown}; known: "
                         f"{sorted(known)} (a recipe from a newer edgekit?)")
    values = {}
    for name, v in doc.items():
        if name in _ENUM_FIELDS:
            enum = _ENUM_FIELDS[name]
            try:
                v = enum(v)
            except ValueError:
                raise InputError(f"recipe {name} {v!r} is not one of "
                                 f"{[m.value for m in enum]}") from None
        elif name in _TUPLE_FIELDS:
            v = tuple(v)
        elif name == "input_shapes":
            v = {k: tuple(s) for k, s in v.items()}
        values[name] = v
    return replace(base or ConvertOptions(), **values)


@dataclass(frozen=True)
class FileRef:
    """A file (or folder) a recipe was built from: where it was, and its content hash."""

    sha256: str
    path: str | None = None

    @classmethod
    def of(cls, path) -> FileRef:
        from edgekit.fsutil import sha256_tree

        return cls(sha256_tree(path), str(path))

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256}


@dataclass(frozen=True)
class Recipe:
    """One artifact to build and how to run it.

    Attributes:
        name: readable and unique per distinct recipe, e.g. ``onnx-int8-u8s8-rr-t2``.
        target: the registry target (``edgekit targets``).
        convert_options: ``ConvertOptions`` fields that differ from the defaults (JSON values).
        threads: runtime threads the recipe was measured with (and should run with).
        source / calibration: the model and calibration data it was built from (hashes).
        artifact: {sha256, bytes, file} of what the build produced, if built.
        measured: the device measurements that chose it (p50_ms, bytes, accuracy...).
        constraints / objective: what it was chosen under.
        advice: the plain-language reasons, naming measured numbers.
        prune: structured pruning applied to the source before converting, with its
            fine-tuning: {ratio, criterion, epochs, learning_rate, distill, temperature, alpha,
            seed, train: {path, sha256}}; None: the source as it is.
        xnnpack: TFLite runs it with LiteRT's default XNNPACK delegate (False: the built-in
            kernels were faster on the device it was chosen for). A runtime setting.
        ort_opt_level: ONNX Runtime's graph optimization level to run it with (one of
            ``edgekit.devices.device.ORT_OPT_LEVELS``). A runtime setting.
        student: a smaller model trained by distillation from the source, converted instead of
            it (``optimizer_arch``): {family, variant / minimalistic where the family has them,
            alpha, resolution, epochs, learning_rate, temperature, kd_alpha, seed, train:
            {path, sha256}}; None: the source itself.
        compress: magnitude sparsity and/or weight clustering of the source (after ``prune``
            or the student), fine-tuned (``edgekit.recipe_compress``): {sparsity, clusters,
            epochs, learning_rate, seed, train: {path, sha256}}; None: not compressed. Written
            to the document only when set, so recipes without it stay readable by an edgekit
            that predates it, and one with it is refused there (schema) rather than built
            uncompressed.

    Runtime settings do not change the artifact's bytes. In the document they sit in
    ``runtime`` next to ``threads`` and are written only when they differ from the runtimes'
    defaults (XNNPACK on, level "all"), so recipes measured at the defaults stay readable by
    an edgekit that predates them; one that needs a non-default setting is refused there
    (schema) rather than run with the wrong setting.
    """

    name: str
    target: str
    convert_options: dict = field(default_factory=dict)
    threads: int = 1
    source: FileRef | None = None
    calibration: FileRef | None = None
    artifact: dict | None = None
    measured: dict | None = None
    constraints: dict | None = None
    objective: str | None = None
    advice: tuple = ()
    prune: dict | None = None
    xnnpack: bool = True
    ort_opt_level: str = "all"
    student: dict | None = None
    compress: dict | None = None

    @property
    def trains(self) -> bool:
        """Converts a model it trains first (``TRAINING_STEPS``), not the source as it is."""
        return any(getattr(self, k) for k in TRAINING_STEPS)

    def options(self, base: ConvertOptions | None = None) -> ConvertOptions:
        """The typed ``ConvertOptions`` this recipe builds with."""
        return options_from_json(self.convert_options, base)

    def build_key(self, source_sha256: str, calibration_sha256: str | None) -> str:
        """Content address of the build: source + calibration + target + options + the
        training steps (prune, student, compress), not threads, which is a runtime setting,
        nor the measurements."""
        from edgekit import __version__

        doc = {"source": source_sha256, "calibration": calibration_sha256,
               "target": self.target, "options": self.convert_options, "edgekit": __version__}
        doc.update({k: getattr(self, k) for k in TRAINING_STEPS if getattr(self, k)})
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        from edgekit import __version__

        doc = {"schema": RECIPE_SCHEMA, "schema_version": RECIPE_VERSION,
               "generated_by": f"edgekit {__version__}", "name": self.name,
               "target": self.target, "convert_options": dict(self.convert_options),
               "runtime": self.runtime(),
               "source": self.source.to_dict() if self.source else None,
               "calibration": self.calibration.to_dict() if self.calibration else None,
               "artifact": self.artifact, "measured": self.measured,
               "constraints": self.constraints, "objective": self.objective,
               "advice": list(self.advice), "prune": self.prune, "student": self.student}
        if self.compress:
            doc["compress"] = self.compress
        return doc

    def runtime(self) -> dict:
        """The ``runtime`` object of the document: threads, and settings off their defaults."""
        out = {"threads": self.threads}
        if not self.xnnpack:
            out["xnnpack"] = False
        if self.ort_opt_level != "all":
            out["ort_opt_level"] = self.ort_opt_level
        return out

    @classmethod
    def from_dict(cls, doc: dict, where: str = "recipe") -> Recipe:
        """Read a recipe document, checking its schema and version.

        Raises:
            InputError: not a recipe, a newer version, or a document the schema rejects.
        """
        import jsonschema

        if not isinstance(doc, dict) or doc.get("schema") != RECIPE_SCHEMA:
            got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
            raise InputError(f"{where} is not an edgekit recipe (schema {got!r}, expected "
                             f"{RECIPE_SCHEMA!r}): pass the best.recipe.json that "
                             f"`edgekit optimize` wrote")
        version = doc.get("schema_version")
        if version != RECIPE_VERSION:
            hint = ("upgrade edgekit" if isinstance(version, int) and version > RECIPE_VERSION
                    else "re-run `edgekit optimize`")
            raise InputError(f"{where} has recipe schema_version {version!r}; this edgekit reads "
                             f"version {RECIPE_VERSION}: {hint}")
        if doc.get("compress") is not None:  # first: its messages say more than the schema's
            from edgekit.recipe_compress import check_compress

            check_compress(doc["compress"], where)
        try:
            _validator().validate(doc)
        except jsonschema.ValidationError as e:
            at = "/".join(str(p) for p in e.absolute_path) or "(top level)"
            raise InputError(f"{where} is not a valid recipe at {at}: {e.message}") from None
        from converters.registry import get_target

        get_target(doc["target"])  # UnknownTargetError (exit 2) names the known ones
        options_from_json(doc["convert_options"])  # unknown options: refused now, not at build

        def ref(d):
            return FileRef(d["sha256"], d.get("path")) if d else None

        rt = doc["runtime"]
        return cls(doc["name"], doc["target"], dict(doc["convert_options"]),
                   int(rt["threads"]), ref(doc.get("source")),
                   ref(doc.get("calibration")), doc.get("artifact"), doc.get("measured"),
                   doc.get("constraints"), doc.get("objective"), tuple(doc.get("advice") or ()),
                   doc.get("prune"), bool(rt.get("xnnpack", True)),
                   rt.get("ort_opt_level", "all"), doc.get("student"), doc.get("compress"))


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads(resources.files("edgekit").joinpath("schemas/recipe.schema.json")
                        .read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def save_recipe(recipe: Recipe, path) -> Path:
    """Write ``recipe`` atomically as JSON; returns the path."""
    from edgekit.fsutil import write_json_atomic

    path = Path(path)
    write_json_atomic(path, recipe.to_dict())
    return path


def load_recipe(path) -> Recipe:
    """Read a recipe file.

    Raises:
        InputError: a missing or unreadable file, or not a valid recipe (see ``from_dict``).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"recipe file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read recipe {path}: {e}") from None
    return Recipe.from_dict(doc, str(path))


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


def prune_source(model, prune: dict, train, path, callbacks=None) -> Path:
    """Write ``model`` pruned and fine-tuned as ``prune`` says to ``path`` (``.keras``).

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

    if train is None and (prune.get("epochs") or prune.get("distill")):
        raise InputError("this recipe prunes and fine-tunes the model: pass the training data "
                         "(--train)" + (f", e.g. {prune['train']['path']}"
                                        if (prune.get("train") or {}).get("path") else ""))
    keras.utils.set_random_seed(int(prune.get("seed", 0)))
    tf.config.experimental.enable_op_determinism()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if callbacks is not None and int(prune.get("epochs", 0)):
        return _prune_and_finetune(model, prune, train, path, callbacks)
    prune_model(model, float(prune["ratio"]), criterion=prune.get("criterion", "l1"),
                train=train, epochs=int(prune.get("epochs", 0)),
                distill=bool(prune.get("distill")), temperature=float(prune.get("temperature", 4)),
                alpha=float(prune.get("alpha", 0.7)),
                learning_rate=float(prune.get("learning_rate", 1e-3)), out=path)
    return path


def _prune_and_finetune(model, prune: dict, train, path: Path, callbacks) -> Path:
    """``train_api.prune``'s steps in its order (load, data, plan + apply, fit), with callbacks
    on the fit, which its API does not take; the same seed gives the same weights."""
    from converters.distill import DistillSpec, FitSpec, fit
    from edgekit.train_api import _save, load_keras_model, load_training_data
    from edgekit.train_api import prune as prune_model

    source = load_keras_model(model)
    x, y = load_training_data(train, source)
    pruned = prune_model(source, float(prune["ratio"]), criterion=prune.get("criterion", "l1"),
                         train=(x, y), epochs=0)
    distill = bool(prune.get("distill"))
    fit(pruned, x, y, FitSpec(epochs=int(prune["epochs"]), batch_size=32,
                              learning_rate=float(prune.get("learning_rate", 1e-3))),
        teacher=source if distill else None,
        distill_spec=DistillSpec(float(prune.get("temperature", 4)),
                                 float(prune.get("alpha", 0.7))) if distill else None,
        callbacks=list(callbacks(pruned)))
    return _save(pruned, path)  # weights only, as train_api writes


def _note_other_train(notes: list | None, train, step: dict, what: str) -> None:
    """A note in ``notes`` (None: none wanted) when ``train`` is not the data a training step
    (its ``train`` FileRef) used."""
    from edgekit.fsutil import sha256_tree

    ref = (step.get("train") or {}).get("sha256")
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
        from edgekit.optimizer_arch import train_student

        _note_other_train(notes, train, recipe.student, "the student was distilled on")
        source = train_student(model, recipe.student, train, folder / "student" /
                               "student.keras")
    if recipe.compress:
        from edgekit.recipe_compress import compress_source

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


__all__ = [
    "RECIPE_SCHEMA",
    "RECIPE_VERSION",
    "FileRef",
    "Recipe",
    "Replay",
    "trained_source",
    "load_recipe",
    "options_from_json",
    "options_to_json",
    "replay",
    "save_recipe",
]

"""``Recipe``: one artifact to build and how to run it, as typed, versioned data.

``edgekit optimize`` writes the winner to ``best.recipe.json``; ``edgekit convert MODEL --recipe
FILE`` (``edgekit.training.replay``) builds the same target with the same options from the same
source and calibration data, which gives the same artifact bytes (the recipe records the sha256
it expects, and replay says whether it got it).

This module is the data contract alone: the recipe, its training steps (``PruneStep``,
``StudentStep``, ``CompressStep``, each with its defaults), and reading and writing the document.

The document is a versioned envelope (``{"schema": "edgekit.recipe", "schema_version": 1, ...}``,
JSON Schema in ``edgekit/schemas/recipe.schema.json``): unknown schemas and newer versions are
refused with a hint, never half-read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from functools import lru_cache
from importlib import resources
from pathlib import Path

from converters.distill import DistillSpec, FitSpec
from converters.options import CalibrationMethod, ConvertOptions, OnnxQuantFormat
from converters.pruning.spec import PruneSpec
from edgekit._version import __version__
from edgekit.envelope import unwrap, wrap
from edgekit.errors import InputError

log = logging.getLogger(__name__)

RECIPE_SCHEMA = "edgekit.recipe"
RECIPE_VERSION = 1
RECIPE_SUFFIX = ".recipe.json"
_TUPLE_FIELDS = ("float_nodes", "quantize_op_types")  # tuples in ConvertOptions, lists in JSON
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


# The training steps' defaults come from the specs that run them.
_PRUNE, _DISTILL, _FIT = PruneSpec(), DistillSpec(), FitSpec()


class _Step:
    """What the training steps share: a document (``to_dict``, ``from_dict``) whose keys also
    read like a mapping (``step["ratio"]``, ``step.get("train")``), and a step equals its
    document, so code written against the JSON shape keeps working."""

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, doc: Mapping):
        """The step a document describes (keys it does not know are left out)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in doc.items() if k in known}
        train = values.get("train")
        if isinstance(train, Mapping):
            values["train"] = FileRef(train["sha256"], train.get("path"))
        return cls(**values)

    @classmethod
    def of(cls, value):
        """``value`` as this step: a step is kept, a document read (None stays None)."""
        return value if value is None or isinstance(value, cls) else cls.from_dict(value)

    def _train(self) -> dict | None:
        return self.train.to_dict() if self.train else None

    def keys(self):
        return self.to_dict().keys()

    def __getitem__(self, key):
        return self.to_dict()[key]

    def get(self, key, default=None):
        return self.to_dict().get(key, default)

    def __eq__(self, other):
        if isinstance(other, (Mapping, _Step)):
            return self.to_dict() == (other.to_dict() if isinstance(other, _Step) else
                                      dict(other))
        return NotImplemented

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True))


@dataclass(frozen=True, eq=False)
class PruneStep(_Step):
    """Structured pruning of the source before converting, with its fine-tuning.

    Attributes:
        ratio: fraction of channels removed (``PruneSpec.ratio``).
        criterion: channel importance (``PruneSpec.criterion``'s value).
        epochs: fine-tuning epochs after pruning (0: none).
        learning_rate: the fine-tune's (``FitSpec.learning_rate``).
        distill: fine-tune by distillation from the unpruned source.
        temperature / alpha: the distillation's (``DistillSpec``); in the document only when
            ``distill``.
        seed: seeds the fine-tune (with TensorFlow's deterministic ops: the same bytes).
        train: the fine-tuning data it used.
    """

    ratio: float
    criterion: str = _PRUNE.criterion.value
    epochs: int = 0
    learning_rate: float = _FIT.learning_rate
    distill: bool = False
    temperature: float = _DISTILL.temperature
    alpha: float = _DISTILL.alpha
    seed: int = 0
    train: FileRef | None = None

    def to_dict(self) -> dict:
        doc = {"ratio": self.ratio, "criterion": self.criterion, "epochs": self.epochs,
               "learning_rate": self.learning_rate, "distill": self.distill, "seed": self.seed,
               "train": self._train()}
        if self.distill:
            doc.update(temperature=self.temperature, alpha=self.alpha)
        return doc


@dataclass(frozen=True, eq=False)
class StudentStep(_Step):
    """A smaller model trained by distillation from the source, converted instead of it
    (``edgekit.training.students``).

    Attributes:
        family: the student's architecture family (``students.FAMILIES``).
        resolution: its input resolution.
        alpha: its width multiplier (MobileNets; None: EfficientNets have none).
        variant / minimalistic: MobileNetV3's small/large and minimalistic, EfficientNet's
            B-variant (None: the family has none).
        epochs / learning_rate: the distillation's fit (``FitSpec.learning_rate``).
        temperature / kd_alpha: the distillation's (``DistillSpec``).
        seed: seeds initialisation and training (the same bytes again).
        train: the training data it was distilled on.
    """

    family: str
    resolution: int
    alpha: float | None = None
    variant: str | None = None
    minimalistic: bool | None = None
    epochs: int = 1
    learning_rate: float = _FIT.learning_rate
    temperature: float = _DISTILL.temperature
    kd_alpha: float = _DISTILL.alpha
    seed: int = 0
    train: FileRef | None = None

    @property
    def architecture(self) -> dict:
        """The student's architecture alone (``students.parse_student``'s keys)."""
        doc = {"family": self.family}
        for k in ("variant", "minimalistic", "alpha"):
            if getattr(self, k) is not None:
                doc[k] = getattr(self, k)
        doc["resolution"] = self.resolution
        return doc

    def to_dict(self) -> dict:
        return {**self.architecture, "epochs": self.epochs, "learning_rate": self.learning_rate,
                "temperature": self.temperature, "kd_alpha": self.kd_alpha, "seed": self.seed,
                "train": self._train()}


@dataclass(frozen=True, eq=False)
class CompressStep(_Step):
    """Magnitude sparsity and/or weight clustering of the source (after ``prune`` or the
    student), fine-tuned (``edgekit.training.compress``).

    Attributes:
        sparsity: the fraction of zeros (None: no sparsity).
        clusters: shared values per layer (None: no clustering).
        epochs / learning_rate: the compression fine-tune's (0 epochs: one-shot pruning and
            plain k-means).
        seed: seeds it (the same bytes again).
        train: the fine-tuning data it used.
    """

    sparsity: float | None = None
    clusters: int | None = None
    epochs: int = 1
    learning_rate: float = 3e-4
    seed: int = 0
    train: FileRef | None = None

    def to_dict(self) -> dict:
        return {"sparsity": self.sparsity, "clusters": self.clusters, "epochs": self.epochs,
                "learning_rate": self.learning_rate, "seed": self.seed, "train": self._train()}


#: The recipe fields that train a new model, and the type of each.
STEP_TYPES = {"prune": PruneStep, "student": StudentStep, "compress": CompressStep}
TRAINING_STEPS = tuple(STEP_TYPES)


MAX_CLUSTERS = 256  # int8 holds 256 values (``ClusterSpec``)


def check_compress(doc, where: str = "recipe") -> dict:
    """``doc`` if it is a valid ``compress`` document (``CompressStep``), with messages that say
    what is wrong.

    Raises:
        InputError: not a dict, an unknown key, a value out of range, or neither sparsity nor
            clusters.
    """
    if not isinstance(doc, dict):
        raise InputError(f"{where} compress must be an object like {{\"sparsity\": 0.8, "
                         f"\"clusters\": 16, \"epochs\": 1, \"learning_rate\": 0.0003, "
                         f"\"seed\": 0}}, got {doc!r}")
    keys = [f.name for f in fields(CompressStep)]
    unknown = sorted(set(doc) - set(keys))
    if unknown:
        raise InputError(f"{where} compress has unknown key(s) {unknown}; known: {keys}")
    s, k = doc.get("sparsity"), doc.get("clusters")
    if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float))
                          or not 0 < s < 1):
        raise InputError(f"{where} compress sparsity must be a fraction in (0, 1) or null, "
                         f"got {s!r}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int)
                          or not 2 <= k <= MAX_CLUSTERS):
        raise InputError(f"{where} compress clusters must be an integer in 2..{MAX_CLUSTERS} "
                         f"or null, got {k!r}")
    if s is None and k is None:
        raise InputError(f"{where} compress sets neither sparsity nor clusters: give one or "
                         "both (or leave compress out)")
    e, lr, seed = (doc.get("epochs", CompressStep.epochs),
                   doc.get("learning_rate", CompressStep.learning_rate),
                   doc.get("seed", CompressStep.seed))
    if isinstance(e, bool) or not isinstance(e, int) or e < 0:
        raise InputError(f"{where} compress epochs must be an integer >= 0, got {e!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise InputError(f"{where} compress learning_rate must be > 0, got {lr!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"{where} compress seed must be an integer, got {seed!r}")
    return doc


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
            fine-tuning (``PruneStep``); None: the source as it is.
        xnnpack: TFLite runs it with LiteRT's default XNNPACK delegate (False: the built-in
            kernels were faster on the device it was chosen for). A runtime setting.
        ort_opt_level: ONNX Runtime's graph optimization level to run it with (one of
            ``edgekit.devices.device.ORT_OPT_LEVELS``). A runtime setting.
        student: a smaller model distilled from the source, converted instead of it
            (``StudentStep``); None: the source itself.
        compress: sparsity and/or clustering of the source (after ``prune`` or the student),
            fine-tuned (``CompressStep``); None: not compressed. Written to the document only
            when set, so recipes without it stay readable by an edgekit that predates it, and
            one with it is refused there (schema) rather than built uncompressed.

    The steps may be given as their documents (dicts): they are read into their types.

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
    prune: PruneStep | None = None
    xnnpack: bool = True
    ort_opt_level: str = "all"
    student: StudentStep | None = None
    compress: CompressStep | None = None

    def __post_init__(self):
        for name, cls in STEP_TYPES.items():
            object.__setattr__(self, name, cls.of(getattr(self, name)))

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
        doc = {"source": source_sha256, "calibration": calibration_sha256,
               "target": self.target, "options": self.convert_options, "edgekit": __version__}
        doc.update({k: getattr(self, k).to_dict() for k in TRAINING_STEPS if getattr(self, k)})
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        doc = wrap(RECIPE_SCHEMA, RECIPE_VERSION, {
            "name": self.name, "target": self.target,
            "convert_options": dict(self.convert_options), "runtime": self.runtime(),
            "source": self.source.to_dict() if self.source else None,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "artifact": self.artifact, "measured": self.measured,
            "constraints": self.constraints, "objective": self.objective,
            "advice": list(self.advice),
            "prune": self.prune.to_dict() if self.prune else None,
            "student": self.student.to_dict() if self.student else None})
        if self.compress:
            doc["compress"] = self.compress.to_dict()
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

        # The type and version first (DocumentError, an InputError); the JSON Schema below
        # checks the whole document, envelope keys included.
        unwrap(doc, RECIPE_SCHEMA, {RECIPE_VERSION: None}, where=where,
               rerun="re-run `edgekit optimize` to write it again")
        if doc.get("compress") is not None:  # first: its messages say more than the schema's
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


__all__ = [
    "RECIPE_SCHEMA",
    "RECIPE_VERSION",
    "TRAINING_STEPS",
    "CompressStep",
    "check_compress",
    "FileRef",
    "PruneStep",
    "Recipe",
    "StudentStep",
    "load_recipe",
    "options_from_json",
    "options_to_json",
    "save_recipe",
]

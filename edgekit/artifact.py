"""Artifacts and the manifest that describes them: the contract between convert and later stages."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

from edgekit.envelope import unwrap, wrap
from edgekit.errors import InputError
from edgekit.fsutil import write_json_atomic
from edgekit.spec import TensorSpec

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = "edgekit.manifest"
MANIFEST_VERSION = 1


@dataclass
class OutputFidelity:
    """Closeness of one artifact output to the source's output on the eval set.

    Attributes:
        task: what the output is for (``edgekit.fidelity.tasks``): classification, detection,
            segmentation, embedding, regression, integer, or ``passthrough`` / ``constant``
            (not judged: the output repeats an input, or the source never varies it).
        metric: the task's measure, ``{"name", "value", "ci": [lo, hi] | None, "samples"}``
            (``samples``: eval samples), with ``"ci_method"`` naming how the interval was made
            (``edgekit.fidelity.stats``).
        details: the task's other figures (recall/precision/mAP, top-5, min cosine...).
        worst_slice: the worst group of indices along one axis (box coordinates vs scores...).
        note: why an output is not judged.
        nonfinite: NaN/Inf values in the artifact's output.
        collapsed: the artifact gives one value for every sample while the source varies.
    """

    name: str
    max_abs_error: float
    sqnr_db: float
    task: Optional[str] = None
    metric: Optional[dict] = None
    details: dict = field(default_factory=dict)
    worst_slice: Optional[dict] = None
    note: Optional[str] = None
    samples: Optional[int] = None
    nonfinite: int = 0
    collapsed: bool = False

    @property
    def judged(self) -> bool:
        return self.task not in ("passthrough", "constant")

    @property
    def worst_sqnr_db(self) -> float:
        """The lower of the whole output's SQNR and its worst slice's (when it has a signal)."""
        s = (self.worst_slice or {}).get("sqnr_db")
        return self.sqnr_db if s is None else min(self.sqnr_db, s)

    def to_dict(self) -> dict:
        d = {"name": self.name, "max_abs_error": self.max_abs_error, "sqnr_db": self.sqnr_db}
        extra = {"task": self.task, "metric": self.metric, "details": self.details or None,
                 "worst_slice": self.worst_slice, "note": self.note, "samples": self.samples,
                 "nonfinite": self.nonfinite or None, "collapsed": self.collapsed or None}
        d.update({k: v for k, v in extra.items() if v is not None})
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "OutputFidelity":
        return cls(d["name"], d["max_abs_error"], d["sqnr_db"], d.get("task"), d.get("metric"),
                   d.get("details") or {}, d.get("worst_slice"), d.get("note"), d.get("samples"),
                   d.get("nonfinite") or 0, bool(d.get("collapsed")))


@dataclass
class Fidelity:
    """How closely an artifact reproduces its source on the eval set.

    Attributes:
        samples: verification samples.
        top1_agreement / accuracy / source_accuracy: of the first classification output.
        max_abs_error / sqnr_db: worst over the judged outputs (whole outputs).
        outputs: every output's record, each judged by its task.
        task: the model's main task (the first judged output's; detection wins).
        data_origin: ``eval`` (the user's eval data), ``calibration-holdout`` (calibration
            samples held apart from the quantizer), ``calibration`` (the calibration samples
            themselves: too few to hold any apart) or ``synthetic`` (made-up inputs).
        warnings: what the figures cannot show (made-up inputs, too few samples, a constant
            reference), in words for the user.
    """

    samples: int
    top1_agreement: Optional[float]
    max_abs_error: float
    sqnr_db: float
    accuracy: Optional[float] = None
    source_accuracy: Optional[float] = None
    outputs: list[OutputFidelity] = field(default_factory=list)
    task: Optional[str] = None
    data_origin: Optional[str] = None
    warnings: list[str] = field(default_factory=list)

    @property
    def accuracy_drop(self) -> Optional[float]:
        if self.accuracy is None or self.source_accuracy is None:
            return None
        return self.source_accuracy - self.accuracy

    @property
    def main_output(self) -> Optional[OutputFidelity]:
        """The output whose task is the model's task (the first judged one; of a head judged as
        a pair, such as boxes + scores, the one that carries the measure)."""
        judged = [o for o in self.outputs if o.judged]
        of_task = [o for o in judged if o.task == self.task]
        for o in of_task:
            if o.metric:
                return o
        if of_task:
            return of_task[0]
        return judged[0] if judged else None

    @property
    def task_metric(self) -> Optional[dict]:
        o = self.main_output
        return None if o is None else o.metric

    @property
    def worst_slice(self) -> Optional[dict]:
        """The lowest-SQNR slice over the judged outputs, with its output's name."""
        cands = [(o.worst_sqnr_db, o) for o in self.outputs if o.judged and o.worst_slice
                 and o.worst_slice.get("sqnr_db") is not None]
        if not cands:
            return None
        _, o = min(cands, key=lambda c: c[0])
        return {"output": o.name, **o.worst_slice}

    def to_dict(self) -> dict:
        d = {
            "samples": self.samples,
            "top1_agreement": self.top1_agreement,
            "max_abs_error": self.max_abs_error,
            "sqnr_db": self.sqnr_db,
            "accuracy": self.accuracy,
            "source_accuracy": self.source_accuracy,
            "outputs": [o.to_dict() for o in self.outputs],
        }
        if self.task is not None:
            d["task"] = self.task
            d["task_metric"] = self.task_metric
            d["worst_slice"] = self.worst_slice
        if self.data_origin is not None:
            d["data_origin"] = self.data_origin
        if self.warnings:
            d["warnings"] = list(self.warnings)
        return d

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> Optional["Fidelity"]:
        if d is None:
            return None
        return cls(d["samples"], d["top1_agreement"], d["max_abs_error"], d["sqnr_db"],
                   d.get("accuracy"), d.get("source_accuracy"),
                   [OutputFidelity.from_dict(o) for o in d.get("outputs", [])],
                   d.get("task"), d.get("data_origin"), list(d.get("warnings") or []))


@dataclass
class Artifact:
    """One converted model file and everything known about it."""

    path: Path
    target: str
    format: str
    precision: str
    bytes: int
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    source: dict
    calibration: Optional[dict]
    fidelity: Optional[Fidelity]
    pass_config: dict = field(default_factory=dict)
    tools: dict = field(default_factory=dict)
    float_ops: list[dict] = field(default_factory=list)
    conversion_seconds: Optional[float] = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    # What the file holds: weights by dtype, ops by kind, int8 share of the compute
    # (converters.content.ArtifactContent.to_dict); None for .ort and for older manifests.
    content: Optional[dict] = None

    def to_dict(self, relative_to: Optional[Path] = None) -> dict:
        path = Path(self.path)
        if relative_to is not None:
            try:
                path = path.resolve().relative_to(Path(relative_to).resolve())
            except ValueError:
                pass
        return {
            "path": str(path),
            "target": self.target,
            "format": self.format,
            "precision": self.precision,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "source": self.source,
            "calibration": self.calibration,
            "fidelity": self.fidelity.to_dict() if self.fidelity else None,
            "pass": {"target": self.target, "config": self.pass_config},
            "tools": self.tools,
            "float_ops": self.float_ops,
            "conversion_seconds": self.conversion_seconds,
            "created": self.created,
            "content": self.content,
        }

    @classmethod
    def from_dict(cls, d: dict, base: Optional[Path] = None) -> "Artifact":
        path = Path(d["path"])
        if base is not None and not path.is_absolute():
            path = Path(base) / path
        return cls(
            path=path, target=d["target"], format=d["format"], precision=d["precision"],
            bytes=d["bytes"], sha256=d["sha256"],
            inputs=[TensorSpec.from_dict(t) for t in d["inputs"]],
            outputs=[TensorSpec.from_dict(t) for t in d["outputs"]],
            source=d["source"], calibration=d.get("calibration"),
            fidelity=Fidelity.from_dict(d.get("fidelity")),
            pass_config=d.get("pass", {}).get("config", {}), tools=d.get("tools", {}),
            float_ops=d.get("float_ops", []), conversion_seconds=d.get("conversion_seconds"),
            created=d.get("created", ""), content=d.get("content"),
        )


def manifest_schema() -> dict:
    return json.loads(resources.files("edgekit").joinpath("schemas/manifest.schema.json").read_text())


@functools.lru_cache(maxsize=1)
def _manifest_validator():
    # Built once: jsonschema.validate() re-reads and meta-validates the schema on every call,
    # which was the largest fixed cost of a small model's convert (0.16-0.35 s).
    import jsonschema

    schema = manifest_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate_manifest(doc: dict) -> None:
    """Raise InputError if ``doc`` is not a manifest this version of edgekit understands."""
    import jsonschema

    unwrap(doc, MANIFEST_SCHEMA, {MANIFEST_VERSION: None},
           rerun="re-run `edgekit convert` to regenerate it")
    e = jsonschema.exceptions.best_match(_manifest_validator().iter_errors(doc))
    if e is not None:
        raise InputError(f"invalid manifest: {e.message} at {'/'.join(map(str, e.absolute_path))}")


def read_manifest(folder) -> list[Artifact]:
    """Artifacts described by ``folder/manifest.json`` (or by the manifest file itself)."""
    path = Path(folder)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"no manifest at {path}: run `edgekit convert ... --out {path.parent}` first")
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read manifest {path}: {e}") from e
    validate_manifest(doc)
    return [Artifact.from_dict(a, base=path.parent) for a in doc["artifacts"]]


def write_manifest(folder, artifacts: list[Artifact]) -> Path:
    """Merge ``artifacts`` into ``folder/manifest.json`` (same path replaces), written atomically."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    existing: list[Artifact] = []
    if path.is_file():
        try:
            existing = read_manifest(path)
        except InputError:
            existing = []  # an unreadable old manifest is replaced, not merged
    new_paths = {Path(a.path).resolve() for a in artifacts}
    kept = [a for a in existing if Path(a.path).resolve() not in new_paths and Path(a.path).exists()]
    doc = wrap(MANIFEST_SCHEMA, MANIFEST_VERSION,
               {"artifacts": [a.to_dict(relative_to=folder) for a in kept + list(artifacts)]})
    validate_manifest(doc)
    write_json_atomic(path, doc)
    return path

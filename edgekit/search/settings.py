"""The settings of an ``optimize`` study: constraints on measured values, everything
``study.json`` holds so that ``optimize --resume DIR`` (and a worker on another machine) needs
nothing else, and the storage its URL names.

This module is the one home of the search's file names (``STUDY_FILE``, ``RESULTS_DB``,
``BEST_RECIPE``, ``REPORT``, ``FINALISTS_FILE``) and of its objectives (``Objective``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from converters.options import ConvertOptions
from edgekit.envelope import unwrap, wrap
from edgekit.errors import DeviceError, InputError
from edgekit.search.space import SearchSpace

STUDY_FILE = "study.json"
STUDY_SCHEMA = "edgekit.study"
STUDY_VERSION = 1
RESULTS_DB = "results.db"  # the device measurements (``ResultStore``) of a study or an advice
BEST_RECIPE = "best.recipe.json"
REPORT = "report.html"
FINALISTS_FILE = "finalists.json"  # the finalists' side-by-side re-measurement


class Objective(str, Enum):
    """What the chosen recipe minimises (among those meeting the constraints)."""

    LATENCY = "latency"  # p50 on the device
    SIZE = "size"  # the artifact's size, by the study's size metric


#: ``Objective``'s values, the strings the API and the CLI take.
OBJECTIVES = tuple(o.value for o in Objective)
# Optuna minimises these three, in this order ("bytes": the size by the study's size metric).
VALUES = ("p50_ms", "bytes", "accuracy_drop")
#: How an artifact's size is measured, for the size objective and ``max_size_bytes``: the file
#: itself, or the file compressed as an app store download or OTA update ships it
#: (``converters.sparsity.file_sizes``; every trial records all three).
SIZE_METRICS = {"bytes": "bytes", "gzip": "gzip_bytes", "zstd": "zstd_bytes"}
# A worker on another machine that stops sending heartbeats for this long has its trial failed
# and retried by whichever worker notices (Optuna's heartbeat).
HEARTBEAT_S, GRACE_S = 10, 60
OPEN_GATE = ConvertOptions(max_accuracy_drop=100.0)
FAILED_VALUE = 1e12  # every objective and constraint value of a failed trial


@dataclass(frozen=True)
class Constraints:
    """Limits the chosen recipe must meet, on values measured on the device.

    Attributes:
        max_accuracy_drop: accuracy points below the source model (top-1 on labelled eval data
            measured on the device; else the host's top-1 disagreement with the source).
        max_size_bytes: artifact size, measured as the study's size metric (``SIZE_METRICS``:
            the file's bytes by default).
        max_peak_memory_bytes: peak resident memory of the measuring process on the device.
    """

    max_accuracy_drop: float = 1.0
    max_size_bytes: int | None = None
    max_peak_memory_bytes: int | None = None

    def validate(self) -> Constraints:
        if self.max_accuracy_drop is None or self.max_accuracy_drop < 0:
            raise InputError(f"max_accuracy_drop must be >= 0 points, got "
                             f"{self.max_accuracy_drop!r}")
        for name in ("max_size_bytes", "max_peak_memory_bytes"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise InputError(f"{name} must be > 0, got {v!r}")
        return self

    def violations(self, m: dict, size_key: str = "bytes") -> list[float]:
        """One value per constraint, <= 0 when met (Optuna's convention); the size is
        ``m[size_key]`` (a ``SIZE_METRICS`` value)."""
        out = [round(m["accuracy_drop"] - self.max_accuracy_drop, 9)]
        if self.max_size_bytes is not None:
            size = m.get(size_key)
            out.append(float("inf") if size is None else float(size - self.max_size_bytes))
        if self.max_peak_memory_bytes is not None:
            peak = m.get("peak_rss_bytes")
            out.append(float("inf") if peak is None else float(peak - self.max_peak_memory_bytes))
        return out

    def names(self) -> list[str]:
        """The names of ``violations``' values, in order."""
        return ["accuracy_drop"] + (["size"] if self.max_size_bytes is not None else []) + \
            (["peak_memory"] if self.max_peak_memory_bytes is not None else [])

    def describe_misses(self, m: dict, size_key: str = "bytes") -> list[str]:
        v = self.violations(m, size_key)
        metric = next((k for k, key in SIZE_METRICS.items() if key == size_key), "bytes")
        names = ["accuracy drop", "size" if metric == "bytes" else f"{metric} size",
                 "peak memory"]
        limits = [f"{self.max_accuracy_drop:g} points", f"{self.max_size_bytes} bytes",
                  f"{self.max_peak_memory_bytes} bytes"]
        kinds = [0] + ([1] if self.max_size_bytes is not None else []) + \
            ([2] if self.max_peak_memory_bytes is not None else [])
        return [f"{names[k]} over {limits[k]}" for k, x in zip(kinds, v, strict=True) if x > 0]


@dataclass
class Settings:
    """Everything a search needs, stored as ``study.json`` so ``--resume`` needs only the folder.

    ``size_metric`` (a ``SIZE_METRICS`` key) says how the size objective and ``max_size_bytes``
    measure an artifact; a study written before it existed reads as ``bytes``.
    ``results_db`` is where the device measurements go (a SQLite path or an SQLAlchemy URL, e.g.
    a team's PostgreSQL history); None (and every study written before it) means ``results.db``
    in the study folder.
    """

    model: str
    model_sha256: str
    device: str
    calibration: str
    eval: str | None
    objective: str
    constraints: Constraints
    budget: int
    storage: str
    study_name: str
    space: SearchSpace
    runs: int = 20
    time_budget_s: float | None = None
    inventory: str | None = None
    input_shapes: dict = field(default_factory=dict)
    trial_timeout_s: float = 600.0
    seed: int = 0
    device_spec: dict | None = None
    connect: dict = field(default_factory=dict)
    train: str | None = None
    size_metric: str = "bytes"
    results_db: str | None = None  # a team's results history (path or URL); None: out/results.db
    per_layer: bool = False  # each trial also times the artifact's layers on the device

    @property
    def size_key(self) -> str:
        """The measured value the size objective and ``max_size_bytes`` use."""
        return SIZE_METRICS[self.size_metric]

    def spec(self):
        """The DeviceSpec to measure on."""
        from edgekit.bench import resolve_devices
        from edgekit.devices.spec import DeviceSpec

        if self.device_spec:
            d = dict(self.device_spec)
            d["keys"], d["tags"] = tuple(d.get("keys") or ()), tuple(d.get("tags") or ())
            return DeviceSpec(**d)
        return resolve_devices([self.device], self.inventory,
                               self.connect_options().ssh_config)[0]

    def connect_options(self):
        from edgekit.devices.spec import ConnectOptions

        d = dict(self.connect)
        for k in ("ssh_config", "known_hosts"):
            if d.get(k):
                d[k] = Path(d[k])
        return ConnectOptions(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["constraints"] = asdict(self.constraints)
        d["space"] = self.space.to_dict()
        return wrap(STUDY_SCHEMA, STUDY_VERSION, d)

    @classmethod
    def from_dict(cls, doc: dict, where: str = "") -> Settings:
        """The settings of a ``study.json`` document (any edgekit's: ``generated_by`` is
        optional).

        Raises:
            InputError: not a study, one from a newer edgekit, or one missing its fields.
        """
        d = unwrap(doc, STUDY_SCHEMA, {STUDY_VERSION: None}, where=where,
                   rerun="start the search again with `edgekit optimize`")
        try:
            d["constraints"] = Constraints(**d["constraints"])
            d["space"] = SearchSpace.from_dict(d["space"])
            return cls(**d)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            at = f"{where}: " if where else ""
            raise InputError(f"{at}not a valid edgekit study ({type(e).__name__}: {e}): "
                             "start the search again with `edgekit optimize`") from None


class DevicePaused(DeviceError):
    """The device stopped answering mid-search: finished trials are kept, resume later."""


def read_settings(out) -> Settings:
    """The settings of the study in ``out``.

    Raises:
        InputError: ``out`` holds no edgekit study (or one from a newer edgekit).
    """
    path = Path(out) / STUDY_FILE
    if not path.is_file():
        raise InputError(f"{out} is not an optimize folder (no {STUDY_FILE}): pass the --out "
                         "folder of an earlier `edgekit optimize`")
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    return Settings.from_dict(doc, where=str(path))


def open_storage(url: str):
    """The Optuna RDB storage at ``url`` (heartbeats on, SQLite waiting for its lock); a bad URL
    or a server that refuses is an InputError naming the URL with its password hidden."""
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.engine import make_url

    from edgekit.results.location import mask, with_edgekit_driver

    kwargs = {}
    if url.startswith("sqlite"):
        # Several worker processes write one SQLite file: wait for the lock, do not fail.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        if url.startswith("postgresql://"):  # the driver the results history uses too
            url = with_edgekit_driver(make_url(url)).render_as_string(hide_password=False)
        with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                  max_retry=1), **kwargs)
    except (optuna.exceptions.StorageInternalError, ImportError, ValueError) as e:
        raise InputError(f"cannot open study storage {mask(url)}: "
                         f"{str(e).splitlines()[0]}") from e
    except Exception as e:  # SQLAlchemy raises its own hierarchy for bad URLs; others re-raised
        if type(e).__module__.startswith("sqlalchemy"):
            raise InputError(f"cannot open study storage {mask(url)}: "
                             f"{str(e).splitlines()[0]}") from e
        raise

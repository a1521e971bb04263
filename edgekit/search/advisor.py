"""``advise()``: build the cheap recipes (fp32, fp16, dynamic, int8 per runtime and format), measure
them on one device, rank them within an accuracy budget and say which to ship and why.

No training: every recipe is one ``convert()`` (its own output folder, verified against the
source) and one ``benchmark()`` row on the device. The plain-language lines live in
``edgekit.search.advice_text``.

The module is ``advisor``, not ``advise``: a submodule named like the lazily exported function
``edgekit.advise`` would replace that function on the package once imported.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from converters import cpu_layouts
from converters.options import ConvertOptions
from converters.registry import get_target, targets_for
from edgekit.envelope import wrap
from edgekit.errors import ConversionError, InputError, ModelLoadError
from edgekit.fidelity.tasks import metric_text
from edgekit.gate import QUANTIZED
from edgekit.perlayer import top_op_type
from edgekit.results.location import mask
from edgekit.search.settings import OBJECTIVES, RESULTS_DB

log = logging.getLogger(__name__)

ADVICE_SCHEMA = "edgekit.advice"
ADVICE_VERSION = 1
_GATE_MISS = "missed the fidelity gate"
# The fp32 artifact each format is compared with: .ort runs in ONNX Runtime, like onnx-fp32.
_BASELINE_OF_FORMAT = {"tflite": "tflite-fp32", "onnx": "onnx-fp32", "ort": "onnx-fp32"}


@dataclass(frozen=True)
class Candidate:
    """One thing to build and measure: a registered target plus option overrides.

    Attributes:
        name: what the table shows, e.g. ``onnx-int8`` or ``onnx-int8-reduce-range``.
        target: the registry target it builds.
        overrides: ``ConvertOptions`` fields set for this recipe, as (name, value) pairs.
        note: why the variant is worth measuring.
    """

    name: str
    target: str
    overrides: tuple = ()
    note: str = ""

    def options(self, base: ConvertOptions) -> ConvertOptions:
        return replace(base, **dict(self.overrides))


def recipes_for(source_format: str, cpu=None) -> list[Candidate]:
    """Every registered target the source format supports; ``onnx-int8`` is edgekit's default
    for ``cpu`` (a ``converters.cpu_layouts.Target``: the layout its table puts first), and the
    table's other layouts for that CPU are variants worth measuring (``cpu`` None: every QDQ
    layout is a variant).
    """
    out = [Candidate(t.name, t.name) for t in targets_for(source_format)]
    if any(r.target == "onnx-int8" for r in out):
        if cpu is not None:
            variants = cpu_layouts.layouts_for(ConvertOptions(), cpu)[1:]
        else:
            variants = [cpu_layouts.OnnxLayout(u, rr) for u in (False, True)
                        for rr in (False, True)]
        for lay in variants:
            out.append(Candidate(f"onnx-int8-{lay.slug}", "onnx-int8",
                                 tuple(lay.options().items()),
                                 f"{lay.label}: the layout table's next choice"))
    return out


@dataclass
class AdviceRow:
    """One recipe built and measured on the device (or why it was not).

    Attributes:
        recipe / target / format / precision: what was built.
        baseline: the fp32 recipe its ratios are against (same runtime), None if not built.
        bytes / size_ratio: artifact size, and its fraction of the baseline's.
        p50_ms / p90_ms / latency_ratio: latency on the device, and p50 / the baseline's p50.
        peak_rss_bytes: peak resident memory of the measuring process on the device.
        accuracy: top-1 fraction; ``accuracy_source`` says where it was measured ("device" with
            labelled eval data, else "host": the conversion's fidelity check).
        accuracy_drop: accuracy points lost vs the source model (0-100 scale).
        sqnr_db: output SQNR vs the source on the host.
        task / task_measure: the model's task and its measure vs the source on the host
            (``edgekit.fidelity``), e.g. ``"detection"`` / ``"detection F1 0.962"``; without
            labels the fidelity gate judges recipes by it.
        gate_passed / gate_miss: the conversion's fidelity gate and, if missed, why.
        error: why the build or the device run failed; ``failed_stage`` says which
            ("convert", "gate" or "benchmark").
        within_budget: ran, and lost at most ``max_accuracy_drop`` points.
        rank: 1 = best for the objective among rows within budget; None otherwise.
        artifact / result_id: the artifact file and its row in ``results.db``.
        p50_repeats_ms: for an fp32 baseline, its p50 measured first and again after every other
            recipe (``p50_ms`` is their mean); far apart means the device's speed drifted.
        variant: what the recipe is as plain values (target, build options, threads, and the
            runtime/format settings ``advice_text.SETTINGS``); rows whose variants differ in one
            setting only get a line naming its measured effect. None: not compared.
        layout: an onnx-int8 row's layout (``converters.cpu_layouts.OnnxLayout.label``).
        trial_p50_ms: set when ``p50_ms`` (and ``latency_ratio``) come from a side-by-side
            re-measurement (``optimize``'s finalists): the p50 of its trials, which comparisons
            with rows not re-measured use.
        top_op: with ``per_layer``: ``[op type, share of the per-layer total, method]`` of the
            op type that took longest on the device.
    """

    recipe: str
    target: str
    format: str
    precision: str
    baseline: Optional[str] = None
    bytes: Optional[int] = None
    size_ratio: Optional[float] = None
    p50_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    latency_ratio: Optional[float] = None
    peak_rss_bytes: Optional[int] = None
    accuracy: Optional[float] = None
    accuracy_source: Optional[str] = None
    source_accuracy: Optional[float] = None
    accuracy_drop: Optional[float] = None
    sqnr_db: Optional[float] = None
    task: Optional[str] = None
    task_measure: Optional[str] = None
    gate_passed: Optional[bool] = None
    gate_miss: Optional[str] = None
    error: Optional[str] = None
    failed_stage: Optional[str] = None
    within_budget: bool = False
    rank: Optional[int] = None
    artifact: Optional[str] = None
    result_id: Optional[int] = None
    p50_repeats_ms: Optional[list] = None
    note: str = ""
    variant: Optional[dict] = None
    trial_p50_ms: Optional[float] = None
    top_op: Optional[list] = None
    layout: Optional[str] = None

    @property
    def ran(self) -> bool:
        return self.p50_ms is not None

    @property
    def status(self) -> str:
        """One word for tables: ok, over-budget, gate-miss, convert-failed, run-failed."""
        if self.failed_stage == "gate":
            return "gate-miss"
        if self.failed_stage == "convert":
            return "convert-failed"
        if self.failed_stage == "benchmark":
            return "run-failed"
        return "ok" if self.within_budget else "over-budget"


@dataclass
class Advice:
    """What ``advise()`` measured and concluded.

    Attributes:
        model / device: what was advised on.
        objective: "latency" or "size"; rows within budget are ranked by it.
        max_accuracy_drop: the accuracy budget in points.
        rows: one per recipe; ranked rows first (rank order), then the rest in recipe order.
        best: the rank-1 row, None when no recipe ran within budget.
        text: plain-language advice lines naming measured numbers and device features.
        device_info: the agent's probe of the device.
        out: the folder holding one build folder per recipe (and ``results.db`` unless
            ``results_db`` names another history).
        results_db: where the measurements were stored (a path, or a URL with its password
            hidden).
    """

    model: str
    device: str
    objective: str
    max_accuracy_drop: float
    rows: list[AdviceRow]
    best: Optional[AdviceRow]
    text: list[str]
    device_info: dict = field(default_factory=dict)
    out: Optional[str] = None
    settings: dict = field(default_factory=dict)
    results_db: Optional[str] = None

    def to_dict(self) -> dict:
        """A versioned JSON document (rows carry their ``status``)."""
        return wrap(ADVICE_SCHEMA, ADVICE_VERSION, {
            "model": self.model, "device": self.device, "objective": self.objective,
            "max_accuracy_drop": self.max_accuracy_drop, "settings": self.settings,
            "best": self.best.recipe if self.best else None,
            "rows": [{**asdict(r), "status": r.status} for r in self.rows],
            "text": list(self.text), "out": self.out, "results_db": self.results_db,
            "device_info": device_summary(self.device_info)})


def advise(model, device="local", *, calibration, eval=None, max_accuracy_drop: float = 1.0,
           objective: str = "latency", out=None, runs: int = 50, threads: int = 1,
           connect=None, inventory=None, recipes: Optional[Sequence[str]] = None,
           options: Optional[ConvertOptions] = None, latency_budget_ms: Optional[float] = None,
           progress: Optional[Callable[[str], None]] = None, per_layer: bool = False,
           db=None) -> Advice:
    """Build every cheap recipe for ``model``, measure each on ``device``, rank and explain.

    Args:
        model: source model path (.keras, .h5, SavedModel folder, .onnx, .tflite).
        device: ``local``, an inventory name, ``user@host[:port]``, an ssh alias or a DeviceSpec.
        calibration: calibration data for the int8 recipes (path or Dataset).
        eval: evaluation data; a labelled .npz also gives accuracy measured on the device.
        max_accuracy_drop: accuracy points a recipe may lose vs the source (the fidelity gate of
            quantized recipes too, when the data has labels).
        objective: "latency" (p50) or "size" (bytes) ranks the rows within budget.
        out: folder for the recipe builds and ``results.db`` (default ``advise-<model stem>``).
        runs / threads: timed inferences per recipe, and runtime threads, on the device.
        connect: ``ConnectOptions`` for SSH devices. inventory: a devices.toml.
        recipes: only these recipe names (default: all of ``recipes_for``).
        options: base ``ConvertOptions`` (input shapes, calibration method...).
        latency_budget_ms: a p50 the model must reach; the advice says how far off the best is.
        progress: called with one line per step.
        per_layer: also time each layer on the device (``bench --per-layer``); the advice names
            the op type that takes longest in each recipe.
        db: the results history the measurements go to (a SQLite path or an SQLAlchemy URL such
            as a team's ``postgresql://...``; default ``results.db`` in ``out``).

    Returns:
        Advice; failed builds, gate misses and failed runs are rows, not exceptions.

    Raises:
        InputError: a missing model, unknown recipe or objective, bad data, an unusable
            device spec. DeviceError: the device cannot be reached or probed.
    """
    from converters.sources import detect_format
    from edgekit.api import convert
    from edgekit.bench import benchmark, resolve_devices
    from edgekit.devices.device import Device
    from edgekit.devices.spec import ConnectOptions
    from edgekit.results import ResultStore

    tell = progress or (lambda msg: None)
    if objective not in OBJECTIVES:
        raise InputError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if max_accuracy_drop is None or max_accuracy_drop < 0:
        raise InputError(f"max_accuracy_drop must be >= 0 points, got {max_accuracy_drop!r}")
    if db is not None:  # a bad URL fails now, not after every recipe is built
        from edgekit.results.location import parse_location

        parse_location(db)
    source = Path(model)
    if not source.exists():
        raise ModelLoadError(f"model not found: {source}")
    fmt = detect_format(source)
    connect = connect or ConnectOptions()
    spec = resolve_devices([device], inventory, connect.ssh_config)[0]
    tell(f"probing {spec.name}")
    with Device.open(spec, connect) as dev:
        info = dev.probe()
    cpu = cpu_layouts.target_from_probe(info, f"device {spec.name}")
    chosen = _choose(recipes_for("h5" if fmt == "h5" else fmt, cpu), recipes)
    stem = source.stem if source.is_file() else source.name
    out = Path(out) if out is not None else Path(f"advise-{stem}")
    base = options or ConvertOptions()

    rows: dict[str, AdviceRow] = {}
    built = []  # (recipe name, Artifact)
    labelled: Optional[bool] = None
    # Float recipes first: their fidelity tells whether the data has labels, which decides the
    # quantized recipes' gate (an accuracy budget checks nothing without labels).
    for r in sorted(chosen, key=lambda r: get_target(r.target).precision in QUANTIZED):
        info_t = get_target(r.target)
        row = AdviceRow(r.name, r.target, info_t.format, info_t.precision, note=r.note)
        rows[r.name] = row
        opts = r.options(base)
        if info_t.precision in QUANTIZED and labelled and _no_user_gate(opts):
            opts = replace(opts, max_accuracy_drop=float(max_accuracy_drop))
        tell(f"building {r.name}")
        try:
            art = convert(source, [r.target], calibration=calibration, eval=eval,
                          out=out / r.name, options=opts, for_cpu=cpu)[0]
        except ConversionError as e:
            msg = next(iter((getattr(e, "failures", None) or {}).values()), str(e))
            if _GATE_MISS in msg:
                row.gate_passed, row.gate_miss, row.failed_stage = False, msg, "gate"
            else:
                row.error, row.failed_stage = msg, "convert"
            log.info("recipe %s: %s", r.name, msg)
            continue
        fid = art.fidelity
        if labelled is None and fid is not None:
            labelled = fid.accuracy is not None
        row.gate_passed, row.bytes, row.artifact = True, art.bytes, str(art.path)
        if r.target == "onnx-int8":
            row.layout = cpu_layouts.OnnxLayout.of(art.pass_config).label
        if fid is not None:
            row.sqnr_db, row.accuracy, row.source_accuracy = fid.sqnr_db, fid.accuracy, \
                fid.source_accuracy
            row.accuracy_source = "host" if fid.accuracy is not None else None
            row.task = fid.task
            row.task_measure = metric_text(fid.task_metric) if fid.task_metric else None
        built.append((r.name, art))

    results = []
    if built:
        out.mkdir(parents=True, exist_ok=True)
        bench_eval = Path(eval) if eval is not None and str(eval).endswith(".npz") else None
        settings = dict(devices=[spec], connect=connect, runs=runs,
                        warmup=max(2, min(10, runs // 5)), threads=threads, eval=bench_eval,
                        host_reference=spec.name != "local",  # on `local` the host is the device
                        progress=lambda dev, msg, done, total: tell(f"{dev}: {msg}"),
                        per_layer=per_layer)
        with ResultStore(db if db is not None else out / RESULTS_DB) as store:
            results = benchmark([a for _, a in built], store=store, **settings)
            for (name, _), res in zip(built, results, strict=True):
                _fill_from_result(rows[name], res)
                info = res.device_info or info
            # The fp32 baselines again, last: every ratio divides by them, and a board that
            # throttles (or a host with other load) drifts between the first and last recipe.
            again = [(n, a) for n, a in built if rows[n].ran
                     and n in _BASELINE_OF_FORMAT.values()]
            if again and len(built) > len(again):
                tell("measuring the fp32 baselines again (drift check)")
                for (name, _), res in zip(again, benchmark([a for _, a in again], store=store,
                                                           **settings), strict=True):
                    _average_repeat(rows[name], res)

    ordered = [rows[r.name] for r in chosen]
    _ratios(ordered)
    for row in ordered:
        row.within_budget = row.ran and _within(row, max_accuracy_drop)
    ranked = sorted((r for r in ordered if r.within_budget), key=_key(objective))
    for i, row in enumerate(ranked, 1):
        row.rank = i
    rest = [r for r in ordered if r.rank is None]
    best = ranked[0] if ranked else None

    from edgekit.search.advice_text import advice_lines

    text = advice_lines(ranked + rest, best, info, objective=objective,
                        max_accuracy_drop=max_accuracy_drop, device=spec.name, model=str(source),
                        latency_budget_ms=latency_budget_ms, threads=threads)
    return Advice(str(source), spec.name, objective, float(max_accuracy_drop), ranked + rest,
                  best, text, info, str(out),
                  {"runs": runs, "threads": threads, "eval": str(eval) if eval else None,
                   "calibration": str(calibration), "latency_budget_ms": latency_budget_ms},
                  mask(db) if db is not None else str(Path(out) / RESULTS_DB))


def _choose(available: list[Candidate], names: Optional[Sequence[str]]) -> list[Candidate]:
    if not names:
        return available
    by_name = {r.name: r for r in available}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise InputError(f"unknown recipe(s) {unknown} for this model; possible: "
                         f"{', '.join(by_name)}")
    return [by_name[n] for n in dict.fromkeys(names)]


def _no_user_gate(opts: ConvertOptions) -> bool:
    return all(v is None for v in (opts.max_accuracy_drop, opts.min_top1_agreement,
                                   opts.min_sqnr_db))


def _fill_from_result(row: AdviceRow, res) -> None:
    row.result_id = res.id
    if not res.ok:
        row.error, row.failed_stage = res.error, "benchmark"
        return
    m = res.metrics or {}
    lat = m.get("latency_ms") or {}
    row.p50_ms, row.p90_ms = lat.get("p50"), lat.get("p90")
    row.peak_rss_bytes = (m.get("memory") or {}).get("peak_rss_bytes")
    top1 = (m.get("accuracy") or {}).get("top1")
    if top1 is not None:
        row.accuracy, row.accuracy_source = float(top1), "device"
    if row.accuracy is not None and row.source_accuracy is not None:
        row.accuracy_drop = 100.0 * (row.source_accuracy - row.accuracy)
    top = top_op_type(m)
    if top:
        row.top_op = list(top)


def _average_repeat(row: AdviceRow, res) -> None:
    """Fold a second measurement of a baseline in: p50/p90 become the means of both runs."""
    lat = ((res.metrics or {}).get("latency_ms") or {}) if res.ok else {}
    if lat.get("p50") is None:
        return
    row.p50_repeats_ms = [row.p50_ms, lat["p50"]]
    row.p50_ms = (row.p50_ms + lat["p50"]) / 2
    if row.p90_ms is not None and lat.get("p90") is not None:
        row.p90_ms = (row.p90_ms + lat["p90"]) / 2


def _ratios(rows: list[AdviceRow]) -> None:
    by_recipe = {r.recipe: r for r in rows}
    for row in rows:
        base = by_recipe.get(_BASELINE_OF_FORMAT.get(row.format, ""))
        if base is None or base.bytes is None:
            continue
        row.baseline = base.recipe
        if row.bytes is not None:
            row.size_ratio = row.bytes / base.bytes
        if row.p50_ms is not None and base.p50_ms:
            row.latency_ratio = row.p50_ms / base.p50_ms


def _within(row: AdviceRow, budget: float) -> bool:
    if row.accuracy_drop is None:  # no labels: the conversion's fidelity gate is the judge
        return bool(row.gate_passed)
    # Rounded like the gate: 0.905 - 0.895 is 1.0000000000000009 points, and 1 is within 1.
    return round(row.accuracy_drop, 9) <= budget


def _key(objective: str):
    if objective == "size":
        return lambda r: (r.bytes, r.p50_ms)
    return lambda r: (r.p50_ms, r.bytes)


def device_summary(info: Optional[dict]) -> dict:
    """The facts of the agent's probe ``info`` that the advice uses, for the JSON documents of
    ``advise`` and ``optimize`` (the full probe is in results.db)."""
    cpu = (info or {}).get("cpu") or {}
    return {"arch": (info or {}).get("arch"), "cpu_model": cpu.get("model"),
            "cores": cpu.get("cores"), "cpu_features": cpu.get("features"),
            "runtimes": [f"{r.get('name')} {r.get('version')}"
                         for r in (info or {}).get("runtimes") or []],
            "emulation": (info or {}).get("emulation")}


__all__ = ["advise", "Advice", "AdviceRow", "Candidate", "device_summary", "recipes_for"]

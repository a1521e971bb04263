"""``optimize()``: a hardware-in-the-loop search for the recipe that is fastest (or smallest) on
one device within an accuracy budget, with Optuna as the engine; ``resume()`` continues one.

Every trial samples a recipe (``space``) and runs it (``runner``: build in the content-addressed
cache, gate its fidelity on the host, measure it on the device, record the values). Constraints
are checked on the measured values (Optuna's ``Trial.set_constraint``). Failures are results:
a failed trial has its cause and the search goes on; a device that stops answering pauses the
search (``DevicePaused``) and ``--resume`` picks it up without redoing finished trials. Once the
budget is spent, ``report.finish`` chooses and writes the results.

The study lives in any SQLAlchemy URL (SQLite in the output folder by default; PostgreSQL to
share one study between workers on several machines). ``study.json`` in the output folder holds
the settings, so ``optimize --resume opt/`` needs nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

from converters.options import ConvertOptions
from edgekit.errors import InputError, ModelLoadError
from edgekit.search.finalists import remeasure
from edgekit.search.prepare import arch_students, compress_estimate
from edgekit.search.report import finish
from edgekit.search.runner import TrialRunner, device_lock
from edgekit.search.settings import (
    OBJECTIVES,
    SIZE_METRICS,
    STUDY_FILE,
    VALUES,
    Constraints,
    Objective,
    Settings,
    open_storage,
    read_settings,
)
from edgekit.search.space import SearchSpace
from edgekit.search.study import Study

log = logging.getLogger(__name__)


def optimize(model, device="local", *, calibration, eval=None, train=None,
             constraints: Constraints | None = None, objective: str | Objective = "latency",
             budget: int = 20, time_budget_s: float | None = None, out="opt",
             storage: str | None = None, workers: int = 1, runs: int = 20,
             space: SearchSpace | None = None, connect=None, inventory=None,
             options: ConvertOptions | None = None, seed: int = 0, remeasure: bool = True,
             compress: bool | None = None, size_metric: str = "bytes", db=None,
             per_layer: bool = False,
             progress: Callable[[str], None] | None = None) -> Study:
    """Search for the best recipe of ``model`` on ``device``; write the study to ``out``.

    Args:
        model: source model path (.keras, .h5, SavedModel folder, .onnx, .tflite).
        device: ``local``, an inventory name, ``user@host[:port]`` or an ssh alias.
        calibration: calibration data for the int8 recipes.
        eval: evaluation data; a labelled .npz gives accuracy measured on the device.
        train: training data (.npz x, y): turns on the pruning dimension (ratios 0, 0.25, 0.5
            unless ``space.prune_ratios`` says otherwise), each pruned model fine-tuned on it.
        constraints: limits on measured values (default: 1 accuracy point).
        objective: what the chosen recipe minimises (an ``Objective`` or its value).
        budget: trials in all (finished or failed; the seeded baselines count).
        time_budget_s: wall-clock seconds for this run (a resumed run gets a new one).
        out: the study folder (study.json, study.db, cache/, results.db, report, best recipe).
        storage: an SQLAlchemy URL for the Optuna study (default: SQLite in ``out``).
        per_layer: each trial also times the artifact's layers on the device (``bench
            --per-layer``); the explanation names the op type that takes longest per recipe.
        db: the results history the device measurements go to (a SQLite path or an SQLAlchemy
            URL such as a team's ``postgresql://...``; default ``results.db`` in ``out``).
        workers: worker processes on this machine sharing the study (builds overlap; the
            device measures one trial at a time).
        runs: timed inferences per trial on the device.
        space: the search space (default: every replayable target, 1-2 threads, onnx-int8
            variants, mixed precision).
        connect: ``ConnectOptions`` for SSH devices. inventory: a devices.toml.
        options: base ``ConvertOptions`` (``input_shapes``).
        seed: the sampler's seed.
        remeasure: once the budget is spent, measure the finalists again side by side in
            interleaved rounds and choose on those numbers (``finalists``); False:
            choose on the per-trial means.
        compress: also search magnitude sparsity and weight clustering of the model,
            fine-tuned on ``train`` (``SearchSpace.compress``; None: as ``space`` says); the
            fine-tuning cost is estimated and told (``progress``) before the search.
        size_metric: how the size objective and ``constraints.max_size_bytes`` measure an
            artifact, one of ``SIZE_METRICS``: "bytes" (the file), "gzip" or "zstd" (the file
            compressed, what an app store or OTA update ships). Every trial records all three.
        progress: called with one line per step.

    Returns:
        Study: the trials, the Pareto front, the chosen recipe and its explanation.

    Raises:
        InputError: bad model, data, objective, constraints or folder.
        DeviceError: the device cannot be reached at the start.
        DevicePaused: the device stopped answering mid-search (resume later).
    """
    from converters.sources import detect_format
    from edgekit.fsutil import sha256_tree

    if objective not in OBJECTIVES:
        raise InputError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    objective = Objective(objective).value  # study.json holds the plain string
    if size_metric not in SIZE_METRICS:
        raise InputError(f"size_metric must be one of {', '.join(SIZE_METRICS)}, got "
                         f"{size_metric!r}")
    if budget is None or budget < 1:
        raise InputError(f"budget must be >= 1 trial, got {budget!r}")
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers!r}")
    constraints = (constraints or Constraints()).validate()
    source = Path(model)
    if not source.exists():
        raise ModelLoadError(f"model not found: {source}")
    out = Path(out)
    if (out / STUDY_FILE).exists():
        raise InputError(f"{out} already holds a study: continue it with `edgekit optimize "
                         f"--resume {out}`, or pass another --out")
    fmt = detect_format(source)
    if not Path(calibration).exists():
        raise InputError(f"calibration data {calibration} does not exist")
    if eval is not None and not Path(eval).exists():
        raise InputError(f"eval data {eval} does not exist")
    if train is not None and not Path(train).exists():
        raise InputError(f"training data {train} does not exist")
    space = space or SearchSpace()
    if compress is not None:
        space = replace(space, compress=bool(compress))
    if train is not None and not space.prune_ratios:
        space = replace(space, prune_ratios=(0.0, 0.25, 0.5))
    if train is None and any(space.prune_ratios):
        raise InputError("pruning fine-tunes the pruned model: pass training data (--train)")
    if space.arch_scaling and train is None:
        raise InputError("architecture scaling distills smaller students from the model: pass "
                         "training data (--train)")
    if space.compress and train is None:
        raise InputError("compression fine-tunes the sparse/clustered model: pass training "
                         "data (--train)")
    device_name = device if isinstance(device, str) else device.name
    info = _probe(device, connect, inventory)
    cores = ((info.get("cpu") or {}).get("cores"))
    resolved = space.resolve(fmt, cores)
    out.mkdir(parents=True, exist_ok=True)
    if resolved.arch_scaling:
        resolved = arch_students(source, fmt, resolved, train, out, progress)
    if resolved.compress:
        compress_estimate(source, resolved, train, out, progress)
    sha = sha256_tree(source)
    settings = Settings(
        model=str(source.resolve()), model_sha256=sha, device=device_name,
        calibration=str(Path(calibration).resolve()),
        eval=str(Path(eval).resolve()) if eval is not None else None, objective=objective,
        constraints=constraints, budget=int(budget),
        storage=storage or f"sqlite:///{(out / 'study.db').resolve()}",
        study_name=f"edgekit-{source.stem}-{sha[:12]}-{device_name}", space=resolved, runs=runs,
        time_budget_s=time_budget_s, inventory=str(inventory) if inventory else None,
        input_shapes={k: list(v) for k, v in ((options or ConvertOptions()).input_shapes
                                               or {}).items()}, seed=seed,
        device_spec=None if isinstance(device, str) else _spec_dict(device),
        connect=_connect_dict(connect),
        train=str(Path(train).resolve()) if train is not None else None,
        size_metric=size_metric, results_db=_results_db(db), per_layer=per_layer)
    from edgekit.fsutil import write_json_atomic

    write_json_atomic(out / STUDY_FILE, settings.to_dict())
    return run_study(out, workers=workers, connect=connect, progress=progress, device_info=info,
                     remeasure=remeasure)


def _results_db(db) -> str | None:
    """``db`` as stored in study.json (a path resolved, a URL as given), checked now: a bad URL
    is an InputError before any trial runs."""
    if db is None:
        return None
    from edgekit.results.location import is_url, parse_location

    parse_location(db)
    return str(db) if is_url(db) else str(Path(db).resolve())


def resume(out, *, budget: int | None = None, time_budget_s: float | None = None,
           workers: int = 1, connect=None, progress=None, remeasure: bool = True) -> Study:
    """Continue the study in ``out``: finished trials are kept, interrupted ones re-run.

    Args:
        budget: a new total trial budget (default: the study's).
        time_budget_s: wall-clock seconds for this run (default: the study's).
        remeasure: as ``optimize``: the finalists are measured side by side again at the end.

    Raises:
        InputError: ``out`` holds no study. DevicePaused / DeviceError: as ``optimize``.
    """
    settings = read_settings(out)
    changed = False
    if budget is not None:
        settings.budget, changed = int(budget), True
    if time_budget_s is not None:
        settings.time_budget_s, changed = time_budget_s, True
    if changed:
        from edgekit.fsutil import write_json_atomic

        write_json_atomic(Path(out) / STUDY_FILE, settings.to_dict())
    return run_study(out, workers=workers, connect=connect, progress=progress,
                     remeasure=remeasure)


def run_study(out, *, workers: int = 1, connect=None, progress=None, device_info=None,
              worker: bool = False, remeasure: bool = True) -> Study | None:
    """Run trials of the study in ``out`` until its budget is spent, then (``remeasure``) the
    finalists side by side, then write the results (``worker=True``: run trials only; the
    process that started the workers writes them)."""
    out = Path(out)
    settings = read_settings(out)
    tell = progress or (lambda msg: None)
    storage = open_storage(settings.storage)
    study = load_study(settings, create=not worker, storage=storage)
    if device_info:
        study.set_user_attr("device_info", device_info)
    if not worker:
        _recover_interrupted(study, storage, tell)
        _seed(study, settings)
    procs = []
    if workers > 1:
        procs = [_spawn_worker(out, i) for i in range(1, workers)]
    try:
        TrialRunner(settings, out, connect, tell, device_info).run(study)
    finally:
        for p in procs:
            try:
                p.wait()
            except KeyboardInterrupt:
                p.terminate()
                raise
    if worker:
        return None
    failed = [p.args for p in procs if p.returncode not in (0, None)]
    if failed:
        log.warning("%d worker process(es) exited with errors", len(failed))
    return finish(study, settings, out, tell,
                  remeasure=_side_by_side(settings, out, connect, tell) if remeasure else None)


def _side_by_side(settings: Settings, out: Path, connect, tell):
    """``finish``'s re-measure of the finalists, holding this machine's lock of the device."""
    def run(candidates, search_pick):
        spec = settings.spec()
        with device_lock(out, spec.name):
            return remeasure(candidates, settings, spec=spec,
                             connect=connect or settings.connect_options(), out=out,
                             search_pick=search_pick, tell=tell)

    return run


def _spec_dict(spec) -> dict:
    d = asdict(spec)
    d.pop("extra", None)
    return json.loads(json.dumps(d, default=str))


def _connect_dict(connect) -> dict:
    if connect is None:
        return {}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(connect).items()}


def _spawn_worker(out: Path, index: int) -> subprocess.Popen:
    env = dict(os.environ, EDGEKIT_OPTIMIZE_WORKER=str(index))
    # The worker's lines go where ours do: the CLI points fd 2 at its capture of native chatter.
    try:
        stderr = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # a stream without a descriptor: inherit fd 2
        stderr = None
    return subprocess.Popen([sys.executable, "-m", "edgekit.cli.main", "optimize", "--resume",
                             str(out), "--worker"], env=env, stdin=subprocess.DEVNULL,
                            stderr=stderr)


def _probe(device, connect, inventory) -> dict:
    from edgekit.bench import resolve_devices
    from edgekit.devices.device import Device
    from edgekit.devices.spec import ConnectOptions

    connect = connect or ConnectOptions()
    spec = resolve_devices([device], inventory, connect.ssh_config)[0]
    with Device.open(spec, connect) as dev:
        return dev.probe()


def load_study(settings: Settings, create: bool, storage=None):
    """The Optuna study of ``settings`` (``create``: created when the storage has none yet),
    with the search's sampler (seeded per worker process); ``storage``: an open one of
    ``settings.storage`` (default: opened here)."""
    import optuna

    # Failed trials are results, reported by edgekit with their cause: not tracebacks on stderr.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sampler = optuna.samplers.TPESampler(
        seed=settings.seed + int(os.environ.get("EDGEKIT_OPTIMIZE_WORKER", "0")),
        n_startup_trials=max(4, len(settings.space.seeds()) + 2), multivariate=True)
    storage = storage or open_storage(settings.storage)
    if create:
        return optuna.create_study(storage=storage, study_name=settings.study_name,
                                   directions=["minimize"] * len(VALUES), sampler=sampler,
                                   load_if_exists=True)
    return optuna.load_study(study_name=settings.study_name, storage=storage, sampler=sampler)


def _seed(study, settings: Settings) -> None:
    """Enqueue the baselines and raw tools' defaults once per study."""
    if study.user_attrs.get("seeded"):
        return
    study.set_user_attr("seeded", True)
    for params, role in settings.space.seeds():
        study.enqueue_trial(params, user_attrs={"role": role}, skip_if_exists=True)


def _recover_interrupted(study, storage, tell) -> None:
    """Trials left RUNNING by a worker of this machine that is gone (killed, crashed): marked
    failed as "interrupted" (not counted) and enqueued again with the same parameters
    (``storage``: the study's)."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("worker") or ""
        h, _, pid = owner.rpartition(":")
        if h != host or not pid.isdigit() or _alive(int(pid)):
            continue
        # A trial of another process is reached through the storage's public API by number.
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), t.number)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_user_attr(trial_id, "error", f"interrupted: worker {owner} is gone")
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={k: v for k, v in t.user_attrs.items()
                                                  if k == "role"})
        tell(f"trial {t.number} was interrupted; its recipe is queued again")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


__all__ = ["optimize", "resume", "run_study", "load_study"]

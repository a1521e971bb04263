"""``optimize()``: a hardware-in-the-loop search for the recipe that is fastest (or smallest) on
one device within an accuracy budget, with Optuna as the engine.

Every trial samples a recipe (``optimizer_space``), builds it in a content-addressed cache,
gates its fidelity on the host (``convert``'s gate), measures it on the device with the agent
(``benchmark``, stored in ``results.db``) and returns (p50 ms, bytes, accuracy drop) to a
multi-objective sampler. Constraints are checked on the measured values (Optuna's
``Trial.set_constraint``). Failures are results: a failed build, a gate miss or a crash on the
device is a failed trial with its cause (told to the sampler as breaking every constraint, so it
is not proposed again), and the search goes on; a device that stops answering pauses the
search (``DevicePaused``) and ``--resume`` picks it up without redoing finished trials.

The study lives in any SQLAlchemy URL (SQLite in the output folder by default; PostgreSQL to
share one study between workers on several machines). ``study.json`` in the output folder holds
the settings, so ``optimize --resume opt/`` needs nothing else.

The module is ``optimizer``, not ``optimize``: a submodule named like the lazily exported
function ``edgekit.optimize`` would replace that function on the package once imported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from converters.options import ConvertOptions
from edgekit.errors import DeviceError, InputError, ModelLoadError
from edgekit.optimizer_settings import (  # noqa: F401  (re-exported: the API of this module)
    BEST_RECIPE, FAILED_VALUE, GRACE_S, HEARTBEAT_S, OBJECTIVES, OPEN_GATE, REPORT, RESULTS_DB,
    SIZE_METRICS, STUDY_FILE, STUDY_SCHEMA, STUDY_VERSION, VALUES, Constraints, DevicePaused,
    Settings, open_storage, read_settings,
)
from edgekit.optimizer_prepare import arch_students, compress_estimate
from edgekit.recipe import TRAINING_STEPS
from edgekit.optimizer_space import (BuildCache, SearchSpace, TrialFailed, fault_for,
                                     recipe_from_params)

log = logging.getLogger(__name__)


def optimize(model, device="local", *, calibration, eval=None, train=None,
             constraints: Constraints | None = None, objective: str = "latency",
             budget: int = 20, time_budget_s: float | None = None, out="opt",
             storage: str | None = None, workers: int = 1, runs: int = 20,
             space: SearchSpace | None = None, connect=None, inventory=None,
             options: ConvertOptions | None = None, seed: int = 0, remeasure: bool = True,
             compress: bool | None = None, size_metric: str = "bytes",
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
        objective: "latency" (p50) or "size": what the chosen recipe minimises.
        budget: trials in all (finished or failed; the seeded baselines count).
        time_budget_s: wall-clock seconds for this run (a resumed run gets a new one).
        out: the study folder (study.json, study.db, cache/, results.db, report, best recipe).
        storage: an SQLAlchemy URL for the Optuna study (default: SQLite in ``out``).
        workers: worker processes on this machine sharing the study (builds overlap; the
            device measures one trial at a time).
        runs: timed inferences per trial on the device.
        space: the search space (default: every replayable target, 1-2 threads, onnx-int8
            variants, mixed precision).
        connect: ``ConnectOptions`` for SSH devices. inventory: a devices.toml.
        options: base ``ConvertOptions`` (``input_shapes``).
        seed: the sampler's seed.
        remeasure: once the budget is spent, measure the finalists again side by side in
            interleaved rounds and choose on those numbers (``optimizer_finalists``); False:
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
        from dataclasses import replace as _replace

        space = _replace(space, compress=bool(compress))
    if train is not None and not space.prune_ratios:
        from dataclasses import replace as _replace

        space = _replace(space, prune_ratios=(0.0, 0.25, 0.5))
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
        size_metric=size_metric)
    from edgekit.fsutil import write_json_atomic

    write_json_atomic(out / STUDY_FILE, settings.to_dict())
    return run_study(out, workers=workers, connect=connect, progress=progress, device_info=info,
                     remeasure=remeasure)


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
    from edgekit.optimizer_report import finish

    out = Path(out)
    settings = read_settings(out)
    tell = progress or (lambda msg: None)
    study = _load_study(settings, create=not worker)
    if device_info:
        study.set_user_attr("device_info", device_info)
    if not worker:
        _recover_interrupted(study, tell)
        _seed(study, settings)
    procs = []
    if workers > 1:
        procs = [_spawn_worker(out, i) for i in range(1, workers)]
    try:
        _Runner(settings, out, connect, tell, device_info).run(study)
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
    from edgekit.optimizer_finalists import remeasure

    def run(candidates, search_pick):
        spec = settings.spec()
        with _device_lock(out, spec.name):
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


def _load_study(settings: Settings, create: bool):
    import optuna

    # Failed trials are results, reported by edgekit with their cause: not tracebacks on stderr.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sampler = optuna.samplers.TPESampler(
        seed=settings.seed + int(os.environ.get("EDGEKIT_OPTIMIZE_WORKER", "0")),
        n_startup_trials=max(4, len(settings.space.seeds()) + 2), multivariate=True)
    storage = open_storage(settings.storage)
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


def _recover_interrupted(study, tell) -> None:
    """Trials left RUNNING by a worker of this machine that is gone (killed, crashed): marked
    failed as "interrupted" (not counted) and enqueued again with the same parameters."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("worker") or ""
        h, _, pid = owner.rpartition(":")
        if h != host or not pid.isdigit() or _alive(int(pid)):
            continue
        storage = study._storage
        storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        storage.set_trial_user_attr(t._trial_id, "error", f"interrupted: worker {owner} is gone")
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
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


def counted(trial) -> bool:
    """Whether a trial spends budget: finished, failed, pruned (a fine-tune stopped as
    hopeless) or running; not interrupted ones (re-run) nor ones stopped before starting
    because the budget was spent."""
    from optuna.trial import TrialState

    if trial.user_attrs.get("interrupted") or trial.user_attrs.get("over_budget"):
        return False
    return trial.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING,
                           TrialState.PRUNED)


class _Runner:
    """One worker: runs trials of the study until the budget is spent."""

    def __init__(self, settings: Settings, out: Path, connect, tell, device_info):
        from edgekit.fsutil import sha256_tree

        self.s, self.out, self.tell = settings, out, tell
        self.connect = connect or settings.connect_options()
        self.spec = settings.spec()
        self.device_info = device_info
        self.cache = BuildCache(out / "cache", settings.model_sha256,
                                sha256_tree(settings.calibration), settings.train)
        from edgekit.recipe import FileRef

        self.train_ref = FileRef.of(settings.train) if settings.train else None
        self.labelled = _labelled(settings.eval)
        self.gate = ConvertOptions(max_accuracy_drop=settings.constraints.max_accuracy_drop) \
            if self.labelled else None
        self.base = ConvertOptions(input_shapes={k: tuple(v) for k, v in
                                                 settings.input_shapes.items()})
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, study) -> None:
        done = sum(counted(t) for t in study.get_trials(deepcopy=False))
        left = self.s.budget - done
        if left <= 0:
            self.tell(f"budget of {self.s.budget} trials already spent")
            return
        study.optimize(self.objective, n_trials=left, timeout=self.s.time_budget_s,
                       catch=(TrialFailed,), callbacks=[self._stop_when_spent])

    def _stop_when_spent(self, study, trial) -> None:
        if sum(counted(t) for t in study.get_trials(deepcopy=False)) >= self.s.budget:
            study.stop()

    def objective(self, trial):
        import optuna

        others = [t for t in trial.study.get_trials(deepcopy=False)
                  if t.number != trial.number and counted(t)]
        if len(others) >= self.s.budget:
            trial.set_user_attr("over_budget", True)
            trial.study.stop()
            raise optuna.TrialPruned("budget spent")
        trial.set_user_attr("worker", self.worker)
        params = self.s.space.suggest(trial)
        # The raw tools' defaults are measured on the device even when they miss the gate: how
        # much a default loses there is what the comparison is for (the constraints judge it).
        gate = OPEN_GATE if trial.user_attrs.get("role") == "tool-default" else self.gate
        recipe = recipe_from_params(params, gate, self.train_ref)
        trial.set_user_attr("recipe", recipe.to_dict())
        self.tell(f"trial {trial.number}: {recipe.name}")
        started = time.perf_counter()
        monitor = self._monitor(trial, recipe)
        try:
            m = self._measure(trial, recipe, monitor)
        except optuna.TrialPruned as e:  # a hopeless fine-tune: Optuna records it as PRUNED
            trial.set_user_attr("pruned_reason", str(e))
            if monitor is not None:
                trial.set_user_attr("epoch_drops", monitor.drops)
            trial.set_user_attr("seconds", time.perf_counter() - started)
            self.tell(f"trial {trial.number}: {recipe.name} pruned: {e}")
            raise
        except TrialFailed as e:
            trial.set_user_attr("failed_stage", e.stage)
            trial.set_user_attr("error", str(e))
            trial.set_user_attr("seconds", time.perf_counter() - started)
            self.tell(f"trial {trial.number}: {recipe.name} failed ({e.stage}): {e}")
            # Told to the sampler as a measured result that breaks every constraint, with the
            # worst values: a FAIL trial would be ignored and the sampler would propose the
            # same doomed recipe again (it did: 4 of 24 MobileNetV2 trials). edgekit's rows
            # and report show it as failed, with its cause.
            for name in self.s.constraints.names():
                trial.set_constraint(name, FAILED_VALUE)
            trial.set_user_attr("constraints", [FAILED_VALUE] * len(self.s.constraints.names()))
            return (FAILED_VALUE,) * len(VALUES)
        m["seconds"] = time.perf_counter() - started
        for k, v in m.items():
            trial.set_user_attr(k, v)
        violations = self.s.constraints.violations(m, self.s.size_key)
        trial.set_user_attr("constraints", violations)
        for name, value in zip(self.s.constraints.names(), violations):
            trial.set_constraint(name, value)  # the sampler prefers trials meeting them
        return tuple(float(m[self.s.size_key if k == "bytes" else k]) for k in VALUES)

    def _monitor(self, trial, recipe):
        """A FinetuneMonitor for a recipe that fine-tunes (needs labelled eval data), or None."""
        margin = self.s.space.finetune_stop_margin
        if not (recipe.prune and int(recipe.prune.get("epochs") or 0) and self.labelled) \
                or margin is None:
            return None
        import numpy as np

        from edgekit.optimizer_pruner import FinetuneMonitor

        with np.load(self.s.eval, allow_pickle=False) as d:
            x, y = d["x"], d["y"]
        return FinetuneMonitor(open_storage(self.s.storage), self.s.study_name, trial.number, x, y,
                               self._original_accuracy(trial.study),
                               self.s.constraints.max_accuracy_drop + margin)

    def _measure(self, trial, recipe, monitor=None) -> dict:
        from edgekit.bench import benchmark
        from edgekit.results import ResultStore

        art = self.cache.build(recipe, self.s.model, calibration=self.s.calibration,
                               eval=self.s.eval, base=self.base,
                               callbacks=None if monitor is None else
                               (lambda student: [monitor.callback(student)]))
        if monitor is not None:
            monitor.finish()
            trial.set_user_attr("epoch_drops", monitor.drops)
        from converters.sparsity import file_sizes

        fid = art.fidelity
        sizes = file_sizes(art.path)  # what an app store / OTA update ships, measured
        m = {"artifact": str(art.path), "sha256": art.sha256, "bytes": art.bytes,
             "gzip_bytes": sizes["gzip_bytes"], "zstd_bytes": sizes["zstd_bytes"],
             "format": art.format, "precision": art.precision,
             "source_accuracy": fid.source_accuracy if fid else None,
             "host_accuracy": fid.accuracy if fid else None,
             "sqnr_db": fid.sqnr_db if fid else None,
             "top1_agreement": getattr(fid, "top1_agreement", None) if fid else None,
             "task": getattr(fid, "task", None) if fid else None,
             "task_metric": getattr(fid, "task_metric", None) if fid else None}
        memory_limit = 1 if fault_for(recipe.name) == "run" else None
        bench_eval = Path(self.s.eval) if self.s.eval and self.s.eval.endswith(".npz") else None
        with _device_lock(self.out, self.spec.name), \
                ResultStore(self.out / RESULTS_DB) as store:
            self.tell(f"trial {trial.number}: measuring {recipe.name} on {self.spec.name}")
            res = benchmark([art], devices=[self.spec], connect=self.connect, store=store,
                            runs=self.s.runs, warmup=max(2, min(10, self.s.runs // 5)),
                            threads=recipe.threads, xnnpack=recipe.xnnpack,
                            ort_opt_level=recipe.ort_opt_level, eval=bench_eval,
                            host_reference=self.spec.name != "local",
                            timeout=self.s.trial_timeout_s, memory_limit_mb=memory_limit)[0]
        m["result_id"] = res.id
        if not res.ok:
            self._check_device(trial, res.error)
            raise TrialFailed("benchmark", res.error or "the device run failed")
        metrics = res.metrics or {}
        lat = metrics.get("latency_ms") or {}
        m["p50_ms"], m["p90_ms"] = lat.get("p50"), lat.get("p90")
        m["peak_rss_bytes"] = (metrics.get("memory") or {}).get("peak_rss_bytes")
        top1 = (metrics.get("accuracy") or {}).get("top1")
        if recipe.trains and self.labelled:
            # the conversion compared with the new model: the drop is against the original
            m["source_accuracy"] = self._original_accuracy(trial.study)
        m["accuracy"] = float(top1) if top1 is not None else m["host_accuracy"]
        m["accuracy_source"] = "device" if top1 is not None else "host"
        if m["accuracy"] is not None and m["source_accuracy"] is not None:
            m["accuracy_drop"] = 100.0 * (m["source_accuracy"] - m["accuracy"])
        elif m["top1_agreement"] is not None:  # no labels: disagreement with the source
            m["accuracy_drop"] = 100.0 * (1.0 - m["top1_agreement"])
        elif (m["task_metric"] or {}).get("name") in UNIT_MEASURES \
                and m["task_metric"].get("value") is not None:
            # detection F1 / mask IoU / cosine against the source (1.0 = the source's own):
            # the points of that measure lost are the trial's accuracy drop
            m["accuracy_drop"] = 100.0 * (1.0 - m["task_metric"]["value"])
        else:
            m["accuracy_drop"] = 0.0
        if m["p50_ms"] is None:
            raise TrialFailed("benchmark", "the agent reported no latency")
        return m

    def _original_accuracy(self, study):
        """The unpruned source's top-1 on the eval data, from a trial that converted it."""
        for t in study.get_trials(deepcopy=False):
            recipe = t.user_attrs.get("recipe") or {}
            if t.user_attrs.get("source_accuracy") is not None \
                    and not any(recipe.get(k) for k in TRAINING_STEPS):
                return t.user_attrs["source_accuracy"]
        from converters.sources import load_source
        import numpy as np

        src = load_source(Path(self.s.model), input_shapes=self.base.input_shapes)
        with np.load(self.s.eval, allow_pickle=False) as d:
            x, y = d["x"], d["y"]
        return float(np.mean(np.argmax(src.predict({src.inputs[0].name: x})[0], -1) == y))

    def _check_device(self, trial, error) -> None:
        """A failed run: is the device still there? If not, pause the search."""
        from edgekit.devices.device import Device

        try:
            with Device.open(self.spec, self.connect) as dev:
                dev.probe()
        except DeviceError as e:
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("error", f"device lost: {e}")
            trial.study.enqueue_trial(trial.params, user_attrs={
                k: v for k, v in trial.user_attrs.items() if k == "role"})
            finished = sum(counted(t) for t in trial.study.get_trials(deepcopy=False)) - 1
            raise DevicePaused(
                f"device {self.spec.name} stopped answering ({e}); the search is paused after "
                f"{finished} trial(s), which are kept: run `edgekit optimize --resume "
                f"{self.out}` when it is back") from e


# Task measures on a 0..1 scale where the source scores 1.0 (see edgekit.fidelity.tasks).
UNIT_MEASURES = ("detection_f1", "mask_iou", "cosine")


@contextlib.contextmanager
def _device_lock(out: Path, device: str):
    """One measurement at a time per device among the workers of this machine: runs must not
    disturb each other (builds of other trials go on meanwhile)."""
    import fcntl

    folder = out / "locks"
    folder.mkdir(exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device)
    with open(folder / f"{safe}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _labelled(eval_path: str | None) -> bool:
    if not eval_path or not eval_path.endswith(".npz"):
        return False
    import numpy as np

    with np.load(eval_path, allow_pickle=False) as data:
        return "y" in data.files


from edgekit.optimizer_report import Study, TrialRow  # noqa: E402  (the result types)

__all__ = ["optimize", "resume", "read_settings", "Study", "TrialRow", "Constraints",
           "SearchSpace", "DevicePaused", "OBJECTIVES", "SIZE_METRICS", "BEST_RECIPE", "REPORT",
           "STUDY_FILE"]

"""One trial of an ``optimize`` study: build its recipe (``build``), gate its fidelity on the
host, measure it on the device (``benchmark``, stored in ``results.db``) and record the values
Optuna minimises on the trial.

Failures are results: a failed build, a gate miss or a crash on the device is a failed trial
with its cause, told to the sampler as breaking every constraint so it is not proposed again; a
device that stops answering pauses the search (``DevicePaused``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from converters.options import ConvertOptions
from edgekit.errors import DeviceError
from edgekit.perlayer import top_op_type
from edgekit.recipe import TRAINING_STEPS, FileRef
from edgekit.search.build import BuildCache, TrialFailed, fault_for
from edgekit.search.settings import (
    FAILED_VALUE,
    OPEN_GATE,
    RESULTS_DB,
    VALUES,
    DevicePaused,
    Settings,
    open_storage,
)
from edgekit.search.space import recipe_from_params


def counted(trial) -> bool:
    """Whether a trial spends budget: finished, failed, pruned (a fine-tune stopped as
    hopeless) or running; not interrupted ones (re-run) nor ones stopped before starting
    because the budget was spent."""
    from optuna.trial import TrialState

    if trial.user_attrs.get("interrupted") or trial.user_attrs.get("over_budget"):
        return False
    return trial.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING,
                           TrialState.PRUNED)


class TrialRunner:
    """One worker: runs trials of the study until the budget is spent (``run``), one trial per
    ``objective`` call."""

    def __init__(self, settings: Settings, out: Path, connect, tell, device_info):
        from edgekit.fsutil import sha256_tree

        self.s, self.out, self.tell = settings, out, tell
        self.connect = connect or settings.connect_options()
        self.spec = settings.spec()
        self.device_info = device_info
        self.cache = BuildCache(out / "cache", settings.model_sha256,
                                sha256_tree(settings.calibration), settings.train)
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
        for name, value in zip(self.s.constraints.names(), violations, strict=True):
            trial.set_constraint(name, value)  # the sampler prefers trials meeting them
        return tuple(float(m[self.s.size_key if k == "bytes" else k]) for k in VALUES)

    def _monitor(self, trial, recipe):
        """A FinetuneMonitor for a recipe that fine-tunes (needs labelled eval data), or None."""
        margin = self.s.space.finetune_stop_margin
        if not (recipe.prune and int(recipe.prune.epochs or 0) and self.labelled) \
                or margin is None:
            return None
        import numpy as np

        from edgekit.search.pruner import FinetuneMonitor

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
        with device_lock(self.out, self.spec.name), \
                ResultStore(self.s.results_db or self.out / RESULTS_DB) as store:
            self.tell(f"trial {trial.number}: measuring {recipe.name} on {self.spec.name}")
            res = benchmark([art], devices=[self.spec], connect=self.connect, store=store,
                            runs=self.s.runs, warmup=max(2, min(10, self.s.runs // 5)),
                            threads=recipe.threads, xnnpack=recipe.xnnpack,
                            ort_opt_level=recipe.ort_opt_level, eval=bench_eval,
                            host_reference=self.spec.name != "local",
                            timeout=self.s.trial_timeout_s, memory_limit_mb=memory_limit,
                            per_layer=self.s.per_layer)[0]
        m["result_id"] = res.id
        if not res.ok:
            self._check_device(trial, res.error)
            raise TrialFailed("benchmark", res.error or "the device run failed")
        metrics = res.metrics or {}
        top = top_op_type(metrics)  # with --per-layer: where the time goes on the device
        m["top_op"] = list(top) if top else None
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
        import numpy as np

        from converters.sources import load_source

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
def device_lock(out: Path, device: str):
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

__all__ = ["TrialRunner", "counted", "device_lock"]

"""What ``optimize`` prepares before a search that trains: the architecture-scaling students
of the source and the cost estimates of that training and of compression fine-tunes, told
(``progress`` lines starting "estimate:") and written (``arch_estimate.json``,
``compress_estimate.json``) before any trial runs."""

from __future__ import annotations

import logging
from pathlib import Path

from edgekit.errors import InputError
from edgekit.search.space import SearchSpace

log = logging.getLogger(__name__)


def arch_students(source: Path, fmt: str, space: SearchSpace, train, out: Path,
                   progress) -> SearchSpace:
    """The space with the students of ``source``; their training cost is estimated and told
    (``progress`` lines starting "estimate:", ``arch_estimate.json``) before anything runs."""
    from dataclasses import replace as _replace

    from edgekit.fsutil import write_json_atomic
    from edgekit.train_api import load_keras_model
    from edgekit.training import students as arch

    if fmt not in ("keras", "h5"):
        raise InputError(f"architecture scaling rebuilds keras.applications models (.keras/.h5), "
                         f"not {fmt}")
    fam = arch.recognise(load_keras_model(source), source)
    students = arch.candidates(fam, space.arch_alphas, space.arch_resolution_scales)
    if not students:
        raise InputError(f"no student smaller than {source.name} ({fam.describe()}) among "
                         f"alphas {list(space.arch_alphas)} and resolution scales "
                         f"{list(space.arch_resolution_scales)}")
    est = arch.estimate(source, train, students, space.arch_epochs)
    write_json_atomic(out / "arch_estimate.json", est)
    tell = progress or (lambda msg: None)
    for name, e in est["students"].items():
        msg = (f"estimate: student {name}: {space.arch_epochs} epoch(s) x "
               f"{e['steps_per_epoch']} steps x {1000 * e['step_s']:.0f} ms/step measured = "
               f"{e['seconds']:.0f} s of distillation")
        log.info(msg)
        tell(msg)
    tell(f"estimate: architecture scaling, {len(students)} student(s) of {fam.describe()}: "
         f"about {est['seconds']:.0f} s of training if each is tried once")
    return _replace(space, arch_students=students)


def compress_estimate(source: Path, space: SearchSpace, train, out: Path, progress) -> None:
    """Tell the compression fine-tunes' cost before anything runs (``progress`` lines starting
    "estimate:", ``compress_estimate.json``)."""
    from edgekit.fsutil import write_json_atomic
    from edgekit.training.compress import estimate

    settings = [(s, k) for s in space.compress_sparsities for k in space.compress_clusters]
    est = estimate(source, train, settings)
    est["epochs"] = list(space.compress_epochs)
    write_json_atomic(out / "compress_estimate.json", est)
    tell = progress or (lambda msg: None)
    lo, hi = min(space.compress_epochs), max(space.compress_epochs)
    for name, e in est["settings"].items():
        msg = (f"estimate: compress {name}: {e['phases']} fine-tune(s) x {lo}-{hi} epoch(s) x "
               f"{est['steps_per_epoch']} steps x {1000 * est['step_s']:.0f} ms/step measured "
               f"= {lo * e['seconds_per_epoch']:.0f}-{hi * e['seconds_per_epoch']:.0f} s")
        log.info(msg)
        tell(msg)
    tell(f"estimate: compression, {len(est['settings'])} setting(s): about "
         f"{lo * est['seconds_per_epoch']:.0f}-{hi * est['seconds_per_epoch']:.0f} s of "
         "fine-tuning if each is tried once (the clustering loop's steps cost more than the "
         "plain step measured)")


__all__ = ["arch_students", "compress_estimate"]

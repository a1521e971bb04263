"""The Python API behind `edgekit prune`, `edgekit distill`, `edgekit qat`, `edgekit profile`.

Models are ``keras.Model`` values or ``.keras``/``.h5`` paths (loaded in safe mode); data are
``(x, y)`` arrays, a ``calibration_data.Dataset`` with labels, or a ``.npz``/``.npy``/``.csv`` path
or image folder that ``calibration_data.load_dataset`` reads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Union

import numpy as np

from converters.distill import DistillSpec, FitSpec
from converters.pruning.spec import PruneSpec
from edgekit.errors import InputError, ModelLoadError

log = logging.getLogger(__name__)

ModelArg = Union[str, os.PathLike, "object"]
DataArg = Union[str, os.PathLike, tuple, "object", None]


def load_keras_model(model: ModelArg):
    """A ``keras.Model`` from a value or a ``.keras``/``.h5`` path (safe mode, not compiled).

    Raises:
        ModelLoadError: a missing or unreadable file, or not a Keras model.
    """
    import keras

    if isinstance(model, keras.Model):
        return model
    path = Path(model)
    if not path.is_file():
        raise ModelLoadError(f"model not found: {path}")
    if path.suffix.lower() not in (".keras", ".h5", ".hdf5"):
        raise ModelLoadError(f"{path}: training-side tools take Keras models (.keras or .h5), "
                             f"got {path.suffix or 'no suffix'!r}")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (ValueError, OSError, TypeError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(f"cannot load Keras model {path}: {msg}") from e


def load_training_data(data: DataArg, model, role: str = "train"):
    """``(x, y)`` arrays for a single-input classifier, checked against it.

    Raises:
        InputError / CalibrationError: unreadable data, or data that do not fit the model.
    """
    from calibration_data import Dataset, load_dataset
    from converters.distill import check_training_data
    from edgekit.spec import TensorSpec

    if data is None:
        raise InputError(f"no {role} data given")
    if isinstance(data, tuple) and len(data) == 2:
        return check_training_data(model, data[0], data[1], role)
    if not isinstance(data, Dataset):
        if len(model.inputs) != 1:
            raise InputError(f"model {model.name!r} has {len(model.inputs)} inputs; training here "
                             f"supports single-input models")
        t = model.inputs[0]
        spec = [TensorSpec(t.name, tuple(t.shape), np.dtype(t.dtype).name)]
        data = load_dataset(data, spec, role=role)
    x = next(iter(data.inputs.values()))
    return check_training_data(model, x, data.labels, role)


def save_model(model, out) -> Path:
    """Write ``model`` to ``out`` (a ``.keras`` file, atomically), weights only: a compiled
    model's optimizer state is left out. Returns ``out``.

    Raises:
        InputError: ``out`` is not a .keras path, or its folder cannot be created.
    """
    from edgekit.fsutil import atomic_output

    out = Path(out)
    if out.suffix != ".keras":
        raise InputError(f"output {out}: models are written as .keras files")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder {out.parent}: {e}") from e
    if getattr(model, "optimizer", None) is not None:
        # Ship weights only: optimizer state would double or triple the file.
        import keras

        cls = keras.Sequential if isinstance(model, keras.Sequential) else keras.Model
        clean = cls.from_config(model.get_config())
        clean.set_weights(model.get_weights())
        model = clean
    with atomic_output(out) as tmp:
        model.save(tmp)
    return out


def prune(model: ModelArg, ratio: float = PruneSpec.ratio, *,
          criterion=PruneSpec.criterion.value, round_to: int = PruneSpec.round_to,
          global_ranking: bool = PruneSpec.global_ranking,
          min_channels: int = PruneSpec.min_channels,
          protect_first_last: bool = PruneSpec.protect_first_last,
          protect=(), train: DataArg = None, epochs: int = 0, distill: bool = False,
          temperature: float = DistillSpec.temperature, alpha: float = DistillSpec.alpha,
          batch_size: int = FitSpec.batch_size, learning_rate: float = FitSpec.learning_rate,
          plan=None, out=None, return_plan: bool = False):
    """Structured pruning: remove channels, rebuild a smaller model, optionally fine-tune it.

    Args:
        model: ``keras.Model`` or ``.keras``/``.h5`` path.
        ratio, criterion, round_to, global_ranking, min_channels, protect_first_last, protect:
            see ``converters.pruning.PruneSpec``.
        train: training data, for fine-tuning (``epochs > 0``) and the taylor criterion.
        epochs: fine-tuning epochs after pruning (0 = none).
        distill: fine-tune with the original model as a frozen teacher.
        temperature, alpha: distillation options (``converters.distill.DistillSpec``).
        batch_size, learning_rate: fine-tuning options.
        plan: a ``PruningPlan`` (or a path to one) to replay instead of planning.
        out: if given, the pruned model is written there (``.keras``); the plan beside it as
            ``<out>.plan.json``.
        return_plan: return ``(model, plan)`` instead of the model.

    Returns:
        The pruned ``keras.Model`` (and the plan with ``return_plan``).

    Raises:
        InputError: a subclassed model, bad options, data that do not fit, a plan for another
            model. Unsupported layers are not errors: they are left unpruned with a
            ``PruningWarning`` naming them.
    """
    from converters.distill import DistillSpec, FitSpec, fit
    from converters.pruning import PruneSpec, PruningPlan, apply_plan, plan_pruning

    source = load_keras_model(model)
    spec = PruneSpec(ratio=ratio, criterion=criterion, round_to=round_to,
                     global_ranking=global_ranking, min_channels=min_channels,
                     protect_first_last=protect_first_last, protect=tuple(protect))
    fit_spec = FitSpec(epochs=max(1, int(epochs)), batch_size=batch_size,
                       learning_rate=learning_rate)
    dspec = DistillSpec(temperature=temperature, alpha=alpha) if distill else None
    if (epochs or distill) and train is None:
        raise InputError("fine-tuning (epochs > 0 or distill) needs training data (--train)")
    if distill and not epochs:
        raise InputError("distill fine-tunes the pruned model: give epochs >= 1")
    data = load_training_data(train, source) if train is not None else None
    if plan is None:
        plan = plan_pruning(source, spec, data=data)
    elif not isinstance(plan, PruningPlan):
        plan = PruningPlan.load(plan)
    pruned = apply_plan(source, plan)
    if epochs:
        fit(pruned, data[0], data[1], fit_spec, teacher=source if distill else None,
            distill_spec=dspec)
    if out is not None:
        save_model(pruned, out)
        plan.save(Path(out).with_suffix(".plan.json"))
    return (pruned, plan) if return_plan else pruned


def distill(student: ModelArg, teacher: ModelArg, train: DataArg, *,
            temperature: float = DistillSpec.temperature, alpha: float = DistillSpec.alpha,
            epochs: int = 10, batch_size: int = FitSpec.batch_size,
            learning_rate: float = FitSpec.learning_rate, eval: DataArg = None, out=None):
    """Train ``student`` from a frozen ``teacher`` on labelled data.

    Args:
        student, teacher: ``keras.Model`` values or paths; a path student is loaded and trained.
        train: labelled training data.
        temperature, alpha: see ``converters.distill.DistillSpec``.
        epochs, batch_size, learning_rate: see ``converters.distill.FitSpec``.
        eval: optional labelled data; its accuracy is logged and returned.
        out: write the trained student there (``.keras``).

    Returns:
        ``(student, {"loss", "accuracy"})``.

    Raises:
        InputError: data or models that do not fit each other.
    """
    from converters.distill import DistillSpec, FitSpec
    from converters.distill import distill as run

    s, t = load_keras_model(student), load_keras_model(teacher)
    x, y = load_training_data(train, s)
    val = load_training_data(eval, s, role="eval") if eval is not None else None
    result = run(s, t, x, y, DistillSpec(temperature, alpha),
                 FitSpec(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate), val)
    if out is not None:
        save_model(s, out)
    return s, result


def sparsify(model: ModelArg, spec=None, *, train: DataArg = None, epochs: int = 0,
             batch_size: int = 32, learning_rate: float = 1e-4, out=None):
    """Unstructured or 2:4 magnitude sparsity (one-shot, or gradual while fine-tuning).

    Only the compressed size shrinks (dense formats store zeros); CPU latency rarely improves.

    Args:
        model: ``keras.Model`` (a copy is sparsified) or ``.keras``/``.h5`` path.
        spec: ``converters.sparsity.SparsitySpec`` (default: 80% unstructured, polynomial).
        train: labelled data for fine-tuning (needed when ``epochs > 0``).
        epochs, batch_size, learning_rate: fine-tuning options.
        out: write the sparse model there (``.keras``); sizes are then reported.

    Returns:
        ``(sparse model, report)``; the report has ``sparsity`` (measured over the pruned
        kernels), ``kernels``, ``kept_dense`` and ``sparsity_all_kernels`` (see
        ``converters.sparsity.sparsify``) and ``params`` (the spec), and with ``out`` also
        ``dense_bytes``, ``dense_gzip_bytes``, ``sparse_bytes``, ``sparse_gzip_bytes`` and
        ``record``, the ``<out>.compression.json`` recording technique ``"magnitude"``, its
        parameters (``keep_sensitive`` included) and the layers kept dense.

    Raises:
        InputError: bad options, data that do not fit, or nothing to sparsify.
    """
    import tempfile

    import keras

    from converters.sparsity import SparsitySpec, gzip_size
    from converters.sparsity import sparsify as run

    spec = spec or SparsitySpec()
    source = load_keras_model(model)
    if epochs and train is None:
        raise InputError("fine-tuning (epochs > 0) needs training data (--train)")
    data = load_training_data(train, source) if train is not None else None
    sparse = keras.models.clone_model(source)
    sparse.set_weights(source.get_weights())
    report = run(sparse, spec, data=data, epochs=epochs, batch_size=batch_size,
                 learning_rate=learning_rate)
    report["params"] = spec.to_dict()
    if out is not None:
        save_model(sparse, out)
        with tempfile.TemporaryDirectory() as tmp:
            dense = Path(tmp) / "dense.keras"
            source.save(dense)
            report.update(dense_bytes=dense.stat().st_size, dense_gzip_bytes=gzip_size(dense))
        report.update(sparse_bytes=Path(out).stat().st_size, sparse_gzip_bytes=gzip_size(out))
        from edgekit.compression_record import write_record

        report["record"] = str(write_record(out, {
            "technique": "magnitude", **spec.to_dict(), "epochs": epochs,
            "learning_rate": learning_rate if epochs else None,
            "kept_dense": report["kept_dense"], "sparsity_measured": report["sparsity"],
            "sparsity_all_kernels": report["sparsity_all_kernels"]}))
    return sparse, report


def qat(model: ModelArg, train: DataArg, *, epochs: int = 3, batch_size: int = 32,
        learning_rate: float = 1e-4, ema_decay: float = 0.99, out=None):
    """Quantization-aware fine-tuning; convert the result with the ``tflite-int8`` target.

    Args:
        model: ``keras.Model`` (not changed) or ``.keras``/``.h5`` path; Sequential or functional.
        train: labelled training data.
        epochs, batch_size, learning_rate, ema_decay: see ``converters.qat.QATSpec``.
        out: write the exported model there (``.keras``).

    Returns:
        ``(exported model, {"ranges": learned activation ranges per layer, "loss"})``.

    Raises:
        InputError: a subclassed model, bad options, or data that do not fit.
    """
    from converters.qat import QATSpec
    from converters.qat import qat as run

    source = load_keras_model(model)
    x, y = load_training_data(train, source)
    spec = QATSpec(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                   ema_decay=ema_decay)
    exported, report = run(source, x, y, spec)
    if out is not None:
        save_model(exported, out)
    return exported, report


def _record(out, report: dict, source_sizes: dict | None) -> dict:
    """Sizes of the written model (measured) and the sidecar ``<out>.compression.json``
    (``edgekit.compression_record``) recording the technique and its parameters."""
    from converters.sparsity import file_sizes
    from edgekit.compression_record import write_record

    report = {**report, "sizes": file_sizes(out)}
    if source_sizes is not None:
        report["source_sizes"] = source_sizes
    report["record"] = str(write_record(out, report))
    return report


def _source_sizes(source) -> dict:
    """Measured sizes of the source model saved as the output is (weights only, no optimizer
    state), so that the two files compare like for like."""
    import tempfile

    from converters.sparsity import file_sizes

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "source.keras"
        save_model(source, path)
        return file_sizes(path)


def copy_model(source):
    """A copy of a functional or Sequential model with its weights (the caller's model is never
    changed).

    Raises:
        InputError: a model Keras cannot clone (e.g. a subclassed one).
    """
    import keras

    try:
        copy = keras.models.clone_model(source)
    except (ValueError, TypeError, NotImplementedError) as e:
        raise InputError(f"model {source.name!r} cannot be copied ({e}); save it as a "
                         f"functional or Sequential .keras model to compress it") from e
    copy.set_weights(source.get_weights())
    return copy


def cluster(model: ModelArg, clusters: int = 16, *, per_channel: bool = False,
            init: str = "kmeans++", preserve_sparsity: bool = False, layers=(),
            fold_batchnorm: bool = True, train: DataArg = None, epochs: int = 0,
            batch_size: int = 32,
            learning_rate: float = 3e-4, out=None):
    """Weight clustering: at most ``clusters`` shared values per layer (or per channel).

    Args:
        model: ``keras.Model`` (a copy is clustered) or ``.keras``/``.h5`` path.
        clusters, per_channel, init, preserve_sparsity, layers, fold_batchnorm: see
            ``converters.clustering.ClusterSpec`` (BatchNorm is folded into the layer before it
            by default, so the converted file holds <= k values per layer).
        train: labelled data for fine-tuning the centroids (needed when ``epochs > 0``).
        epochs, batch_size, learning_rate: fine-tuning options (``converters.train_loop``).
        out: write the clustered model there (``.keras``), with ``<out>.compression.json``;
            measured sizes are then reported.

    Returns:
        ``(clustered model, report)``: ``converters.clustering.cluster``'s report, plus
        ``sizes``/``source_sizes`` (bytes, gzip_bytes, zstd_bytes) and ``record`` with ``out``.
        Layers that could not be clustered are in ``skipped`` and raise a ``ClusteringWarning``.

    Raises:
        InputError: bad options (clusters < 2, more clusters than a named layer's weights, a
            named layer that cannot be clustered), nothing to cluster, or data that do not fit.
    """
    from converters.clustering import ClusterSpec, cluster_copy
    from converters.clustering import cluster as run
    from converters.train_loop import LoopSpec

    spec = ClusterSpec(clusters=clusters, per_channel=per_channel, init=init,
                       preserve_sparsity=preserve_sparsity, layers=tuple(layers),
                       fold_batchnorm=fold_batchnorm)
    if epochs and train is None:
        raise InputError("fine-tuning (epochs > 0) needs training data (--train)")
    loop = LoopSpec(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate) \
        if epochs else None
    source = load_keras_model(model)
    data = load_training_data(train, source) if epochs else None
    if fold_batchnorm:
        clustered, report = cluster_copy(source, spec, data=data, loop_spec=loop)
    else:
        clustered = copy_model(source)
        report = {**run(clustered, spec, data=data, loop_spec=loop), "batchnorm_folded": []}
    report.update(epochs=epochs, learning_rate=learning_rate if epochs else None)
    if out is not None:
        save_model(clustered, out)
        report = _record(out, report, _source_sizes(source))
    return clustered, report


def lottery_ticket(model: ModelArg, sparsity: float = 0.8, *, rounds: int = 4,
                   rewind_epoch: int = 1, train: DataArg = None, epochs: int = 8,
                   batch_size: int = 32, learning_rate: float = 1e-3,
                   distribution: str = "erk", keep_sensitive: bool = False,
                   eval: DataArg = None, out=None):
    """Lottery-ticket pruning: iterative magnitude pruning with rewinding.

    Args:
        model: ``keras.Model`` (a copy is trained) or ``.keras``/``.h5`` path; its weights are
            where training starts (an initialisation, or a trained model to re-train sparse).
        sparsity, rounds, rewind_epoch, epochs, batch_size, learning_rate: see
            ``converters.lottery.LotterySpec``.
        distribution, keep_sensitive: see ``converters.lottery.LotterySpec``.
        train: labelled training data (required).
        eval: optional labelled data; accuracy per round is then reported.
        out: write the ticket there (``.keras``) with ``<out>.compression.json``.

    Returns:
        ``(ticket model, report)`` (``converters.lottery.lottery_ticket``'s report, plus
        measured sizes with ``out``).

    Raises:
        InputError: sparsity outside (0, 1), rewind epoch not below ``epochs``, missing data.
    """
    from converters.lottery import LotterySpec
    from converters.lottery import lottery_ticket as run

    spec = LotterySpec(sparsity=sparsity, rounds=rounds, rewind_epoch=rewind_epoch,
                       epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                       distribution=distribution, keep_sensitive=keep_sensitive)
    if train is None:
        raise InputError("lottery-ticket pruning trains the model: give training data (--train)")
    source = load_keras_model(model)
    x, y = load_training_data(train, source)
    val = load_training_data(eval, source, role="eval") if eval is not None else None
    ticket = copy_model(source)
    report, _ = run(ticket, spec, x, y, validation=val)
    if out is not None:
        save_model(ticket, out)
        report = _record(out, report, _source_sizes(source))
    return ticket, report


def sparse_train(model: ModelArg, sparsity: float = 0.9, *, method: str = "rigl",
                 train: DataArg = None, epochs: int = 10, batch_size: int = 32,
                 learning_rate: float = 1e-3, drop_fraction: float = 0.3,
                 update_every: int = 20, distribution: str = "erk",
                 keep_sensitive: bool = False, out=None):
    """Dynamic sparse training at a fixed sparsity (RigL drop-and-grow).

    Args:
        model: ``keras.Model`` (a copy is trained) or ``.keras``/``.h5`` path.
        sparsity, drop_fraction, update_every, distribution, keep_sensitive: see ``converters.rigl.RigLSpec``.
        method: ``"rigl"`` (the only method so far).
        train: labelled training data (required).
        epochs, batch_size, learning_rate: training options (``converters.train_loop``).
        out: write the sparse model there (``.keras``) with ``<out>.compression.json``.

    Returns:
        ``(sparse model, report)`` (``converters.rigl.rigl``'s report, plus measured sizes with
        ``out``).

    Raises:
        InputError: an unknown method, sparsity outside (0, 1), missing data.
    """
    from converters.rigl import RigLSpec, rigl
    from converters.train_loop import LoopSpec

    if method != "rigl":
        raise InputError(f"sparse training method must be 'rigl', got {method!r}")
    spec = RigLSpec(sparsity=sparsity, drop_fraction=drop_fraction, update_every=update_every,
                    distribution=distribution, keep_sensitive=keep_sensitive)
    loop = LoopSpec(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate)
    if train is None:
        raise InputError("sparse training trains the model: give training data (--train)")
    source = load_keras_model(model)
    x, y = load_training_data(train, source)
    sparse = copy_model(source)
    report = rigl(sparse, spec, x, y, loop)
    report.update(epochs=epochs, learning_rate=learning_rate)
    if out is not None:
        save_model(sparse, out)
        report = _record(out, report, _source_sizes(source))
    return sparse, report


def profile(model: ModelArg):
    """Parameters, MACs/FLOPs, distinct kernel values and sparsity per layer, and sizes.

    Returns:
        ``edgekit.profiling.ModelProfile`` (``.to_dict()`` for JSON); given a path, its
        ``file`` holds the file's measured bytes, gzip bytes and zstd bytes.

    Raises:
        ModelLoadError: a path that is not a loadable Keras model.
    """
    from converters.sparsity import file_sizes
    from edgekit.profiling import profile_model

    prof = profile_model(load_keras_model(model))
    if isinstance(model, (str, os.PathLike)):
        prof.file = file_sizes(model)
    return prof


__all__ = ["cluster", "copy_model", "distill", "load_keras_model", "load_training_data",
           "lottery_ticket", "profile", "prune", "qat", "save_model", "sparse_train", "sparsify"]


_MODEL_IN_OUT = "<the model written to out>"  # stands for a keras.Model crossing processes


def supervised(fn, *args, **kwargs):
    """Run one of this module's training functions (``qat``, ``prune``, ``distill``,
    ``sparsify``, ``cluster``, ...) in a supervised child process: a crash of TensorFlow's
    native code raises :class:`edgekit.supervise.NativeCrash` here, after one retry with oneDNN
    off (``TF_ENABLE_ONEDNN_OPTS=0``), instead of killing this process. Calling the functions
    directly runs them in this process, unsupervised.

    Models and data go as paths, and ``out`` is required: the child writes the trained model
    there and it is loaded back here.

    Returns:
        what ``fn`` returns, each ``keras.Model`` in it replaced by the model loaded from ``out``.

    Raises:
        InputError: no ``out``; whatever ``fn`` raises; NativeCrash: the child crashed twice.
    """
    from edgekit import supervise

    if kwargs.get("out") is None:
        raise InputError(f"{fn.__name__} in a supervised process needs out= (the .keras file "
                         f"the trained model is written to)")
    result = supervise.call(_run_for_parent, fn.__name__, args, kwargs, what=fn.__name__,
                            retry_onednn_off=True)
    def restored(value):
        is_model = isinstance(value, str) and value == _MODEL_IN_OUT
        return load_keras_model(kwargs["out"]) if is_model else value

    return tuple(restored(r) for r in result) if isinstance(result, tuple) else restored(result)


def _run_for_parent(name: str, args: tuple, kwargs: dict):
    """In the supervised child: run ``name`` and return its result without Keras models."""
    import keras

    result = globals()[name](*args, **kwargs)

    def plain(value):
        return _MODEL_IN_OUT if isinstance(value, keras.Model) else value

    return tuple(plain(r) for r in result) if isinstance(result, tuple) else plain(result)

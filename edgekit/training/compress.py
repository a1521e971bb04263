"""A recipe's ``compress`` step: magnitude sparsity and/or weight clustering of a Keras source,
fine-tuned on the training data, before it is converted.

``Recipe.compress`` is a ``CompressStep`` (``sparsity``, ``clusters``, ``epochs``,
``learning_rate``, ``seed``, ``train``). Sparsity is gradual magnitude
sparsity (``converters.sparsity``, polynomial schedule over the fine-tune, the first conv and
depthwise kernels left dense: ``keep_sensitive``); clusters then share ``clusters`` values per
layer over the weights that survived (``converters.clustering``, BatchNorm folded first, zeros
kept exactly zero when sparsity was applied), the centroids fine-tuned on the same data. Both
use ``epochs`` and ``learning_rate``; 0 epochs is one-shot pruning and plain k-means.

Dense files keep their size; what shrinks is the compressed file an app store or OTA update
ships (gzip/zstd: ``converters.sparsity.file_sizes``), which ``optimize --size-metric`` measures.
The compressed model is written with its ``<model>.compression.json`` record, so ``convert``
copies the technique and its parameters into the manifest's ``source.compression``.

Seeded, with TensorFlow's deterministic ops and Keras' name counters reset, the same source and
data give the same weights, so a recipe with ``compress`` replays to the same artifact bytes.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from edgekit.errors import InputError
from edgekit.recipe import CompressStep, check_compress

log = logging.getLogger(__name__)

def technique(compress: CompressStep) -> str:
    """``magnitude``, ``clustering`` or ``magnitude+clustering`` (the compression record's)."""
    return "+".join(t for t, on in (("magnitude", compress.sparsity),
                                    ("clustering", compress.clusters)) if on)


def setting_name(sparsity, clusters) -> str:
    """E.g. ``sparse80-k16``, ``sparse50``, ``k32`` (0 or None: that step is not applied)."""
    return "-".join(p for p, on in ((f"sparse{round(100 * (sparsity or 0))}", sparsity),
                                    (f"k{int(clusters or 0)}", clusters)) if on)


def compress_name(compress: CompressStep) -> str:
    """The recipe-name part, e.g. ``sparse80-k16-e1-lr0.0003``."""
    return (f"{setting_name(compress.sparsity, compress.clusters)}"
            f"-e{int(compress.epochs)}-lr{float(compress.learning_rate):g}")


def compress_source(model, compress: CompressStep, train, path) -> Path:
    """Write ``model`` compressed as ``compress`` says to ``path`` (``.keras``), with its
    ``.compression.json`` record beside it.

    Args:
        model: a ``.keras``/``.h5`` path (the source, or the pruned/student model).
        compress: ``Recipe.compress`` (a ``CompressStep``, or its document).
        train: training data for the fine-tune (needed when ``epochs`` > 0).
        path: where the compressed model goes.

    Raises:
        InputError: no training data for a fine-tune, bad values, a model with nothing to
            sparsify or cluster.
    """
    import keras
    import tensorflow as tf

    from converters.clustering import ClusterSpec, cluster_copy
    from converters.sparsity import SparsitySpec, file_sizes, sparsify
    from converters.train_loop import LoopSpec
    from edgekit.compression_record import write_record
    from edgekit.train_api import copy_model, load_keras_model, load_training_data, save_model

    compress = CompressStep.of(check_compress(
        compress.to_dict() if isinstance(compress, CompressStep) else compress))
    epochs = int(compress.epochs)
    lr = float(compress.learning_rate)
    seed = int(compress.seed)
    if train is None and epochs:
        raise InputError("this recipe compresses the model and fine-tunes it: pass the training "
                         "data (--train)" + (f", e.g. {compress.train.path}"
                                             if compress.train and compress.train.path
                                             else ""))
    # Layers built here without a name take one from a per-process counter, and names reach
    # the artifact's tensor names: reset it, so a model compressed after others has the same
    # bytes.
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    source = load_keras_model(model)
    data = load_training_data(train, source) if epochs else None
    record = {"technique": technique(compress), "epochs": epochs,
              "learning_rate": lr if epochs else None, "seed": seed}
    net = source
    sparsity = compress.sparsity
    if sparsity:
        spec = SparsitySpec(sparsity=float(sparsity), keep_sensitive=True)
        net = copy_model(source)
        rep = sparsify(net, spec, data=data, epochs=epochs, learning_rate=lr)
        record.update({**spec.to_dict(), "kept_dense": rep["kept_dense"],
                       "sparsity_measured": rep["sparsity"],
                       "sparsity_all_kernels": rep["sparsity_all_kernels"]})
    clusters = compress.clusters
    if clusters:
        spec = ClusterSpec(clusters=int(clusters), preserve_sparsity=bool(sparsity), seed=seed)
        loop = LoopSpec(epochs=epochs, learning_rate=lr, seed=seed) if epochs else None
        net, rep = cluster_copy(net, spec, data=data, loop_spec=loop)
        params = spec.to_dict()
        params.pop("only_layers", None)
        record.update({**params, "layers": rep["layers"], "skipped": rep["skipped"],
                       "batchnorm_folded": rep["batchnorm_folded"]})
    path = Path(path)
    save_model(net, path)
    record["sizes"] = file_sizes(path)
    write_record(path, record)
    return path


def estimate(model, train, compress_settings: list, batch_size: int = 32) -> dict:
    """Seconds of fine-tuning the compressed recipes will cost here: epochs × steps per epoch ×
    phases (sparsity, clustering) × a measured step time (a few real training steps of the
    source on the training data; the first, which traces the graph, not counted).

    Args:
        compress_settings: ``[(sparsity or 0, clusters or 0)]``, the combinations searched.

    Returns:
        ``{"step_s", "steps_per_epoch", "settings": {name: {"phases", "seconds_per_epoch"}},
        "seconds_per_epoch"}`` (the last: every setting tried once, per epoch of fine-tune).
    """
    import keras

    from converters.distill import output_kind, task_loss
    from converters.train_loop import step_clock
    from edgekit.train_api import copy_model, load_keras_model, load_training_data

    source = load_keras_model(model)
    x, y = load_training_data(train, source)
    steps = max(1, math.ceil(len(x) / batch_size))
    probe_n = min(len(x), 5 * batch_size)

    net = copy_model(source)
    net.compile(optimizer=keras.optimizers.Adam(1e-4), loss=task_loss(output_kind(net, x)))
    clock = step_clock()
    net.fit(x[:probe_n], y[:probe_n], epochs=1, batch_size=batch_size, verbose=0,
            callbacks=[clock])
    step = clock.step_s()
    out = {}
    for s, k in compress_settings:
        if not s and not k:
            continue
        phases = bool(s) + bool(k)
        out[setting_name(s, k)] = {"phases": phases,
                                   "seconds_per_epoch": phases * steps * step}
    return {"step_s": step, "steps_per_epoch": steps, "settings": out,
            "seconds_per_epoch": sum(v["seconds_per_epoch"] for v in out.values())}


__all__ = ["compress_name", "compress_source", "estimate", "setting_name", "technique"]

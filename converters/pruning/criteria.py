"""Channel importance scores of a coupled group (higher = more important = kept).

Each producer's scores are divided by their mean before they are summed, so layers of different
scale meeting at a residual add weigh alike, and scores of different groups are comparable for a
global ranking.
"""

from __future__ import annotations

import logging

import numpy as np

from converters.pruning.graph import NORM, DependencyGraph, Group
from converters.pruning.spec import Criterion
from edgekit.errors import InputError

log = logging.getLogger(__name__)

# Per role: the weight whose last axis holds a producer's output channels.
_OUT_KERNEL = {"conv": "kernel", "dense": "kernel", "separable": "pointwise_kernel"}


def named_weights(layer) -> dict:
    """``{short weight name: array}`` of a layer (``kernel``, ``bias``, ``gamma``...)."""
    return {v.path.split("/")[-1]: np.asarray(v.numpy() if hasattr(v, "numpy") else v)
            for v in layer.weights}


def group_scores(graph: DependencyGraph, group: Group, criterion: Criterion,
                 grads: dict | None = None) -> tuple[np.ndarray, str]:
    """Score every channel of ``group``.

    Args:
        graph: the model's dependency graph.
        group: a group of that graph.
        criterion: the score.
        grads: for ``Criterion.TAYLOR``: weight path -> gradient (see ``taylor_gradients``).

    Returns:
        ``(scores, criterion actually used)``; ``bn-gamma`` falls back to ``l1`` for groups
        without a BatchNormalization layer.

    Raises:
        InputError: ``Criterion.TAYLOR`` without gradients.
    """
    if criterion == Criterion.BN_GAMMA:
        gammas = []
        for m in group.members:
            if m["role"] == NORM:
                w = named_weights(graph.model.get_layer(m["layer"]))
                if "gamma" in w:
                    gammas.append(_normalised(np.abs(w["gamma"][m["offset"]:m["offset"] + group.size])))
        if gammas:
            return np.sum(gammas, axis=0), criterion.value
        criterion = Criterion.L1
    if criterion == Criterion.TAYLOR and grads is None:
        raise InputError("the taylor criterion needs data: pass training data (x and labels)")
    total = np.zeros(group.size)
    for name in group.producers:
        node = graph.by_name[name]
        layer = graph.model.get_layer(name)
        key = _OUT_KERNEL[node.role]
        w = named_weights(layer)[key]
        axes = tuple(range(w.ndim - 1))
        if criterion == Criterion.L1:
            s = np.abs(w).sum(axis=axes)
        elif criterion == Criterion.L2:
            s = np.sqrt((w.astype(np.float64) ** 2).sum(axis=axes))
        else:
            path = next(v.path for v in layer.weights if v.path.split("/")[-1] == key)
            s = np.abs(w * grads[path]).sum(axis=axes)
            bias = next((v for v in layer.weights if v.path.split("/")[-1] == "bias"), None)
            if bias is not None and bias.path in grads:
                s = s + np.abs(np.asarray(bias.numpy()) * grads[bias.path])
        total += _normalised(s)
    return total, criterion.value


def _normalised(s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    mean = float(s.mean()) if s.size else 0.0
    return s / mean if mean > 0 else s


def taylor_gradients(model, x: np.ndarray, y: np.ndarray | None, batches: int = 4,
                     batch_size: int = 32) -> dict:
    """Accumulated |gradient| of the task loss for every trainable weight, by weight path.

    Args:
        model: a single-input classifier.
        x: inputs; the first ``batches * batch_size`` samples are used.
        y: integer labels, or ``None`` to use the model's own predictions.
        batches: batches to accumulate over.
        batch_size: samples per batch.

    Returns:
        weight path -> summed gradient (same shape as the weight).
    """
    import tensorflow as tf

    from converters.distill import output_kind, task_loss

    x = np.asarray(x)[: batches * batch_size]
    kind = output_kind(model, x[:batch_size])
    if y is None:
        y = np.argmax(model.predict(x, verbose=0, batch_size=batch_size), axis=-1)
    y = np.asarray(y)[: len(x)]
    loss_fn = task_loss(kind)
    acc = {v.path: np.zeros(v.shape, dtype=np.float64) for v in model.trainable_weights}
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=False))
        grads = tape.gradient(loss, model.trainable_weights)
        for v, g in zip(model.trainable_weights, grads, strict=True):
            if g is not None:
                acc[v.path] += np.asarray(g)
    return acc

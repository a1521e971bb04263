"""RigL dynamic sparse training (Evci et al. 2020, "Rigging the Lottery").

The model trains at a fixed sparsity from the first step. Every ``update_every`` steps, in each
kernel, the ``f(t) * active`` smallest-magnitude active weights are dropped and as many inactive
weights with the largest dense-gradient magnitude are grown (set to 0, then trained), where
``f(t)`` is ``drop_fraction`` cosine-decayed to 0 at ``end`` of training; after that the mask is
frozen. Masks start from the magnitudes of the given weights (a trained model keeps its
important weights; a freshly initialised one gets a random-like mask, as in the paper), with the
same sparsity in every kernel. Masks, the sparsity check and the cosine schedule are
``converters.sparsity``'s; the loop is ``converters.train_loop``'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from converters.sparsity import (
    check_fraction,
    cosine_fraction,
    erk_sparsities,
    kernel_masks,
    kernel_sparsity,
    kernels_for,
)
from edgekit.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RigLSpec:
    """RigL options.

    Attributes:
        sparsity: fraction of zeros in each sparse kernel, in (0, 1), held all along.
        drop_fraction: fraction of active weights replaced at the first update, in (0, 1).
        update_every: training steps between drop-and-grow updates (>= 1).
        end: fraction of training after which the mask is frozen, in (0, 1].
        distribution: ``"erk"`` (Erdos-Renyi-Kernel: small kernels denser, the paper's default
            and much better on small models) or ``"uniform"`` (``sparsity`` in every kernel).
            ``sparsity`` is the total over the sparse kernels either way.
        min_params: kernels smaller than this stay dense.
        keep_sensitive: leave the first convolution and DepthwiseConv kernels dense (see
            ``converters.sparsity.SparsitySpec``). Off by default here: the ERK distribution
            already keeps such small kernels far denser than the target.
    """

    sparsity: float = 0.9
    drop_fraction: float = 0.3
    update_every: int = 20
    end: float = 0.75
    distribution: str = "erk"
    min_params: int = 256
    keep_sensitive: bool = False

    def __post_init__(self):
        check_fraction(self.sparsity)
        check_fraction(self.drop_fraction, "drop_fraction")
        if isinstance(self.update_every, bool) or not isinstance(self.update_every, int) \
                or self.update_every < 1:
            raise InputError(f"update_every must be an integer >= 1, got {self.update_every!r}")
        if not isinstance(self.end, (int, float)) or not 0 < self.end <= 1:
            raise InputError(f"end must be in (0, 1], got {self.end!r}")
        if self.distribution not in ("erk", "uniform"):
            raise InputError(f"distribution must be 'erk' or 'uniform', got "
                             f"{self.distribution!r}")

    def to_dict(self) -> dict:
        return {"sparsity": float(self.sparsity), "drop_fraction": float(self.drop_fraction),
                "update_every": int(self.update_every), "end": float(self.end),
                "distribution": self.distribution, "keep_sensitive": self.keep_sensitive}


def drop_and_grow(w: np.ndarray, grad: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """A new keep-mask with the same number of ones: ``n`` weakest active weights dropped,
    ``n`` inactive (after the drop) weights with the largest |gradient| grown."""
    if n <= 0:
        return mask
    m = mask.ravel().copy()
    active = np.flatnonzero(m)
    n = min(n, len(active), m.size - len(active))
    if n <= 0:
        return mask
    drop = active[np.argsort(np.abs(w.ravel()[active]), kind="stable")[:n]]
    m[drop] = 0
    score = np.abs(grad.ravel()).astype(np.float64)
    score[m == 1] = -np.inf
    # Just-dropped weights may come back only if their gradient ranks them so (as in RigL).
    grow = np.argpartition(-score, n - 1)[:n]
    m[grow] = 1
    return m.reshape(mask.shape)


def rigl(model, spec: RigLSpec, x: np.ndarray, y: np.ndarray, loop_spec) -> dict:
    """Train ``model`` in place with RigL at ``spec.sparsity``.

    Args:
        model: a single-output Keras classifier.
        spec: RigL options.
        x, y: labelled training data.
        loop_spec: ``converters.train_loop.LoopSpec`` (epochs, batch size, learning rate).

    Returns:
        ``{"technique": "rigl", **spec, "sparsity_measured", "kernels", "updates", "regrown",
        "loss"}``: ``regrown`` is the fraction of active weights changed over all updates.

    Raises:
        InputError: nothing large enough to sparsify, or data that do not fit.
    """
    import tensorflow as tf

    from converters import train_loop
    from converters.distill import check_training_data

    x, y = check_training_data(model, x, y)
    kernels = kernels_for(model, spec, "train sparse")
    per_kernel = (erk_sparsities(kernels, spec.sparsity) if spec.distribution == "erk"
                  else spec.sparsity)
    init = kernel_masks(kernels, per_kernel)
    masks = [tf.Variable(init[v.path], trainable=False) for _, v in kernels]
    variables = list(model.trainable_variables)
    index = {id(v): i for i, v in enumerate(variables)}
    pos = [index[id(v)] for _, v in kernels]
    by_var = {id(v): j for j, (_, v) in enumerate(kernels)}
    for (_, v), m in zip(kernels, masks, strict=True):
        v.assign(v * m)
    end_step = max(1, int(spec.end * loop_spec.steps(len(x))))
    stats = {"updates": 0, "changed": 0, "active": 0}

    def transform(grads, vs):
        # Masked weights get no update (their Adam moments stay 0); the dense gradient is kept
        # aside for growing.
        return [g * masks[by_var[id(v)]] if id(v) in by_var else g
                for g, v in zip(grads, vs, strict=True)], vs

    def after_step():
        for (_, v), m in zip(kernels, masks, strict=True):
            v.assign(v * m)

    def on_step(step, total, grads):
        if step > end_step:
            return
        frac = cosine_fraction(spec.drop_fraction, step, end_step)
        for j, (_, v) in enumerate(kernels):
            old = masks[j].numpy()
            n = int(frac * old.sum())
            new = drop_and_grow(v.numpy(), grads[pos[j]].numpy(), old, n)
            stats["changed"] += int(np.sum((new == 1) & (old == 0)))
            stats["active"] += int(old.sum())
            masks[j].assign(new)
            v.assign(v.numpy() * new)  # grown weights start at 0
        stats["updates"] += 1

    result = train_loop.train(model, x, y, loop_spec, transform=transform,
                              after_step=after_step, on_step=on_step,
                              hook_every=spec.update_every)
    after_step()
    return {"technique": "rigl", **spec.to_dict(), "sparsity_measured": kernel_sparsity(kernels),
            "kernels": len(kernels), "updates": stats["updates"],
            "regrown": stats["changed"] / max(1, stats["active"]), "loss": result["loss"]}

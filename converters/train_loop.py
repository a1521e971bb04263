"""A small custom training loop for techniques that change what the optimizer sees.

Keras' ``fit`` applies the gradient of each variable to that variable. Weight clustering needs
the gradient of a kernel summed per cluster and applied to shared centroids; RigL needs the
dense gradient of masked weights to decide where to grow. Both hook into this loop:

* ``before_step()`` runs (inside the compiled step) before the forward pass, e.g. to
  re-materialise ``kernel = centroids[assignments]``;
* ``transform(grads, variables)`` maps ``model.trainable_variables`` gradients to the
  ``(gradients, variables)`` the optimizer applies;
* ``after_step()`` runs after the optimizer update, e.g. to re-apply a mask;
* ``on_step(step, grads)`` runs eagerly every ``hook_every`` steps with the last gradients
  (RigL's drop-and-grow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from converters.distill import check_training_numbers


@dataclass(frozen=True)
class LoopSpec:
    """Training options of the custom loop.

    Attributes:
        epochs: passes over the data (>= 1).
        batch_size: samples per step.
        learning_rate: Adam's initial learning rate (cosine-decayed to 0 over the run).
        seed: shuffling seed.
    """

    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        check_training_numbers(self)

    def steps(self, samples: int) -> int:
        return self.epochs * math.ceil(samples / self.batch_size)


def train(model, x: np.ndarray, y: np.ndarray, spec: LoopSpec, *, optimizer_variables=None,
          before_step: Optional[Callable] = None, transform: Optional[Callable] = None,
          after_step: Optional[Callable] = None, on_step: Optional[Callable] = None,
          hook_every: int = 0) -> dict:
    """Train ``model`` in place on integer labels ``y`` with Adam and a cosine learning rate.

    Args:
        model: a single-output classifier (probabilities or logits).
        x, y: training data (already checked against the model).
        spec: epochs, batch size, learning rate, seed.
        optimizer_variables: what ``transform`` returns variables for (default: the model's
            trainable variables), e.g. the centroids instead of the clustered kernels.
        before_step, transform, after_step, on_step, hook_every: see the module docstring.

    Returns:
        ``{"loss": mean loss of the last epoch, "steps": steps run}``.
    """
    import keras
    import tensorflow as tf

    from converters.distill import output_kind, task_loss

    loss_fn = task_loss(output_kind(model, x))
    total = spec.steps(len(x))
    opt = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(spec.learning_rate, total))
    variables = list(model.trainable_variables)
    if transform is None:
        def transform(grads, vs):
            return grads, vs
    opt.build(list(optimizer_variables) if optimizer_variables is not None else variables)

    @tf.function(reduce_retracing=True)
    def step(xb, yb):
        if before_step is not None:
            before_step()
        with tf.GradientTape() as tape:
            pred = model(xb, training=True)
            loss = loss_fn(yb, pred)
            if model.losses:
                loss = loss + tf.add_n(model.losses)
        grads = tape.gradient(loss, variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables, strict=True)]
        g2, v2 = transform(grads, variables)
        opt.apply(g2, v2)
        if after_step is not None:
            after_step()
        return loss, grads

    rng = np.random.default_rng(spec.seed)
    n, done, last = len(x), 0, 0.0
    for _ in range(spec.epochs):
        order = rng.permutation(n)
        losses = []
        for i in range(0, n, spec.batch_size):
            idx = order[i:i + spec.batch_size]
            loss, grads = step(tf.constant(x[idx]), tf.constant(y[idx]))
            losses.append(float(loss))
            done += 1
            if on_step is not None and hook_every and done % hook_every == 0:
                on_step(done, total, grads)
        last = float(np.mean(losses))
    if before_step is not None:
        before_step()  # the model's variables end up as the loop's last state
    return {"loss": last, "steps": done}


def step_clock():
    """A Keras callback timing each training step; ``.step_s()`` is the mean seconds per step,
    the first step (graph tracing) left out when there are others. Cost estimates ("N epochs x
    S steps x this") are built on it."""
    import time

    import keras

    class _StepClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times, self._t = [], 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._t)

        def step_s(self) -> float:
            timed = self.times[1:] or self.times
            return sum(timed) / max(1, len(timed))

    return _StepClock()

"""Lottery-ticket pruning: iterative magnitude pruning with rewinding (Frankle & Carbin 2019;
Frankle et al. 2020 for rewinding to an early epoch instead of the initialisation).

Train for ``epochs``, remembering the weights at the end of epoch ``rewind_epoch``
(0 = the weights given). Then ``rounds`` times: prune the smallest-magnitude surviving weights
of each kernel (every round removes the same fraction of the survivors, reaching ``sparsity``
at the last round), reset the survivors *and every other weight* to the rewind point, and
train ``epochs - rewind_epoch`` epochs with the mask held fixed. The ticket is the last round's
model. Masks and the schedule are ``converters.sparsity``'s.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from converters.distill import check_training_numbers
from converters.sparsity import (
    apply_fixed_masks,
    check_fraction,
    erk_sparsities,
    fixed_mask_callback,
    kernel_masks,
    kernel_sparsity,
    kernels_for,
    round_sparsity,
)
from edgekit.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LotterySpec:
    """Lottery-ticket options.

    Attributes:
        sparsity: final fraction of zeros in each pruned kernel, in (0, 1).
        rounds: prune-rewind-retrain rounds (>= 1).
        rewind_epoch: epoch whose weights the survivors are reset to (0 = the given weights);
            must be < ``epochs``.
        epochs: training epochs of the first (dense) run; each round trains
            ``epochs - rewind_epoch``.
        batch_size, learning_rate: Adam options; the learning rate decays (cosine) over
            ``epochs`` and is rewound together with the weights.
        distribution: ``"erk"`` (small kernels kept denser at the same total sparsity, see
            ``converters.sparsity.erk_sparsities``) or ``"uniform"`` (every kernel alike).
        min_params: kernels smaller than this stay dense.
        keep_sensitive: leave the first convolution and DepthwiseConv kernels dense (see
            ``converters.sparsity.SparsitySpec``). Off by default here: the ERK distribution
            already keeps such small kernels far denser than the target.
        seed: shuffling seed.
    """

    sparsity: float = 0.8
    rounds: int = 4
    rewind_epoch: int = 1
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-3
    distribution: str = "erk"
    min_params: int = 256
    keep_sensitive: bool = False
    seed: int = 0

    def __post_init__(self):
        check_fraction(self.sparsity)
        check_training_numbers(self, ("rounds", "epochs", "batch_size"))
        r = self.rewind_epoch
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0:
            raise InputError(f"rewind_epoch must be an integer >= 0, got {r!r}")
        if r >= self.epochs:
            raise InputError(f"rewind_epoch {r} is beyond training: the dense run trains "
                             f"{self.epochs} epochs, so rewind to an epoch in [0, "
                             f"{self.epochs - 1}] or train longer")
        if self.distribution not in ("erk", "uniform"):
            raise InputError(f"distribution must be 'erk' or 'uniform', got "
                             f"{self.distribution!r}")

    def to_dict(self) -> dict:
        return {"sparsity": float(self.sparsity), "rounds": int(self.rounds),
                "rewind_epoch": int(self.rewind_epoch), "epochs": int(self.epochs),
                "batch_size": int(self.batch_size), "learning_rate": float(self.learning_rate),
                "distribution": self.distribution, "keep_sensitive": self.keep_sensitive}


def _fit(model, x, y, spec: LotterySpec, epochs: int, callbacks=()) -> float:
    """Train the last ``epochs`` of the run's schedule: the learning rate is cosine-decayed over
    ``spec.epochs`` and rewound with the weights (the step counter starts at the rewind point)."""
    import keras

    from converters.distill import output_kind, task_loss

    keras.utils.set_random_seed(spec.seed)
    per_epoch = math.ceil(len(x) / spec.batch_size)
    opt = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
        spec.learning_rate, spec.epochs * per_epoch))
    opt.build(model.trainable_variables)
    opt.iterations.assign((spec.epochs - epochs) * per_epoch)
    model.compile(optimizer=opt, loss=task_loss(output_kind(model, x)))
    hist = model.fit(x, y, epochs=epochs, batch_size=spec.batch_size, verbose=0, shuffle=True,
                     callbacks=list(callbacks))
    return float(hist.history["loss"][-1])


def lottery_ticket(model, spec: LotterySpec, x: np.ndarray, y: np.ndarray,
                   validation=None) -> tuple[dict, dict]:
    """Find a lottery ticket of ``model`` in place.

    Args:
        model: a single-output Keras classifier; its current weights are the starting point.
        spec: lottery options.
        x, y: labelled training data (checked against the model).
        validation: optional ``(x, y)``; accuracy per round is then reported.

    Returns:
        ``(report, masks)``: the report has ``technique``, the spec, ``sparsity`` (measured),
        ``kernels`` and ``rounds`` (sparsity, loss and accuracy per round, round 0 = dense);
        ``masks`` maps kernel variable paths to keep-masks (for a random re-init control).

    Raises:
        InputError: nothing large enough to prune, or data that do not fit.
    """
    import keras

    from converters.distill import accuracy, check_training_data

    x, y = check_training_data(model, x, y)
    kernels = kernels_for(model, spec, "prune")
    rewind = {"weights": model.get_weights() if spec.rewind_epoch == 0 else None}

    class _Remember(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == spec.rewind_epoch:
                rewind["weights"] = model.get_weights()

    def acc():
        return accuracy(model, *validation) if validation is not None else None

    rounds = [{"round": 0, "sparsity": 0.0,
               "loss": _fit(model, x, y, spec, spec.epochs, [_Remember()]), "accuracy": acc()}]
    masks = None
    for r in range(1, spec.rounds + 1):
        s = round_sparsity(spec.sparsity, r, spec.rounds)
        # Magnitude of the *trained* weights decides; the mask only ever shrinks because
        # pruned weights are 0 and rank last.
        masks = kernel_masks(kernels, erk_sparsities(kernels, s) if spec.distribution == "erk"
                             else s)
        model.set_weights(rewind["weights"])
        apply_fixed_masks(kernels, masks)
        loss = _fit(model, x, y, spec, spec.epochs - spec.rewind_epoch,
                    [fixed_mask_callback(kernels, masks)])
        apply_fixed_masks(kernels, masks)
        rounds.append({"round": r, "sparsity": kernel_sparsity(kernels), "loss": loss,
                       "accuracy": acc()})
        log.info("lottery round %d: sparsity %.3f, loss %.4f", r, s, loss)
    report = {"technique": "lottery-ticket", **spec.to_dict(),
              "sparsity_measured": kernel_sparsity(kernels), "kernels": len(kernels),
              "rounds": rounds}
    return report, masks


def random_reinit_control(model, masks: dict, spec: LotterySpec, x: np.ndarray, y: np.ndarray,
                          seed: int = 1):
    """The paper's control: the ticket's mask on freshly initialised weights, trained as long.

    Args:
        model: the model the masks came from (not changed).
        masks: ``lottery_ticket``'s masks.
        spec: the same options (epochs - rewind_epoch epochs are trained, like one round).
        x, y: training data.
        seed: initialisation seed of the fresh weights.

    Returns:
        The trained control model.
    """
    import keras

    keras.utils.set_random_seed(seed)
    fresh = keras.models.clone_model(model)  # clone_model re-runs the initialisers
    kernels = kernels_for(fresh, spec)
    src = _kernel_vars(model, spec)  # same layers, same order in the clone
    fresh_masks = {v.path: masks[s.path] for (_, v), s in zip(kernels, src, strict=True)}
    apply_fixed_masks(kernels, fresh_masks)
    _fit(fresh, x, y, spec, spec.epochs - spec.rewind_epoch,
         [fixed_mask_callback(kernels, fresh_masks)])
    apply_fixed_masks(kernels, fresh_masks)
    return fresh


def _kernel_vars(model, spec: LotterySpec) -> list:
    return [v for _, v in kernels_for(model, spec)]

"""Stop hopeless fine-tunes early: Optuna's pruner on the pruning dimension's fine-tuning.

A trial that prunes channels fine-tunes the smaller model for some epochs before it is converted
and measured. After every epoch its top-1 on the labelled eval data (on the host, in Keras) is
reported as the accuracy drop in points against the source; when the drop is past the accuracy
budget plus a margin, the fine-tune is stopped and the trial ends as *pruned* (Optuna's
``TrialState.PRUNED``: not a failure, and it still spends a trial of the budget).

Optuna's ``Trial.report`` / ``should_prune`` are single-objective only, and the search is
multi-objective (latency, size, accuracy drop). So each fine-tune is a trial of a companion
single-objective study, ``<study name>-finetune``, in the same storage: its intermediate values
are the per-epoch drops, its pruner decides, and several workers share it as they share the
main study. The pruner is ``ThresholdPruner`` on the drop, not ``MedianPruner``: fine-tunes of
different pruning ratios are not peers, and a 50%-pruned model worse than the median of
25%-pruned ones may still be within budget and the fastest recipe.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

FINETUNE_SUFFIX = "-finetune"


class FinetuneMonitor:
    """Reports each epoch of one fine-tune and stops it when it cannot meet the budget.

    Args:
        storage: the main study's Optuna storage (the companion study lives beside it).
        study_name: the main study's name.
        trial_number: the main trial's number (recorded on the companion trial).
        eval_x / eval_y: labelled eval data (top-1 on it after each epoch).
        source_accuracy: the unpruned source's top-1 on the same data (0..1).
        max_drop: accuracy points beyond which the fine-tune is hopeless (budget + margin).

    Attributes:
        drops: accuracy drop (points) after each epoch so far.
        pruned_at: the epoch (1-based) it was stopped after, or None.
    """

    def __init__(self, storage, study_name: str, trial_number: int, eval_x, eval_y,
                 source_accuracy: float, max_drop: float):
        import optuna

        self.x, self.y = eval_x, np.asarray(eval_y).reshape(-1)
        self.source_accuracy, self.max_drop = float(source_accuracy), float(max_drop)
        self.companion = optuna.create_study(
            storage=storage, study_name=study_name + FINETUNE_SUFFIX,
            direction="minimize", load_if_exists=True,
            pruner=optuna.pruners.ThresholdPruner(upper=self.max_drop))
        self.trial = self.companion.ask()
        self.trial.set_user_attr("main_trial", int(trial_number))
        self.drops: list[float] = []
        self.pruned_at: int | None = None

    def callback(self, student):
        """A Keras callback reporting ``student``'s drop after every epoch (``student`` is the
        model being fine-tuned; Keras hands the callback the distillation wrapper instead)."""
        import keras

        monitor = self

        class _Report(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                monitor.report(student, epoch)

        return _Report()

    def report(self, student, epoch: int) -> None:
        """Report the drop after ``epoch`` (0-based).

        Raises:
            optuna.TrialPruned: the drop is past ``max_drop``.
        """
        import optuna

        from converters.distill import accuracy

        acc = accuracy(student, self.x, self.y)
        drop = 100.0 * (self.source_accuracy - acc)
        self.drops.append(drop)
        self.trial.report(drop, epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch + 1
            self.companion.tell(self.trial, state=optuna.trial.TrialState.PRUNED)
            raise optuna.TrialPruned(
                f"fine-tune stopped after epoch {epoch + 1}: {drop:.1f} points below the source "
                f"on the eval data (hopeless past {self.max_drop:g})")

    def finish(self) -> None:
        """The fine-tune ran to its end: its last drop is the companion trial's value."""
        if self.pruned_at is None and self.drops:
            self.companion.tell(self.trial, self.drops[-1])


__all__ = ["FinetuneMonitor", "FINETUNE_SUFFIX"]

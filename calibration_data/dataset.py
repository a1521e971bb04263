"""The in-memory data set handed to converters: named inputs, optional labels, a fingerprint."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgekit.errors import InputError

from .errors import data_error
from .layouts import Layout, SampleFeeds, one_at_a_time, sample_feed
from .validate import check_labels, check_same_length

log = logging.getLogger(__name__)


class Dataset:
    """Samples for every model input (leading sample axis), with optional int labels.

    Arrays are held read-only so the fingerprint stays true to what is fed. Each input is held
    in a :class:`~calibration_data.layouts.Layout`: batched (``[N, *shape[1:]]``) or N samples
    of the model's full input shape (``[N, *shape]``, for inputs whose batch axis is not first
    and scalars). When any input is full-shape, every sample is fed on its own.

    Attributes:
        path: where the data came from (``None`` when built from arrays).
        inputs: input name -> array, already cast to the model's dtype.
        layouts: input name -> layout of its array.
        labels: int64 class ids, one per sample, or ``None``.
        role: ``"calibration"`` or ``"eval"``, used in messages.
    """

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        labels: np.ndarray | None = None,
        *,
        path: Path | str | None = None,
        role: str = "calibration",
        layouts: dict[str, Layout] | None = None,
    ) -> None:
        """Wrap already-checked arrays.

        Args:
            inputs: input name -> array with a leading sample axis.
            labels: class ids, one per sample.
            path: where the data came from.
            role: ``"calibration"`` or ``"eval"``.
            layouts: input name -> layout; inputs left out are batched.

        Raises:
            CalibrationError: no inputs, inputs of different lengths, bad labels, or layouts
                naming no input.
        """
        self.path = Path(path) if path is not None else None
        self.role = role
        if not inputs:
            raise data_error(role, self.path, "expected at least one input, found none")
        layouts = dict(layouts or {})
        unknown = sorted(set(layouts) - set(inputs))
        if unknown:
            raise data_error(role, self.path, f"layouts given for {unknown}, which are not "
                             f"among the inputs {sorted(inputs)}",
                             hint="name the layouts after the inputs")
        self.layouts = {k: Layout(layouts.get(k, Layout.BATCHED)) for k in inputs}
        n = check_same_length(inputs, role=role, path=self.path)
        self.inputs = {name: _frozen(np.asarray(a)) for name, a in inputs.items()}
        self.labels = (None if labels is None
                       else _frozen(check_labels(labels, n, role=role, path=self.path)))
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {a.dtype}{list(a.shape)} {self.layouts[k].value}"
                           for k, a in self.inputs.items())
        return (f"Dataset({self.role}, {self.path}, {len(self)} samples, {shapes}, "
                f"labels={'yes' if self.labels is not None else 'no'})")

    @property
    def fingerprint(self) -> str:
        """sha256 over input names, dtypes, shapes and bytes held, then the labels.

        Inputs are hashed in sorted name order, so the dict's order does not matter.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name in sorted(self.inputs):
                _hash_array(h, "input", name, self.inputs[name])
            if self.labels is not None:
                _hash_array(h, "labels", "", self.labels)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @property
    def one_at_a_time(self) -> bool:
        """Whether samples must be fed one by one: some input holds full-shape samples, whose
        axis 0 is not a batch axis along which samples could be joined."""
        return one_at_a_time(self.layouts)

    def feeds(self) -> SampleFeeds:
        """All samples as ``{input_name: array}`` with the layouts, for
        :func:`edgekit.verify.run_batched`."""
        return SampleFeeds(self.inputs, self.layouts)

    def sample(self, index: int) -> dict[str, np.ndarray]:
        """The model's feed for one sample: every input at its full shape (batch of 1 where
        the batch axis is first)."""
        return sample_feed(self.inputs, self.layouts, index)

    def batches(self, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Yield model feeds in order; the last one may be smaller.

        When :attr:`one_at_a_time`, every feed is one sample at the inputs' full shapes,
        whatever ``batch_size`` asks.

        Args:
            batch_size: samples per batch, at least 1.

        Returns:
            An iterator of ``{input_name: array}`` dicts ready to feed the model.

        Raises:
            InputError: batch_size below 1.
        """
        for inputs, _ in self.labeled_batches(batch_size):
            yield inputs

    def labeled_batches(
        self, batch_size: int = 1
    ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Like :meth:`batches`, but yield ``(inputs, labels)``; labels are ``None`` if absent.

        Args:
            batch_size: samples per batch, at least 1.

        Returns:
            An iterator of ``(inputs, labels)`` pairs.

        Raises:
            InputError: batch_size below 1.
        """
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        batch_size = int(batch_size)
        if self.one_at_a_time:
            for i in range(len(self)):
                yield self.sample(i), None if self.labels is None else self.labels[i:i + 1]
            return
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            labels = None if self.labels is None else self.labels[start:stop]
            yield {k: a[start:stop] for k, a in self.inputs.items()}, labels

    def take(self, n: int, seed: int = 0, *, strict: bool = False) -> "Dataset":
        """A seeded sample of ``n`` samples, stratified by label when labels exist.

        Args:
            n: how many samples to keep.
            seed: seed of the sampling; the same seed gives the same samples.
            strict: raise when fewer than ``n`` samples exist; otherwise keep them all and
                log a warning.

        Returns:
            A new :class:`Dataset` (or this one, when it holds ``n`` samples or fewer).

        Raises:
            CalibrationError: ``strict`` and fewer than ``n`` samples.
            InputError: ``n`` below 1.
        """
        if int(n) < 1:
            raise InputError(f"the number of {self.role} samples must be at least 1, got {n}")
        if not needs_sampling(len(self), int(n), strict=strict, role=self.role, path=self.path):
            return self
        return self.subset(sample_indices(len(self), int(n), self.labels, seed))

    def subset(self, indices) -> "Dataset":
        """The samples at ``indices`` (in that order), with this set's origin and layouts."""
        idx = np.asarray(indices, dtype=np.int64)
        labels = None if self.labels is None else self.labels[idx]
        return Dataset({k: a[idx] for k, a in self.inputs.items()}, labels,
                       path=self.path, role=self.role, layouts=self.layouts)

    def describe(self) -> dict:
        """What goes into the manifest.

        Returns:
            ``{"path": str | None, "sha256": fingerprint, "samples": len,
            "layouts": {input_name: "batched" | "full-shape"}}``.
        """
        return {"path": str(self.path) if self.path is not None else None,
                "sha256": self.fingerprint, "samples": len(self),
                "layouts": {k: v.value for k, v in self.layouts.items()}}


def needs_sampling(total: int, n: int, *, strict: bool, role: str, path) -> bool:
    """Whether ``n`` of ``total`` samples means drawing a sample, and refuse too few if strict.

    Args:
        total: samples available.
        n: samples asked for.
        strict: raise when ``total < n``; otherwise log a warning and use all of them.
        role: ``"calibration"`` or ``"eval"``, for messages.
        path: where the data came from, for messages.

    Returns:
        ``True`` when ``total > n``.

    Raises:
        CalibrationError: ``strict`` and ``total < n``.
    """
    if total < n:
        if strict:
            raise data_error(role, path, f"too few samples: expected at least {n}, found {total}",
                             hint=f"add samples or ask for {total} samples or fewer "
                                  "(--calibration-samples)")
        log.warning("%s data %s: %d samples asked for, only %d exist; using all",
                    role, path, n, total)
    return total > n


def sample_indices(total: int, n: int, labels: np.ndarray | None, seed: int) -> np.ndarray:
    """Choose ``n`` of ``total`` indices, seeded, stratified by label when labels exist.

    Each class gets its proportional share of ``n`` (largest remainder rounding, ties to the
    larger class, then the smaller class id), drawn at random within the class.

    Args:
        total: number of samples to choose from.
        n: how many to choose (``n <= total``).
        labels: class id per sample, or ``None`` for a plain random choice.
        seed: seed for :func:`numpy.random.default_rng`.

    Returns:
        Sorted int64 indices, so the kept samples stay in their original order.
    """
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(total, size=n, replace=False)).astype(np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (n / total)
    take = np.floor(quota).astype(np.int64)
    short = n - int(take.sum())
    # Largest remainder first; among equal remainders the bigger class, then the lower id.
    order = sorted(range(len(classes)), key=lambda i: (-(quota[i] - take[i]), -counts[i], i))
    for i in order[:short]:
        take[i] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
              for c, k in zip(classes, take, strict=True) if k]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def top1_accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose highest-scoring class is the label.

    Args:
        outputs: scores of shape (N, K).
        labels: class ids of shape (N,).

    Returns:
        Accuracy in [0, 1].

    Raises:
        InputError: outputs and labels of different lengths.
    """
    outputs = np.asarray(outputs)
    labels = np.asarray(labels)
    if len(outputs) != len(labels):
        raise InputError(f"accuracy needs one output row per label, got {len(outputs)} rows "
                         f"and {len(labels)} labels")
    if len(labels) == 0:
        return 0.0
    pred = outputs.reshape(len(outputs), -1).argmax(axis=1)
    return float(np.mean(pred == labels))


def _frozen(a: np.ndarray) -> np.ndarray:
    # Copy what could still be written through someone else's reference, then lock it.
    if a.flags.writeable:
        a = a.copy()
        a.flags.writeable = False
    return a


def _hash_array(h, kind: str, name: str, a: np.ndarray) -> None:
    header = f"{kind}\0{name}\0{a.dtype.str}\0{','.join(map(str, a.shape))}\0"
    h.update(header.encode())
    h.update(np.ascontiguousarray(a).tobytes())

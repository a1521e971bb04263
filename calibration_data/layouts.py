"""How a data file lays out the samples of one model input, and how a sample becomes a feed.

Most models take their batch on the first axis, so a file holds ``[N, *dims after the batch]``
and a run can feed several samples at once. Some do not: a streaming model's recurrent state
``[2, batch, 128]`` has its batch on axis 1, and a scalar input ``[]`` (a sample rate) has none.
For those a file holds N samples of the input's full shape, ``[N, 2, 1, 128]`` or ``[N]``, and
every run feeds one sample at a time: the samples cannot be joined along axis 0, which is not
their batch axis.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgekit.spec import TensorSpec, format_shape

from .errors import data_error


class Layout(str, enum.Enum):
    """Where the samples of one input sit in its array."""

    #: ``[N, *shape[1:]]``: the sample axis replaces the model's batch axis; sample ``i`` is fed
    #: as ``a[i:i+1]``, and consecutive samples may be fed together.
    BATCHED = "batched"
    #: ``[N, *shape]``: N samples of the model's full input shape; sample ``i`` is fed as
    #: ``a[i]``, one at a time.
    FULL_SHAPE = "full-shape"


def batch_first(spec: TensorSpec) -> bool:
    """Whether the model's first axis of this input is its batch axis.

    It is when that axis is dynamic, or when no axis is dynamic at all (a model exported with a
    fixed batch, e.g. ``[1, 224, 224, 3]``). A fixed first axis in front of a dynamic one
    (``[2, batch, 128]``) is a dimension of the tensor, not its batch; a scalar has no axes.

    Args:
        spec: one model input.

    Returns:
        ``True`` when the first axis is the batch axis.
    """
    shape = tuple(spec.shape)
    return bool(shape) and (shape[0] is None or all(d is not None for d in shape[1:]))


def accepted_shapes(spec: TensorSpec) -> str:
    """The data shapes one input accepts, for messages: ``[N,512] or [N,?,512]``.

    Args:
        spec: one model input.

    Returns:
        The accepted shapes, ``N`` standing for the number of samples and ``?`` for any size.
    """
    full = _data_shape(spec.shape)
    return f"{_data_shape(spec.shape[1:])} or {full}" if batch_first(spec) else full


def _data_shape(dims) -> str:
    """``[N,2,?,128]``: N samples of ``dims``."""
    return "[N" + "".join(f",{'?' if d is None else d}" for d in dims) + "]"


def detect_layout(
    array: np.ndarray, spec: TensorSpec, *, role: str, path: Path | str | None
) -> Layout:
    """Tell from its rank and shape which layout one input's array uses, and check its dims.

    Rank ``len(spec.shape) + 1`` is N full-shape samples; rank ``len(spec.shape)`` is batched,
    which only an input whose first axis is the batch axis (:func:`batch_first`) accepts.

    Args:
        array: the data for this input, samples first.
        spec: the model input it feeds.
        role: ``"calibration"`` or ``"eval"``, for messages.
        path: where the data came from, for messages.

    Returns:
        The layout the array uses.

    Raises:
        CalibrationError: no samples, or a shape that fits neither layout, naming the input,
            the shape found and the shapes accepted.
    """
    shape, rank = tuple(array.shape), len(spec.shape)
    model = format_shape(spec.shape)
    if (array.ndim == 0 and rank > 0) or (array.ndim > 0 and shape[0] == 0):
        raise data_error(role, path, f"empty: expected samples of shape {accepted_shapes(spec)} "
                         f"for the model's {model}, found an array of shape {list(shape)}",
                         input_name=spec.name, hint="give at least one sample")
    if array.ndim == rank + 1 and _fits(shape[1:], spec.shape):
        return Layout.FULL_SHAPE
    if array.ndim == rank and batch_first(spec) and _fits(shape[1:], spec.shape[1:]):
        return Layout.BATCHED
    full = _data_shape(spec.shape)
    if array.ndim == rank and rank == 0:
        raise data_error(
            role, path,
            f"layout mismatch: the model's input is a scalar [], so the data must hold one value "
            f"per sample: expected {full}, found a single value (shape [])",
            input_name=spec.name, hint="store one value per sample, e.g. np.full(N, value)")
    if array.ndim == rank and not batch_first(spec):
        raise data_error(
            role, path,
            f"layout mismatch: the model's input is {model}, whose first axis (fixed at "
            f"{spec.shape[0]}) is not its batch axis, so the data must hold N samples of that "
            f"full shape: expected {full}, found {list(shape)}",
            input_name=spec.name,
            hint="stack whole samples along a new first axis, e.g. np.stack(samples)")
    hint = f"reshape the data to {accepted_shapes(spec)}, or check it is meant for this model"
    if array.ndim == rank - 1 and batch_first(spec):
        hint = "the sample axis looks missing: stack samples along a new first axis"
    if batch_first(spec):
        expected = (f"{format_shape((None, *spec.shape[1:]))} (samples first, '?' = any size) "
                    f"or N samples of the full shape {model}, i.e. {full}")
    else:
        expected = f"N samples of the full shape {model}, i.e. {full}"
    raise data_error(role, path, f"shape mismatch: expected {expected}, found {list(shape)}",
                     input_name=spec.name, hint=hint)


def _fits(got: tuple, want: tuple) -> bool:
    return len(got) == len(want) and all(w is None or w == g for w, g in zip(want, got, strict=True))


def normalize(array: np.ndarray, spec: TensorSpec, layout: Layout) -> tuple[np.ndarray, Layout]:
    """Hold full-shape samples of batch 1 as batched data when the batch axis is first.

    ``[N, 1, 8, 8, 1]`` for a ``[?, 8, 8, 1]`` input is the same N samples as ``[N, 8, 8, 1]``;
    holding them batched keeps them feedable together (and keeps code that reads
    ``Dataset.inputs`` as ``[N, ...]`` working). Anything else is returned unchanged.

    Args:
        array: the data, already checked by :func:`detect_layout`.
        spec: the model input.
        layout: what :func:`detect_layout` found.

    Returns:
        ``(array, layout)`` as they are to be held.
    """
    if (layout is Layout.FULL_SHAPE and batch_first(spec) and spec.shape[0] in (None, 1)
            and array.shape[1] == 1):
        return array[:, 0], Layout.BATCHED
    return array, layout


def sample_batch(array: np.ndarray, spec: TensorSpec, layout: Layout) -> int | None:
    """The batch size each sample of this input carries, where the spec tells the batch axis.

    Batched data carry 1 per sample; full-shape data the size of the batch axis: the first
    one when it leads, else the input's only dynamic dim. ``None`` where it cannot be told
    (a scalar, or several dynamic dims).
    """
    if Layout(layout) is Layout.BATCHED:
        return 1
    if batch_first(spec):
        return int(array.shape[1])
    dynamic = [i for i, d in enumerate(spec.shape) if d is None]
    return int(array.shape[1 + dynamic[0]]) if len(dynamic) == 1 else None


def check_batch_agreement(
    arrays: Mapping[str, np.ndarray], layouts: Mapping[str, Layout], spec: list[TensorSpec], *,
    role: str, path: Path | str | None,
) -> None:
    """Refuse full-shape samples whose batch differs between inputs (the model would fail on
    them, far from the file that caused it).

    Raises:
        CalibrationError: naming each input's batch per sample.
    """
    by_name = {s.name: s for s in spec}
    batches = {name: sample_batch(a, by_name[name], layouts.get(name, Layout.BATCHED))
               for name, a in arrays.items() if name in by_name}
    known = {k: v for k, v in batches.items() if v is not None}
    if len(set(known.values())) <= 1:
        return
    found = ", ".join(f"'{k}' {v}" for k, v in known.items())
    raise data_error(role, path, f"inputs disagree on the batch each sample carries: {found}",
                     hint="give every input the same batch per sample (batched inputs carry 1, "
                          "so stack full-shape samples of batch 1, e.g. state [N,2,1,128])")


def one_at_a_time(layouts: Mapping[str, Layout]) -> bool:
    """Whether samples must be fed one by one (some input holds full-shape samples)."""
    return any(Layout(v) is Layout.FULL_SHAPE for v in layouts.values())


def sample_feed(
    arrays: Mapping[str, np.ndarray], layouts: Mapping[str, Layout], index: int
) -> dict[str, np.ndarray]:
    """The model's feed for sample ``index``: each input at its full shape.

    Args:
        arrays: input name -> array, samples first.
        layouts: input name -> layout; inputs not named are batched.
        index: which sample.

    Returns:
        ``{name: array}``: ``a[index:index+1]`` for batched inputs, ``a[index]`` (a 0-d array
        for a scalar input, never a numpy scalar) for full-shape ones.
    """
    return {name: (a[index, ...] if Layout(layouts.get(name, Layout.BATCHED)) is Layout.FULL_SHAPE
                   else a[index:index + 1])
            for name, a in arrays.items()}


class SampleFeeds(dict):
    """``{input_name: array}`` with a leading sample axis, plus the layout of each input.

    A plain dict to whoever indexes it; :func:`edgekit.verify.run_batched` reads ``layouts`` to
    feed full-shape samples one at a time. Slicing it into a new dict loses the layouts: build
    a new one with :meth:`select` instead.

    Attributes:
        layouts: input name -> :class:`Layout`; inputs not named are batched.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray],
                 layouts: Mapping[str, Layout] | None = None) -> None:
        super().__init__(arrays)
        self.layouts = {k: Layout(v) for k, v in (layouts or {}).items()}

    def select(self, index) -> "SampleFeeds":
        """The samples at ``index`` (a slice or an index array), keeping the layouts."""
        return SampleFeeds({k: a[index] for k, a in self.items()}, self.layouts)


__all__ = ["Layout", "SampleFeeds", "accepted_shapes", "batch_first", "check_batch_agreement",
           "detect_layout", "normalize", "one_at_a_time", "sample_batch", "sample_feed"]

"""Checks that loaded arrays fit the model's input spec, before any conversion starts.

Every check raises a one-line :class:`~edgekit.errors.CalibrationError` that names the file,
the input, what was expected and what was found.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgekit.spec import TensorSpec, format_shape

from .errors import data_error
from .layouts import Layout, detect_layout, normalize

log = logging.getLogger(__name__)

# Kinds numpy gives to numbers; anything else (strings, objects) is never model input.
_NUMERIC = "biuf"


def expected_sample_shape(spec: TensorSpec) -> tuple[int | None, ...]:
    """The shape data must have, the first (sample) axis replacing the batch dim.

    Args:
        spec: one model input.

    Returns:
        ``(None, *spec.shape[1:])``: any number of samples, then the fixed or dynamic dims.
    """
    return (None, *spec.shape[1:])


def check_input(
    array: np.ndarray,
    spec: TensorSpec,
    *,
    role: str,
    path: Path | str | None,
    integral_floats_ok: bool = False,
) -> np.ndarray:
    """Check one input's batched array (``[N, *spec.shape[1:]]``) and cast it to the spec's dtype.

    Like :func:`check_input_layout`, for callers whose data is always batched (image folders);
    full-shape samples are refused.

    Returns:
        The array cast to ``spec.dtype``, C-contiguous.

    Raises:
        CalibrationError: as :func:`check_input_layout`, or data that is not batched.
    """
    array, layout = check_input_layout(array, spec, role=role, path=path,
                                       integral_floats_ok=integral_floats_ok)
    if layout is not Layout.BATCHED:
        raise data_error(role, path, f"shape mismatch: expected "
                         f"{format_shape(expected_sample_shape(spec))} (samples first), found "
                         f"{list(array.shape)}", input_name=spec.name,
                         hint="give the samples batched along the first axis")
    return array


def check_input_layout(
    array: np.ndarray,
    spec: TensorSpec,
    *,
    role: str,
    path: Path | str | None,
    integral_floats_ok: bool = False,
) -> tuple[np.ndarray, Layout]:
    """Check one input's array against its spec, tell its layout, cast it to the spec's dtype.

    The layout comes from the array's rank (see :func:`calibration_data.layouts.detect_layout`):
    ``[N, *spec.shape[1:]]`` is batched, ``[N, *spec.shape]`` is N full-shape samples. Full-shape
    samples of batch 1 for an input whose batch axis is first are held batched (the same
    samples, fed faster).

    Args:
        array: data with a leading sample axis.
        spec: the model input it feeds.
        role: ``"calibration"`` or ``"eval"``, for messages.
        path: where the data came from, for messages.
        integral_floats_ok: accept float data holding only whole numbers for an integer
            input (text and decoded images have no integer type of their own).

    Returns:
        ``(array, layout)``: the array cast to ``spec.dtype``, C-contiguous, and how its
        samples are laid out.

    Raises:
        CalibrationError: empty data, a shape that fits neither layout, wrong dtype kind, values
            out of the integer dtype's range, NaN or Inf.
    """
    array = np.asarray(array)
    name = spec.name
    layout = detect_layout(array, spec, role=role, path=path)
    read = layout
    array, layout = normalize(array, spec, layout)
    if layout is not read:
        log.info("%s data %s, input '%s': full-shape samples of batch 1 held as batched %s",
                 role, path, name, list(array.shape))
    target = _target_dtype(spec, role, path)
    array = _cast(array, target, name, role=role, path=path,
                  integral_floats_ok=integral_floats_ok)
    if target.kind == "f":
        _check_finite(array, name, role=role, path=path)
    return np.ascontiguousarray(array), layout


def _target_dtype(spec: TensorSpec, role: str, path) -> np.dtype:
    try:
        target = np.dtype(spec.dtype)
    except TypeError as e:
        raise data_error(role, path, f"the model input has dtype {spec.dtype!r}, "
                         "which is not a numpy dtype", input_name=spec.name,
                         hint="check the source model's input spec") from e
    if target.kind not in _NUMERIC:
        raise data_error(role, path, f"the model input has dtype {target.name}; only numeric "
                         "inputs can be calibrated", input_name=spec.name)
    return target


def _cast(array: np.ndarray, target: np.dtype, name: str, *, role: str, path,
          integral_floats_ok: bool) -> np.ndarray:
    got = array.dtype
    if got.kind not in _NUMERIC:
        raise data_error(role, path, f"dtype mismatch: expected numbers for {target.name}, "
                         f"found {got}", input_name=name, hint="store numeric arrays")
    if target.kind == "f":
        # Casting float64 (or ints) to float32 is the normal case; overflow shows up as Inf.
        with np.errstate(over="ignore"):
            return array.astype(target, copy=False)
    if got.kind == "f":
        whole = (integral_floats_ok and np.all(np.isfinite(array))
                 and np.all(array == np.round(array)))
        if not whole:
            raise data_error(
                role, path,
                f"dtype mismatch: expected integer data for {target.name} (e.g. token ids), "
                f"found {got}", input_name=name,
                hint=f"store the array as an integer type (e.g. x.astype(np.{target.name}))")
    if target.kind in "iu" and array.size:
        info = np.iinfo(target)
        lo, hi = array.min(), array.max()
        if lo < info.min or hi > info.max:
            raise data_error(
                role, path,
                f"values out of range: expected {target.name} in [{info.min}, {info.max}], "
                f"found [{lo}, {hi}]", input_name=name,
                hint="check the data matches what the model expects")
    return array.astype(target, copy=False)


def _check_finite(array: np.ndarray, name: str, *, role: str, path) -> None:
    bad = ~np.isfinite(array)
    if not bad.any():
        return
    n_nan = int(np.isnan(array).sum())
    n_inf = int(bad.sum()) - n_nan
    first = int(np.argwhere(bad.reshape(len(array), -1).any(axis=1))[0, 0])
    raise data_error(
        role, path,
        f"expected finite values, found {n_nan} NaN and {n_inf} Inf "
        f"(first in sample {first}, after casting to {array.dtype})",
        input_name=name, hint="drop or fix those samples")


def check_labels(labels, n_samples: int, *, role: str, path: Path | str | None) -> np.ndarray:
    """Check labels and return them as int64 class ids, one per sample.

    One-hot rows (N, K) are turned into class ids.

    Args:
        labels: label array as loaded.
        n_samples: how many samples the inputs hold.
        role: ``"calibration"`` or ``"eval"``, for messages.
        path: where the data came from, for messages.

    Returns:
        1-D int64 array of length ``n_samples``.

    Raises:
        CalibrationError: labels that are not whole numbers, not 1-D (or one-hot), or whose
            count differs from the number of samples.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1 and labels.dtype.kind in "biuf" and \
            np.all((labels == 0) | (labels == 1)) and np.all(labels.sum(axis=1) == 1):
        log.info("%s data %s: one-hot labels turned into class ids", role, path)
        labels = labels.argmax(axis=1)
    elif labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise data_error(role, path, f"labels: expected one class id per sample (shape [N]), "
                         f"found shape {list(labels.shape)}",
                         hint="store labels as a 1-D integer array")
    if labels.dtype.kind not in "biuf" or (
            labels.dtype.kind == "f" and not (np.all(np.isfinite(labels))
                                              and np.all(labels == np.round(labels)))):
        raise data_error(role, path, f"labels: expected integer class ids, found dtype "
                         f"{labels.dtype}", hint="store labels as integers 0..K-1")
    if len(labels) != n_samples:
        raise data_error(role, path, f"labels: expected {n_samples} (one per sample), "
                         f"found {len(labels)}",
                         hint="give one label per sample, in the same order")
    return labels.astype(np.int64)


def check_same_length(inputs: dict[str, np.ndarray], *, role: str, path) -> int:
    """Return the common sample count of all inputs.

    Raises:
        CalibrationError: inputs holding different numbers of samples.
    """
    counts = {name: len(a) for name, a in inputs.items()}
    if len(set(counts.values())) > 1:
        found = ", ".join(f"'{k}': {v}" for k, v in counts.items())
        raise data_error(role, path, f"expected the same number of samples for every input, "
                         f"found {found}", hint="give every input one row per sample")
    return next(iter(counts.values()), 0)


__all__ = ["check_input", "check_input_layout", "check_labels", "check_same_length",
           "expected_sample_shape"]

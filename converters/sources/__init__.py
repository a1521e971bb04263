"""Load any supported model file into a ``Source``: format detection and dispatch."""

from __future__ import annotations

import logging
from pathlib import Path

from converters.base import Source
from edgekit.errors import InputError, ModelLoadError
from edgekit.spec import TensorSpec

log = logging.getLogger(__name__)

SUFFIX_FORMATS = {".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".onnx": "onnx", ".tflite": "tflite"}


def detect_format(path: Path) -> str:
    """The source format of ``path``, from its suffix or (for folders) its SavedModel files."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "savedmodel"
        raise ModelLoadError(f"{path} is a folder but not a TensorFlow SavedModel (no saved_model.pb)")
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ModelLoadError(
            f"unknown model format {path.suffix or '(no suffix)'!r} for {path}; expected one of "
            f"{', '.join(sorted(SUFFIX_FORMATS))} or a SavedModel folder")
    return fmt


def load_source(path, *, input_shapes: dict | None = None, allow_unsafe: bool = False) -> Source:
    """Load a model for conversion.

    Args:
        path: ``.keras``, ``.h5``, SavedModel folder, ``.onnx`` or ``.tflite``.
        input_shapes: input name → full shape, pinning dynamic dims.
        allow_unsafe: allow Keras Lambda layers (arbitrary Python code) to be deserialized.

    Returns:
        A ``Source`` with its I/O spec.

    Raises:
        ModelLoadError: missing, truncated, unknown or unsafe model.
        InputError: an ``input_shapes`` entry does not fit the model.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model not found: {path}")
    fmt = detect_format(path)
    if fmt in ("keras", "h5"):
        from converters.sources.keras import KerasSource as cls
    elif fmt == "savedmodel":
        from converters.sources.savedmodel import SavedModelSource as cls
    elif fmt == "onnx":
        from converters.sources.onnx import OnnxSource as cls
    else:
        from converters.sources.tflite import TFLiteSource as cls
    return cls.load(path, input_shapes=input_shapes or {}, allow_unsafe=allow_unsafe)


def apply_pins(inputs: list[TensorSpec], pins: dict, path: Path) -> list[TensorSpec]:
    """Replace dynamic dims with the user's ``--input-shape`` values, checking they fit."""
    names = {t.name for t in inputs}
    unknown = set(pins) - names
    if unknown:
        raise InputError(
            f"--input-shape names {', '.join(sorted(unknown))}, but {path.name} has inputs "
            f"{', '.join(sorted(names))}")
    out = []
    for t in inputs:
        if t.name not in pins:
            out.append(t)
            continue
        shape = tuple(int(d) for d in pins[t.name])
        if len(shape) != len(t.shape) or any(
                d is not None and d != p for d, p in zip(t.shape, shape, strict=True)):
            raise InputError(
                f"--input-shape {t.name}={','.join(map(str, shape))} does not fit input {t.name!r} "
                f"of shape {list(t.shape)} (None = dynamic) in {path.name}")
        out.append(t.with_shape(shape))
    return out


def parse_input_shapes(values) -> dict:
    """``["x=1,3,224,224", ...]`` → ``{"x": (1, 3, 224, 224)}``."""
    pins = {}
    for v in values or ():
        name, sep, dims = v.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            pins[name] = tuple(int(d) for d in dims.split(","))
            if any(d <= 0 for d in pins[name]):
                raise ValueError
        except ValueError:
            raise InputError(
                f"bad --input-shape {v!r}; expected NAME=D0,D1,... with positive integers, "
                f"e.g. input=1,3,224,224") from None
    return pins

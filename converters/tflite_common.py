"""The TFLite converter call every ``tflite-*`` pass shares; each pass only configures it."""

from __future__ import annotations

import logging
from pathlib import Path

from converters.base import PassResult
from edgekit.errors import ConversionError

log = logging.getLogger(__name__)


def run_converter(source, out_path: Path, configure, notes=None) -> PassResult:
    """Build a converter for ``source``, let ``configure(converter, tf)`` set it up, write the model.

    Raises:
        ConversionError: the TFLite converter failed (its first error line is kept).
    """
    import tensorflow as tf

    if not hasattr(source, "tflite_converter"):
        raise ConversionError(f"{source.format} sources cannot be converted to TFLite")
    converter = source.tflite_converter()
    configure(converter, tf)
    try:
        flatbuffer = converter.convert()
    except Exception as e:  # the converter raises ConverterError, RuntimeError, ValueError...
        raise ConversionError(f"TFLite converter failed on {source.path.name}: {_summary(e)}") from e
    Path(out_path).write_bytes(flatbuffer)
    loader_notes = source.loader_notes() if hasattr(source, "loader_notes") else []
    return PassResult(tools={"tensorflow": tf.__version__}, notes=[*loader_notes, *(notes or [])])


def representative_dataset(calibration):
    """The generator TFLite's calibrator wants: one ``{input_name: batch_of_1}`` dict per sample."""

    def gen():
        for batch in calibration.batches(1):
            yield {name: arr.astype("float32") if arr.dtype.kind == "f" else arr
                   for name, arr in batch.items()}

    return gen


def _summary(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or [type(e).__name__])[0][:400]

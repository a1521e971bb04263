"""Quantizing a float ``.tflite`` source with the LiteRT quantizer (``ai-edge-quantizer``).

A ``.tflite`` file has no Keras graph left for the TFLite converter to re-trace, so its int8
variants come from the LiteRT quantizer, which rewrites the flatbuffer. Its I/O types follow the
quantizer's recipe (``float_io`` is not selectable here); the manifest records the real ones.

Files the quantizer would silently leave unquantized (float16 weights behind ``DEQUANTIZE``,
operator codes of an older schema) are rewritten first: ``tflite_weights.for_quantizer``.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

from converters.base import PassResult
from edgekit.errors import ConversionError, InputError


def quantize_tflite(source, out_path: Path, recipe_name: str, calibration=None) -> PassResult:
    """Apply the LiteRT quantizer recipe ``recipe_name`` (e.g. ``static_wi8_ai8``) to ``source``.

    Raises:
        InputError: ai-edge-quantizer is not installed.
        ConversionError: the quantizer failed on this model.
    """
    return quantize_tflite_file(source.path, out_path, recipe_name, calibration)


def quantize_tflite_file(path: Path, out_path: Path, recipe_name: str,
                         calibration=None) -> PassResult:
    """``quantize_tflite`` on a float .tflite file.

    Args:
        path: the float .tflite model (rewritten first by ``tflite_weights.for_quantizer``).
        out_path: where the quantized model is written.
        recipe_name: a function of ``ai_edge_quantizer.recipe``.
        calibration: a ``calibration_data.Dataset`` for recipes that calibrate.

    Returns:
        The pass result (the quantizer's version, what was done in notes).

    Raises:
        InputError: ai-edge-quantizer is not installed.
        ConversionError: the quantizer failed on this model.
    """
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as e:
        raise InputError("quantizing a .tflite source needs the LiteRT quantizer: "
                         "pip install ai-edge-quantizer (or convert from the Keras/ONNX source)") from e
    from ai_edge_litert.interpreter import Interpreter

    from converters.tflite_weights import drop_signatures

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="edgekit-litert-") as wd:
        # a signature is added only to calibrate through; the artifact keeps the source's I/O
        model_path, rewrites, signed = _for_quantizer(path, Path(wd), calibration is not None)
        signatures = list(Interpreter(model_path=str(model_path)).get_signature_list())
        _run(quantizer, recipe, recipe_name, model_path, path.name, signatures, calibration,
             out_path)
    if signed:
        Path(out_path).write_bytes(drop_signatures(Path(out_path).read_bytes()))
    from importlib.metadata import version

    notes = [f"LiteRT quantizer recipe {recipe_name} on a .tflite model",
             *(f"before quantizing: {n}" for n in rewrites)]
    return PassResult(tools={"ai-edge-quantizer": version("ai-edge-quantizer")}, notes=notes)


def _for_quantizer(path: Path, workdir: Path, signature: bool) -> tuple[Path, list, bool]:
    """The model the quantizer should read: ``path`` itself, or a rewritten copy in ``workdir``;
    what was rewritten; whether a signature was added."""
    from converters.tflite_weights import SIGNATURE_KEY, for_quantizer

    data, notes = for_quantizer(Path(path).read_bytes(), signature=signature)
    if not notes:
        return Path(path), [], False
    out = workdir / Path(path).name
    out.write_bytes(data)
    return out, notes, any(SIGNATURE_KEY in n for n in notes)


def _run(quantizer, recipe, recipe_name, model_path, name, signatures, calibration, out_path):
    """Quantize ``model_path`` with the recipe (calibrating when it needs to) into ``out_path``."""
    try:
        qt = quantizer.Quantizer(str(model_path))
        qt.load_quantization_recipe(getattr(recipe, recipe_name)())
        with contextlib.redirect_stdout(io.StringIO()):
            if qt.need_calibration:
                if not signatures:
                    raise ConversionError(f"{name} has no signature; the LiteRT quantizer "
                                          f"calibrates through signatures")
                samples = [dict(b) for b in calibration.batches(1)]
                result = qt.quantize(qt.calibrate({signatures[0]: samples}))
            else:
                result = qt.quantize()
            result.export_model(str(out_path), overwrite=True)
    except ConversionError:
        raise
    except Exception as e:  # the quantizer raises anything on unsupported graphs
        raise ConversionError(f"LiteRT quantizer ({recipe_name}) failed on {name}: "
                              f"{_first_line(e)}") from e


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

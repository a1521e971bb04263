"""Quantizing a float ``.tflite`` source with the LiteRT quantizer (``ai-edge-quantizer``).

A ``.tflite`` file has no Keras graph left for the TFLite converter to re-trace, so its int8
variants come from the LiteRT quantizer, which rewrites the flatbuffer. Its I/O types follow the
quantizer's recipe (``float_io`` is not selectable here); the manifest records the real ones.

The quantizer only quantizes float32 constant weights. A float16 .tflite (weights stored as
float16 behind ``DEQUANTIZE`` ops, what TFLite's float16 quantization writes) would come back
unquantized, so its weights are first folded back to float32 constants (exactly).
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
        path: the float .tflite model (float16 weights behind DEQUANTIZE are folded first).
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

    path = Path(path)
    signatures = list(Interpreter(model_path=str(path)).get_signature_list())
    with tempfile.TemporaryDirectory(prefix="edgekit-litert-") as wd:
        model_path, folded = _float32_weights(path, Path(wd))
        _run(quantizer, recipe, recipe_name, model_path, path.name, signatures, calibration,
             out_path)
    from importlib.metadata import version

    notes = [f"LiteRT quantizer recipe {recipe_name} on a .tflite model"]
    if folded:
        notes.append(f"{folded} float16 weights behind DEQUANTIZE folded back to float32 "
                     f"constants before quantizing")
    return PassResult(tools={"ai-edge-quantizer": version("ai-edge-quantizer")}, notes=notes)


def _float32_weights(path: Path, workdir: Path) -> tuple[Path, int]:
    """The model the quantizer should read: ``path`` itself, or a copy with its float16
    weights folded to float32 (and how many were folded)."""
    from converters.tflite_weights import fold_fp16_weights

    data, folded = fold_fp16_weights(Path(path).read_bytes())
    if not folded:
        return Path(path), 0
    out = workdir / Path(path).name
    out.write_bytes(data)
    return out, folded


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
    except Exception as e:  # noqa: BLE001 - the quantizer raises anything on unsupported graphs
        raise ConversionError(f"LiteRT quantizer ({recipe_name}) failed on {name}: "
                              f"{_first_line(e)}") from e


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

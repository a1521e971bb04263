"""The one registry of targets. The CLI's `edgekit targets` prints it; nothing else lists targets."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from edgekit.errors import UnknownTargetError

TF_SOURCES = frozenset({"keras", "h5", "savedmodel"})
ONNX_SOURCES = frozenset({"onnx"})
TFLITE_SOURCES = frozenset({"tflite"})


@dataclass(frozen=True)
class TargetInfo:
    """A named pass and what it can do.

    Attributes:
        name: what users type, e.g. ``tflite-int8``.
        format: artifact format (``tflite`` | ``onnx`` | ``ort``); also the file extension.
        precision: numeric precision of the artifact.
        sources: source formats this pass accepts.
        needs_calibration: the pass cannot run without calibration data.
        requires: Python packages the pass imports.
        options: names of ``ConvertOptions`` fields the pass reads (recorded in the manifest).
        module: module that holds ``convert(source, options, calibration, out_path) -> PassResult``.
        summary: one line for ``edgekit targets``.
    """

    name: str
    format: str
    precision: str
    sources: frozenset
    needs_calibration: bool
    requires: tuple
    options: tuple
    module: str
    summary: str

    def load(self):
        """Import the pass module lazily and return its ``convert`` function."""
        return importlib.import_module(self.module).convert


_TF = ("tensorflow",)  # ai-edge-quantizer too, for .tflite sources (tflite-dynamic/int8)
_TF_ONNX = ("tensorflow", "tf2onnx", "onnx")
_ORT = ("onnx", "onnxruntime")

TARGETS: dict[str, TargetInfo] = {t.name: t for t in [
    TargetInfo("tflite-fp32", "tflite", "fp32", TF_SOURCES | TFLITE_SOURCES, False, _TF, (),
               "converters.tflite_fp32", "TFLite, float32 weights and activations"),
    TargetInfo("tflite-fp16", "tflite", "fp16", TF_SOURCES, False, _TF, (),
               "converters.tflite_fp16", "TFLite, float16 weights (dequantized to float32 on CPU)"),
    TargetInfo("tflite-dynamic", "tflite", "dynamic-int8", TF_SOURCES | TFLITE_SOURCES, False, _TF, (),
               "converters.tflite_dynamic", "TFLite, int8 weights, float activations (dynamic range)"),
    TargetInfo("tflite-int8", "tflite", "int8", TF_SOURCES | TFLITE_SOURCES, True, _TF,
               ("float_io", "per_channel", "calibration_samples", "float_nodes"),
               "converters.tflite_int8", "TFLite, full integer int8 (int8 I/O unless --float-io)"),
    TargetInfo("tflite-int16x8", "tflite", "int16x8", TF_SOURCES, True, _TF, ("calibration_samples",),
               "converters.tflite_int16x8", "TFLite, int16 activations with int8 weights"),
    TargetInfo("onnx-fp32", "onnx", "fp32", TF_SOURCES | ONNX_SOURCES, False, _TF_ONNX,
               ("opset", "fix_inputs"),
               "converters.onnx_fp32", "ONNX, float32 (tf2onnx for TF sources; checked copy for ONNX)"),
    TargetInfo("onnx-fp16", "onnx", "fp16", TF_SOURCES | ONNX_SOURCES, False, _TF_ONNX + _ORT,
               ("opset", "fix_inputs"),
               "converters.onnx_fp16", "ONNX, float16 weights and compute, float32 I/O kept"),
    TargetInfo("onnx-int8", "onnx", "int8", TF_SOURCES | ONNX_SOURCES, True, _TF_ONNX + _ORT,
               ("opset", "calibration_method", "percentile", "per_channel", "calibration_samples",
                "symmetric_activations", "reduce_range", "unsigned_activations",
                "float_nodes", "onnx_quant_format", "equalize", "bias_correction",
                "quantize_op_types", "smooth_alpha", "weight_matmuls_only", "fix_inputs"),
               "converters.onnx_int8", "ONNX, static int8 QDQ (per-channel weights, ORT pre-processing)"),
    TargetInfo("onnx-dynamic", "onnx", "dynamic-int8", TF_SOURCES | ONNX_SOURCES, False, _TF_ONNX + _ORT,
               ("opset", "fix_inputs"), "converters.onnx_dynamic", "ONNX, int8 weights, activations quantized at run time"),
    TargetInfo("ort", "ort", "fp32", TF_SOURCES | ONNX_SOURCES, False, _TF_ONNX + _ORT,
               ("opset", "fix_inputs"),
               "converters.ort", "ONNX Runtime mobile format (.ort), float32, plus the "
               "required_operators.config for a reduced-size build"),
]}


def get_target(name: str) -> TargetInfo:
    try:
        return TARGETS[name]
    except KeyError:
        raise UnknownTargetError(
            f"unknown target {name!r}; known targets: {', '.join(TARGETS)} (see `edgekit targets`)"
        ) from None


def targets_for(source_format: str) -> list[TargetInfo]:
    return [t for t in TARGETS.values() if source_format in t.sources]


def check_target_for_source(target: TargetInfo, source_format: str) -> None:
    if source_format not in target.sources:
        possible = ", ".join(t.name for t in targets_for(source_format)) or "none"
        why = ""
        if source_format == "tflite":
            why = (" (a .tflite file has no TensorFlow graph left to re-trace: fp16/int16x8 need the "
                   "TFLite converter and ONNX needs tf2onnx, so convert from the Keras/SavedModel "
                   "source; tflite-dynamic and tflite-int8 work through the LiteRT quantizer)")
        raise UnknownTargetError(
            f"target {target.name!r} cannot be built from a {source_format} source{why}; "
            f"possible targets: {possible}")

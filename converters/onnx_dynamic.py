"""onnx-dynamic: int8 weights; activations quantized at run time (no calibration data)."""

from pathlib import Path

from converters.base import PassResult
from converters.onnx_common import float_model, ort_version, preprocess, source_notes, workdir
from edgekit.errors import ConversionError


def convert(source, options, calibration, out_path) -> PassResult:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, tools = float_model(source, options)
    notes: list = source_notes(source)
    with workdir() as wd:
        pre = preprocess(model, Path(wd), notes)
        try:
            quantize_dynamic(str(pre), str(out_path), weight_type=QuantType.QInt8)
        except Exception as e:  # ORT's quantizer raises anything on odd graphs
            raise ConversionError(f"ONNX Runtime dynamic quantization failed: {e}") from e
    tools["onnxruntime"] = ort_version()
    return PassResult(tools=tools, notes=notes)

"""onnx-dynamic: int8 weights; activations quantized at run time (no calibration data).

Per-channel weight scales by default (``ConvertOptions.per_channel``): on all-MiniLM-L6-v2 the
sentence embedding's cosine to FP32 is 0.992 with them and 0.969 with one scale per tensor.
"""

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
            quantize_dynamic(str(pre), str(out_path), weight_type=QuantType.QInt8,
                             per_channel=options.per_channel)
        except Exception as e:  # noqa: BLE001 - ORT's quantizer raises anything on odd graphs
            raise ConversionError(f"ONNX Runtime dynamic quantization failed: {e}") from e
    tools["onnxruntime"] = ort_version()
    return PassResult(tools=tools, notes=notes)

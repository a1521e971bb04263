"""onnx-fp32: the float32 ONNX graph (tf2onnx for TF sources; an ONNX source, checked and pinned)."""

from converters.base import PassResult
from converters.onnx_common import float_model, save, source_notes


def convert(source, options, calibration, out_path) -> PassResult:
    model, tools = float_model(source, options)
    save(model, out_path)
    return PassResult(tools=tools, notes=source_notes(source))

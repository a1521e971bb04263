"""onnx-int8: static quantization with ONNX Runtime (per-channel int8 weights, int8 activations),
in QDQ form by default or as QOperator ops (``ConvertOptions.onnx_quant_format``).

ORT's pre-processing runs first; the opset is raised to 13 when per-channel QDQ needs it.
"""

from pathlib import Path

from converters.base import PassResult
from converters.fix_inputs import FixedFeeds
from converters.onnx_common import (
    MIN_QDQ_OPSET,
    float_model,
    ort_version,
    preprocess,
    source_notes,
    upgrade_opset,
    workdir,
)
from converters.options import CalibrationMethod, OnnxQuantFormat
from converters.repair import equalize as remedies
from edgekit.errors import ConversionError


def convert(source, options, calibration, out_path) -> PassResult:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization import CalibrationMethod as OrtMethod

    calibration = FixedFeeds.wrap(calibration, options)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calibration.batches(1))

        def get_next(self):
            return next(self._it, None)

    methods = {CalibrationMethod.MINMAX: OrtMethod.MinMax, CalibrationMethod.ENTROPY: OrtMethod.Entropy,
               CalibrationMethod.PERCENTILE: OrtMethod.Percentile}
    notes: list = source_notes(source)
    model, tools = float_model(source, options, notes)
    model = upgrade_opset(model, MIN_QDQ_OPSET, notes)
    extra = {"ActivationSymmetric": bool(options.symmetric_activations)}
    if options.calibration_method == CalibrationMethod.PERCENTILE:
        extra["CalibPercentile"] = options.percentile
    with workdir() as wd:
        pre = preprocess(model, Path(wd), notes)
        # After ORT's pre-processing, so BatchNorms are already folded into the convs.
        pre = remedies.prepare(pre, options, calibration, Path(wd), notes)
        exclude = list(options.float_nodes)
        if options.weight_matmuls_only:
            exclude += _attention_matmuls(pre, notes)
            extra["OpTypesToExcludeOutputQuantization"] = ["MatMul", "Gemm"]
        try:
            fmt = (QuantFormat.QOperator if options.onnx_quant_format == OnnxQuantFormat.QOPERATOR
                   else QuantFormat.QDQ)
            quantize_static(str(pre), str(out_path), Reader(), quant_format=fmt,
                            per_channel=options.per_channel, reduce_range=bool(options.reduce_range),
                            activation_type=(QuantType.QUInt8 if options.unsigned_activations
                                             else QuantType.QInt8),
                            weight_type=QuantType.QInt8,
                            calibrate_method=methods[options.calibration_method], extra_options=extra,
                            nodes_to_exclude=exclude,
                            op_types_to_quantize=list(options.quantize_op_types) or None)
        except Exception as e:
            raise ConversionError(f"ONNX Runtime static quantization failed: "
                                  f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
    tools["onnxruntime"] = ort_version()
    return PassResult(tools=tools, notes=notes, method=options.calibration_method.value)


def _attention_matmuls(path: Path, notes: list) -> list:
    """The MatMuls of two activations in the model at ``path`` (kept in float)."""
    import onnx

    from converters.repair.smooth import activation_matmuls

    names = activation_matmuls(onnx.load(str(path)))
    if names:
        notes.append(f"{len(names)} MatMuls of two activations (attention) kept in float")
    return names

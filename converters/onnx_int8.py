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
        _lstm_weights(Path(out_path), options, exclude, Path(wd), notes)
    tools["onnxruntime"] = ort_version()
    return PassResult(tools=tools, notes=notes, method=options.calibration_method.value)


def _lstm_weights(path: Path, options, exclude: list, wd: Path, notes: list) -> None:
    """int8 weights for the LSTMs that static QDQ leaves float (ONNX Runtime's static quantizer
    has no LSTM): its dynamic quantizer turns them into ``DynamicQuantizeLSTM`` (int8 weights,
    activations quantized at run time), the rest of the QDQ graph unchanged."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if options.quantize_op_types and not {"LSTM", "Conv", "MatMul"} & set(options.quantize_op_types):
        return  # a restriction to other ops (elementwise only, say) leaves the LSTM alone
    lstms = [n.name for n in onnx.load(str(path)).graph.node
             if n.op_type == "LSTM" and n.name not in exclude]
    if not lstms:
        return
    tmp = wd / "lstm_int8.onnx"
    try:
        quantize_dynamic(str(path), str(tmp), op_types_to_quantize=["LSTM"], nodes_to_quantize=lstms,
                         per_channel=options.per_channel, weight_type=QuantType.QInt8)
    except Exception as e:
        raise ConversionError(f"ONNX Runtime dynamic quantization of {len(lstms)} LSTM(s) failed: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
    tmp.replace(path)
    notes.append(f"{len(lstms)} LSTM(s) with int8 weights through ONNX Runtime's dynamic quantizer "
                 f"(DynamicQuantizeLSTM: static QDQ has no LSTM)")


def _attention_matmuls(path: Path, notes: list) -> list:
    """The MatMuls of two activations in the model at ``path`` (kept in float)."""
    import onnx

    from converters.repair.smooth import activation_matmuls

    names = activation_matmuls(onnx.load(str(path)))
    if names:
        notes.append(f"{len(names)} MatMuls of two activations (attention) kept in float")
    return names

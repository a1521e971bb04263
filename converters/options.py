"""Typed conversion options. Defaults live here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Optional

DEFAULT_CALIBRATION_SAMPLES = 200

# What ``quantize_op_types`` is set to by the repair when elementwise ops are the damage: the ops
# that do the multiply-accumulates, plus those that only move or clamp their input (ORT folds
# Relu/Clip into the conv's output range and gives data-movement ops their input's scale), so the
# convs still run back to back in int8.
CONV_MATMUL_OP_TYPES = ("Conv", "MatMul", "Gemm", "Relu", "Clip", "MaxPool", "Reshape",
                        "Transpose", "Flatten", "Squeeze", "Unsqueeze")
# Only the ops that carry weights: every activation op (ReLU included) and data movement float.
# On silero-vad (STFT conv float) CONV_MATMUL_OP_TYPES gives 1.9 dB, the same without ReLU in
# the list 37.6 dB: ONNX Runtime's QDQ treatment of a ReLU whose input has other readers (the
# LSTM's output is also the state it returns).
WEIGHT_OP_TYPES = ("Conv", "MatMul", "Gemm")


class CalibrationMethod(str, Enum):
    """How activation ranges are chosen from calibration data (ONNX Runtime's calibrators)."""

    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class OnnxQuantFormat(str, Enum):
    """How onnx-int8 writes quantized ops (ONNX Runtime's ``QuantFormat``): ``QDQ`` keeps float
    ops between QuantizeLinear/DequantizeLinear pairs, which ORT fuses at load time (and other
    runtimes read); ``QOPERATOR`` writes ORT's QLinearConv/QLinearMatMul... ops directly."""

    QDQ = "qdq"
    QOPERATOR = "qoperator"


@dataclass(frozen=True)
class ConvertOptions:
    """Options for every pass; each target records in the manifest only the fields it uses.

    Attributes:
        float_io: tflite-int8 keeps float32 model inputs/outputs (quantize/dequantize inside).
        calibration_method: range estimation for onnx-int8.
        percentile: the percentile kept when ``calibration_method`` is percentile.
        per_channel: per-channel weight scales for onnx-int8 and tflite-int8; False gives one
            scale per weight tensor (a clustered layer then keeps <= k int8 values, and the
            file drops its per-channel scale arrays: smaller after gzip).
        opset: ONNX opset produced by tf2onnx for Keras/SavedModel sources.
        input_shapes: pins dynamic dims, input name → full shape (batch included).
        fix_inputs: onnx-int8 specialises the graph for these inputs, name → scalar value
            (``converters.fix_inputs``): they leave the graph as constants and the ``If`` nodes
            they decide are replaced by the branch taken, so the quantizer reaches the net inside
            (silero-vad for one sample rate: ``{"sr": 16000}``). The calibration samples must
            hold that value.
        calibration_samples: calibration samples fed to the quantizer; ``None`` means up to
            ``DEFAULT_CALIBRATION_SAMPLES`` (fewer is fine), a number is a hard requirement.
        allow_unsafe: load Keras models with ``safe_mode=False`` (Lambda layers run Python code).
        max_accuracy_drop / min_top1_agreement / min_sqnr_db: the fidelity gate for quantized
            artifacts (accuracy points, fraction, dB); ``None`` everywhere = per-task defaults
            (``edgekit.gate``).
        task: what the model's outputs are for (``edgekit.fidelity.tasks.Task`` values:
            auto, classification, detection, segmentation, embedding, regression); ``auto``
            detects it per output. The gate judges each output by its task's measure.
        min_task_metric: the bar of the detection (F1), segmentation (mask IoU) or embedding
            (cosine) measure for quantized artifacts; ``None`` = the task's default.
        repair: when a quantized artifact misses the gate, try cheaper calibration remedies, then
            keep the most sensitive ops in float until it passes (automatic mixed precision).
        symmetric_activations: onnx-int8 activations quantized symmetrically around zero.
        reduce_range: onnx-int8 weights use 7 bits; ``None`` (as ``unsigned_activations`` and
            ``onnx_quant_format``): chosen for the CPU the artifact is for
            (``converters.cpu_layouts``; ``convert --for``), False where nothing chooses. x86 CPUs with AVX2 but no VNNI multiply
            int8 pairs with an instruction that saturates, and ONNX Runtime's fused int8 kernels
            then wreck accuracy (MobileNetV2 here: 2 dB SQNR → 15 dB with reduce_range).
        unsigned_activations: onnx-int8 activations are uint8 (U8S8) instead of int8 (S8S8). On
            x86 CPUs without VNNI, ONNX Runtime's U8S8 kernels can run faster than its S8S8 ones
            (an object-detection model here: S8S8 1.42x FP32's latency, U8S8 1.00x).
        float_nodes: nodes kept in float by quantizers (ONNX node names; TFLite tensor names as
            the quantization debugger lists them); set by the repair, replayable.
        onnx_quant_format: onnx-int8's operator format (QDQ pairs or QOperator ops); which one
            ONNX Runtime runs faster depends on the CPU and graph, so ``optimize`` measures it;
            ``None``: chosen for the CPU, QDQ where nothing chooses.
        equalize: onnx-int8 applies cross-layer equalization to the float graph first
            (``converters.repair.equalize``): BatchNorm folded, then Conv → (Relu | nothing) → Conv
            pairs rescaled so each channel's weight range is shared between the two convs. The
            float function is unchanged; int8 weight and activation ranges get evener.
        bias_correction: onnx-int8 subtracts from each quantized Conv/Gemm/MatMul's bias the mean
            output shift its int8 weights cause, ``(W_q - W) · E[x]``, with ``E[x]`` from a float
            run on the calibration data.
        quantize_op_types: onnx-int8 quantizes only these ONNX op types (ORT's
            ``op_types_to_quantize``); empty = every op ORT can quantize.
            ``CONV_MATMUL_OP_TYPES`` keeps elementwise ops (Add, Mul, Concat, Sigmoid...) in float.
        smooth_alpha: onnx-int8 moves this share (0..1, SmoothQuant's alpha) of each MatMul/Gemm
            input channel's range into the constant weights first (``converters.repair.smooth``:
            a float-exact per-channel rescale); 0 = off.
        weight_matmuls_only: onnx-int8 quantizes MatMul/Gemm as int8-weight-times-activation
            units only: MatMuls of two activations (attention's ``Q K^T`` and ``P V``) stay
            float, and no MatMul/Gemm output is quantized (the norms, activations and residual
            adds that read them run in float; with uint8 activations ORT runs each unit as
            its int8 MatMulIntegerToFloat kernel, with int8 ones as a float MatMul).
    """

    float_io: bool = False
    calibration_method: CalibrationMethod = CalibrationMethod.MINMAX
    percentile: float = 99.999
    per_channel: bool = True
    opset: int = 17
    input_shapes: dict = field(default_factory=dict)
    fix_inputs: dict = field(default_factory=dict)
    calibration_samples: Optional[int] = None
    allow_unsafe: bool = False
    max_accuracy_drop: Optional[float] = None
    min_top1_agreement: Optional[float] = None
    min_sqnr_db: Optional[float] = None
    task: str = "auto"
    min_task_metric: Optional[float] = None
    repair: bool = False
    symmetric_activations: bool = False
    reduce_range: Optional[bool] = None
    unsigned_activations: Optional[bool] = None
    float_nodes: tuple = ()
    onnx_quant_format: Optional[OnnxQuantFormat] = None
    equalize: bool = False
    bias_correction: bool = False
    quantize_op_types: tuple = ()
    smooth_alpha: float = 0.0
    weight_matmuls_only: bool = False

    def subset(self, names) -> dict:
        """The named fields as plain JSON values (for the manifest's pass config); an empty
        mapping (no input fixed) is left out, so such records read as before it existed."""
        out = {}
        for f in fields(self):
            if f.name in names:
                v = getattr(self, f.name)
                if isinstance(v, dict) and not v:
                    continue
                out[f.name] = v.value if isinstance(v, Enum) else v
        return out

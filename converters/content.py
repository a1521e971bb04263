"""What an artifact file really holds: weight tensors by dtype, ops by kind, and the share of the
compute (Conv / FullyConnected / MatMul / Gemm ...) that runs in int8.

A pass can write a file that is not what its target says without any error: LiteRT's quantizer
leaves float16 weights behind ``Dequantize`` ops untouched, a mixed-precision repair can keep most
ops in float. The fidelity gate cannot see that (an unquantized file is *more* faithful), so after
each pass the file itself is read and counted, and ``precision_mismatch`` says why it is not its
target's precision.

Compute is weighed in MACs where every compute op's output shape is static, else in weight
parameters (``basis`` says which). Only ops with a constant weight count: biases, LayerNorm
scales, embeddings and activation x activation matmuls (attention) are legitimately float in every
int8 recipe and carry no weight a quantizer could store as int8, so they are left out of the share.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from edgekit.errors import ModelLoadError, VerificationError

# Below half, the file is a float model with some int8 ops: most MACs go to float kernels, so the
# speed and energy an int8 target promises are gone. The mixed-precision repair stops at the same
# line (most MACs in float), so a repaired artifact that passes there is not refused here.
MIN_INT8_COMPUTE_SHARE = 0.5
# Dynamic-range targets keep float activations by design; what they promise is int8 weight storage
# (the 4x smaller weights), so their check is on the compute weights' parameters stored as int8.
MIN_INT8_WEIGHT_SHARE = 0.5
# FP16 targets promise half-size float weights; a converter may keep a few out-of-range ops in
# float32 (onnx-fp16's block list), but most of the weight parameters must be stored as float16.
MIN_FP16_WEIGHT_SHARE = 0.5

INT8_DTYPES = frozenset({"int8", "uint8", "int4", "uint4"})
QUANTIZED_PRECISIONS = frozenset({"int8", "int16x8"})  # weights and activations quantized
DYNAMIC_PRECISIONS = frozenset({"dynamic-int8"})  # int8 weights, float activations
FP16_PRECISIONS = frozenset({"fp16"})

KINDS = ("quantized", "quantize_dequantize", "float_compute", "other")


@dataclass
class ArtifactContent:
    """Counts of what one artifact file holds.

    Attributes:
        format: ``tflite`` | ``onnx``.
        tensors: every constant tensor, by dtype: ``{"count", "bytes"}``.
        weights: the weights of compute ops, by stored dtype: ``{"count", "params", "dequantized"}``
            (``dequantized``: how many reach their op through a Dequantize, i.e. run in float).
        ops: op type -> count.
        op_kinds: ``quantized`` / ``quantize_dequantize`` / ``float_compute`` / ``other`` -> count.
        int8_compute: MACs (or weight parameters, see ``basis``) of compute ops running in int8.
        float_compute: the same for compute ops running in float.
        basis: ``macs`` or ``params``.
    """

    format: str
    tensors: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    ops: dict = field(default_factory=dict)
    op_kinds: dict = field(default_factory=dict)
    int8_compute: int = 0
    float_compute: int = 0
    basis: str = "macs"

    @property
    def weight_tensors(self) -> int:
        return sum(w["count"] for w in self.weights.values())

    @property
    def int8_weight_tensors(self) -> int:
        return sum(w["count"] for d, w in self.weights.items() if d in INT8_DTYPES)

    def weight_share(self, dtypes) -> Optional[float]:
        """Share of the compute weights' parameters stored in ``dtypes`` (None: no compute weight)."""
        total = sum(w["params"] for w in self.weights.values())
        if not total:
            return None
        return sum(w["params"] for d, w in self.weights.items() if d in dtypes) / total

    def to_dict(self) -> dict:
        total = self.int8_compute + self.float_compute
        return {"format": self.format, "tensors": self.tensors, "weights": self.weights,
                "ops": self.ops, "op_kinds": self.op_kinds,
                "compute": {"basis": self.basis, "int8": self.int8_compute,
                            "float": self.float_compute,
                            "float_share": round(self.float_compute / total, 4) if total else 0.0}}

    @classmethod
    def from_dict(cls, d: dict) -> "ArtifactContent":
        c = d.get("compute", {})
        return cls(d["format"], d.get("tensors", {}), d.get("weights", {}), d.get("ops", {}),
                   d.get("op_kinds", {}), c.get("int8", 0), c.get("float", 0), c.get("basis", "macs"))


def float_compute_share(content: ArtifactContent) -> float:
    """Share of the compute (MACs, or weight parameters) left running in float, 0..1.

    A file with no compute op that has a weight returns 0.0: nothing could have been quantized.
    """
    total = content.int8_compute + content.float_compute
    return content.float_compute / total if total else 0.0


def audit_artifact(path, fmt: Optional[str] = None) -> ArtifactContent:
    """Count what a ``.tflite`` or ``.onnx`` file holds.

    Args:
        path: the file.
        fmt: ``tflite`` or ``onnx``; by default taken from the suffix.

    Returns:
        The counts.

    Raises:
        ModelLoadError: unknown format, or a file that does not parse as one.
    """
    path = Path(path)
    fmt = fmt or path.suffix.lower().lstrip(".")
    if fmt == "tflite":
        from converters.content_tflite import audit_tflite

        return audit_tflite(path)
    if fmt == "onnx":
        from converters.content_onnx import audit_onnx

        return audit_onnx(path)
    raise ModelLoadError(f"cannot count the content of {path.name}: expected a .tflite or .onnx "
                         f"file, got {fmt!r}")


def precision_mismatch(target_info, content: ArtifactContent) -> Optional[str]:
    """Why an artifact is not what its target's precision says, or None when it is.

    fp32 targets are not checked: they apply no precision reduction, and a source that is
    already quantized is passed through as it is.

    Args:
        target_info: the ``TargetInfo`` (its ``name`` and ``precision`` are read).
        content: ``audit_artifact``'s counts of the file.

    Returns:
        One line: what the file holds against what the target promises, and what to do.
    """
    name, precision = target_info.name, target_info.precision
    if precision in QUANTIZED_PRECISIONS or precision in DYNAMIC_PRECISIONS:
        return _int8_mismatch(name, precision, content)
    if precision in FP16_PRECISIONS:
        return _fp16_mismatch(name, content)
    return None


def check_artifact(target_info, path) -> Optional[ArtifactContent]:
    """Audit a pass's output file and refuse it when its precision is not its target's.

    Args:
        target_info: the ``TargetInfo`` the file was written for.
        path: the file (its format is the target's, whatever its suffix).

    Returns:
        The counts, or None for formats that are not audited (``.ort``).

    Raises:
        VerificationError: the file does not parse, or ``precision_mismatch`` gives a reason.
    """
    if target_info.format not in ("tflite", "onnx"):
        return None
    try:
        content = audit_artifact(path, target_info.format)
    except ModelLoadError as e:
        raise VerificationError(f"cannot count what the artifact holds: {e}") from e
    reason = precision_mismatch(target_info, content)
    if reason:
        raise VerificationError(reason)
    return content


def _int8_mismatch(name: str, precision: str, c: ArtifactContent) -> Optional[str]:
    fix = _fix(name)
    if not c.weight_tensors:
        # Nothing with a weight to quantize: accept any int8 tensor or quantized op.
        has_int8 = any(d in INT8_DTYPES for d in c.tensors) or c.op_kinds.get("quantized", 0)
        floats = c.tensors.get("float32", {}).get("bytes", 0) + c.tensors.get("float16", {}).get(
            "bytes", 0)
        if has_int8 or not floats:
            return None
        return (f"the artifact holds no int8 tensor and no quantized op (float weights: "
                f"{floats} bytes): {fix}")
    if not c.int8_weight_tensors:
        return (f"the artifact holds no int8 weight tensor (0 of {c.weight_tensors} "
                f"weight tensors are int8; {_describe_weights(c)}): {fix}")
    if precision in DYNAMIC_PRECISIONS:
        share = c.weight_share(INT8_DTYPES)
        if share < MIN_INT8_WEIGHT_SHARE:
            return (f"only {share:.0%} of the weight parameters are stored as int8 "
                    f"(at least {MIN_INT8_WEIGHT_SHARE:.0%} expected; {_describe_weights(c)}): {fix}")
        return None
    int8_share = 1.0 - float_compute_share(c)
    if int8_share < MIN_INT8_COMPUTE_SHARE:
        what = "MACs" if c.basis == "macs" else "compute weight parameters"
        return (f"only {int8_share:.0%} of the {what} run in int8 (at least "
                f"{MIN_INT8_COMPUTE_SHARE:.0%} expected; {c.op_kinds.get('float_compute', 0)} "
                f"compute ops run in float): too many ops are kept in float for {name}; relax the gate "
                f"(--min-sqnr, --max-accuracy-drop), fine-tune for int8 (`edgekit qat`), or use "
                f"{_fp16_target(name)}")
    return None


def _fp16_mismatch(name: str, c: ArtifactContent) -> Optional[str]:
    fix = ("convert from the float source model; a source that is already quantized has no float "
           "weights to store as float16")
    if not c.weight_tensors:
        if c.tensors.get("float32", {}).get("bytes", 0) and "float16" not in c.tensors:
            return f"the artifact holds no float16 tensor (float32 weights only): {fix}"
        return None
    share = c.weight_share({"float16"})
    if share < MIN_FP16_WEIGHT_SHARE:
        return (f"only {share:.0%} of the weight parameters are stored as float16 (at least "
                f"{MIN_FP16_WEIGHT_SHARE:.0%} expected; {_describe_weights(c)}): {fix}")
    return None


def _describe_weights(c: ArtifactContent) -> str:
    parts = []
    for dtype, w in sorted(c.weights.items(), key=lambda kv: -kv[1]["count"]):
        deq = w.get("dequantized", 0)
        text = f"{w['count']} are {dtype}"
        if deq == w["count"]:
            text += " behind Dequantize"
        elif deq:
            text += f" ({deq} behind Dequantize)"
        parts.append(text)
    return ", ".join(parts)


def _fix(name: str) -> str:
    return (f"the {name} pass did not quantize this model; convert from its float "
            f"Keras/SavedModel/ONNX source, or use {_fp16_target(name)} for a smaller float artifact")


def _fp16_target(name: str) -> str:
    return f"{name.split('-')[0]}-fp16"


# ---------------------------------------------------------------------------------------------
# Shared by the format readers
# ---------------------------------------------------------------------------------------------

class Tally:
    """Accumulates the counts of one file; ``content()`` turns them into an ArtifactContent."""

    def __init__(self, fmt: str):
        self.fmt = fmt
        self.tensors: dict = {}
        self.weights: dict = {}
        self.ops: Counter = Counter()
        self.kinds: Counter = Counter({k: 0 for k in KINDS})
        self.compute: list = []  # (runs_int8, params, macs or None)

    def constant(self, dtype: str, nbytes: int) -> None:
        t = self.tensors.setdefault(dtype, {"count": 0, "bytes": 0})
        t["count"] += 1
        t["bytes"] += int(nbytes)

    def op(self, op_type: str, kind: str) -> None:
        self.ops[op_type] += 1
        self.kinds[kind] += 1

    def weight(self, dtype: str, dequantized: bool, params: int, runs_int8: bool,
               spatial: Optional[int]) -> None:
        w = self.weights.setdefault(dtype, {"count": 0, "params": 0, "dequantized": 0})
        w["count"] += 1
        w["params"] += int(params)
        w["dequantized"] += int(dequantized)
        self.compute.append((runs_int8, int(params), None if spatial is None else params * spatial))

    def content(self) -> ArtifactContent:
        by_macs = all(m is not None for _, _, m in self.compute)
        int8 = sum((m if by_macs else p) for q, p, m in self.compute if q)
        flt = sum((m if by_macs else p) for q, p, m in self.compute if not q)
        return ArtifactContent(self.fmt, self.tensors, self.weights,
                               dict(self.ops.most_common()), dict(self.kinds), int(int8), int(flt),
                               "macs" if by_macs else "params")


def op_kind(*, qdq: bool, quantized: bool, has_weight: bool) -> str:
    """One op's kind (``KINDS``): a quantize/dequantize op, an op running int8, a float op with a
    compute weight, or anything else. Both readers classify with this one rule."""
    if qdq:
        return "quantize_dequantize"
    if quantized:
        return "quantized"
    return "float_compute" if has_weight else "other"


def spatial_size(shape, start: int, stop: Optional[int] = None) -> Optional[int]:
    """Product of ``shape[start:stop]``, or None when a dim there is unknown (None, <= 0)."""
    dims = list(shape)[start:stop]
    if any(d is None or d <= 0 for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64)) if dims else 1

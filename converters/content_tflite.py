"""``audit_artifact`` for ``.tflite`` files, read from the flatbuffer with LiteRT's own schema.

The file is read in place (no interpreter, no tensor copies), so a large model costs what its
table of tensors and ops costs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.content import INT8_DTYPES, ArtifactContent, Tally, op_kind, spatial_size
from edgekit.errors import ModelLoadError

# op -> index of its weight input (TRANSPOSE_CONV's inputs are output_shape, weights, input, bias)
COMPUTE_OPS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1,
               "CONV_3D": 1, "CONV_3D_TRANSPOSE": 1, "BATCH_MATMUL": 1}
QDQ_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
# Ops that only unpack a stored weight for the op that reads it: the weight is what they read.
_UNPACK_OPS = frozenset({"DEQUANTIZE", "DENSIFY"})
_QUANTIZED_OUTPUTS = INT8_DTYPES | {"int16"}


def audit_tflite(path: Path) -> ArtifactContent:
    """Count the constant tensors, ops and compute of a .tflite file (every subgraph).

    Raises:
        ModelLoadError: not a TFLite flatbuffer.
    """
    from ai_edge_litert import schema_py_generated as fb

    data = Path(path).read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelLoadError(f"{Path(path).name} is not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        model = fb.Model.GetRootAs(data, 0)
        return _audit(model, fb)
    except (IndexError, ValueError, TypeError) as e:  # flatbuffers' errors on a damaged file
        raise ModelLoadError(f"{Path(path).name} is not a readable TFLite model: {e}") from e


def _audit(model, fb) -> ArtifactContent:
    op_names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k.lower() for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())  # the schema's own rule
        codes.append(oc.CustomCode().decode() if code == fb.BuiltinOperator.CUSTOM and
                     oc.CustomCode() else op_names.get(code, str(code)))
    sizes = [_buffer_size(model.Buffers(i)) for i in range(model.BuffersLength())]
    tally = Tally("tflite")
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        tensors = [sg.Tensors(i) for i in range(sg.TensorsLength())]
        dtypes = [type_names.get(t.Type(), str(t.Type())) for t in tensors]
        const = {i for i, t in enumerate(tensors) if 0 < t.Buffer() < len(sizes) and sizes[t.Buffer()]}
        for i in sorted(const):
            tally.constant(dtypes[i], sizes[tensors[i].Buffer()])
        ops = [sg.Operators(i) for i in range(sg.OperatorsLength())]
        producer = {}
        for op in ops:
            for o in _ints(op.OutputsAsNumpy(), op.OutputsIsNone()):
                producer[o] = op

        def stored(idx, hops=2, const=const, dtypes=dtypes, tensors=tensors, producer=producer):
            """(dtype, params, dequantized) of the constant behind tensor ``idx``, or None.

            The defaults bind this subgraph's tables (B023), though it is only called within."""
            if idx in const:
                return dtypes[idx], int(np.prod(_shape(tensors[idx]), dtype=np.int64)), False
            op = producer.get(idx)
            if hops and op is not None and codes[op.OpcodeIndex()] in _UNPACK_OPS:
                ins = _ints(op.InputsAsNumpy(), op.InputsIsNone())
                inner = stored(ins[0], hops - 1) if ins else None
                if inner is not None:
                    deq = inner[2] or codes[op.OpcodeIndex()] == "DEQUANTIZE"
                    return inner[0], inner[1], deq
            return None

        for op in ops:
            name = codes[op.OpcodeIndex()]
            ins = _ints(op.InputsAsNumpy(), op.InputsIsNone())
            outs = _ints(op.OutputsAsNumpy(), op.OutputsIsNone())
            w_index = COMPUTE_OPS.get(name)
            weight = stored(ins[w_index]) if w_index is not None and len(ins) > w_index else None
            # int8 weights read directly run int8 kernels: full integer, or hybrid (dynamic range)
            runs_int8 = weight is not None and weight[0] in INT8_DTYPES and not weight[2]
            quantized = runs_int8 or any(o >= 0 and dtypes[o] in _QUANTIZED_OUTPUTS for o in outs)
            tally.op(name, op_kind(qdq=name in QDQ_OPS, quantized=quantized,
                                   has_weight=w_index is not None))
            if weight is not None:
                spatial = spatial_size(_shape(tensors[outs[0]]), 1, -1) if outs else None
                tally.weight(weight[0], weight[2], weight[1], runs_int8, spatial)
    return tally.content()


def _buffer_size(buf) -> int:
    if buf.Offset() > 1:  # weights stored after the flatbuffer (models over 2 GB)
        return int(buf.Size())
    return int(buf.DataLength())


def _shape(tensor) -> list:
    return [] if tensor.ShapeIsNone() else [int(d) for d in tensor.ShapeAsNumpy()]


def _ints(arr, is_none: bool) -> list:
    return [] if is_none else [int(i) for i in arr]

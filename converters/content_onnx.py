"""``audit_artifact`` for ``.onnx`` files, read from the protobuf (external weights not loaded).

QDQ models keep ``Conv``/``MatMul`` ops fed by ``DequantizeLinear``; ONNX Runtime fuses such a
node unit (int8 weight and a dequantized activation) into an int8 kernel, so those count as int8
compute. A float op whose int8 weight is dequantized but whose activation is float runs in float.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.content import INT8_DTYPES, ArtifactContent, Tally, op_kind, spatial_size
from edgekit.errors import ModelLoadError

# op -> index of its weight input
FLOAT_COMPUTE = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1, "FusedConv": 1,
                 "FusedGemm": 1, "FusedMatMul": 1}
INT8_COMPUTE = {"QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3, "ConvInteger": 1,
                "MatMulInteger": 1, "DynamicQuantizeMatMul": 1, "MatMulIntegerToFloat": 1}
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# NCHW outputs: the spatial dims follow the channel axis; other compute ops are channel-last.
_CHANNEL_FIRST = frozenset({"Conv", "ConvTranspose", "FusedConv", "QLinearConv", "ConvInteger"})
# Ops that only reshape or recast a stored weight on its way to the op that reads it.
_PASS_THROUGH = frozenset({"Cast", "Identity", "Transpose", "Reshape", "Unsqueeze", "Squeeze",
                           "Flatten"})


def audit_onnx(path: Path) -> ArtifactContent:
    """Count the constant tensors, ops and compute of an ONNX file, subgraphs (If/Loop/Scan
    bodies) included.

    Raises:
        ModelLoadError: not a readable ONNX model.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as e:
        raise ModelLoadError(f"{Path(path).name} is not a readable ONNX model: {e}") from e
    # One namespace for all graphs: a subgraph reads outer-scope names, and ONNX requires
    # names to be unique across the nesting.
    graphs = _graphs(model.graph)
    nodes = [n for g in graphs for n in g.node]
    consts = {}  # name -> (dtype, params)
    tally = Tally("onnx")
    for init in (i for g in graphs for i in g.initializer):
        consts[init.name] = _const(init, tally)
    for node in nodes:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = next((a for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            if attr is not None:
                consts[node.output[0]] = _const(attr.t, tally)
    producer = {o: n for n in nodes for o in n.output}
    shapes = _output_shapes(model)

    def stored(name, hops=3):
        """(dtype, params, dequantized) of the constant behind tensor ``name``, or None."""
        if name in consts:
            return (*consts[name], False)
        node = producer.get(name)
        if not hops or node is None or not node.input or node.op_type == "Constant":
            return None
        if node.op_type == "DequantizeLinear" or node.op_type in _PASS_THROUGH:
            inner = stored(node.input[0], hops - 1)
            if inner is not None:
                return inner[0], inner[1], inner[2] or node.op_type == "DequantizeLinear"
        return None

    def dequantized_activation(name) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    for node in nodes:
        op = node.op_type if node.domain in ("", "ai.onnx", "com.microsoft") else \
            f"{node.domain}.{node.op_type}"
        if node.op_type == "Constant":
            continue  # counted with the constants
        w_index = INT8_COMPUTE.get(node.op_type, FLOAT_COMPUTE.get(node.op_type))
        weight = (stored(node.input[w_index]) if w_index is not None and len(node.input) > w_index
                  and node.input[w_index] else None)
        if node.op_type in INT8_COMPUTE:
            runs_int8 = True
        else:  # a QDQ node unit: int8 weight and an activation that comes out of a DequantizeLinear
            runs_int8 = (weight is not None and weight[0] in INT8_DTYPES and weight[2]
                         and dequantized_activation(node.input[0]))
        tally.op(op, op_kind(qdq=node.op_type in QDQ_OPS,
                             quantized=bool(runs_int8) or node.op_type.startswith("QLinear"),
                             has_weight=w_index is not None))
        if weight is not None:
            shape = shapes.get(node.output[0]) if node.output else None
            start = 2 if node.op_type in _CHANNEL_FIRST else 1
            stop = None if node.op_type in _CHANNEL_FIRST else -1
            spatial = spatial_size(shape, start, stop) if shape is not None else None
            tally.weight(weight[0], weight[2], weight[1], runs_int8, spatial)
    return tally.content()


def _const(tensor, tally: Tally) -> tuple:
    from onnx import helper

    params = int(np.prod(tensor.dims, dtype=np.int64)) if len(tensor.dims) else 1
    try:
        np_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError):  # a type numpy has no name for (e.g. float8)
        np_dtype = None
    dtype = np_dtype.name if np_dtype is not None else f"onnx_type_{tensor.data_type}"
    if dtype in ("int4", "uint4"):
        nbytes = (params + 1) // 2
    else:
        nbytes = params * (np_dtype.itemsize if np_dtype is not None else 1)
    tally.constant(dtype, nbytes)
    return dtype, params


def _graphs(graph) -> list:
    """``graph`` and every subgraph nested in its nodes' attributes, outermost first."""
    from onnx import AttributeProto

    out = [graph]
    for node in graph.node:
        for a in node.attribute:
            if a.type == AttributeProto.GRAPH:
                out += _graphs(a.g)
            elif a.type == AttributeProto.GRAPHS:
                out += [sg for g in a.graphs for sg in _graphs(g)]
    return out


def _output_shapes(model) -> dict:
    """Tensor name -> static shape (None for unknown dims; the batch dim is allowed to be one)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference fails on odd graphs; MACs then fall back
        return {}
    out = {}
    for vi in [v for g in _graphs(inferred.graph) for v in list(g.value_info) + list(g.output)]:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out[vi.name] = dims
    return out

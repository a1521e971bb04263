"""onnx-fp16: float16 weights and compute; float32 inputs/outputs kept so callers need no change.

Constants that float16 cannot hold (|x| > 65504, e.g. a BatchNormalization running variance of
1e8 in a PaddleOCR detector) would be clamped and silently wreck the output, so the nodes that
read them stay in float32 and the manifest lists them in ``float_ops``.
"""

import numpy as np

from converters.base import PassResult
from converters.onnx_common import float_model, ort_version, save, source_notes
from edgekit.errors import ConversionError

FP16_MAX = 65504.0


def convert(source, options, calibration, out_path) -> PassResult:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model, tools = float_model(source, options)
    blocked, float_ops = out_of_range_nodes(model)
    try:
        half = convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked)
    except Exception as e:  # the converter raises ValueError/KeyError on odd graphs
        raise ConversionError(f"float16 conversion failed: {e}") from e
    save(half, out_path)
    tools["onnxruntime"] = ort_version()
    notes = source_notes(source)
    if float_ops:
        notes.append(f"{len(float_ops)} node(s) kept in float32: constants beyond the float16 range")
    return PassResult(tools=tools, notes=notes, float_ops=float_ops)


def out_of_range_nodes(model) -> tuple[list, list]:
    """Names of nodes that read float32 constants beyond ±65504 (top-level graph).

    Such ``Constant`` nodes become initializers first (same values): the float16 converter keeps
    an initializer in float32 when only blocked nodes read it, but casts a blocked Constant's
    output to float16 anyway. Unnamed nodes get a name (the converter blocks nodes by name).

    Returns:
        (node names to keep in float32, ``[{"op", "node", "reason"}]`` for the manifest)
    """
    from onnx import TensorProto, numpy_helper

    def too_big(tensor) -> bool:
        if tensor.data_type != TensorProto.FLOAT:
            return False
        arr = numpy_helper.to_array(tensor)
        return bool(arr.size) and float(np.max(np.abs(arr))) > FP16_MAX

    big = {i.name for i in model.graph.initializer if too_big(i)}
    keep = []
    for node in model.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and too_big(value):
            tensor = type(value)()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
            big.add(tensor.name)
        else:
            keep.append(node)
    if len(keep) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(keep)
    names, out = [], []
    for i, node in enumerate(model.graph.node):
        reads = [n for n in node.input if n in big]
        if not reads:
            continue
        if not node.name:
            node.name = f"edgekit_fp32_{i}_{node.op_type}"
        names.append(node.name)
        out.append({"op": node.op_type, "node": node.name,
                    "reason": f"reads {', '.join(reads)}: values beyond the float16 range"})
    return names, out

"""The float-compute share the repair is judged by (``edgekit.alternatives``: refused past 50 %
of MACs in float) counts MACs of Conv/MatMul/Gemm only: a hard-swish network whose elementwise
HardSwish/HardSigmoid/Mul ops the Conv/MatMul-only remedy leaves in float keeps every MAC int8.
"""

from __future__ import annotations

import numpy as np
import pytest
from fidelity_models import hardswish_map, photo_crops

from calibration_data import Dataset
from converters.content import audit_artifact, float_compute_share
from converters.onnx_int8 import convert as onnx_int8
from converters.options import CONV_MATMUL_OP_TYPES, ConvertOptions
from converters.sources import load_source

onnx = pytest.importorskip("onnx")


def test_hardswish_ops_left_float_carry_no_macs(tmp_path):
    path = hardswish_map(tmp_path)
    out = tmp_path / "convs-only.onnx"
    onnx_int8(load_source(path), ConvertOptions(quantize_op_types=CONV_MATMUL_OP_TYPES),
              Dataset({"image": photo_crops(8)}), out)
    model = onnx.load(str(out))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    # ORT's pre-processing writes each HardSwish as x * HardSigmoid(x): float elementwise ops ...
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("HardSigmoid") == 3 and ops.count("Mul") == 3
    assert all(producers.get(n.input[0]) == "DequantizeLinear" for n in model.graph.node
               if n.op_type == "Conv")  # ... between int8 convs
    content = audit_artifact(out)
    assert content.int8_compute > 0
    assert float_compute_share(content) == 0.0
    # Keeping one conv float moves exactly its MACs to the float side.
    out2 = tmp_path / "one-float.onnx"
    onnx_int8(load_source(path), ConvertOptions(quantize_op_types=CONV_MATMUL_OP_TYPES,
                                                float_nodes=("conv1",)),
              Dataset({"image": photo_crops(8)}), out2)
    share = float_compute_share(audit_artifact(out2))
    assert 0.0 < share < 0.2, share  # conv1 (3 -> 24 channels) is a small part of the MACs
    assert np.isfinite(share)

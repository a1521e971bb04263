"""Rank an int8 QDQ ONNX model's activation tensors by the error their quantization adds.

Uses ONNX Runtime's own QDQ debugging helpers to record every intermediate tensor of the float
and the quantized model on a few calibration samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.onnx_common import MIN_QDQ_OPSET, float_model, preprocess, upgrade_opset, workdir
from converters.repair.metrics import robust_sqnr_db

RANKING_SAMPLES = 32


def rank_onnx(src, options, calib, naive_path: Path) -> list:
    """Groups ``{"nodes", "label", "score"}``: each activation tensor's producer and consumers."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    from converters.fix_inputs import FixedFeeds

    calib = FixedFeeds.wrap(calib, options)
    samples = [b for _, b in zip(range(RANKING_SAMPLES), calib.batches(1), strict=False)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(samples)

        def get_next(self):
            return next(self._it, None)

    with workdir() as wd:
        wd = Path(wd)
        model, _ = float_model(src, options)
        model = upgrade_opset(model, MIN_QDQ_OPSET, [])
        pre = preprocess(model, wd, [])
        aug_f, aug_q = wd / "aug_float.onnx", wd / "aug_qdq.onnx"
        modify_model_output_intermediate_tensors(str(pre), str(aug_f))
        modify_model_output_intermediate_tensors(str(naive_path), str(aug_q))
        float_acts = collect_activations(str(aug_f), Reader())
        qdq_acts = collect_activations(str(aug_q), Reader())
        graph = onnx.load(str(pre)).graph
    matching = create_activation_matching(qdq_acts, float_acts)
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    consumers: dict = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    groups = []
    for tensor, m in matching.items():
        # The local error (before vs after this tensor's own QDQ pair), not the float-model
        # comparison: that one accumulates upstream damage and ranks the last layers worst.
        if not m.get("pre_qdq") or not m.get("post_qdq"):
            continue
        # ORT's recorder flattens each sample's tensor; stacked they are (samples, elements), and
        # leaving out the few highest-energy elements shows a tensor whose scale crushes the rest.
        ref = np.stack([np.asarray(a).reshape(-1) for a in m["pre_qdq"]])
        got = np.stack([np.asarray(a).reshape(-1) for a in m["post_qdq"]])
        if ref.shape != got.shape or not np.issubdtype(ref.dtype, np.floating):
            continue
        if m.get("float"):
            # ORT folds a Relu/Clip after Conv/MatMul into the QDQ range, so "before QDQ" is the
            # pre-activation; clamp it to the float tensor's range or the fold counts as error.
            flt = np.concatenate([np.asarray(a).reshape(-1) for a in m["float"]])
            ref = np.clip(ref, flt.min(), flt.max())
        nodes = _upstream(tensor, producer, inits) + consumers.get(tensor, [])
        if not nodes:
            continue
        score = robust_sqnr_db(ref, got)
        groups.append({"nodes": nodes, "label": f"tensor {tensor!r} int8 SQNR {score:.1f} dB",
                       "score": score, "tensor": tensor})
    groups.sort(key=lambda g: g["score"])
    return groups


# Ops that pass their input's range through (or nearly): keeping only such an op in float leaves
# the op before it writing the same damaging int8 tensor, so the group extends upstream past them.
PASS_THROUGH = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
                "Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Add", "Mul",
                "MaxPool", "AveragePool"}


def _upstream(tensor: str, producer: dict, inits: set, depth: int = 4) -> list:
    """The producer of ``tensor`` and, through pass-through ops, the producers before it."""
    out = []
    while tensor in producer and depth > 0:
        node = producer[tensor]
        out.append(node.name)
        if node.op_type not in PASS_THROUGH:
            break
        dynamic = [i for i in node.input if i and i not in inits]
        if len(dynamic) != 1:
            break
        tensor, depth = dynamic[0], depth - 1
    return out

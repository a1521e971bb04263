"""The transformer remedy (ONNX): SmoothQuant-style activation smoothing, and which ops of a
MatMul-heavy graph stay float.

* **Smoothing** (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training
  Quantization for Large Language Models"). A transformer's activations (LayerNorm outputs above
  all) carry a few channels with values 10-100x the rest; one per-tensor int8 scale for such a
  tensor leaves the other channels a handful of levels. The difficulty is moved into the weights,
  which have per-channel scales: for the activation ``X`` [..., K] read by MatMul/Gemm nodes with
  constant weights ``W_j`` [K, N_j], ``X W_j = (X / s) (s W_j)`` with
  ``s_k = max|X_k|^a / max_j max|W_j[k, :]|^(1 - a)`` (``a`` = ``alpha``, 0.5 by default; the
  activation maxima from a float run on calibration data). ``X / s`` is a per-channel ``Mul``
  inserted before the MatMuls (other readers of ``X``, such as a residual ``Add``, keep ``X``);
  where every reader of ``X`` is smoothed and ``X`` comes from a LayerNormalization with constant
  scale and bias, ``1 / s`` is folded into those instead. The float function is unchanged.
* **What is quantized** (``TRANSFORMER_OP_TYPES``): MatMul/Gemm (where the MACs are) and Gather
  (an embedding table is most of a small transformer's bytes); LayerNormalization, Softmax,
  Gelu/Erf, Div, Pow and the other elementwise ops stay float (they carry no MACs), and
  ``ConvertOptions.weight_matmuls_only`` leaves two more things float: the MatMul/Gemm outputs
  (ORT's QDQ MatMul quantizes its output by default; a transformer's MatMul outputs feed bias
  adds, GELU and residual sums in float, and one static per-tensor scale for them was most of
  MiniLM's int8 error: cosine 0.950 with them quantized, 0.991 without), and the MatMuls whose
  two inputs are both activations (:func:`activation_matmuls`: attention's ``Q K^T`` and
  ``P V``, with no weight to smooth and no weight MACs to count). With uint8 activations ORT
  runs each remaining DequantizeLinear → MatMul unit as its int8 kernel with float output
  (MatMulIntegerToFloat); with int8 activations it would not fuse them, so the remedy takes
  uint8 activations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from converters.repair.equalize import _attr, _Graph, layer_input_stats

log = logging.getLogger(__name__)

# What the transformer remedy quantizes (ORT's op_types_to_quantize).
TRANSFORMER_OP_TYPES = ("MatMul", "Gemm", "Gather")
DEFAULT_ALPHA = 0.5
# Calibration samples whose per-channel activation maxima set the smoothing scales.
SMOOTH_SAMPLES = 64
# Scales are clipped to this range (a dead channel, or a weight row of zeros, is left unscaled).
MIN_SCALE, MAX_SCALE = 1e-3, 1e3


@dataclass
class _Reader:
    """A MatMul/Gemm that reads activation ``x`` with a constant weight ``weight`` whose
    input-channel axis is ``k_axis``."""

    node: object
    weight: str
    k_axis: int


@dataclass
class SmoothReport:
    """What :func:`smooth` did: activations smoothed (by inserted Mul, folded into a
    LayerNormalization) and the MatMul/Gemm nodes whose weights absorbed the scales."""

    inserted: int = 0
    folded: int = 0
    layers: int = 0
    alpha: float = DEFAULT_ALPHA
    skipped: dict = field(default_factory=dict)

    def describe(self) -> str:
        why = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items(), key=lambda t: -t[1]))
        return (f"activation smoothing (SmoothQuant, alpha {self.alpha:g}): "
                f"{self.inserted + self.folded} MatMul inputs smoothed into {self.layers} "
                f"weights ({self.folded} folded into LayerNormalization, {self.inserted} by a "
                f"per-channel Mul)" + (f"; skipped: {why}" if why else ""))


def _weight_readers(gr: _Graph, x: str, skipped: dict) -> list:
    """The MatMul/Gemm readers of ``x`` that take it as their activation with a constant weight
    only they read; ``[]`` when any such reader cannot be smoothed."""
    out = []
    for n in gr.consumers.get(x, []):
        if n.op_type not in ("MatMul", "Gemm") or n.input[0] != x or len(n.input) < 2:
            continue
        w = gr.array(n.input[1])
        if w is None or w.ndim != 2:
            continue
        if n.op_type == "Gemm" and _attr(n, "transA", 0):
            skipped["Gemm with transA"] = skipped.get("Gemm with transA", 0) + 1
            continue
        if not gr.owned(n.input[1]):
            skipped["shared weight"] = skipped.get("shared weight", 0) + 1
            return []
        k_axis = 1 if n.op_type == "Gemm" and _attr(n, "transB", 0) else 0
        out.append(_Reader(n, n.input[1], k_axis))
    return out


def smoothable(model) -> dict:
    """Activation tensor -> its MatMul/Gemm readers with constant weights (``_Reader`` list)."""
    gr = _Graph(model.graph)
    skipped: dict = {}
    groups = {}
    for x in list(gr.consumers):
        if x in gr.inits:
            continue
        readers = _weight_readers(gr, x, skipped)
        if readers:
            groups[x] = readers
    return groups


def matmul_heavy(model) -> bool:
    """True when MatMul/Gemm hold more weight parameters than Conv/ConvTranspose (a
    transformer or an MLP, not a conv net with a classifier head)."""
    gr = _Graph(model.graph)
    mm = conv = 0
    for n in model.graph.node:
        w = gr.array(n.input[1]) if len(n.input) > 1 else None
        if w is None:
            continue
        if n.op_type in ("MatMul", "Gemm"):
            mm += w.size
        elif n.op_type in ("Conv", "ConvTranspose"):
            conv += w.size
    return mm > conv


def activation_matmuls(model) -> list:
    """Names of the MatMul nodes whose inputs are both activations (no constant weight)."""
    gr = _Graph(model.graph)
    out = []
    for n in model.graph.node:
        if n.op_type != "MatMul" or len(n.input) < 2:
            continue
        if all(i not in gr.inits and not _constant(gr, i) for i in n.input[:2]):
            out.append(n.name)
    return out


def _constant(gr: _Graph, name: str) -> bool:
    p = gr.producer.get(name)
    return p is not None and p.op_type == "Constant"


def smooth(model, batches, alpha: float = DEFAULT_ALPHA) -> SmoothReport:
    """Smooth ``model``'s MatMul/Gemm activations into their weights, in place.

    Args:
        model: the float ``onnx.ModelProto`` ORT is about to quantize (names made unique).
        batches: calibration feeds ``{input name: array}`` (the activations' channel maxima).
        alpha: the share of each channel's range moved into the weights (0: none, 1: all).

    Returns:
        What was done.

    Raises:
        ConversionError: ORT cannot run the float model on the calibration data.
    """
    from onnx import helper

    report = SmoothReport(alpha=alpha)
    groups = smoothable(model)
    if not groups:
        return report

    def channel_max(v):
        return np.abs(v).reshape(-1, v.shape[-1]).max(axis=0)
    amax = layer_input_stats(model, {x: (x, channel_max) for x in groups}, batches,
                             SMOOTH_SAMPLES, reduce="max")
    gr = _Graph(model.graph)
    inserts: dict = {}
    for x, readers in groups.items():
        a = np.asarray(amax[x], np.float64)
        ws = [gr.array(r.weight) for r in readers]
        if any(w.shape[r.k_axis] != a.size for w, r in zip(ws, readers, strict=True)):
            report.skipped["shape mismatch"] = report.skipped.get("shape mismatch", 0) + 1
            continue
        wmax = np.max([np.abs(w).max(axis=1 - r.k_axis) for w, r in zip(ws, readers, strict=True)],
                      axis=0).astype(np.float64)
        ok = (a > 0) & (wmax > 0)
        s = np.ones_like(a)
        s[ok] = a[ok] ** alpha / wmax[ok] ** (1.0 - alpha)
        s = np.clip(s, MIN_SCALE, MAX_SCALE)
        if np.allclose(s, 1.0):
            continue
        for w, r in zip(ws, readers, strict=True):
            shape = (-1, 1) if r.k_axis == 0 else (1, -1)
            gr.set(r.weight, w * s.reshape(shape))
        report.layers += len(readers)
        if _fold_into_layernorm(gr, x, readers, s):
            report.folded += 1
            continue
        inv = gr.add(f"{x}_smooth_scale", (1.0 / s).astype(np.float32))
        out, k = f"{x}_smoothed", 0
        while out in gr.producer or out in gr.inits:
            k += 1
            out = f"{x}_smoothed_{k}"
        inserts.setdefault(x, []).append(helper.make_node("Mul", [x, inv], [out],
                                                          name=f"{out}_mul"))
        for r in readers:
            r.node.input[0] = out
        report.inserted += 1
    if inserts:
        # Each Mul right after its activation's producer (graph inputs': first): topological.
        nodes = [n for x in inserts if x not in gr.producer for n in inserts[x]]
        for n in model.graph.node:
            nodes.append(n)
            nodes += [m for o in n.output if o in inserts for m in inserts[o]]
        copies = [_copy(n) for n in nodes]
        del model.graph.node[:]
        model.graph.node.extend(copies)
    log.info("%s", report.describe())
    return report


def _copy(node):
    from onnx import NodeProto

    out = NodeProto()
    out.CopyFrom(node)
    return out


def _fold_into_layernorm(gr: _Graph, x: str, readers: list, s) -> bool:
    """Divide the LayerNormalization that makes ``x`` by ``s`` (scale and bias) when the smoothed
    MatMuls are its only readers; False when that cannot be done exactly."""
    ln = gr.producer.get(x)
    if (ln is None or ln.op_type != "LayerNormalization" or x in gr.outputs
            or len(gr.consumers.get(x, [])) != len(readers) or ln.output[0] != x
            or _attr(ln, "axis", -1) not in (-1,)):
        return False
    names = [ln.input[i] if len(ln.input) > i and ln.input[i] else None for i in (1, 2)]
    if names[0] is None or not gr.owned(names[0]) or (names[1] is not None
                                                      and not gr.owned(names[1])):
        return False
    for name in names:
        if name is not None:
            v = gr.array(name)
            if v.shape[-1] != s.size:
                return False
    for name in names:
        if name is not None:
            gr.set(name, gr.array(name) / s.reshape(gr.array(name).shape))
    return True

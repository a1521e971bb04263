"""Remedies that keep every op int8: cross-layer equalization and bias correction (ONNX).

Both rewrite the float ONNX graph before ONNX Runtime quantizes it, after Nagel et al. 2019,
"Data-Free Quantization Through Weight Equalization and Bias Correction" (AIMET implements them
for ONNX in ``aimet_onnx.cross_layer_equalization``):

* **Cross-layer equalization** (CLE). For two convs joined by a positively homogeneous op
  (``f(x / s) = f(x) / s`` for ``s > 0``: Relu, LeakyRelu, PRelu, MaxPool, zero Pad, nothing),
  output channel ``i`` of the first conv (weights and bias) is divided by ``s_i`` and input
  channel ``i`` of the second is multiplied by it, with ``s_i = sqrt(r1_i / r2_i)`` (``r`` =
  the channel's largest absolute weight). Both channels then have the range ``sqrt(r1_i r2_i)``
  and the float function is unchanged. Pairs are rescaled in rounds until the scales settle, so
  a conv that ends one pair and starts the next (the depthwise conv of a MobileNet block) is
  balanced on both sides, as the paper's three-layer sets are.
* **Bias correction**. Each quantized Conv/Gemm/MatMul's int8 weights ``W_q`` shift its output's
  mean by ``(W_q - W) · E[x]``; that is subtracted from its bias, with the per-channel ``E[x]``
  of the layer's input from a float run on calibration data (the paper's empirical variant,
  in its cheap analytic form). For a 2-D Conv, ``E[x]`` is taken per kernel tap over the output
  positions, so zero padding at the borders is accounted for exactly (on the small feature maps
  at the end of a MobileNet, most positions touch a border).

What is exact and what is left alone:

* ReLU6 (``Clip(0, 6)``) and any other Clip with a finite bound are not homogeneous:
  ``clip(x / s, 0, 6) != clip(x, 0, 6) / s``. AIMET swaps ReLU6 for ReLU before CLE, which
  changes the model; here pairs through such a Clip are skipped (a Clip with min 0 and no max
  is a Relu and is equalized).
* HardSwish, HardSigmoid, Sigmoid, Tanh, Add, Mul, Concat... are not homogeneous per channel:
  pairs through them are skipped. So is a conv whose output is read by more than one op (a
  residual branch) or is a graph output, and weights or biases shared between nodes.
* High-bias absorption (the paper's third step) is not done.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import ConversionError

log = logging.getLogger(__name__)

# Ops between two convs that commute with a positive per-channel scale.
HOMOGENEOUS = frozenset({"Relu", "LeakyRelu", "PRelu", "MaxPool", "Identity", "Pad", "Clip"})
# CLE stops when no channel scale of a round moves by more than this (relative).
SETTLED = 1e-3
MAX_ROUNDS = 50
# Channels whose largest weight is below this are left unscaled (a dead channel has no range).
TINY = 1e-12
# Calibration samples whose layer-input means feed bias correction.
BIAS_CORRECTION_SAMPLES = 64


@dataclass
class EqualizeReport:
    """What :func:`equalize` did.

    Attributes:
        folded_batchnorms: BatchNormalization nodes folded into the conv before them.
        pairs: conv pairs rescaled.
        skipped: why other convs were not paired, reason -> count.
        rounds: rescaling rounds until the scales settled.
        data_aware: scales balanced activation ranges (calibration data) against weights.
    """

    folded_batchnorms: int = 0
    pairs: int = 0
    skipped: dict = field(default_factory=dict)
    rounds: int = 0
    data_aware: bool = False

    def describe(self) -> str:
        why = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items(), key=lambda t: -t[1]))
        return ("cross-layer equalization"
                + (" (activation ranges vs weight ranges)" if self.data_aware else "")
                + f": {self.pairs} conv pairs rescaled in {self.rounds} "
                f"rounds, {self.folded_batchnorms} BatchNorms folded"
                + (f"; not paired: {why}" if why else ""))


class _Graph:
    """Indexes over an ``onnx.GraphProto``, rebuilt after each structural edit."""

    def __init__(self, graph):
        self.g = graph
        self.refresh()

    def refresh(self):
        g = self.g
        self.inits = {i.name: i for i in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict = {}
        uses: Counter = Counter()
        for n in g.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
                    uses[i] += 1
        self.uses = uses
        self.outputs = {o.name for o in g.output}

    def array(self, name):
        """The float32 initializer ``name`` as an array, or None (not a float32 initializer)."""
        from onnx import TensorProto, numpy_helper

        init = self.inits.get(name)
        if init is None or init.data_type != TensorProto.FLOAT:
            return None
        return numpy_helper.to_array(init)

    def owned(self, name) -> bool:
        """A float32 initializer read by one node only (safe to rewrite in place)."""
        return self.array(name) is not None and self.uses[name] == 1

    def set(self, name, value):
        from onnx import numpy_helper

        self.inits[name].CopyFrom(numpy_helper.from_array(np.asarray(value, np.float32), name))

    def add(self, stem, value) -> str:
        from onnx import numpy_helper

        name, k = stem, 0
        while name in self.inits or name in self.producer:
            k += 1
            name = f"{stem}_{k}"
        init = numpy_helper.from_array(np.asarray(value, np.float32), name)
        self.g.initializer.append(init)
        self.inits[name] = self.g.initializer[-1]
        self.uses[name] = 1
        return name

    def bias_of(self, node, size: int, *, index: int = 2) -> str | None:
        """The name of ``node``'s own bias initializer at input ``index``, created (zeros) when
        missing and copied when shared; None when the bias is not a float32 initializer."""
        if len(node.input) > index and node.input[index]:
            name = node.input[index]
            b = self.array(name)
            if b is None or b.size != size:
                return None
            if self.uses[name] > 1:
                new = self.add(f"{name}_{node.name or 'own'}", b.reshape(-1))
                self.uses[name] -= 1
                node.input[index] = new
                return new
            return name
        while len(node.input) < index:
            node.input.append("")
        name = self.add(f"{node.name or node.output[0]}_bias", np.zeros(size, np.float32))
        node.input.append(name)
        return name


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# ---------------------------------------------------------------------------------------------
# BatchNorm folding
# ---------------------------------------------------------------------------------------------

def fold_batchnorms(model) -> int:
    """Fold each inference-mode BatchNormalization into the Conv in front of it, in place.

    Only when the Conv's output is read by the BatchNorm alone and both hold their parameters
    as float32 initializers of their own. ORT's pre-processing folds these too; this covers
    graphs where that pre-processing failed.

    Returns:
        The number of BatchNorms folded.
    """
    gr = _Graph(model.graph)
    folded = 0
    for bn in [n for n in model.graph.node if n.op_type == "BatchNormalization"]:
        x = bn.input[0]
        conv = gr.producer.get(x)
        if (conv is None or conv.op_type != "Conv" or len(gr.consumers.get(x, [])) != 1
                or x in gr.outputs or _attr(bn, "training_mode", 0) or any(bn.output[1:])
                or not gr.owned(conv.input[1])):
            continue
        params = [gr.array(n) for n in bn.input[1:5]]
        if any(p is None for p in params):
            continue
        gamma, beta, mean, var = (p.reshape(-1) for p in params)
        w = gr.array(conv.input[1])
        if gamma.size != w.shape[0]:
            continue
        bias_name = gr.bias_of(conv, w.shape[0])
        if bias_name is None:
            continue
        k = gamma / np.sqrt(var + _attr(bn, "epsilon", 1e-5))
        gr.set(conv.input[1], w * k.reshape((-1,) + (1,) * (w.ndim - 1)))
        gr.set(bias_name, (gr.array(bias_name) - mean) * k + beta)
        conv.output[0] = bn.output[0]
        model.graph.node.remove(bn)
        gr.refresh()
        folded += 1
    return folded


# ---------------------------------------------------------------------------------------------
# Cross-layer equalization
# ---------------------------------------------------------------------------------------------

def _homogeneous(node, gr) -> bool:
    """``node`` commutes with a positive per-channel scale of its (NCHW) input."""
    op = node.op_type
    if op not in HOMOGENEOUS or len([o for o in node.output if o]) != 1:
        return False
    if op == "PRelu":
        return gr.array(node.input[1]) is not None
    if op == "Clip":
        lo, hi = _clip_bounds(node, gr)
        return lo in (None, 0.0) and hi is None
    if op == "Pad":
        if _attr(node, "mode", b"constant") not in (b"constant", "constant"):
            return False
        if len(node.input) > 3 and node.input[3]:  # explicit axes (opset 18): not handled
            return False
        pads = (gr.array(node.input[1]) if len(node.input) > 1
                else np.asarray(_attr(node, "pads", []), np.float32))
        if pads is None or pads.size < 4:
            return False
        value = _scalar(node, 2, gr, _attr(node, "value", 0.0))
        rank = pads.size // 2
        # Padding the channel axis (1) would add channels; a non-zero value is not homogeneous.
        return value == 0.0 and pads[1] == 0 and pads[1 + rank] == 0
    return True


def _scalar(node, index, gr, default):
    """Input ``index`` of ``node`` as a float, ``default`` when absent, NaN when not constant."""
    if len(node.input) <= index or not node.input[index]:
        return default
    v = gr.array(node.input[index])
    if v is None:
        from onnx import numpy_helper

        init = gr.inits.get(node.input[index])
        v = None if init is None else numpy_helper.to_array(init)
    return float("nan") if v is None or v.size != 1 else float(v.reshape(-1)[0])


def _clip_bounds(node, gr):
    """(min, max) of a Clip, None for an absent or infinite bound (opset < 11 attributes too)."""
    lo = _scalar(node, 1, gr, _attr(node, "min"))
    hi = _scalar(node, 2, gr, _attr(node, "max"))
    lo = None if lo is None or lo == float("-inf") else lo
    hi = None if hi is None or hi == float("inf") else hi
    return lo, hi


def _conv_ok(node, gr) -> bool:
    w = gr.array(node.input[1]) if len(node.input) > 1 else None
    return node.op_type == "Conv" and w is not None and w.ndim >= 3


def find_pairs(model):
    """Conv pairs that CLE may rescale, and why the other convs were not paired.

    Returns:
        (pairs, skipped): pairs as ``(first conv, second conv)`` nodes; skipped as
        reason -> count.
    """
    gr = _Graph(model.graph)
    pairs, skipped = [], Counter()
    for a in model.graph.node:
        if a.op_type != "Conv":
            continue
        if not _conv_ok(a, gr):
            skipped["convs with non-constant weights"] += 1
            continue
        t, reason = a.output[0], None
        while reason is None:
            readers = gr.consumers.get(t, [])
            if t in gr.outputs:
                reason = "convs whose output is a graph output"
            elif len(readers) != 1:
                reason = ("convs whose output is read by several ops (branches)" if readers
                          else "convs whose output is unused")
            elif readers[0].op_type == "Conv" and readers[0].input[0] == t:
                b = readers[0]
                reason = _pair_problem(a, b, gr)
                if reason is None:
                    pairs.append((a, b))
                    break
            elif _homogeneous(readers[0], gr):
                t = readers[0].output[0]
            else:
                n = readers[0]
                reason = (f"pairs through {n.op_type}"
                          + (" with a finite bound (ReLU6 is not scale-invariant)"
                             if n.op_type == "Clip" else ""))
        if reason is not None:
            skipped[reason] += 1
    return pairs, dict(skipped)


def _pair_problem(a, b, gr) -> str | None:
    if not _conv_ok(b, gr):
        return "pairs whose second conv has non-constant weights"
    wa, wb = gr.array(a.input[1]), gr.array(b.input[1])
    if wa.shape[0] != wb.shape[1] * _attr(b, "group", 1):
        return "pairs whose channel counts do not match"
    if not (gr.owned(a.input[1]) and gr.owned(b.input[1])):
        return "pairs with shared weights"
    if len(a.input) > 2 and a.input[2] and not gr.owned(a.input[2]):
        return "pairs with a shared bias"
    return None


def _out_range(w):
    return np.abs(w.reshape(w.shape[0], -1)).max(axis=1)


def _grouped(w, group):
    """Conv weights ``[M, C/g, ...]`` as ``[g, M/g, C/g, k]`` (input channel ``c`` is group
    ``c // (C/g)``, column ``c % (C/g)``)."""
    m, cpg = w.shape[0], w.shape[1]
    return w.reshape(group, m // group, cpg, -1)


def _in_range(w, group):
    return np.abs(_grouped(w, group)).max(axis=(1, 3)).reshape(-1)


def equalize(model, activation_ranges: dict | None = None) -> EqualizeReport:
    """Cross-layer equalization of ``model`` (an ``onnx.ModelProto``), in place.

    BatchNorms are folded first. Then the scales of every pair are recomputed and applied in
    rounds until no scale moves by more than ``SETTLED`` (at most ``MAX_ROUNDS``).

    Args:
        model: the float model.
        activation_ranges: the tensor each pair's second conv reads -> its per-channel largest
            absolute value on calibration data (:func:`activation_ranges`). When given, channel
            ``i`` balances that activation range against the second conv's input-channel
            weight range (``s_i = sqrt(a_i / r2_i)``) instead of the first conv's output-channel
            weight range: with per-channel weight scales, the first conv's rows are quantized
            alike at any scale, and what per-tensor int8 still sees is the activation tensor
            between the convs (the criterion SmoothQuant uses with alpha 0.5; the rescaling,
            and so the float function, are the same).

    Returns:
        What was done (:class:`EqualizeReport`).

    Raises:
        ConversionError: the rescaled weights are not finite (a bug; nothing should reach it).
    """
    report = EqualizeReport(folded_batchnorms=fold_batchnorms(model))
    pairs, report.skipped = find_pairs(model)
    report.pairs = len(pairs)
    gr = _Graph(model.graph)
    weights = {n.input[1]: gr.array(n.input[1]) for pair in pairs for n in pair}
    biases = {a.input[2]: gr.array(a.input[2]) for a, _ in pairs
              if len(a.input) > 2 and a.input[2]}
    # The activation ranges as rescaled so far: only the pair's own scale changes its tensor.
    acts = {b.input[0]: np.asarray(activation_ranges[b.input[0]], np.float64)
            for _, b in pairs if activation_ranges and b.input[0] in activation_ranges}
    report.data_aware = bool(acts)
    for report.rounds in range(1, MAX_ROUNDS + 1):
        moved = 0.0
        for a, b in pairs:
            wa, wb, group = weights[a.input[1]], weights[b.input[1]], _attr(b, "group", 1)
            r2 = _in_range(wb, group)
            r1 = acts[b.input[0]] if b.input[0] in acts else _out_range(wa)
            live = (r1 > TINY) & (r2 > TINY)
            s = np.ones_like(r2)
            s[live] = np.sqrt(r1[live] / r2[live])
            moved = max(moved, float(np.abs(s - 1.0).max()))
            if b.input[0] in acts:
                acts[b.input[0]] = acts[b.input[0]] / s
            weights[a.input[1]] = wa / s.reshape((-1,) + (1,) * (wa.ndim - 1))
            if len(a.input) > 2 and a.input[2]:
                biases[a.input[2]] = biases[a.input[2]] / s
            g = _grouped(wb, group) * s.reshape(group, 1, -1, 1)
            weights[b.input[1]] = g.reshape(wb.shape)
        if moved <= SETTLED:
            break
    for name, value in list(weights.items()) + list(biases.items()):
        if not np.all(np.isfinite(value)):
            raise ConversionError(f"cross-layer equalization produced non-finite values in "
                                  f"{name!r}; build without equalize and report this model")
        gr.set(name, value)
    log.info("%s", report.describe())
    return report


# ---------------------------------------------------------------------------------------------
# Bias correction
# ---------------------------------------------------------------------------------------------

@dataclass
class _Layer:
    node: object
    weight: str
    x: str           # the activation input
    channel_axis: int  # of the weight, = ORT's per-channel axis (the output channel)
    bias_node: object  # the node whose input holds the bias (the layer, or its Add)
    bias_index: int
    kernel_shape: tuple = ()  # Conv only


def _layers(model, exclude, op_types) -> list:
    """Conv/Gemm/MatMul nodes ORT will quantize whose bias can absorb a correction."""
    gr = _Graph(model.graph)
    out = []
    for n in model.graph.node:
        if n.name in exclude or (op_types and n.op_type not in op_types):
            continue
        w = gr.array(n.input[1]) if len(n.input) > 1 else None
        if w is None or n.input[0] in gr.inits:
            continue
        if n.op_type == "Conv" and w.ndim >= 3:
            out.append(_Layer(n, n.input[1], n.input[0], 0, n, 2, tuple(w.shape[2:])))
        elif (n.op_type == "Gemm" and w.ndim == 2 and not _attr(n, "transA", 0)
              and _attr(n, "beta", 1.0) != 0.0):
            out.append(_Layer(n, n.input[1], n.input[0], 0 if _attr(n, "transB", 0) else 1, n, 2))
        elif n.op_type == "MatMul" and w.ndim == 2:
            readers = gr.consumers.get(n.output[0], [])
            if len(readers) != 1 or readers[0].op_type != "Add" or n.output[0] in gr.outputs:
                continue
            add = readers[0]
            index = 1 if add.input[0] == n.output[0] else 0
            bias = gr.array(add.input[index])
            if bias is None or bias.size != w.shape[1] or bias.shape[-1] != bias.size:
                continue
            out.append(_Layer(n, n.input[1], n.input[0], 1, add, index))
    return out


def fake_quant_weight(w, channel_axis: int, *, per_channel: bool, reduce_range: bool):
    """``w`` through ORT's int8 weight quantization and back (symmetric, zero point 0, scale =
    max|w| / 127, or / 64 with ``reduce_range``; one scale per ``channel_axis`` slice)."""
    qmax = 64.0 if reduce_range else 127.0
    if per_channel:
        axes = tuple(i for i in range(w.ndim) if i != channel_axis)
        amax = np.abs(w).max(axis=axes, keepdims=True)
    else:
        amax = np.abs(w).max(keepdims=True)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    return np.clip(np.round(w / scale), -qmax, qmax) * scale


def conv_tap_means(x, node, kernel_shape) -> np.ndarray:
    """For each input channel and kernel tap of the 2-D Conv ``node``, the mean of the input
    value that tap multiplies, over the batch and every output position (zero where the tap
    falls in the padding): ``[C, kh, kw]``. The mean of ``Conv(x; dW)`` per output channel is
    then exactly ``sum(dW * taps)``, borders included."""
    _, _, h, w = x.shape
    kh, kw = kernel_shape
    sh, sw = _attr(node, "strides", [1, 1])
    dh, dw = _attr(node, "dilations", [1, 1])
    auto = _attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, st, d in ((h, kh, sh, dh), (w, kw, sw, dw)):
            total = max((-(-size // st) - 1) * st + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2) if auto == "SAME_UPPER"
                        else (total - total // 2, total // 2))
        (pt, pb), (pl, pr) = pads
    elif auto == "VALID":
        pt = pb = pl = pr = 0
    else:
        pt, pl, pb, pr = _attr(node, "pads", [0, 0, 0, 0])
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    taps = np.empty((x.shape[1], kh, kw))
    for i in range(kh):
        for j in range(kw):
            window = xp[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                        j * dw:j * dw + sw * (wo - 1) + 1:sw]
            taps[:, i, j] = window.mean(axis=(0, 2, 3))
    return taps


def layer_input_stats(model, stats: dict, batches,
                      max_samples: int = BIAS_CORRECTION_SAMPLES, *, reduce: str = "mean") -> dict:
    """Statistics of tensors of the float ``model`` over up to ``max_samples`` batches.

    Args:
        model: the float ``onnx.ModelProto`` (run with ONNX Runtime).
        stats: key -> (tensor name, function of one batch's float64 array -> statistic array).
        batches: feeds ``{input name: array}``.
        reduce: ``"mean"`` averages each statistic over the batches, ``"max"`` keeps its
            elementwise largest value.

    Returns:
        key -> the statistic over the batches.

    Raises:
        ConversionError: ONNX Runtime cannot run the model on the calibration data.
    """
    import onnx
    import onnxruntime as ort

    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    graph_inputs = {i.name for i in aug.graph.input}
    have = {o.name for o in aug.graph.output}
    tensors = list(dict.fromkeys(t for t, _ in stats.values()))
    for t in tensors:
        if t not in have and t not in graph_inputs:
            aug.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    try:
        sess = ort.InferenceSession(aug.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        raise ConversionError(f"bias correction: ONNX Runtime cannot load the float model: "
                              f"{str(e).strip().splitlines()[0][:300]}") from e
    names = [o.name for o in sess.get_outputs()]
    sums: dict = {}
    count = 0
    for feeds, _ in zip(batches, range(max_samples), strict=False):
        try:
            values = dict(zip(names, sess.run(None, feeds), strict=True))
        except Exception as e:  # ORT raises its own types on bad feeds
            raise ConversionError(f"bias correction: the float model failed on calibration "
                                  f"data: {str(e).strip().splitlines()[0][:300]}") from e
        values.update(feeds)
        for key, (t, fn) in stats.items():
            v = fn(np.asarray(values[t], np.float64))
            sums[key] = (sums.get(key, 0.0) + v if reduce == "mean"
                         else np.maximum(sums[key], v) if key in sums else v)
        count += 1
    if count == 0:
        raise ConversionError("bias correction and data-aware equalization need calibration "
                              "samples; the calibration set gave none")
    return {k: v / count if reduce == "mean" else v for k, v in sums.items()}


def activation_ranges(model, batches) -> dict:
    """For each CLE pair of ``model``, the tensor its second conv reads -> that tensor's
    per-channel largest absolute value over the calibration ``batches`` (float run)."""
    pairs, _ = find_pairs(model)
    if not pairs:
        return {}

    def channel_max(v):
        return np.abs(v).max(axis=tuple(i for i in range(v.ndim) if i != 1))
    return layer_input_stats(model, {b.input[0]: (b.input[0], channel_max) for _, b in pairs},
                             batches, reduce="max")


def _stat_for(la):
    """The input statistic that gives layer ``la``'s output mean shift exactly: per-tap means
    for a 2-D Conv, per-channel means otherwise (axis 1 for Conv, the last axis for matmuls)."""
    n = la.node
    if n.op_type == "Conv":
        kernel = la.kernel_shape

        def conv_stat(v):
            if v.ndim == 4 and len(kernel) == 2:
                return conv_tap_means(v, n, kernel)
            mean = v.mean(axis=tuple(i for i in range(v.ndim) if i != 1))
            return np.broadcast_to(mean.reshape((-1,) + (1,) * len(kernel)),
                                   (mean.size,) + tuple(kernel)).copy()
        return conv_stat
    return lambda v: v.reshape(-1, v.shape[-1]).mean(axis=0)


def correct_biases(model, batches, *, per_channel: bool = True, reduce_range: bool = False,
                   exclude=(), op_types=()) -> int:
    """Bias correction of ``model`` (an ``onnx.ModelProto``), in place.

    Args:
        model: the float model ORT is about to quantize.
        batches: calibration feeds ``{input name: array}``, one sample each.
        per_channel / reduce_range: the weight quantization ORT will apply (as in
            ``ConvertOptions``), so that ``W_q`` is what the artifact will hold.
        exclude: node names kept in float (not corrected).
        op_types: when not empty, only these op types are quantized (and corrected).

    Returns:
        The number of layers whose bias was corrected.

    Raises:
        ConversionError: ORT cannot run the float model on the calibration data.
    """
    layers = _layers(model, set(exclude), set(op_types))
    if not layers:
        return 0
    stats = layer_input_stats(model, {k: (la.x, _stat_for(la)) for k, la in enumerate(layers)},
                              batches)
    gr = _Graph(model.graph)
    done = 0
    for k, la in enumerate(layers):
        w = gr.array(la.weight)
        dw = fake_quant_weight(w, la.channel_axis, per_channel=per_channel,
                               reduce_range=reduce_range) - w
        ex = stats[k]
        n = la.node
        if n.op_type == "Conv":
            group = _attr(n, "group", 1)
            # dW [M, C/g, taps] against the input's per-tap means [C, taps], group by group.
            shift = np.einsum("gmck,gck->gm", _grouped(dw, group),
                              ex.reshape(group, w.shape[1], -1)).reshape(-1)
        elif n.op_type == "Gemm":
            wk = dw.T if la.channel_axis == 0 else dw         # [K, N]
            shift = _attr(n, "alpha", 1.0) * (ex @ wk) / _attr(n, "beta", 1.0)
        else:
            shift = ex @ dw
        if not np.all(np.isfinite(shift)):
            continue
        name = gr.bias_of(la.bias_node, shift.size, index=la.bias_index)
        if name is None:
            continue
        b = gr.array(name)
        gr.set(name, (b.reshape(-1) - shift).reshape(b.shape))
        done += 1
    log.info("bias correction: %d of %d layers corrected", done, len(layers))
    return done


# ---------------------------------------------------------------------------------------------
# The onnx-int8 hook
# ---------------------------------------------------------------------------------------------

def prepare(path: Path, options, calibration, workdir: Path, notes: list) -> Path:
    """Apply the remedies ``options`` asks for to the float model at ``path``.

    Args:
        path: the (pre-processed) float ONNX model ORT will quantize.
        options: ``ConvertOptions`` (``equalize``, ``smooth_alpha``, ``bias_correction`` and the
            weight quantization settings).
        calibration: the calibration ``Dataset`` (bias correction's ``E[x]``).
        workdir: where to write the rewritten model.
        notes: what was done is appended here (for the manifest).

    Returns:
        ``path`` when nothing was asked, else the path of the rewritten model.

    Raises:
        ConversionError: the float model cannot be run for bias correction.
    """
    if not (options.equalize or options.bias_correction or options.smooth_alpha):
        return path
    import onnx

    model = onnx.load(str(path))
    if options.equalize:
        folded = fold_batchnorms(model)
        # Per-channel weights make the paper's weight-range criterion moot for the first conv;
        # balance the activation tensor between the convs instead (see ``equalize``).
        ranges = activation_ranges(model, calibration.batches(1)) if options.per_channel else None
        report = equalize(model, ranges)
        report.folded_batchnorms += folded
        notes.append(report.describe())
    if options.smooth_alpha:
        # Before bias correction: that corrects for the int8 rounding of the smoothed weights.
        from converters.repair.smooth import smooth

        notes.append(smooth(model, calibration.batches(1), options.smooth_alpha).describe())
    if options.bias_correction:
        done = correct_biases(model, calibration.batches(1), per_channel=options.per_channel,
                              reduce_range=options.reduce_range,
                              exclude=options.float_nodes, op_types=options.quantize_op_types)
        notes.append(f"bias correction: {done} layers' biases corrected for their int8 weights' "
                     f"mean output shift (E[x] from up to {BIAS_CORRECTION_SAMPLES} calibration "
                     f"samples)")
    out = Path(workdir) / "remedied.onnx"
    onnx.save(model, str(out))
    return out

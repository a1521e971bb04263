"""Automatic mixed precision: repair a quantized artifact that missed its fidelity gate.

The ladder, cheapest first:
1. remedies that keep every op INT8 (ONNX: 7-bit weights, percentile and entropy ranges,
   symmetric activations, per-channel weights, cross-layer equalization, bias correction,
   Conv/MatMul-only quantization; for a MatMul-heavy graph, the transformer remedy instead:
   MatMul/Gemm/Gather int8 with activation smoothing, ``converters.repair.smooth``:
   ``cheaper_remedies``) — about the size and speed of the naive artifact;
2. rank the quantized ops by the damage they do (``rank_groups``), then keep the top-k groups in
   float, growing k by doubling until the gate passes and bisecting back to the smallest k.

Each float group is an activation tensor's producer plus its consumers: keeping one op in float is
not enough when the damage is in the tensor between two ops (a few huge outliers crush the int8
scale of everything else in that tensor).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from pathlib import Path

from converters.base import PassResult
from converters.onnx_common import host_int8_may_saturate
from converters.options import CONV_MATMUL_OP_TYPES, WEIGHT_OP_TYPES, CalibrationMethod
from converters.repair.smooth import DEFAULT_ALPHA as SMOOTH_ALPHA
from converters.repair.smooth import TRANSFORMER_OP_TYPES, matmul_heavy
from edgekit.errors import ConversionError, VerificationError
from edgekit.fsutil import temp_path_for

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Attempt:
    description: str
    options: object
    result: PassResult
    fidelity: object
    io: tuple
    path: Path
    misses: list
    margin: float = 0.0

    def score(self):
        """Fewest gate misses first, then the widest margin on the gate's own measures."""
        return (len(self.misses), -self.margin)


def cheaper_remedies(info, options, src=None) -> list:
    """Option variants that keep every conv and matmul int8, in the order they are tried
    (none keeps a named node in float; the last ones leave elementwise ops in float).
    ``src`` (the source model) lets the ladder see a MatMul-heavy graph (a transformer): it then
    gets the transformer remedy in place of the calibration and conv remedies."""
    if info.format != "onnx" or info.precision != "int8":
        return []
    r = dataclasses.replace
    out = []
    if not options.reduce_range:
        # First: on AVX2 hosts without VNNI, ORT's int8 kernels saturate; 7-bit weights avoid it.
        out.append(("reduce_range (7-bit weights)", r(options, reduce_range=True)))
    # Remedies that rewrite the graph or what is quantized, still int8 everywhere, in order of
    # cost: equalization (free at run time, no data), + bias correction (a float run on the
    # calibration data), then Conv/MatMul-only int8 (elementwise ops in float: extra Q/DQ pairs
    # at run time). Each keeps the user's calibration and, on hosts where ORT's int8 kernels
    # saturate, carries 7-bit weights: without them the repair would judge the remedy by the
    # host's kernel overflow, not by its quantization error. Equalization keeps the user's
    # per-tensor/per-channel choice (evening out per-tensor ranges is what it is for); the
    # Conv/MatMul-only variants take per-channel weights, the cheap fix for the convs' own ranges.
    base = r(options, reduce_range=options.reduce_range or host_int8_may_saturate())
    if src is not None and _matmul_heavy(src, options):
        # A transformer (or an MLP): no conv pairs to equalize, and what breaks its static int8
        # is structural, not the calibration: per-tensor scales on the MatMul outputs (read by
        # float bias adds, GELU, residual sums) and on attention's activation-times-activation
        # MatMuls, and outlier channels in the MatMul inputs (LayerNorm outputs). So its ladder
        # is the transformer remedy: int8 for MatMul/Gemm (per-channel weights) and Gather
        # (the embedding table), those outputs and MatMuls in float (no weight MACs), then
        # activation smoothing into the weights, then bias correction on top.
        # uint8 activations: ONNX Runtime fuses DequantizeLinear -> MatMul without an output
        # QuantizeLinear into its int8 MatMulIntegerToFloat kernel only for uint8 activations
        # (with int8 ones the MatMul runs in float on dequantized weights).
        tf = r(base, per_channel=True, quantize_op_types=TRANSFORMER_OP_TYPES,
               weight_matmuls_only=True, unsigned_activations=True)
        out += [("transformer int8: MatMul/Gemm/Gather weights, their outputs and attention in "
                 "float", tf),
                (f"transformer int8 + activation smoothing (SmoothQuant, alpha {SMOOTH_ALPHA:g})",
                 r(tf, smooth_alpha=SMOOTH_ALPHA)),
                (f"transformer int8 + activation smoothing (alpha {SMOOTH_ALPHA:g}) + bias "
                 "correction", r(tf, smooth_alpha=SMOOTH_ALPHA, bias_correction=True)),
                ("transformer int8 + activation smoothing + percentile calibration (99.99)",
                 r(tf, smooth_alpha=SMOOTH_ALPHA, calibration_method=CalibrationMethod.PERCENTILE,
                   percentile=99.99))]
        return _distinct(out, options)
    out += [("percentile calibration (99.99)",
            r(options, calibration_method=CalibrationMethod.PERCENTILE, percentile=99.99)),
           ("entropy calibration", r(options, calibration_method=CalibrationMethod.ENTROPY))]
    if not options.symmetric_activations:
        out.append(("symmetric activations", r(options, symmetric_activations=True)))
    if not options.per_channel:
        out.append(("per-channel weights", r(options, per_channel=True)))
    convs_only = r(base, per_channel=True, quantize_op_types=CONV_MATMUL_OP_TYPES)
    out += [("cross-layer equalization", r(base, equalize=True)),
            ("cross-layer equalization + bias correction",
             r(base, equalize=True, bias_correction=True)),
            ("Conv/MatMul/Gemm only in int8 (elementwise ops in float)", convs_only),
            ("Conv/MatMul/Gemm only in int8 + cross-layer equalization + bias correction",
             r(convs_only, equalize=True, bias_correction=True)),
            ("Conv/MatMul/Gemm only in int8, every other op (ReLU, data movement) in float",
             r(convs_only, quantize_op_types=WEIGHT_OP_TYPES))]
    return _distinct(out, options)


def _distinct(out, options) -> list:
    kept: list = []
    for d, o in out:  # options hold a dict (input_shapes): compared, not hashed
        if o != options and all(o != k for _, k in kept):
            kept.append((d, o))
    return kept


def _matmul_heavy(src, options) -> bool:
    """The source's float ONNX graph holds more MatMul/Gemm weights than conv weights."""
    from converters.onnx_common import float_model

    try:
        model, _ = float_model(src, options)
    except ConversionError:
        return False
    return matmul_heavy(model)


def repair(info, src, options, calib, out_path: Path, evaluate, gate, naive_fidelity):
    """Rewrite ``out_path`` with the cheapest variant that meets ``gate``.

    Returns:
        (PassResult, Fidelity, (inputs, outputs)) of the chosen variant; when nothing meets the
        gate, the best attempt is kept and the caller reports its misses.
    """
    attempts: list[Attempt] = []
    try:
        for description, opts in cheaper_remedies(info, options, src):
            att = _attempt(info, src, opts, calib, out_path, evaluate, gate, description)
            if att is not None:
                attempts.append(att)
                if not att.misses:
                    return _adopt(att, attempts, out_path, naive_fidelity, [])
        groups = rank_groups(info, src, options, calib, out_path, evaluate)
        if groups:
            found = _search(info, src, options, calib, out_path, evaluate, gate, groups, attempts)
            convs = _convs_only(attempts)
            if convs is not None and (found is None or _float_groups(found) * 2 >= len(groups)):
                # Half the groups in float or more: try again with the graph's elementwise ops
                # float from the start (ranked on that artifact), keep the smaller that passes.
                base = dataclasses.replace(convs.options, float_nodes=options.float_nodes)
                ranked = rank_groups(info, src, base, calib, convs.path, evaluate)
                other = _search(info, src, base, calib, out_path, evaluate, gate, ranked,
                                attempts, label="Conv/MatMul/Gemm-only int8, ") if ranked else None
                if other is not None and (found is None
                                          or other.path.stat().st_size < found.path.stat().st_size):
                    found = other
            if found is not None:
                return _adopt(found, attempts, out_path, naive_fidelity, groups)
        if not attempts:
            raise VerificationError("no repair could be built")
        best = min(attempts, key=Attempt.score)
        return _adopt(best, attempts, out_path, naive_fidelity, groups if groups else [])
    finally:
        for a in attempts:
            with contextlib.suppress(FileNotFoundError):
                a.path.unlink()


def _convs_only(attempts):
    """The weight-ops-only remedy's attempt (every other op in float), the start of a second
    float-group search: on an audio front end, quantizing the waveform and an STFT's powers and
    square roots costs more than any one group the search keeps float. ``None`` when it was not
    tried."""
    for a in attempts:
        if tuple(a.options.quantize_op_types) == tuple(WEIGHT_OP_TYPES):
            return a
    return None


def _float_groups(att) -> int:
    """k of an attempt of the float-group search (``top k of n groups in float``)."""
    words = att.description.split(", ")[-1].split()
    return int(words[1]) if len(words) > 1 and words[0] == "top" and words[1].isdigit() else 0


def rank_groups(info, src, options, calib, naive_path, evaluate) -> list:
    """Float groups, most damaging first: ``[{"nodes": [...], "label": str, "score": float}]``."""
    if info.format == "onnx" and info.precision == "int8":
        from converters.repair.onnx_ranking import rank_onnx

        return rank_onnx(src, options, calib, naive_path)
    if info.format == "tflite" and info.precision == "int8" and src.format != "tflite":
        from converters.repair.tflite_ranking import rank_tflite

        return rank_tflite(src, options, calib, naive_path, evaluate)
    log.info("%s: no mixed-precision repair for this target/source", info.name)
    return []


def _search(info, src, options, calib, out_path, evaluate, gate, groups, attempts, label=""):
    """Smallest k such that keeping the top-k groups in float meets the gate (doubling, then bisect)."""
    def nodes_for(k):
        seen, out = set(), []
        for g in groups[:k]:
            for n in g["nodes"]:
                if n not in seen:
                    seen.add(n)
                    out.append(n)
        return tuple(out)

    def attempt(k):
        opts = dataclasses.replace(options, float_nodes=nodes_for(k))
        att = _attempt(info, src, opts, calib, out_path, evaluate, gate,
                       f"{label}top {k} of {len(groups)} groups in float")
        if att is not None:
            attempts.append(att)
        return att

    lo, k, passing = 0, 1, None
    while True:
        att = attempt(min(k, len(groups)))
        if att is not None and not att.misses:
            passing = (min(k, len(groups)), att)
            break
        lo = min(k, len(groups))
        if k >= len(groups):
            return None
        k *= 2
    hi, best = passing
    while hi - lo > 1:
        mid = (lo + hi) // 2
        att = attempt(mid)
        if att is not None and not att.misses:
            hi, best = mid, att
        else:
            lo = mid
    return best


def _attempt(info, src, opts, calib, out_path, evaluate, gate, description):
    path = temp_path_for(Path(out_path))
    try:
        result = info.load()(src, opts, calib, path)
        fid, io, _ = evaluate(path)
    except (ConversionError, VerificationError) as e:
        log.info("repair attempt %r failed: %s", description, e)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None
    misses = gate.misses(fid, strict=True)
    log.info("repair attempt %r: %s", description, "; ".join(misses) or "meets the gate")
    return Attempt(description, opts, result, fid, io, path, misses, gate.margin(fid))


def host_latency_ms(paths, rounds: int = 5, runs: int = 20) -> list:
    """p50 single-thread latency (ms) of each model file on this machine, measured interleaved in
    rounds so that drift and turbo affect every file alike."""
    import time

    import numpy as np

    from device_agents.agent import generate_inputs, load_model, quantize

    steps = []
    for p in paths:
        m = load_model(str(p), threads=1)
        feeds = [quantize(f, spec) if spec.get("quantization") else f.astype(spec["dtype"])
                 for f, spec in zip(generate_inputs(m), m.inputs, strict=True)]
        step = m.make_step(feeds)
        for _ in range(5):
            step()
        steps.append(step)
    samples = [[] for _ in paths]
    for _ in range(rounds):
        for i, step in enumerate(steps):
            for _ in range(runs):
                t = time.perf_counter_ns()
                step()
                samples[i].append(time.perf_counter_ns() - t)
    return [float(np.median(s)) / 1e6 for s in samples]


def _measure_text(fid) -> str:
    from edgekit.fidelity.tasks import metric_text

    main = fid.main_output if getattr(fid, "outputs", None) else None
    return metric_text(main.metric) if main is not None and main.metric else f"SQNR {fid.sqnr_db:.1f} dB"


def _adopt(att: Attempt, attempts, out_path: Path, naive_fidelity, groups):
    naive_bytes = Path(out_path).stat().st_size
    try:
        naive_ms, chosen_ms = host_latency_ms([out_path, att.path])
    except Exception as e:  # noqa: BLE001 - timing is informative; never fail the repair on it
        log.info("could not time the repair: %s", e)
        naive_ms = chosen_ms = None
    shutil.copyfile(att.path, out_path)
    result = att.result
    result.options = att.options
    reasons = {}
    for rank, g in enumerate(groups, 1):
        for n in g["nodes"]:
            reasons.setdefault(n, f"sensitivity rank {rank}: {g['label']}")
    result.float_ops = [{"op": n, "reason": reasons.get(n, "kept in float by the repair")}
                        for n in att.options.float_nodes]
    size_cost = os.path.getsize(out_path) / naive_bytes if naive_bytes else None
    result.notes = list(result.notes) + [
        f"repaired by {att.description}: naive int8 had SQNR {naive_fidelity.sqnr_db:.1f} dB"
        + (f", accuracy {100 * naive_fidelity.accuracy:.2f}%" if naive_fidelity.accuracy is not None else "")
        + f"; {len(result.float_ops)} ops kept in float; size {size_cost:.2f}x the naive artifact"
        + (f", host p50 {chosen_ms / naive_ms:.2f}x" if naive_ms else ""),
        "attempts: " + "; ".join(f"{a.description} -> "
                                 + ("pass" if not a.misses else _measure_text(a.fidelity))
                                 for a in attempts)]
    result.repair = {"chosen": att.description, "options": {
        "calibration_method": att.options.calibration_method.value,
        "symmetric_activations": att.options.symmetric_activations,
        "per_channel": att.options.per_channel, "reduce_range": att.options.reduce_range,
        "equalize": att.options.equalize, "bias_correction": att.options.bias_correction,
        "quantize_op_types": list(att.options.quantize_op_types),
        "smooth_alpha": att.options.smooth_alpha,
        "weight_matmuls_only": att.options.weight_matmuls_only,
        "float_nodes": list(att.options.float_nodes)},
        "naive_fidelity": naive_fidelity.to_dict(), "size_vs_naive": size_cost,
        "host_p50_ms": {"naive": naive_ms, "repaired": chosen_ms},
        "attempts": [{"description": a.description, "misses": a.misses,
                      "sqnr_db": a.fidelity.sqnr_db, "accuracy": a.fidelity.accuracy,
                      "measure": _measure_text(a.fidelity), "margin": a.margin} for a in attempts]}
    return result, att.fidelity, att.io

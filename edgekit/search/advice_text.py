"""Plain-language advice from measured recipe rows and the device's probe.

Every line names a measured number (a ratio, milliseconds, accuracy points) and, where it explains
the number, a CPU feature the agent reported (``cpu.features``: AVX2, AVX512-VNNI / AVX-VNNI,
NEON dot product, fp16 arithmetic). Reasons are phrased as likely causes: the measurement is the
fact, the cause is our reading of it.
"""

from __future__ import annotations

from typing import Optional

from converters.cpu_layouts import ALL_LAYOUTS, CHOICES, classify
from edgekit.gate import QUANTIZED
from edgekit.search.cpu_facts import FEATURE_NAMES, VNNI_FLAGS, CpuFacts

# A ratio this close to 1 is "the same speed": run-to-run noise on a board is a few percent.
SAME = 0.10
# int8 that is not at least this much faster than fp32 "buys little".
LITTLE_GAIN = 0.80
# A fp32 p50 below this is a toy-sized model: overhead, not arithmetic, sets the ratios.
TINY_MS = 0.2
# A baseline whose first and last p50 differ by more than this has drifted.
DRIFT = 0.25
_RUNTIME = {"tflite": "LiteRT", "onnx": "ONNX Runtime", "ort": "ONNX Runtime"}





def advice_lines(rows, best, info, *, objective: str, max_accuracy_drop: float, device: str,
                 model: str, latency_budget_ms: Optional[float] = None,
                 threads: int = 1) -> list[str]:
    """The advice, one plain-language line per finding, most important first."""
    cpu = CpuFacts.from_probe(info)
    by = {r.recipe: r for r in rows}
    lines = []
    if best is not None:
        lines.append(_winner(best, by, rows, objective, max_accuracy_drop, device))
    else:
        lines.append(f"No recipe ran on {device} within the accuracy budget of "
                     f"{max_accuracy_drop:g} points; see the rows' status for why.")
    lines.append(f"Device: {cpu.describe()}; measured with {threads} thread(s).")
    lines += _per_runtime(rows)
    lines += _drift(rows)
    lines += _explanations(rows, cpu, by)
    lines += per_layer_lines(rows, device)
    lines += setting_lines(rows, cpu)
    lines += _misses(rows, model, max_accuracy_drop, device)
    lines += _next_steps(rows, best, model, objective, latency_budget_ms)
    return lines


def per_layer_lines(rows, device: str) -> list[str]:
    """Where the time goes, from the device's per-layer figures (``advise --per-layer``):
    "Conv takes 38 % of onnx-int8 on pi4", one line for every recipe that has them."""
    parts = [f"{r.top_op[0]} takes {100 * r.top_op[1]:.0f} % of {r.recipe}"
             for r in rows if r.ran and r.top_op]
    if not parts:
        return []
    return [parts[0] + f" on {device}" + "".join(f"; {p}" for p in parts[1:])
            + " (per-layer times on the device: `edgekit bench --per-layer` shows every layer)."]


def ratio_text(ratio: Optional[float]) -> str:
    """A ratio as the advice writes it (``0.42x``; ``?`` when unknown)."""
    return "?" if ratio is None else f"{ratio:.2f}x"


def ms_text(v: Optional[float]) -> str:
    """Milliseconds as the advice writes them (three significant digits; ``?`` when unknown)."""
    return "?" if v is None else f"{v:.3g} ms"


def _size(n: Optional[int]) -> str:
    if n is None:
        return "?"
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def _acc(row) -> str:
    if row.accuracy is None:
        return f"output SQNR {row.sqnr_db:.1f} dB vs the source" if row.sqnr_db is not None else ""
    drop = ("" if row.accuracy_drop is None else
            f", {row.accuracy_drop:.2f} points below the source")
    return f"top-1 {100 * row.accuracy:.2f}% on the {row.accuracy_source}{drop}"


def _winner(best, by, rows, objective, budget, device) -> str:
    base = by.get(best.baseline) if best.baseline else None
    if objective == "size":
        head = (f"Choose {best.recipe} for size on {device}: {_size(best.bytes)}"
                + (f" = {ratio_text(best.size_ratio)} {base.recipe}"
                   if base and base is not best else "")
                + f", p50 {ms_text(best.p50_ms)}"
                + (f" ({ratio_text(best.latency_ratio)} fp32)" if best.latency_ratio else ""))
    else:
        head = f"Choose {best.recipe} for latency on {device}: p50 {ms_text(best.p50_ms)}"
        if base is not None and base is not best:
            head += f" = {ratio_text(best.latency_ratio)} {base.recipe} ({ms_text(base.p50_ms)})"
        elif base is best:
            head += " (no cheaper recipe beat fp32 here)"
        if base is not None and base is not best and best.latency_ratio is not None and \
                abs(best.latency_ratio - 1) <= SAME:
            head += " (within run-to-run noise of fp32: the smaller file is the sure gain)"
        head += f", {_size(best.bytes)}" + (f" ({ratio_text(best.size_ratio)} fp32)"
                                            if best.size_ratio and base is not best else "")
    fp32 = [r for r in rows if r.ran and r.precision == "fp32" and r.recipe != best.recipe]
    fastest = min(fp32, key=lambda r: r.p50_ms, default=None)
    if objective == "latency" and fastest is not None and best.p50_ms and \
            (base is None or fastest.recipe != base.recipe):
        head += f"; {fastest.p50_ms / best.p50_ms:.2f}x faster than {fastest.recipe}"
    acc = _acc(best)
    return head + (f"; {acc}" if acc else "") + f" (budget {budget:g} points)."


def _per_runtime(rows) -> list[str]:
    """One line per runtime: every recipe's latency ratio vs that runtime's fp32."""
    out = []
    for runtime in dict.fromkeys(_RUNTIME[r.format] for r in rows if r.format in _RUNTIME):
        same = [r for r in rows if _RUNTIME.get(r.format) == runtime and r.baseline]
        base = next((r for r in rows if same and r.recipe == same[0].baseline), None)
        if base is None or not base.ran:
            continue
        parts = [f"{r.recipe} {ratio_text(r.latency_ratio)}" for r in same
                 if r is not base and r.ran]
        if parts:
            out.append(f"{runtime} latency vs {base.recipe} ({ms_text(base.p50_ms)}): "
                       + ", ".join(parts) + ".")
    return out


def _drift(rows) -> list[str]:
    """A warning when a baseline measured first and last differs: the ratios carry that noise."""
    out = []
    for r in rows:
        first, last = (r.p50_repeats_ms or [None, None])[:2]
        if first and last and max(first, last) / min(first, last) > 1 + DRIFT:
            spread = 100 * (max(first, last) / min(first, last) - 1)
            out.append(f"Speed drifted while measuring: {r.recipe} took {ms_text(first)} first "
                       f"and {ms_text(last)} after the other recipes ({spread:.0f}% apart; other "
                       f"load or throttling). Its mean is the baseline, but ratios within that "
                       f"spread are not conclusive: re-run on an idle device, or with more --runs.")
    return out


def _explanations(rows, cpu: CpuFacts, by) -> list[str]:
    """Why recipes were slower (or much faster) than their fp32, rows with one reason together."""
    slower: dict[tuple, list] = {}
    out = []
    tiny_base = None
    for r in rows:
        if not r.ran or r.latency_ratio is None or r.recipe == r.baseline:
            continue
        base = by.get(r.baseline)
        if base is not None and base.p50_ms is not None and base.p50_ms < TINY_MS:
            tiny_base = tiny_base or base
        if r.latency_ratio > 1 + SAME:
            slower.setdefault((r.baseline, _why_slower(r, cpu)), []).append(r)
        elif r.precision == "int8" and r.latency_ratio < LITTLE_GAIN:
            out.append(f"{r.recipe} ran at {r.latency_ratio:.2f}x {r.baseline}: "
                       + _why_faster(r, cpu))
    for (baseline, why), group in slower.items():
        parts = [f"{r.recipe} ({r.latency_ratio:.2f}x)" for r in group]
        names = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        verb = "were" if len(group) > 1 else "was"
        out.append(f"{names} {verb} slower than {baseline} here" + (f": {why}" if why else "."))
    lays = [r for r in rows if r.target == "onnx-int8" and r.ran and r.layout and r.p50_ms]
    if len(lays) > 1:
        out.append(layout_line(lays, cpu))
    fp16 = [r for r in rows if r.precision == "fp16" and r.format == "tflite" and r.ran]
    if fp16 and not any(r in g for g in slower.values() for r in fp16):
        out.append("tflite-fp16 halves the weights only: LiteRT's CPU kernels dequantize fp16 "
                   "weights to fp32 at load, so expect fp32 speed (measured "
                   + ", ".join(ratio_text(r.latency_ratio) for r in fp16) + ")"
                   + ("; this CPU has fp16 arithmetic (fphp/asimdhp), which a GPU delegate or "
                      "XNNPACK's fp16 inference can use." if cpu.fp16_math else
                      "; fp16 pays off on a GPU delegate (or a CPU with fp16 arithmetic, ARM "
                      "fphp)."))
    if tiny_base is not None:
        out.append(f"{tiny_base.recipe} takes only {ms_text(tiny_base.p50_ms)}: on a model this "
                   "small, per-op overhead (Quantize/Dequantize, casts, kernel dispatch) weighs "
                   "more than arithmetic, so the ratios may not carry over to a larger model.")
    return out


def layout_line(lays, cpu: CpuFacts) -> str:
    """The onnx-int8 layouts measured, against what the layout table chose for this CPU."""
    cls = classify({"arch": cpu.arch, "features": cpu.features or ()})
    ranked = sorted(lays, key=lambda r: r.p50_ms)
    default = next((r for r in lays if r.recipe == "onnx-int8"), ranked[0])
    text = ("onnx-int8 layouts (p50 vs fp32): " + ", ".join(
        f"{r.layout} {ratio_text(r.latency_ratio)}" for r in ranked) + f". The default for "
        f"{cls.value} is {default.layout}: {CHOICES[cls].why}")
    best = ranked[0]
    if best is not default and best.p50_ms < default.p50_ms * (1 - SAME):
        flags = next(x.flags() for x in ALL_LAYOUTS if x.label == best.layout)
        text += f"; {best.layout} was faster here (`edgekit convert --to onnx-int8 {flags}`)"
    return text + "."


def _why_slower(r, cpu: CpuFacts) -> str:
    if r.precision == "int8" and r.format in ("onnx", "ort"):
        if cpu.features is None:
            return ("the agent did not report CPU features to say why (update it with "
                    "`edgekit devices setup`).")
        if cpu.x86 and not cpu.vnni:
            have = "AVX2" if cpu.has("avx2") else "no AVX2"
            return (f"this x86 CPU has {have} but no VNNI (AVX512-VNNI/AVX-VNNI), so ONNX Runtime "
                    "has no int8 dot-product instruction: its int8 GEMM widens products "
                    "(VPMADDUBSW, which can saturate unless weights use 7 bits, reduce-range), "
                    "signed S8S8 activations are often slower there than unsigned U8S8, and the "
                    "Quantize/DequantizeLinear pairs around each op cost more than int8 saves.")
        if cpu.arm and not cpu.has("asimddp"):
            return ("this ARM CPU has no NEON dot product (asimddp): int8 products are widened "
                    "to 16 bits, so int8 kernels gain little and the Quantize/Dequantize steps "
                    "cost more.")
        return ("the CPU has int8 dot products (" + ", ".join(
            FEATURE_NAMES[f] for f in (*VNNI_FLAGS, "asimddp") if cpu.has(f))
                + "), so the loss is likely the Quantize/DequantizeLinear pairs and ops ONNX "
                  "Runtime has no int8 kernel for (they run in float between conversions).")
    if r.precision == "int8":
        if cpu.arm and cpu.features is not None and not cpu.has("asimddp"):
            return "no NEON dot product (asimddp): int8 gains little on this CPU."
        return "some ops likely lack int8 kernels and run in float between conversions."
    if r.precision == "dynamic-int8":
        return ("dynamic-range int8 re-quantizes activations on every inference and keeps "
                "float ops in between; that costs more than it saves here.")
    if r.precision == "int16x8":
        return ("LiteRT has few optimised int16x8 kernels (its docs warn it runs slower than "
                "int8): a recipe for accuracy, not speed.")
    if r.precision == "fp16" and r.format == "onnx":
        return ("ONNX Runtime's CPU provider has few fp16 kernels, so it casts to fp32 around "
                "them" + ("" if cpu.fp16_math else " (and this CPU has no fp16 arithmetic)")
                + "; onnx-fp16 is for GPU providers.")
    if r.precision == "fp16":
        return ("LiteRT's CPU kernels dequantize fp16 weights to fp32 at load, so fp16 halves "
                "the file but cannot be faster" + (
                    "; this CPU's fp16 arithmetic (fphp/asimdhp) needs a GPU delegate or "
                    "XNNPACK's fp16 inference." if cpu.fp16_math else "."))
    if r.format == "ort":
        where = (" for ARM (no x86 NCHWc layout transform), so on this x86 CPU it misses "
                 "optimisations onnx-fp32 gets at load" if cpu.x86 else "")
        return ("the .ort graph is optimised ahead of time" + where + "; its gain is a "
                "reduced-size ONNX Runtime build, not speed.")
    return ""


def _why_faster(r, cpu: CpuFacts) -> str:
    if cpu.has("asimddp", "i8mm"):
        return ("int8 kernels use this CPU's NEON dot product (asimddp: four int8 "
                "multiply-adds per lane), the fastest arithmetic it has.")
    if cpu.vnni:
        return "int8 kernels use this CPU's VNNI int8 dot-product instructions."
    if r.format == "tflite":
        return ("LiteRT's integer kernels (XNNPACK/ruy) pay off here even without an int8 "
                "dot-product instruction: four times less data moved per weight.")
    return "int8 kernels pay off on this CPU."


def _misses(rows, model, budget, device) -> list[str]:
    out = []
    for r in rows:
        if r.failed_stage == "gate":
            first = (r.gate_miss or "").split(": ", 1)[-1].split(";")[0]
            out.append(f"{r.recipe} missed the accuracy gate on the host ({first}): try "
                       f"`edgekit convert {model} --to {r.target} --auto-mixed-precision` (keeps "
                       f"the most damaging ops in float), `edgekit diagnose {model} --target "
                       f"{r.target}` to see them, or `edgekit qat` to fine-tune for int8.")
        elif r.failed_stage in ("convert", "benchmark"):
            verb = "build" if r.failed_stage == "convert" else f"run on {device}"
            out.append(f"{r.recipe} failed to {verb}: {(r.error or '')[:200]}")
        elif r.ran and not r.within_budget and r.accuracy_drop is not None and \
                round(r.accuracy_drop, 9) > budget:  # not one over another constraint (size)
            where = "on the device" if r.accuracy_source == "device" else "on the host"
            out.append(f"{r.recipe} lost {r.accuracy_drop:.2f} accuracy points {where}, over the "
                       f"budget of {budget:g}"
                       + (": it passed the host gate, so the device's kernels differ from the "
                          "host's" if r.accuracy_source == "device" and r.gate_passed else "")
                       + ".")
    return out


def _next_steps(rows, best, model, objective, latency_budget_ms) -> list[str]:
    out = []
    if best is None:
        return out
    if latency_budget_ms is not None and best.p50_ms is not None:
        if best.p50_ms > latency_budget_ms:
            need = best.p50_ms / latency_budget_ms
            out.append(f"Even {best.recipe} takes {ms_text(best.p50_ms)}, {need:.1f}x your "
                       f"{latency_budget_ms:g} ms budget: quantization alone will not close it. "
                       f"Shrink the network: `edgekit prune {model} --ratio "
                       f"{min(0.7, round(1 - 1 / need, 1)) or 0.1:g}` (removes channels), or "
                       "`edgekit distill` into a smaller one, then advise again.")
        else:
            out.append(f"{best.recipe} meets your {latency_budget_ms:g} ms budget "
                       f"({ms_text(best.p50_ms)}).")
    quant = [r for r in rows if r.ran and r.within_budget and r.precision in QUANTIZED
             and r.latency_ratio is not None]
    fastest_q = min(quant, key=lambda r: r.latency_ratio, default=None)
    if objective == "latency" and latency_budget_ms is None and (
            fastest_q is None or fastest_q.latency_ratio > LITTLE_GAIN):
        gain = (f" (best {fastest_q.recipe} {fastest_q.latency_ratio:.2f}x fp32)"
                if fastest_q else "")
        out.append(f"Quantization buys little latency on this device{gain}: for more speed, "
                   f"prune channels (`edgekit prune {model} --ratio 0.3`) or distill into a "
                   "smaller model (`edgekit distill`), then advise again.")
    if any(r.failed_stage == "gate" and r.precision == "int8" for r in rows) and \
            best.precision not in ("int8",):
        out.append("An int8 recipe missed the gate: with `--auto-mixed-precision` it may still "
                   "be the fastest; advise again after converting it that way.")
    return out


#: Runtime and format settings whose measured effect is named when two rows differ only by it
#: (``AdviceRow.variant`` keys).
SETTINGS = ("xnnpack", "ort_opt_level", "quant_format")
_LEVEL_ORDER = ("disable", "basic", "extended", "all")


def setting_lines(rows, cpu: CpuFacts) -> list[str]:
    """One line per group of measured rows that differ only by XNNPACK on/off, by the ONNX
    Runtime graph optimization level, or by QDQ vs QOperator: the measured effect, the verdict
    and, where the probe's CPU facts explain it, the likely cause. Rows without a ``variant``
    (``advise``'s) and settings measured one way only give no line."""
    out = []
    for key in SETTINGS:
        groups: dict = {}
        for r in rows:
            v = getattr(r, "variant", None)
            if not r.ran or not v or key not in v:
                continue
            rest = tuple(sorted((k, repr(x)) for k, x in v.items() if k != key))
            groups.setdefault(rest, {}).setdefault(v[key], r)
        for by_value in groups.values():
            if len(by_value) < 2:
                continue
            by_value = _one_session(by_value)
            if key == "xnnpack" and True in by_value and False in by_value:
                out.append(_xnnpack_line(by_value[True], by_value[False], cpu))
            elif key == "ort_opt_level":
                out.append(_ort_level_line(by_value, cpu))
            elif key == "quant_format" and {"qdq", "qoperator"} <= set(by_value):
                out.append(_quant_format_line(by_value["qdq"], by_value["qoperator"]))
    return out


def _one_session(by_value: dict) -> dict:
    """Rows whose p50s compare: side-by-side values only if every row has one; else each row's
    trial p50 (ratios to a baseline, from another session, are then left out)."""
    from dataclasses import replace

    side = [r.trial_p50_ms is not None for r in by_value.values()]
    if all(side) or not any(side):
        return by_value
    return {k: replace(r, p50_ms=r.trial_p50_ms, latency_ratio=None, trial_p50_ms=None)
            if r.trial_p50_ms is not None else replace(r, latency_ratio=None)
            for k, r in by_value.items()}


def _vs_base(r) -> str:
    return f" ({ratio_text(r.latency_ratio)} {r.baseline})" if r.latency_ratio and r.baseline \
        and r.baseline != r.recipe else ""


def _simd(cpu: CpuFacts) -> str:
    """The vector instructions of the CPU, as the advice names them ("" if not reported)."""
    if cpu.features is None:
        return ""
    if cpu.x86:
        return "AVX-512" if cpu.has("avx512f") else "AVX2" if cpu.has("avx2") else ""
    if cpu.arm:
        return "NEON" + (" with dot product (asimddp)" if cpu.has("asimddp") else "")
    return ""


def _xnnpack_line(on, off, cpu: CpuFacts) -> str:
    ratio = off.p50_ms / on.p50_ms
    head = (f"{on.recipe} with XNNPACK {ms_text(on.p50_ms)}{_vs_base(on)} vs LiteRT's built-in "
            f"kernels ({off.recipe}) {ms_text(off.p50_ms)}{_vs_base(off)}")
    if ratio > 1 + SAME:
        simd = _simd(cpu)
        why = f"; its kernels are hand-tuned for this CPU's {simd}" if simd else ""
        return f"{head}: XNNPACK {ratio:.2f}x faster{why}: keep XNNPACK (the default)."
    if ratio < 1 / (1 + SAME):
        why = ("; on a model this small the delegate's fixed cost per inference weighs more "
               "than its kernels save" if on.p50_ms < TINY_MS else "")
        return (f"{head}: the built-in kernels were {1 / ratio:.2f}x faster here{why}: run it "
                "without XNNPACK (the recipe's runtime.xnnpack is false).")
    return (f"{head}: no measurable difference ({ratio:.2f}x, within run-to-run noise); "
            "XNNPACK is LiteRT's default.")


def _ort_level_line(by_level: dict, cpu: CpuFacts) -> str:
    rows = sorted(by_level.items(), key=lambda kv: kv[1].p50_ms)
    (fast_level, fast), (slow_level, slow) = rows[0], rows[-1]
    named = sorted(by_level.items(), key=lambda kv: -_LEVEL_ORDER.index(kv[0])
                   if kv[0] in _LEVEL_ORDER else 0)
    int8 = fast.precision == "int8"
    what = f"ONNX Runtime {'int8' if int8 else fast.precision} ({fast.target})"
    head = (f"{what} at graph optimization level " + ", ".join(
        f"'{lv}' {ms_text(r.p50_ms)}{_vs_base(r)}" for lv, r in named))
    ratio = slow.p50_ms / fast.p50_ms
    if ratio <= 1 + SAME:
        return (f"{head}: no measurable difference between the levels ({ratio:.2f}x, within "
                "run-to-run noise); 'all' is the default.")
    verdict = (f": level '{fast_level}' {ratio:.2f}x faster than '{slow_level}'"
               + (": keep it (the default)" if fast_level == "all" else
                  f": run it at '{fast_level}' (the recipe's runtime.ort_opt_level)"))
    why = _ort_level_cause(fast_level, slow_level, fast, cpu)
    return head + verdict + (f"; {why}" if why else "") + "."


def _ort_level_cause(fast_level: str, slow_level: str, row, cpu: CpuFacts) -> str:
    """The likely cause of a measured gap between two levels, from what each level adds."""
    order = {lv: i for i, lv in enumerate(_LEVEL_ORDER)}
    if fast_level not in order or slow_level not in order:
        return ""
    int8, qdq = row.precision == "int8", (getattr(row, "variant", None) or {}).get(
        "quant_format") == "qdq"
    facts = _simd(cpu)
    if cpu.x86 and cpu.features is not None:
        facts = (facts + (", VNNI" if cpu.vnni else ", no VNNI")).lstrip(", ")
    on = f" (this CPU: {facts})" if facts else ""
    if order[fast_level] < order[slow_level]:
        return ("the higher level's rewrites (layout transforms, fusions) cost more than they "
                "saved on this model" + on)
    if int8 and qdq and order[slow_level] <= order["basic"]:
        return ("at 'basic' the QDQ graph runs as written, DequantizeLinear → float op → "
                "QuantizeLinear, while from 'extended' ONNX Runtime fuses each group into an "
                "int8 kernel (QLinearConv, QGemm...)" + on)
    if order[slow_level] <= order["basic"]:
        return "'extended' adds fusions such as Conv with its activation" + on
    if fast_level == "all" and int8:
        return ("'all' adds layout optimizations: int8 convolutions run channels-last (NHWC "
                "transform)" + on)
    if fast_level == "all":
        if cpu.x86 and cpu.has("avx2", "avx512f"):
            return ("'all' adds layout optimizations: convolutions in ONNX Runtime's blocked "
                    f"NCHWc layout, which it uses on x86 CPUs with AVX2/AVX-512{on}")
        return "'all' adds layout optimizations (layout transforms of convolutions)" + on
    return ""


def _quant_format_line(qdq, qop) -> str:
    ratio = qdq.p50_ms / qop.p50_ms
    level = (getattr(qdq, "variant", None) or {}).get("ort_opt_level")
    head = (f"onnx-int8 as QOperator ({qop.recipe}: QLinearConv/QLinearMatMul in the file) "
            f"{ms_text(qop.p50_ms)}{_vs_base(qop)} vs QDQ ({qdq.recipe}) {ms_text(qdq.p50_ms)}"
            f"{_vs_base(qdq)}")
    fused = level in ("extended", "all")
    if ratio > 1 + SAME:
        why = ("; at level '" + str(level) + "' ONNX Runtime does not fuse QDQ groups into "
               "int8 kernels, while the QOperator file has them already") if level in (
                   "basic", "disable") else ""
        return f"{head}: QOperator {ratio:.2f}x faster{why}."
    if ratio < 1 / (1 + SAME):
        why = ("; ONNX Runtime fuses the QDQ graph at load and can keep ops int8 that the "
               "QOperator file converts around" if fused else "")
        return f"{head}: QDQ {1 / ratio:.2f}x faster{why}; QDQ is the default."
    why = (f" (at level '{level}' ONNX Runtime fuses QDQ groups into the same int8 kernels)"
           if fused else "")
    return f"{head}: no measurable difference ({ratio:.2f}x){why}; QDQ is the default."

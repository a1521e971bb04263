"""The advice lines name measured ratios and the CPU features that explain them (no device needed:
rows and probes are constructed)."""

from __future__ import annotations

from edgekit.search.advice_text import CpuFacts, advice_lines
from edgekit.search.advisor import AdviceRow


def _row(recipe, target, fmt, precision, p50, nbytes, rank=None, base=None, **kw):
    row = AdviceRow(recipe, target, fmt, precision, baseline=base, bytes=nbytes, p50_ms=p50,
                    p90_ms=p50 * 1.1, accuracy=0.9, accuracy_source="device",
                    source_accuracy=0.9, accuracy_drop=0.0, gate_passed=True,
                    within_budget=True, rank=rank, **kw)
    return row


def _rows():
    rows = [
        _row("tflite-fp32", "tflite-fp32", "tflite", "fp32", 10.0, 1000, base="tflite-fp32"),
        _row("tflite-int8", "tflite-int8", "tflite", "int8", 5.0, 300, base="tflite-fp32"),
        _row("tflite-fp16", "tflite-fp16", "tflite", "fp16", 10.1, 500, base="tflite-fp32"),
        _row("onnx-fp32", "onnx-fp32", "onnx", "fp32", 8.0, 1000, base="onnx-fp32"),
        _row("onnx-int8", "onnx-int8", "onnx", "int8", 11.4, 350, base="onnx-fp32",
             layout="S8S8 QDQ"),
        _row("onnx-int8-u8s8", "onnx-int8", "onnx", "int8", 8.0, 350, base="onnx-fp32",
             layout="U8S8 QDQ"),
    ]
    by = {r.recipe: r for r in rows}
    for r in rows:
        b = by[r.baseline]
        r.latency_ratio, r.size_ratio = r.p50_ms / b.p50_ms, r.bytes / b.bytes
    ranked = sorted(rows, key=lambda r: r.p50_ms)
    for i, r in enumerate(ranked, 1):
        r.rank = i
    return ranked


def _probe(arch, features, model="test CPU"):
    return {"arch": arch, "cpu": {"model": model, "features": features}}


def _lines(probe, **kw):
    rows = _rows()
    return advice_lines(rows, rows[0], probe, objective="latency", max_accuracy_drop=1.0,
                        device="pi", model="m.keras", **kw)


def test_x86_without_vnni_explains_slow_onnx_int8():
    text = _lines(_probe("x86_64", ["avx", "avx2", "fma"]))
    assert text[0].startswith("Choose tflite-int8 for latency on pi: p50 5 ms = 0.50x tflite-fp32")
    assert "1.60x faster than onnx-fp32" in text[0]
    slow = next(t for t in text if t.startswith("onnx-int8 (1.43x) was slower than onnx-fp32"))
    assert "AVX2 but no VNNI" in slow and "U8S8" in slow
    assert any("no AVX512-VNNI/AVX-VNNI" in t for t in text if t.startswith("Device:"))
    assert any(t.startswith("tflite-fp16 halves the weights only") for t in text)
    # the layouts measured, against the layout table's choice for this CPU, and how to build
    # the faster one
    lay = next(t for t in text if t.startswith("onnx-int8 layouts (p50 vs fp32): "
                                               "U8S8 QDQ 1.00x, S8S8 QDQ 1.43x"))
    assert "The default for x86-avx2 is S8S8 QDQ: x86 without VNNI" in lay
    assert lay.endswith("U8S8 QDQ was faster here (`edgekit convert --to onnx-int8 "
                        "--unsigned-activations --no-reduce-range --onnx-format qdq`).")


def test_arm_dot_product_and_fp16_named():
    text = _lines(_probe("aarch64", ["asimd", "asimddp", "asimdhp", "fphp"]))
    fast = next(t for t in text if t.startswith("tflite-int8 ran at 0.50x tflite-fp32"))
    assert "NEON dot product (asimddp" in fast
    assert any("fp16 arithmetic (fphp/asimdhp)" in t for t in text)
    slow = next(t for t in text if t.startswith("onnx-int8 (1.43x)"))
    assert "asimddp" in slow and "VNNI" not in slow


def test_arm_without_dot_product():
    text = _lines(_probe("aarch64", ["asimd"], model="Cortex-A72"))
    assert any("no NEON dot product" in t for t in text if t.startswith("Device:"))
    slow = next(t for t in text if t.startswith("onnx-int8 (1.43x)"))
    assert "no NEON dot product (asimddp)" in slow


def test_old_agent_without_features_says_so():
    text = _lines({"arch": "x86_64", "cpu": {"model": "x"}})
    assert "CPU features not reported" in next(t for t in text if t.startswith("Device:"))
    assert CpuFacts.from_probe(None).features is None


def test_latency_budget_suggests_pruning():
    text = _lines(_probe("x86_64", ["avx2"]), latency_budget_ms=2.0)
    prune = next(t for t in text if "edgekit prune m.keras" in t)
    assert "2.5x your 2 ms budget" in prune
    met = _lines(_probe("x86_64", ["avx2"]), latency_budget_ms=6.0)
    assert any("meets your 6 ms budget" in t for t in met)


def test_gate_miss_and_failures_are_advised():
    rows = _rows()
    rows.append(AdviceRow("onnx-dynamic", "onnx-dynamic", "onnx", "dynamic-int8",
                          error="tf2onnx exploded", failed_stage="convert"))
    rows.append(AdviceRow("tflite-int16x8", "tflite-int16x8", "tflite", "int16x8",
                          gate_passed=False, failed_stage="gate",
                          gate_miss="missed the fidelity gate on 297 samples: accuracy drop 3.00 "
                                    "points > 1 (87.00% vs source 90.00%)"))
    text = advice_lines(rows, rows[0], _probe("x86_64", ["avx2"]), objective="latency",
                        max_accuracy_drop=1.0, device="pi", model="m.keras")
    assert any(t.startswith("onnx-dynamic failed to build: tf2onnx exploded") for t in text)
    miss = next(t for t in text if t.startswith("tflite-int16x8 missed the accuracy gate"))
    assert "accuracy drop 3.00 points" in miss and "--auto-mixed-precision" in miss
    none = advice_lines(rows[-2:], None, _probe("x86_64", []), objective="size",
                        max_accuracy_drop=0.5, device="pi", model="m.keras")
    assert none[0].startswith("No recipe ran on pi within the accuracy budget of 0.5 points")


def test_drifting_baseline_is_flagged():
    rows = _rows()
    base = next(r for r in rows if r.recipe == "onnx-fp32")
    base.p50_repeats_ms = [5.0, 11.0]
    text = advice_lines(rows, rows[0], _probe("x86_64", ["avx2"]), objective="latency",
                        max_accuracy_drop=1.0, device="pi", model="m.keras")
    drift = next(t for t in text if t.startswith("Speed drifted while measuring: onnx-fp32"))
    assert "5 ms first and 11 ms after" in drift and "120% apart" in drift
    base.p50_repeats_ms = [8.0, 8.4]  # 5% apart: noise, not drift
    text = advice_lines(rows, rows[0], _probe("x86_64", ["avx2"]), objective="latency",
                        max_accuracy_drop=1.0, device="pi", model="m.keras")
    assert not any("drifted" in t for t in text)


# Runtime and format settings: rows that differ only by XNNPACK, the ORT level or QDQ/QOperator.

def _variant_row(recipe, target, fmt, precision, p50, *, base=None, base_p50=None, **variant):
    v = {"target": target, "options": "{}", "threads": 1, "prune": "null", "student": "null",
         **variant}
    row = _row(recipe, target, fmt, precision, p50, 1000, base=base, variant=v)
    if base_p50:
        row.latency_ratio = p50 / base_p50
    return row


def _settings_lines(rows, probe):
    from edgekit.search.advice_text import setting_lines

    return setting_lines(rows, CpuFacts.from_probe(probe))


def test_xnnpack_pair_names_the_measured_effect_and_the_cpu():
    on = _variant_row("tflite-fp32", "tflite-fp32", "tflite", "fp32", 0.42, xnnpack=True)
    off = _variant_row("tflite-fp32-no-xnnpack", "tflite-fp32", "tflite", "fp32", 0.95,
                       xnnpack=False)
    (line,) = _settings_lines([on, off], _probe("x86_64", ["avx2", "fma"]))
    assert line.startswith("tflite-fp32 with XNNPACK 0.42 ms vs LiteRT's built-in kernels "
                           "(tflite-fp32-no-xnnpack) 0.95 ms")
    assert "XNNPACK 2.26x faster" in line and "AVX2" in line and "keep XNNPACK" in line
    (arm,) = _settings_lines([on, off], _probe("aarch64", ["asimd", "asimddp"]))
    assert "NEON with dot product (asimddp)" in arm
    # Built-in kernels faster: the verdict turns, and a tiny model's delegate cost is named.
    on.p50_ms, off.p50_ms = 0.15, 0.1
    (slow,) = _settings_lines([on, off], _probe("x86_64", ["avx2"]))
    assert "built-in kernels were 1.50x faster" in slow and "without XNNPACK" in slow
    assert "model this small" in slow
    on.p50_ms = 0.104  # 4% apart: noise, no verdict either way
    (same,) = _settings_lines([on, off], _probe("x86_64", ["avx2"]))
    assert "no measurable difference" in same and "faster" not in same


def test_ort_levels_int8_qdq_on_avx2_without_vnni():
    kw = dict(base="onnx-fp32", base_p50=1.0, quant_format="qdq")
    rows = [_variant_row("onnx-int8", "onnx-int8", "onnx", "int8", 0.647, ort_opt_level="all",
                         **kw),
            _variant_row("onnx-int8-ort-basic", "onnx-int8", "onnx", "int8", 0.94,
                         ort_opt_level="basic", **kw),
            _variant_row("onnx-int8-ort-extended", "onnx-int8", "onnx", "int8", 0.66,
                         ort_opt_level="extended", **kw)]
    (line,) = _settings_lines(rows, _probe("x86_64", ["avx2"]))
    assert line.startswith("ONNX Runtime int8 (onnx-int8) at graph optimization level 'all' "
                           "0.647 ms (0.65x onnx-fp32), 'extended' 0.66 ms (0.66x onnx-fp32), "
                           "'basic' 0.94 ms (0.94x onnx-fp32)")
    assert "level 'all' 1.45x faster than 'basic': keep it" in line
    assert "QDQ graph runs as written" in line and "QLinearConv" in line
    assert "this CPU: AVX2, no VNNI" in line


def test_ort_levels_fp32_layout_and_a_lower_level_that_wins():
    rows = [_variant_row("onnx-fp32", "onnx-fp32", "onnx", "fp32", 1.0, ort_opt_level="all"),
            _variant_row("onnx-fp32-ort-extended", "onnx-fp32", "onnx", "fp32", 1.4,
                         ort_opt_level="extended")]
    (line,) = _settings_lines(rows, _probe("x86_64", ["avx2", "avx512f"]))
    assert "level 'all' 1.40x faster than 'extended'" in line
    assert "NCHWc" in line and "AVX-512" in line
    rows[0].p50_ms = 2.0
    (worse,) = _settings_lines(rows, _probe("x86_64", ["avx2"]))
    assert "level 'extended' 1.43x faster than 'all': run it at 'extended'" in worse
    assert "cost more than they saved" in worse


def test_qdq_vs_qoperator_pair():
    qdq = _variant_row("onnx-int8-ort-basic", "onnx-int8", "onnx", "int8", 2.0,
                       ort_opt_level="basic", quant_format="qdq")
    qop = _variant_row("onnx-int8-qop-ort-basic", "onnx-int8", "onnx", "int8", 1.0,
                       ort_opt_level="basic", quant_format="qoperator")
    lines = _settings_lines([qdq, qop], _probe("x86_64", ["avx2"]))
    line = next(t for t in lines if t.startswith("onnx-int8 as QOperator"))
    assert "QOperator 2.00x faster" in line and "at level 'basic'" in line
    # The ORT-level pair is not formed: the two rows differ in the format too.
    assert not any("graph optimization level" in t for t in lines)


def test_no_setting_line_without_a_pair():
    rows = [_variant_row("tflite-fp32", "tflite-fp32", "tflite", "fp32", 0.4, xnnpack=True),
            _variant_row("tflite-int8-no-xnnpack", "tflite-int8", "tflite", "int8", 0.9,
                         xnnpack=False),  # another target: not a pair
            _variant_row("onnx-int8", "onnx-int8", "onnx", "int8", 0.6, ort_opt_level="all",
                         quant_format="qdq"),
            _variant_row("onnx-int8-t2-ort-basic", "onnx-int8", "onnx", "int8", 0.9,
                         ort_opt_level="basic", quant_format="qdq", threads=2)]  # threads too
    assert _settings_lines(rows, _probe("x86_64", ["avx2"])) == []
    # advise's rows carry no variant: never compared, and advice_lines has no such line.
    text = _lines(_probe("x86_64", ["avx2"]))
    assert not any("with XNNPACK" in t or "graph optimization level" in t
                   or "as QOperator" in t for t in text)


def test_pair_measured_in_different_sessions_compares_trial_values():
    on = _variant_row("tflite-fp32", "tflite-fp32", "tflite", "fp32", 0.5, xnnpack=True,
                      base="tflite-fp32", base_p50=0.5)
    on.trial_p50_ms = 0.42  # re-measured side by side (0.5); its trials said 0.42
    off = _variant_row("tflite-fp32-no-xnnpack", "tflite-fp32", "tflite", "fp32", 0.95,
                       xnnpack=False)
    (line,) = _settings_lines([on, off], _probe("x86_64", ["avx2"]))
    assert "with XNNPACK 0.42 ms vs" in line and "2.26x" in line and "1.00x" not in line

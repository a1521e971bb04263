"""Accuracy-aware quantization: naive int8 vs repaired int8 vs fp32, and calibration methods.

    python benchmarks/bench_repair.py            # outlier digits CNN + MobileNetV2-style reference
    python benchmarks/bench_repair.py --quick    # outlier digits CNN only

For each model and format (TFLite, ONNX): output SQNR and accuracy of the naive int8 artifact
(gate opened wide so it is kept), of the repaired one (``--auto-mixed-precision``), and of fp32;
ops kept in float; size and host latency (1 thread, interleaved rounds) relative to fp32. Then
onnx-int8 with each calibration method side by side. Trained models are shared with
``bench_convert.py`` (cached in ~/.cache/edgekit-bench).

Targets (issue: accuracy-aware quantization): repaired int8 within the gate; on the MobileNetV2
reference, size <= 0.4x and host latency <= 0.8x fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from bench_convert import DIGITS_CNN, MOBILENET, data_files, trained_model

FORMATS = {"tflite": ("tflite-fp32", "tflite-int8"), "onnx": ("onnx-fp32", "onnx-int8")}


def outlier_model(cache: Path) -> Path:
    """The digits CNN with one hidden unit scaled x2000 and the next layer divided by 2000: the
    same float function, but naive per-tensor int8 of that activation collapses."""
    import keras

    from calibration_data.digits import load_split

    src, _ = trained_model(DIGITS_CNN, cache, False)
    path = cache / f"outlier-{src.stem}.keras"
    if path.exists():
        return path
    model = keras.saving.load_model(src)
    d1, d2 = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    feats = keras.Model(model.inputs, d1.output)(load_split("calibration")[0]).numpy()
    unit = int(np.argmax(feats.mean(0)))
    (w1, b1), (w2, b2) = d1.get_weights(), d2.get_weights()
    w1[:, unit] *= 2000.0
    b1[unit] *= 2000.0
    w2[unit, :] /= 2000.0
    d1.set_weights([w1, b1])
    d2.set_weights([w2, b2])
    model.save(path)
    return path


def run_model(name, model_path, calib, evalf, work: Path) -> dict:
    from converters.options import CalibrationMethod, ConvertOptions
    from converters.repair import host_latency_ms
    from edgekit.api import convert

    rows = []
    for fmt, (fp32_t, int8_t) in FORMATS.items():
        [fp32] = convert(model_path, [fp32_t], eval=evalf, out=work / name / "fp32")
        [naive] = convert(model_path, [int8_t], calibration=calib, eval=evalf,
                          out=work / name / "naive", options=ConvertOptions(max_accuracy_drop=100.0))
        [fixed] = convert(model_path, [int8_t], calibration=calib, eval=evalf,
                          out=work / name / "repaired", options=ConvertOptions(repair=True))
        lat = host_latency_ms([fp32.path, naive.path, fixed.path], rounds=10, runs=20)
        for label, art, ms in (("fp32", fp32, lat[0]), ("naive int8", naive, lat[1]),
                               ("repaired int8", fixed, lat[2])):
            f = art.fidelity
            rows.append({"format": fmt, "variant": label, "sqnr_db": f.sqnr_db,
                         "accuracy": f.accuracy, "drop": 100 * (f.accuracy_drop or 0.0),
                         "float_ops": len(art.float_ops), "bytes": art.bytes,
                         "size_x": art.bytes / fp32.bytes, "p50_ms": ms, "lat_x": ms / lat[0],
                         "gate_ok": not art.pass_config.get("gate") or label != "naive int8"
                         or 100 * (f.accuracy_drop or 0) <= 1.0,
                         "repair": art.pass_config.get("repair", {}).get("chosen")})
    methods = []
    for m in CalibrationMethod:
        [art] = convert(model_path, ["onnx-int8"], calibration=calib, eval=evalf,
                        out=work / name / f"cal-{m.value}",
                        options=ConvertOptions(calibration_method=m, max_accuracy_drop=100.0))
        methods.append({"method": m.value, "sqnr_db": art.fidelity.sqnr_db,
                        "accuracy": art.fidelity.accuracy, "agreement": art.fidelity.top1_agreement,
                        "seconds": art.conversion_seconds})
    return {"name": name, "rows": rows, "methods": methods}


def table(result, targets: bool) -> str:
    out = [f"## {result['name']}", "",
           "| format | variant | SQNR dB | accuracy | Δacc pts | float ops | size ×fp32 | host p50 ms "
           "| latency ×fp32 | check |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        check = ""
        if r["variant"] == "repaired int8":
            ok = r["drop"] <= 1.0
            if targets:
                ok = ok and r["size_x"] <= 0.4 and r["lat_x"] <= 0.8
            check = "PASS" if ok else "FAIL"
            if r["repair"]:
                check += f" ({r['repair']})"
        out.append(f"| {r['format']} | {r['variant']} | {r['sqnr_db']:.1f} | "
                   f"{100 * r['accuracy']:.2f}% | {-r['drop']:+.2f} | {r['float_ops']} | "
                   f"{r['size_x']:.2f} | {r['p50_ms']:.3f} | {r['lat_x']:.2f} | {check} |")
    out += ["", "onnx-int8 calibration methods, side by side:", "",
            "| method | SQNR dB | accuracy | top-1 agreement | quantize s |", "|---|---:|---:|---:|---:|"]
    for m in result["methods"]:
        out.append(f"| {m['method']} | {m['sqnr_db']:.1f} | {100 * m['accuracy']:.2f}% | "
                   f"{100 * m['agreement']:.2f}% | {m['seconds']:.1f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the outlier digits CNN only")
    p.add_argument("--cache", type=Path, default=Path("~/.cache/edgekit-bench").expanduser())
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-repair-") as wd:
        work = Path(wd)
        results = []
        calib, evalf = data_files(DIGITS_CNN, args.cache)
        with contextlib.redirect_stdout(io.StringIO()):
            results.append((run_model("digits CNN with an outlier unit (breaks naive int8)",
                                      outlier_model(args.cache), calib, evalf, work), False))
        if not args.quick:
            model, _ = trained_model(MOBILENET, args.cache, False)
            calib, evalf = data_files(MOBILENET, args.cache)
            with contextlib.redirect_stdout(io.StringIO()):
                results.append((run_model("MobileNetV2 alpha 0.35, 96x96 (reference)", model,
                                          calib, evalf, work), True))
    for r, targets in results:
        print(table(r, targets))
        print()
    print("Size and latency targets (<= 0.4x, <= 0.8x fp32) apply to the MobileNetV2 reference; "
          "on the outlier CNN the check is the gate (accuracy drop <= 1 point). Latency is this "
          f"machine's CPU ({os.cpu_count()} cores), 1 thread, interleaved rounds.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

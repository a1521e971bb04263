"""Benchmark of the converters: size, accuracy, host latency and conversion time per target.

For (a) a small digits CNN and (b) MobileNetV2 (alpha 0.35, 96x96 RGB, weights=None, trained
here on the digits upsampled to 96x96), every target is built with ``edgekit.api.convert`` and
with the bare tool call edgekit wraps, and one table per model is printed:

    python benchmarks/bench_convert.py                 # both models (15-20 min on 2 shared cores)
    python benchmarks/bench_convert.py --quick         # digits CNN only (< 2 min)
    python benchmarks/bench_convert.py --json out.json # also write the raw numbers

Trained models are cached in ``~/.cache/edgekit-bench/`` keyed by a hash of the training
config (``--retrain`` ignores the cache). See benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # TF's log level must be set before anything imports TF

from calibration_data import Dataset
from calibration_data.digits import digits_path, load_split, upsampled_rgb
from converters.options import DEFAULT_CALIBRATION_SAMPLES

TARGETS = ("tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "tflite-int16x8",
           "onnx-fp32", "onnx-fp16", "onnx-int8", "onnx-dynamic")
OPSET = 17  # ConvertOptions().opset; the raw tf2onnx calls use the same

# The targets.
INT8_SIZE_MAX = 0.27        # INT8 bytes / same format's FP32 bytes
INT8_ACC_DROP_MAX = 0.5     # points of top-1 accuracy vs the Keras source
TFLITE_INT8_LAT_MAX = 0.6   # tflite-int8 p50 / tflite-fp32 p50
OVERHEAD_MAX = 1.15         # edgekit convert (without verification) / raw tool call
INT8_TARGETS = ("tflite-int8", "onnx-int8")

log = logging.getLogger("bench_convert")


# ---------------------------------------------------------------------------------------------
# Models: build, train (seeded), cache
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides the trained weights; its hash keys the cache."""

    name: str
    arch: str
    image_size: int  # 8 = the digits as shipped; otherwise bilinear-upsampled RGB
    epochs: int
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    bn_momentum: float | None = None

    def key(self) -> str:
        import keras
        import tensorflow as tf

        blob = json.dumps({**asdict(self), "keras": keras.__version__, "tf": tf.__version__,
                           "train_npz": _file_sha256(digits_path("train"))}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


DIGITS_CNN = ModelConfig("digits_cnn", "cnn", image_size=8, epochs=30)
# Keras' MobileNetV2 uses BatchNorm momentum 0.999, whose moving statistics need thousands of
# steps to settle; with ~340 steps of training they would still be near their init and the
# inference-mode accuracy near chance, so the momentum is lowered for this short training.
MOBILENET = ModelConfig("mobilenetv2_a035_96", "mobilenetv2", image_size=96, epochs=10,
                        bn_momentum=0.9)


def _file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def images(cfg: ModelConfig, split: str):
    x, y = load_split(split)
    return (x if cfg.image_size == 8 else upsampled_rgb(x, size=cfg.image_size)), y


def build(cfg: ModelConfig):
    import keras

    keras.utils.set_random_seed(cfg.seed)
    if cfg.arch == "cnn":
        inp = keras.Input(shape=(8, 8, 1), name="image")
        h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
        h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
        h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dense(64, activation="relu")(h)
        out = keras.layers.Dense(10, activation="softmax")(h)
        model = keras.Model(inp, out, name=cfg.name)
    else:
        s = cfg.image_size
        model = keras.applications.MobileNetV2(input_shape=(s, s, 3), alpha=0.35, weights=None,
                                               classes=10)
    if cfg.bn_momentum is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = cfg.bn_momentum
    return model


def trained_model(cfg: ModelConfig, cache: Path, retrain: bool) -> tuple[Path, dict]:
    """The cached ``.keras`` file for ``cfg``, training it first when missing or ``retrain``."""
    import keras

    path = cache / f"{cfg.name}-{cfg.key()}.keras"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists() and not retrain:
        return path, {**json.loads(meta_path.read_text()), "cached": True}
    x, y = images(cfg, "train")
    model = build(cfg)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    print(f"  training {cfg.name}: {cfg.epochs} epochs on {len(x)} images "
          f"({cfg.image_size}x{cfg.image_size})...", flush=True)
    t0 = time.perf_counter()
    model.fit(x, y, epochs=cfg.epochs, batch_size=cfg.batch_size, verbose=0, shuffle=True)
    seconds = time.perf_counter() - t0
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)
    meta = {"config": asdict(cfg), "train_seconds": seconds, "params": int(model.count_params())}
    meta_path.write_text(json.dumps(meta, indent=2))
    return path, {**meta, "cached": False}


def data_files(cfg: ModelConfig, cache: Path) -> tuple[Path, Path]:
    """(calibration, eval) ``.npz`` files in the model's input layout."""
    if cfg.image_size == 8:
        return digits_path("calibration"), digits_path("eval")
    out = []
    for split in ("calibration", "eval"):
        p = cache / f"digits-{split}-rgb{cfg.image_size}.npz"
        if not p.exists():
            x, y = images(cfg, split)
            np.savez(p, x=x, y=y)
        out.append(p)
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------
# Raw tool calls: what a user writes by hand, with the passes' settings
# ---------------------------------------------------------------------------------------------

def _tflite(model, path, configure):
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    configure(conv, tf)
    Path(path).write_bytes(conv.convert())


def _representative(calib_x):
    def gen():
        for i in range(len(calib_x)):
            yield [calib_x[i:i + 1]]
    return gen


def _tf2onnx(model, input_name):
    import tensorflow as tf
    import tf2onnx

    fn = tf.function(lambda x: model(x, training=False))
    spec = [tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32, name=input_name)]
    onnx_model, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=OPSET)
    return onnx_model


def _onnx_fp16(float_model, path):
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(float_model, keep_io_types=True), str(path))


def _onnx_preprocess(float_model, wd: Path) -> Path:
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_path, pre_path = wd / "float.onnx", wd / "pre.onnx"
    onnx.save(float_model, str(float_path))
    quant_pre_process(str(float_path), str(pre_path))
    return pre_path


def _onnx_quantize(target, pre_path: Path, path: Path, calib_x, input_name) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if target == "onnx-dynamic":
        quantize_dynamic(str(pre_path), str(path), weight_type=QuantType.QInt8)
        return

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(range(len(calib_x)))

        def get_next(self):
            i = next(self._it, None)
            return None if i is None else {input_name: calib_x[i:i + 1]}

    quantize_static(str(pre_path), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)


def raw_convert_all(model, calib_x, input_name, out: Path, stem: str) -> None:
    """Every target by hand, as a user scripting all nine would: TFLite per target, tf2onnx and
    ORT's pre-processing once, shared by the ONNX targets."""
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    for t in TARGETS:
        if t.startswith("tflite-"):
            raw_convert(t, model, calib_x, input_name, out / f"{stem}.{t}.tflite")
    float_model = _tf2onnx(model, input_name)
    onnx.save(float_model, str(out / f"{stem}.onnx-fp32.onnx"))
    with tempfile.TemporaryDirectory() as wd:
        pre = _onnx_preprocess(float_model, Path(wd))
        for t in ("onnx-int8", "onnx-dynamic"):
            _onnx_quantize(t, pre, out / f"{stem}.{t}.onnx", calib_x, input_name)
    _onnx_fp16(float_model, out / f"{stem}.onnx-fp16.onnx")


def raw_convert(target: str, model, calib_x: np.ndarray, input_name: str, path: Path) -> None:
    """Build ``target`` from an in-memory Keras model with the bare tools."""
    import onnx

    if target == "tflite-fp32":
        _tflite(model, path, lambda c, tf: None)
    elif target == "tflite-fp16":
        def cfg(c, tf):
            c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.target_spec.supported_types = [tf.float16]
        _tflite(model, path, cfg)
    elif target == "tflite-dynamic":
        _tflite(model, path, lambda c, tf: setattr(c, "optimizations", [tf.lite.Optimize.DEFAULT]))
    elif target == "tflite-int8":
        def cfg(c, tf):
            c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.representative_dataset = _representative(calib_x)
            c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            c.inference_input_type = tf.int8
            c.inference_output_type = tf.int8
        _tflite(model, path, cfg)
    elif target == "tflite-int16x8":
        def cfg(c, tf):
            c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.representative_dataset = _representative(calib_x)
            c.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        _tflite(model, path, cfg)
    elif target.startswith("onnx-"):
        float_model = _tf2onnx(model, input_name)
        if target == "onnx-fp32":
            onnx.save(float_model, str(path))
        elif target == "onnx-fp16":
            _onnx_fp16(float_model, path)
        else:
            with tempfile.TemporaryDirectory() as wd:
                pre = _onnx_preprocess(float_model, Path(wd))
                _onnx_quantize(target, pre, path, calib_x, input_name)
    else:
        raise ValueError(f"no raw call for {target}")


# ---------------------------------------------------------------------------------------------
# edgekit calls, with verification timed apart
# ---------------------------------------------------------------------------------------------

class VerifyTimer:
    """Times what edgekit spends verifying: the source's reference outputs on the eval set,
    loading each artifact into its runtime, and running it on the eval set.

    Benchmark-only instrumentation: it wraps the module functions edgekit calls and changes
    nothing they compute. One subtlety: the Keras source's ``tf.function`` is traced while the
    reference outputs are computed, and the ONNX passes then hand that same traced function to
    tf2onnx. So the trace is timed apart (``trace``, forced a moment earlier with
    ``get_concrete_function()`` on the same input signature, which the later calls reuse): it is
    verification work for TFLite targets (their converter traces the model itself) but
    conversion work for ONNX targets (a raw tf2onnx call traces too).
    """

    def __init__(self):
        self.verify = Timing(0.0, 0.0)
        self.trace = Timing(0.0, 0.0)
        self._depth = 0
        self._traced = set()

    def _wrap(self, fn):
        def timed_call(*a, **kw):
            self._depth += 1
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.verify.wall += time.perf_counter() - t0
                    self.verify.cpu += time.process_time() - c0
        return timed_call

    def _wrap_tf_function(self, method):
        def tf_function(src):
            fn = method(src)
            if id(src) not in self._traced:
                self._traced.add(id(src))
                t0, c0 = time.perf_counter(), time.process_time()
                fn.get_concrete_function()
                self.trace.wall += time.perf_counter() - t0
                self.trace.cpu += time.process_time() - c0
            return fn
        return tf_function

    @contextlib.contextmanager
    def installed(self):
        from converters.sources.keras import KerasSource
        from device_agents import agent
        from edgekit import verify

        saved = [(verify, "run_batched"), (verify, "fidelity"), (agent, "load_model"),
                 (KerasSource, "tf_function")]
        originals = [getattr(m, n) for m, n in saved]
        wrappers = [self._wrap(f) for f in originals[:3]] + [self._wrap_tf_function(originals[3])]
        for (m, n), fn in zip(saved, wrappers, strict=True):
            setattr(m, n, fn)
        try:
            yield self
        finally:
            for (m, n), fn in zip(saved, originals, strict=True):
                setattr(m, n, fn)


@dataclass
class Timing:
    """Seconds of one measured span (mutable: VerifyTimer accumulates into it)."""

    wall: float
    cpu: float  # process CPU time (all threads): not inflated by other programs on the host


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    return value, Timing(time.perf_counter() - t0, time.process_time() - c0)


def edgekit_convert(source: Path, targets, calib: Path, evalf: Path, out: Path):
    """One ``edgekit.api.convert`` call; returns (artifacts, total Timing, verification Timing).

    The model trace is counted as verification unless an ONNX target reuses it (VerifyTimer).

    The fidelity gate for quantized targets is opened (``max_accuracy_drop=100``) so that every
    artifact is kept and measured; whether edgekit's default gate passes is judged afterwards
    from the same fidelity numbers (``gate_verdict``). Checking a threshold costs nothing, so
    the timing is that of a default call.
    """
    from converters.options import ConvertOptions
    from edgekit.api import convert

    timer = VerifyTimer()
    with timer.installed():
        arts, total = timed(lambda: convert(source, list(targets), calibration=calib, eval=evalf,
                                            out=out, options=ConvertOptions(max_accuracy_drop=100.0)))
    verify = timer.verify
    if any(t.startswith("onnx-") for t in targets):  # the trace is tf2onnx's input: conversion
        verify = Timing(verify.wall - timer.trace.wall, verify.cpu - timer.trace.cpu)
    return arts, total, verify


def gate_verdict(art) -> list:
    """What edgekit's default fidelity gate says about an artifact (empty = it passes)."""
    from edgekit.gate import gate_for

    return gate_for(art.precision, art.fidelity).misses(art.fidelity)


@contextlib.contextmanager
def quiet():
    """Keep tool chatter off the tables: Python prints (Keras export listings, tf2onnx) and the
    TFLite calibrator's C++ line on file descriptors 1 and 2. Used around both sides alike;
    exceptions still propagate (and print once the descriptors are back)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            warnings.simplefilter("ignore")
            yield
    finally:
        for fd, copy in ((1, saved[0]), (2, saved[1])):
            os.dup2(copy, fd)
            os.close(copy)


# ---------------------------------------------------------------------------------------------
# Latency: every artifact side by side, in interleaved rounds
# ---------------------------------------------------------------------------------------------

def interleaved_latency(paths: dict, x1: np.ndarray, threads: int, rounds: int,
                        round_budget_s: float) -> dict:
    """p50/mean/min latency (ms) per artifact, batch 1, the same thread count for all.

    Each round runs every artifact for about ``round_budget_s`` (a whole number of invokes,
    at least 5), starting from a different artifact each round, so clock or thermal drift
    spreads over all artifacts alike.
    """
    from device_agents.agent import load_model, quantize

    steps, counts, samples = {}, {}, {}
    for name, path in paths.items():
        m = load_model(str(path), threads=threads)
        steps[name] = m.make_step([quantize(np.asarray(x1), m.inputs[0])])
        for _ in range(10):
            steps[name]()
        t0 = time.perf_counter()
        for _ in range(10):
            steps[name]()
        per = (time.perf_counter() - t0) / 10
        counts[name] = max(5, min(200, int(round_budget_s / max(per, 1e-6))))
        samples[name] = []
    names = list(paths)
    clock = time.perf_counter_ns
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            step, buf = steps[name], samples[name]
            for _ in range(counts[name]):
                t0 = clock()
                step()
                buf.append(clock() - t0)
    out = {}
    for name, s in samples.items():
        a = np.asarray(s, dtype=np.float64) / 1e6
        out[name] = {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
                     "min_ms": float(a.min()), "mean_ms": float(a.mean()), "runs": int(a.size)}
    return out


# ---------------------------------------------------------------------------------------------
# One model
# ---------------------------------------------------------------------------------------------

def bench_model(cfg: ModelConfig, args, workroot: Path) -> dict:
    import keras

    print(f"\n== {cfg.name}", flush=True)
    model_path, train_meta = trained_model(cfg, args.cache, args.retrain)
    calib_path, eval_path = data_files(cfg, args.cache)
    model, load = timed(lambda: keras.saving.load_model(model_path, compile=False))
    input_name = model.inputs[0].name.split(":")[0]

    # The same calibration samples edgekit feeds: its default count, the same seeded
    # stratified draw (checked below against the manifest's fingerprint).
    with np.load(calib_path) as z:
        calib = Dataset({input_name: z["x"]}, z["y"]).take(DEFAULT_CALIBRATION_SAMPLES, seed=0)
    calib_x = np.ascontiguousarray(calib.inputs[input_name])

    rows = {t: {"target": t, "runs": []} for t in TARGETS}
    arts = {}
    for rep in range(args.repeats):
        for i, target in enumerate(TARGETS):
            print(f"  [{rep + 1}/{args.repeats}] {target:15s}", end="", flush=True)
            out = workroot / cfg.name / f"rep{rep}"
            raw_dir = workroot / cfg.name / f"raw{rep}"
            raw_dir.mkdir(parents=True, exist_ok=True)
            raw_path = raw_dir / f"{cfg.name}.{target}.{target.split('-')[0]}"

            # Defaults bind this iteration's values (both are called within it anyway).
            def run_raw(target=target, raw_path=raw_path):
                with quiet():
                    return timed(lambda: raw_convert(target, model, calib_x, input_name,
                                                     raw_path))[1]

            def run_edgekit(target=target, out=out):
                with quiet():
                    return edgekit_convert(model_path, [target], calib_path, eval_path, out)

            # Alternate which side goes first so warm caches and load drift favour neither.
            if (rep + i) % 2 == 0:
                raw = run_raw()
                (art,), total, ver = run_edgekit()
            else:
                (art,), total, ver = run_edgekit()
                raw = run_raw()
            rows[target]["runs"].append({
                "edgekit_s": total.wall, "edgekit_cpu_s": total.cpu, "verify_s": ver.wall,
                "verify_cpu_s": ver.cpu, "pass_s": art.conversion_seconds, "raw_s": raw.wall,
                "raw_cpu_s": raw.cpu, "raw_bytes": raw_path.stat().st_size,
                "loadavg_1min": os.getloadavg()[0]})
            arts[target] = art
            print(f" edgekit {total.wall:6.2f}s (verify {ver.wall:5.2f}s, pass "
                  f"{art.conversion_seconds:6.2f}s)  raw {raw.wall:6.2f}s   "
                  f"[cpu: edgekit {total.cpu:6.2f}s, verify {ver.cpu:5.2f}s, raw {raw.cpu:6.2f}s; "
                  f"load {os.getloadavg()[0]:.1f}]", flush=True)

    # All nine targets at once, the way edgekit is meant to be used: one convert call (source,
    # data and reference loaded once, tf2onnx run once) vs all nine by hand (tf2onnx and ORT's
    # pre-processing once); --repeats pairs, alternating which side goes first.
    pairs = []
    for rep in range(args.repeats):
        print(f"  [{rep + 1}/{args.repeats}] all targets in one call", end="", flush=True)

        def run_raw_all(rep=rep):
            with quiet():
                return timed(lambda: raw_convert_all(model, calib_x, input_name,
                                                     workroot / cfg.name / f"raw-all{rep}",
                                                     cfg.name))[1]

        def run_edgekit_all(rep=rep):
            with quiet():
                return edgekit_convert(model_path, TARGETS, calib_path, eval_path,
                                       workroot / cfg.name / f"all{rep}")[1:]

        if rep % 2 == 0:
            raw_all = run_raw_all()
            ek_all, ver_all = run_edgekit_all()
        else:
            ek_all, ver_all = run_edgekit_all()
            raw_all = run_raw_all()
        pairs.append({"edgekit_s": ek_all.wall, "edgekit_cpu_s": ek_all.cpu,
                      "verify_s": ver_all.wall, "verify_cpu_s": ver_all.cpu,
                      "raw_s": raw_all.wall, "raw_cpu_s": raw_all.cpu})
        print(f"  edgekit {ek_all.wall:.2f}s (verify {ver_all.wall:.2f}s)  raw {raw_all.wall:.2f}s"
              f"   [cpu: edgekit {ek_all.cpu:.2f}s, verify {ver_all.cpu:.2f}s, raw "
              f"{raw_all.cpu:.2f}s; load {os.getloadavg()[0]:.1f}]", flush=True)
    all_in_one = {f"{k}_median": statistics.median(p[k] for p in pairs) for k in pairs[0]}
    all_in_one.update(
        runs=pairs,
        overhead_x=statistics.median((p["edgekit_s"] - p["verify_s"]) / p["raw_s"] for p in pairs),
        overhead_with_verify_x=statistics.median(p["edgekit_s"] / p["raw_s"] for p in pairs),
        overhead_cpu_x=statistics.median(
            (p["edgekit_cpu_s"] - p["verify_cpu_s"]) / p["raw_cpu_s"] for p in pairs))

    src_acc = arts["tflite-fp32"].fidelity.source_accuracy
    for target, art in arts.items():
        row, runs = rows[target], rows[target]["runs"]
        if art.calibration is not None and art.calibration["sha256"] != calib.fingerprint:
            raise SystemExit(f"{target}: edgekit calibrated on other samples than the raw call "
                             f"({art.calibration['sha256'][:12]} vs {calib.fingerprint[:12]})")
        row.update(bytes=art.bytes, accuracy=art.fidelity.accuracy,
                   source_accuracy=art.fidelity.source_accuracy,
                   agreement=art.fidelity.top1_agreement, sqnr_db=art.fidelity.sqnr_db,
                   gate_misses=gate_verdict(art), path=str(art.path))
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        row.update({f"{k}_median": v for k, v in med.items()})
        row["edgekit_noverify_s_median"] = statistics.median(
            r["edgekit_s"] - r["verify_s"] for r in runs)
        # Ratios of each back-to-back pair, then the median: slow drift cancels within a pair.
        row["overhead_x"] = statistics.median(
            (r["edgekit_s"] - r["verify_s"]) / r["raw_s"] for r in runs)
        row["overhead_with_verify_x"] = statistics.median(r["edgekit_s"] / r["raw_s"] for r in runs)
        row["overhead_cpu_x"] = statistics.median(
            (r["edgekit_cpu_s"] - r["verify_cpu_s"]) / r["raw_cpu_s"] for r in runs)
        row["pass_x"] = statistics.median(r["pass_s"] / r["raw_s"] for r in runs)

    print(f"  latency: {len(arts)} artifacts interleaved, {args.rounds} rounds, "
          f"{args.threads} thread(s)...", flush=True)
    x_eval, _ = images(cfg, "eval")
    lat = interleaved_latency({t: a.path for t, a in arts.items()}, x_eval[:1], args.threads,
                              args.rounds, args.round_budget)
    for target, row in rows.items():
        row.update(latency=lat[target])
        fmt32 = rows[target.split("-")[0] + "-fp32"]
        row["size_x"] = row["bytes"] / fmt32["bytes"]
        row["delta_acc_points"] = (row["accuracy"] - src_acc) * 100
        row["latency_x"] = lat[target]["p50_ms"] / fmt32["latency"]["p50_ms"]
        row["checks"] = checks(row)
    return {"model": cfg.name, "config": asdict(cfg), "train": train_meta,
            "source": {"path": str(model_path), "bytes": model_path.stat().st_size,
                       "params": int(model.count_params()), "accuracy": src_acc,
                       "eval_samples": arts["tflite-fp32"].fidelity.samples,
                       "keras_load_s": load.wall},
            "calibration": {"path": str(calib_path), "samples": len(calib),
                            "sha256": calib.fingerprint},
            "repeats": args.repeats, "rows": [rows[t] for t in TARGETS],
            "all_in_one": all_in_one}


def checks(row) -> dict:
    """The issue's targets that apply to this row: name -> passed."""
    t = row["target"]
    out = {}
    if t in INT8_TARGETS:
        out["size"] = row["size_x"] <= INT8_SIZE_MAX
        out["acc"] = row["delta_acc_points"] >= -INT8_ACC_DROP_MAX
    if t == "tflite-int8":
        out["lat"] = row["latency_x"] <= TFLITE_INT8_LAT_MAX
    out["ovh"] = row["overhead_x"] <= OVERHEAD_MAX
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

HEADER = ("target", "bytes", "size×", "acc %", "Δacc", "p50 ms", "lat×", "ek s", "verify",
          "ek-v s", "pass s", "raw s", "ovh×", "ovh×+v", "ovh×cpu", "gate", "targets")


def _ms(v: float) -> str:
    return f"{v:.4f}" if v < 0.1 else f"{v:.3f}"


def table(result: dict) -> str:
    s = result["source"]
    lines = [f"{result['model']}: {s['params']:,} params, source .keras {s['bytes']:,} bytes, "
             f"Keras accuracy {s['accuracy'] * 100:.2f}% on {s['eval_samples']} eval samples, "
             f"{result['calibration']['samples']} calibration samples, "
             f"conversion times: median of {result['repeats']} run(s) per side"]
    body = []
    for r in result["rows"]:
        failed = [k for k, ok in r["checks"].items() if not ok]
        verdict = ("FAIL " + ",".join(failed)) if failed else "PASS " + ",".join(r["checks"])
        body.append((r["target"], f"{r['bytes']:,}", f"{r['size_x']:.3f}",
                     f"{r['accuracy'] * 100:.2f}", f"{r['delta_acc_points']:+.2f}",
                     _ms(r["latency"]["p50_ms"]), f"{r['latency_x']:.2f}",
                     f"{r['edgekit_s_median']:.2f}", f"{r['verify_s_median']:.2f}",
                     f"{r['edgekit_noverify_s_median']:.2f}", f"{r['pass_s_median']:.2f}",
                     f"{r['raw_s_median']:.2f}", f"{r['overhead_x']:.2f}",
                     f"{r['overhead_with_verify_x']:.2f}", f"{r['overhead_cpu_x']:.2f}",
                     "miss" if r["gate_misses"] else "ok", verdict))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(HEADER)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i in (0, len(cells) - 2, len(cells) - 1) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
    lines += [fmt(HEADER), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
    a = result["all_in_one"]
    lines.append(f"all 9 targets in one convert call: ek {a['edgekit_s_median']:.2f} s, verify "
                 f"{a['verify_s_median']:.2f} s; all 9 by hand (tf2onnx once) "
                 f"{a['raw_s_median']:.2f} s: ovh× {a['overhead_x']:.2f}, ovh×+v "
                 f"{a['overhead_with_verify_x']:.2f}, ovh×cpu {a['overhead_cpu_x']:.2f} "
                 f"({'PASS' if a['overhead_x'] <= OVERHEAD_MAX else 'FAIL'} ovh; median of "
                 f"{len(a['runs'])} pair(s))")
    lines.append(f"Keras load_model of the source (part of every ek s, not of raw s): "
                 f"{s['keras_load_s']:.2f} s")
    for r in result["rows"]:
        if r["gate_misses"]:
            lines.append(f"  edgekit's default gate rejects {r['target']}: "
                         + "; ".join(r["gate_misses"]))
    return "\n".join(lines)


EXPLANATION = f"""\
What the numbers mean
  size×   artifact bytes / the same format's fp32 bytes. int8 weights are 1/4 of fp32, but
          biases stay int32, every tensor carries scales/zero points (one per channel), and the
          file has a fixed part (flatbuffer/protobuf schema, op and tensor tables, names, the
          signature) that does not shrink. A tiny model is mostly that fixed part, so its int8
          ratio sits well above 0.25; the ONNX QDQ form also keeps a DequantizeLinear node and a
          scale/zero-point pair per weight and activation. Target: int8 <= {INT8_SIZE_MAX}.
  Δacc    top-1 accuracy on the eval split minus the Keras source's, in points (measured by
          edgekit's own verification, on this host's runtimes). ONNX Runtime's fused int8
          kernels on x86 without VNNI can saturate (its docs: use reduce_range there), so an
          onnx-int8 drop measured on such a host may come from the kernels, not from the
          quantization parameters. Target: int8 drop <= {INT8_ACC_DROP_MAX} point.
  lat×    p50 of one batch-1 invoke / the same format's fp32 p50, same runtime and thread count,
          all artifacts timed in interleaved rounds in one process. Fp16 on CPU: TFLite
          dequantizes the weights at load (same speed as fp32); ONNX Runtime runs real fp16
          kernels where it has them and inserts casts elsewhere. Dynamic int8 quantizes
          activations at every invoke; int16x8 runs LiteRT's reference (unoptimized) kernels.
          At digits-CNN size an invoke is tens of microseconds, mostly fixed per-call cost, so
          its lat× says little. On an x86 host without VNNI (AVX2 only) XNNPACK's int8 kernels
          widen to 16 bits and requantize, so int8 is not faster than its fp32 kernels there;
          the int8 speed-up is an ARM (dot-product) and VNNI story. Target: tflite-int8 <=
          {TFLITE_INT8_LAT_MAX}.
  ek s    one edgekit.api.convert(...) call for this target alone: load + check the source,
          load the data, convert, verify on the eval split, hash, write the manifest.
  verify  the part of ek s spent verifying (reference outputs of the source on the eval split,
          loading the artifact into its runtime, running it on the eval split); ek-v = ek - it.
  pass s  the pass alone (Artifact.conversion_seconds).
  raw s   the bare tool call(s) edgekit wraps, on the already-loaded Keras model, with the same
          settings and calibration samples, file written (see raw_convert()).
  ovh×    ek-v / raw, wall clock: edgekit's own overhead (loading and checking the source and
          data, hashing, manifest; target <= {OVERHEAD_MAX}, judged on this column); ovh×+v =
          ek / raw, verification included; ovh×cpu = the ovh× ratio in process CPU time, which
          other programs on the host do not inflate (a check on the wall-clock figure).
  gate    edgekit's default fidelity gate (quantized classifiers: <= 1 point accuracy drop);
          a "miss" means a default `edgekit convert` refuses that artifact. The benchmark opens
          the gate so every artifact is still measured.
  Ratios of times are taken per back-to-back pair (raw and edgekit alternate which runs
  first), then the median over --repeats pairs."""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="digits CNN only (a sanity run, < 2 min)")
    p.add_argument("--retrain", action="store_true", help="ignore cached trained models")
    p.add_argument("--json", type=Path, help="write the raw numbers here")
    p.add_argument("--cache", type=Path, default=Path("~/.cache/edgekit-bench").expanduser(),
                   help="trained models and upsampled data (default: %(default)s)")
    p.add_argument("--out", type=Path, help="keep artifacts here (default: a temp folder)")
    p.add_argument("--threads", type=int, default=1, help="runtime threads for latency")
    p.add_argument("--repeats", type=int, help="conversions per target and side "
                   "(default 3 for the digits CNN, 1 for MobileNetV2)")
    p.add_argument("--rounds", type=int, default=20, help="interleaved latency rounds")
    p.add_argument("--round-budget", type=float, default=0.1,
                   help="seconds per artifact per latency round")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("tf2onnx", "tensorflow", "absl", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    args.cache = args.cache.expanduser()
    args.cache.mkdir(parents=True, exist_ok=True)
    repeats = args.repeats
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        workroot = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="edgekit-bench-")))
        print("warming up (imports and first-call costs of every tool, untimed)...", flush=True)
        warm_cfg = DIGITS_CNN
        warm_path, _ = trained_model(warm_cfg, args.cache, args.retrain)
        with quiet():
            edgekit_convert(warm_path, TARGETS, *data_files(warm_cfg, args.cache),
                            workroot / "warmup")
        results = []
        for cfg in ([DIGITS_CNN] if args.quick else [DIGITS_CNN, MOBILENET]):
            args.repeats = repeats or (3 if cfg.arch == "cnn" else 1)
            results.append(bench_model(cfg, args, Path(workroot)))
    env = {"python": platform.python_version(), "machine": platform.machine(),
           "cpu": _cpu(), "cpus": os.cpu_count(), "threads": args.threads,
           "versions": _versions(), "wall_s": time.perf_counter() - started,
           "max_loadavg_1min": max((r["loadavg_1min"] for m in results for row in m["rows"]
                                    for r in row["runs"]), default=None)}
    print()
    for r in results:
        print(table(r))
        print()
    print(EXPLANATION)
    print(f"\n{env['cpu']}, {env['cpus']} CPUs, {args.threads} runtime thread(s); " +
          ", ".join(f"{k} {v}" for k, v in env["versions"].items()) +
          f"; total {env['wall_s']:.0f} s")
    if env["max_loadavg_1min"] and env["max_loadavg_1min"] > env["cpus"]:
        print(f"NOTE: the host was shared (1-min load average up to {env['max_loadavg_1min']:.1f} "
              f"on {env['cpus']} CPUs during the conversions): wall-clock times are inflated and "
              f"noisy, ovh×cpu is the steadier overhead figure; latency ratios stay fair "
              f"(interleaved), absolute p50s are high.")
    if args.json:
        args.json.write_text(json.dumps({"env": env, "models": results}, indent=2, default=str))
        print(f"raw numbers: {args.json}")
    return 0


def _cpu() -> str:
    """CPU model and the SIMD features that decide int8 speed and ORT's int8 kernels."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                  if ln.startswith("model name")), platform.machine())
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines()
                      if ln.startswith(("flags", "Features"))), []))
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimddp") if f in flags]
    return f"{model} ({', '.join(simd) or 'no AVX2/VNNI/dotprod'})"


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


if __name__ == "__main__":
    sys.exit(main())

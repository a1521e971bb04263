"""Benchmark of `bench --per-layer` on this machine (`local`) and the emulated arm64 board.

    python benchmarks/bench_perlayer.py [--runs 50] [--quick]
    python benchmarks/bench_perlayer.py --board [--board-runs 10]   # + the emulated board (root)

For the trained digits CNN and a MobileNetV2 (Keras, ``weights=None``: nothing is downloaded),
each as TFLite (XNNPACK on) and ONNX, one plain run and one per-layer run:
(1) overhead: wall time of the per-layer run / the plain run, and the per-layer pass's own
    seconds;
(2) the timed p50 of the per-layer run / the plain run's (the pass comes after the timed runs,
    so this should be ~1.0 within noise);
(3) per-layer sum / whole-model p50 of the same run (the document's gap), the whole model
    within the per-layer pass / that p50 (the device's speed drifting between the two), and the
    top op type.

Prints one markdown table per device on stdout; progress on stderr. On the board (qemu-user)
milliseconds are the emulator's: only ratios are printed there.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from conftest_ssh import _tmpdir, build_digits_models  # noqa: E402

from edgekit.bench import benchmark  # noqa: E402
from edgekit.devices.spec import DeviceSpec  # noqa: E402
from edgekit.quiet import (  # noqa: E402
    captured_native_output,
    quiet_environment,
    quiet_python_tools,
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_mobilenet(folder: Path, size: int) -> tuple[Path, Path]:
    """MobileNetV2 with random weights (the architecture is what is timed), TFLite and ONNX."""
    import keras
    import tensorflow as tf
    import tf2onnx

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), weights=None)
    tfl = folder / "mobilenetv2.tflite"
    tfl.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    onnx = folder / "mobilenetv2.onnx"
    tf2onnx.convert.from_function(
        tf.function(lambda image: model(image)), opset=17, output_path=str(onnx),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="image")])
    return tfl, onnx


def measure(path: Path, runs: int, workdir: Path, device=None, **kw) -> dict:
    device = device or DeviceSpec(name="local", workdir=str(workdir))
    row = {}
    for per_layer in (False, True):
        t0 = time.perf_counter()
        [r] = benchmark([path], devices=[device], runs=runs, warmup=min(5, runs),
                        per_layer=per_layer, **kw)
        wall = time.perf_counter() - t0
        if not r.ok:
            raise SystemExit(f"{path.name}: {r.error}")
        row["per_layer" if per_layer else "plain"] = (wall, r.metrics)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--size", type=int, default=224, help="MobileNetV2 input size")
    p.add_argument("--quick", action="store_true", help="digits only")
    p.add_argument("--board", action="store_true", help="also the emulated arm64 board (root)")
    p.add_argument("--board-runs", type=int, default=10)
    p.add_argument("--board-size", type=int, default=96,
                   help="MobileNetV2 input size on the board (qemu runs it 10-30x slower; the "
                        "TFLite per-layer pass times 64 cut models)")
    args = p.parse_args()
    folder = _tmpdir("edgekit-bench-perlayer-")
    quiet_environment()
    quiet_python_tools()
    log("training the digits CNN" + ("" if args.quick else ", building MobileNetV2") + " ...")
    # TensorFlow's and the converters' chatter, native and Python-level ("Saved artifact at")
    with captured_native_output((1, 2)), contextlib.redirect_stdout(io.StringIO()):
        digits = build_digits_models()
        models = [("digits CNN", digits.tflite_fp32), ("digits CNN", digits.onnx_fp32)]
        if not args.quick:
            tfl, onnx = build_mobilenet(folder, args.size)
            models += [("MobileNetV2", tfl), ("MobileNetV2", onnx)]
    tables = [("local", args.runs, {}, True, models)]
    board = None
    if args.board:
        sys.path.insert(0, str(ROOT / "tests" / "boards"))
        from conftest import ALIAS, edgekit_json, start_board
        from conftest_ssh import user_key

        from edgekit.devices.spec import ConnectOptions

        log("starting the emulated arm64 board and installing its runtimes ...")
        board = start_board(folder / "b", user_key())
        edgekit_json("devices", "setup", ALIAS, *board.cli_connection())
        connect = ConnectOptions(ssh_config=board.ssh_config, known_hosts=board.known_hosts,
                                 connect_timeout=60)
        board_models = models[:2]
        if not args.quick:
            sub = folder / f"mobilenet{args.board_size}"
            sub.mkdir()
            with captured_native_output((1, 2)), contextlib.redirect_stdout(io.StringIO()):
                tfl, onnx = build_mobilenet(sub, args.board_size)
            name = f"MobileNetV2-{args.board_size}"
            board_models += [(name, tfl), (name, onnx)]
        tables.append((ALIAS, args.board_runs, {"connect": connect, "inventory": board.inventory,
                                                "timeout": 1800}, False, board_models))
    try:
        for device, runs, kw, show_ms, which in tables:
            table(device, which, runs, folder, kw, show_ms)
    finally:
        if board is not None:
            from conftest import board_script

            board_script("destroy", folder / "b" / "board", timeout=300)


def table(device: str, models, runs: int, folder: Path, kw: dict, show_ms: bool) -> None:
    print(f"\n{device} ({runs} runs" + ("" if show_ms else "; emulated: ratios only") + ")\n")
    print("| model | format | plain p50 ms | per-layer run wall / plain wall | per-layer pass s "
          "| p50 with / without | per-layer sum / p50 | in-pass whole model / p50 | method "
          "| top op type |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for name, path in models:
        log(f"{device}: {name} {path.suffix}: plain and per-layer runs ...")
        row = measure(path, runs, folder / "w", None if device == "local" else device, **kw)
        (w0, plain), (w1, layered) = row["plain"], row["per_layer"]
        pl = layered["per_layer"]
        if pl.get("error"):
            raise SystemExit(f"{path.name}: {pl['error']}")
        top = pl["op_types"][0]
        p50 = f"{plain['latency_ms']['p50']:.4g}" if show_ms else "-"
        wall = f"{pl['wall_s']:.2f}" if show_ms else "-"
        print(f"| {name} | {path.suffix[1:]} | {p50} | {w1 / w0:.2f} | {wall} "
              f"| {layered['latency_ms']['p50'] / plain['latency_ms']['p50']:.3f} "
              f"| {pl['total_ms'] / pl['whole_model_p50_ms']:.3f} "
              f"| {pl['profiled_run_p50_ms'] / pl['whole_model_p50_ms']:.3f} | {pl['method']} "
              f"| {top['op_type']} {100 * top['share']:.0f} % |", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The emulated aarch64 board: board-suite wall time (cold / warm) and agent latency on it.

    python3 benchmarks/bench_board.py suite --cold   # deletes the board cache and aarch64 wheels
    python3 benchmarks/bench_board.py suite          # warm: cached rootfs and wheels
    python3 benchmarks/bench_board.py latency --runs 50

``latency`` starts a fresh board, runs ``edgekit devices setup`` on it, converts the digits CNN
on this host (tflite-int8, tflite-fp16, onnx-int8) and benches each artifact on the board and on
``local``. The board runs under qemu-user: its milliseconds are the emulator's, not an arm64
CPU's. Only the ratios between artifacts on the board say anything, and even those are skewed
(qemu translates NEON/SIMD kernels with very different costs than native code).
Needs root (see tests/boards/make_arm64_board.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "boards"))  # first: its conftest, not tests/conftest


def suite(cold: bool) -> None:
    from conftest import CACHE

    wheels = Path.home() / ".cache" / "edgekit" / "wheels" / "aarch64-cp311"
    if cold:
        for p in (CACHE, wheels):
            shutil.rmtree(p, ignore_errors=True)
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(ROOT / "tests" / "boards" / "run_board_suite.sh")],
                          cwd=ROOT, capture_output=True, text=True)
    took = time.monotonic() - t0
    tail = proc.stdout.strip().splitlines()[-1:] or ["(no output)"]
    print(f"board suite {'cold' if cold else 'warm'}: {took:.0f} s, exit {proc.returncode}: "
          f"{tail[0]}")
    if proc.returncode:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        sys.exit(proc.returncode)


def latency(runs: int, warmup: int) -> None:
    from conftest import ALIAS, TARGETS, board_script, edgekit, edgekit_json, start_board
    from conftest_ssh import user_key

    from calibration_data.digits import digits_path
    from edgekit.demo import DigitsCNN, train_digits_cnn

    folder = Path(tempfile.mkdtemp(prefix="edgekit-bench-board-"))
    try:
        board = start_board(folder, user_key())
        conn = board.cli_connection()
        t0 = time.monotonic()
        setup = edgekit_json("devices", "setup", ALIAS, *conn)
        setup_s = time.monotonic() - t0
        model = train_digits_cnn(folder / "digits_cnn.keras", DigitsCNN(epochs=6))
        build = folder / "build"
        edgekit("convert", model, "--to", ",".join(TARGETS), "--calibration",
                digits_path("calibration"), "--eval", digits_path("eval"), "--out", build)
        rows = {}
        for device in (ALIAS, "local"):
            for r in edgekit_json("bench", build, "--device", device, "--runs", runs, "--warmup",
                                  warmup, "--eval", digits_path("eval"), "--db", folder / "b.db",
                                  "--timeout", 1200, *conn):
                assert r["ok"], r["error"]
                rows.setdefault(r["artifact"]["target"], {})[device] = r
    finally:
        board_script("destroy", folder / "board", timeout=300)
        shutil.rmtree(folder, ignore_errors=True)
    info = rows[TARGETS[0]][ALIAS]["device_info"]
    emu = info["emulation"]
    print(f"board: {info['arch']} {info['os']['release']}, Python {info['python']['version']}, "
          f"emulated={emu['emulated']} ({emu['emulator']} on {emu['host_arch']}); setup "
          f"{setup_s:.0f} s, {len(setup['wheels'])} wheels, {setup['upload_bytes'] / 1e6:.1f} MB")
    base = rows[TARGETS[0]][ALIAS]["metrics"]["latency_ms"]["p50"]
    host_base = rows[TARGETS[0]]["local"]["metrics"]["latency_ms"]["p50"]
    print(f"\n{runs} runs after {warmup} warm-up, 1 thread, batch 1\n")
    print("| artifact | runtime | board p50 ms | board p90 ms | board init ms | board / "
          f"{TARGETS[0]} | host p50 ms | host / {TARGETS[0]} | board / host | top-1 board | "
          "top-1 host |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for target in TARGETS:
        b, h = rows[target][ALIAS]["metrics"], rows[target]["local"]["metrics"]
        print(f"| {target} | {b['runtime']} {b['runtime_version']} | "
              f"{b['latency_ms']['p50']:.3f} | {b['latency_ms']['p90']:.3f} | "
              f"{b['init_ms']:.0f} | {b['latency_ms']['p50'] / base:.2f} | "
              f"{h['latency_ms']['p50']:.4f} | {h['latency_ms']['p50'] / host_base:.2f} | "
              f"{b['latency_ms']['p50'] / h['latency_ms']['p50']:.0f}x | "
              f"{b['accuracy']['top1']:.4f} | {h['accuracy']['top1']:.4f} |")
    print("\n" + json.dumps({t: {d: r["metrics"]["latency_ms"] for d, r in v.items()}
                             for t, v in rows.items()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("suite")
    s.add_argument("--cold", action="store_true", help="delete the cached rootfs and wheels")
    lat = sub.add_parser("latency")
    lat.add_argument("--runs", type=int, default=50)
    lat.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.cmd == "suite":
        suite(args.cold)
    else:
        latency(args.runs, args.warmup)


if __name__ == "__main__":
    main()

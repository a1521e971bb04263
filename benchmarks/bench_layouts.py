#!/usr/bin/env python3
"""onnx-int8 layouts side by side: is edgekit's default the fastest layout that passes the gate?

    python3 benchmarks/bench_layouts.py                   # local only
    python3 benchmarks/bench_layouts.py --board           # + the emulated arm64 board (root)

For MobileNetV2 (alpha 0.35, 96x96, trained on the digits; benchmarks/bench_convert.py's cached
model) it builds, in one run: onnx-fp32; ONNX Runtime's own default static int8 (raw
``quantize_static`` with its defaults: QDQ, S8S8, per-tensor); every layout edgekit can write
(S8S8 / U8S8 x QDQ / QOperator, with and without 7-bit weights); and edgekit's default for each
device (``convert`` on this machine, ``convert --for <board>``). Each is judged by the default
gate and benchmarked with the agent on each device (p50 over ``--runs``, one thread, batch 1).

Target (issue: fast by default): on every device, edgekit's default p50 is within 5 % of the
fastest layout that passes the gate. On the board (qemu-user) milliseconds are the emulator's;
only ratios are printed there, and they are skewed by how qemu translates SIMD code.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

LAX = dict(max_accuracy_drop=100.0, min_top1_agreement=0.0, min_sqnr_db=-100.0)


def layouts():
    from converters.cpu_layouts import OnnxLayout
    from converters.options import OnnxQuantFormat

    out = []
    for fmt in OnnxQuantFormat:
        for unsigned in (False, True):
            for rr in (False, True):
                out.append(OnnxLayout(unsigned, rr, fmt))
    return out


def build_all(model: Path, calib: Path, evalf: Path, work: Path, board_target) -> dict:
    """name -> (Artifact or path, gate verdict text or None)."""
    from converters.options import ConvertOptions
    from edgekit.api import convert, cpu_target
    from edgekit.gate import gate_for

    rows = {}
    fp32 = convert(model, ["onnx-fp32"], out=work / "fp32", eval=evalf)[0]
    rows["onnx-fp32"] = (fp32, "float")

    def judged(name, opts, **kw):
        art = convert(model, ["onnx-int8"], calibration=calib, eval=evalf, out=work / name,
                      options=opts, **kw)[0]
        default_gate = gate_for("int8", art.fidelity)
        misses = default_gate.check(art.fidelity).misses
        rows[name] = (art, "; ".join(misses) if misses else "pass")
        return art

    for lay in layouts():
        judged(lay.label, ConvertOptions(**lay.options(), **LAX))
    here = cpu_target()
    judged(f"edgekit default ({here.cpu_class.value})", ConvertOptions())
    if board_target is not None:
        judged(f"edgekit --for board ({board_target.cpu_class.value})", ConvertOptions(),
               **board_target.kw)
    rows["ORT quantize_static defaults"] = (raw_ort_default(fp32.path, calib, work), None)
    return rows


def raw_ort_default(fp32_path: Path, calib: Path, work: Path) -> Path:
    """What a user writes by hand: ORT's pre-processing, then quantize_static's defaults."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load(str(fp32_path)).graph.input[0].name
    x = np.load(calib)["x"][:200].astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter({name: x[i:i + 1]} for i in range(len(x)))

        def get_next(self):
            return next(self._it, None)

    out = work / "raw"
    out.mkdir(parents=True, exist_ok=True)
    pre = out / "pre.onnx"
    quant_pre_process(str(fp32_path), str(pre))
    path = out / "ort_default_int8.onnx"
    quantize_static(str(pre), str(path), Reader())
    return path


def bench(rows: dict, device: str, runs: int, evalf: Path, connect=None, inventory=None) -> dict:
    from edgekit.bench import benchmark

    items = [a for a, _ in rows.values()]
    results = benchmark(items, [device], runs=runs, warmup=max(5, runs // 10), eval=evalf,
                        connect=connect, inventory=inventory, threads=1)
    out = {}
    for (name, _), r in zip(rows.items(), results, strict=True):
        if not r.ok:
            raise SystemExit(f"{name} on {device}: {r.error}")
        out[name] = r.metrics
    return out


def table(rows: dict, metrics: dict, device: str, show_ms: bool) -> tuple[str, float]:
    base = metrics["onnx-fp32"]["latency_ms"]["p50"]
    lines = [f"\n{device}: p50 ratio to onnx-fp32" + (f" ({base:.2f} ms)" if show_ms else ""),
             "", "| artifact | gate | agreement | accuracy | p50 / fp32 |", "|---|---|---:|---:|---:|"]
    passing = {}
    for name, (art, verdict) in rows.items():
        p50 = metrics[name]["latency_ms"]["p50"]
        acc = (metrics[name].get("accuracy") or {}).get("top1")
        agree = getattr(getattr(art, "fidelity", None), "top1_agreement", None)
        gate = verdict if verdict in ("pass", "float", None) else "miss: " + verdict[:40]
        lines.append(f"| {name} | {gate or '-'} | "
                     f"{'-' if agree is None else f'{100 * agree:.1f}%'} | "
                     f"{'-' if acc is None else f'{100 * acc:.1f}%'} | {p50 / base:.2f} |")
        if verdict == "pass" and not name.startswith("edgekit"):
            passing[name] = p50
    default = next(n for n in rows if n.startswith("edgekit") and
                   (("--for" in n) == (device != "local")))
    fastest = min(passing, key=passing.get)
    ratio = metrics[default]["latency_ms"]["p50"] / passing[fastest]
    lines.append(f"\nfastest layout that passes the gate: {fastest}; {default} / it = "
                 f"{ratio:.3f} (target <= 1.05: {'PASS' if ratio <= 1.05 else 'MISS'})")
    return "\n".join(lines), ratio


class BoardTarget:
    def __init__(self, cpu, conn_kw):
        self.cpu_class = cpu.cpu_class
        self.kw = conn_kw


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--board-runs", type=int, default=20)
    p.add_argument("--board", action="store_true", help="also the emulated arm64 board (root)")
    p.add_argument("--cache", type=Path, default=Path("~/.cache/edgekit-bench").expanduser())
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from bench_convert import MOBILENET, data_files, trained_model

    model, _ = trained_model(MOBILENET, args.cache, False)
    calib, evalf = data_files(MOBILENET, args.cache)
    work = Path(tempfile.mkdtemp(prefix="edgekit-bench-layouts-"))
    board = None
    try:
        board_target, connect, inventory = None, None, None
        if args.board:
            sys.path.insert(0, str(ROOT / "tests"))
            sys.path.insert(0, str(ROOT / "tests" / "boards"))
            from conftest import ALIAS, edgekit_json, start_board
            from conftest_ssh import user_key

            from edgekit.api import cpu_target
            from edgekit.devices.spec import ConnectOptions

            board = start_board(work / "b", user_key())
            conn = board.cli_connection()
            edgekit_json("devices", "setup", ALIAS, *conn)
            connect = ConnectOptions(ssh_config=board.ssh_config, known_hosts=board.known_hosts,
                                     connect_timeout=60)
            inventory = board.inventory
            cpu = cpu_target(ALIAS, connect=connect, inventory=inventory)
            board_target = BoardTarget(cpu, {"for_device": ALIAS, "connect": connect,
                                             "inventory": inventory})
        rows = build_all(model, calib, evalf, work, board_target)
        out, ok = [], True
        text, ratio = table(rows, bench(rows, "local", args.runs, evalf), "local", True)
        out.append(text)
        ok &= ratio <= 1.05
        if args.board:
            text, ratio = table(rows, bench(rows, ALIAS, args.board_runs, evalf, connect,
                                            inventory), ALIAS, False)
            out.append(text)
            ok &= ratio <= 1.05
        print("\n".join(out))
        return 0 if ok else 1
    finally:
        if board is not None:
            from conftest import board_script

            board_script("destroy", work / "b" / "board", timeout=300)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

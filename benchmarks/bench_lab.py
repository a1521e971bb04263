"""Benchmark of labgrid places as devices: many benches, few boards.

    python benchmarks/bench_lab.py [--benches 8] [--places 2] [--runs 2000]

Starts the test sshd, a real labgrid-coordinator and labgrid-exporter on 127.0.0.1 (the
exporter's NetworkServices lead to that sshd, one per place), then launches BENCHES processes at
once, each an `edgekit.benchmark()` of the digits fp32 model on `labgrid:PLACE` (places taken
round-robin). Prints one table (markdown) on stdout, progress on stderr:

- per bench: its place, the wait it saw, the session connect time, the lock overhead
  (acquire without the wait + release) and its measurement interval;
- per place: whether any two measurements (agent start .. start + wall) or any two holds
  (acquired .. released) overlapped. Target: zero overlaps, lock overhead <= 0.5 s per bench.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def child(model: str, device: str, inventory: str, known_hosts: str, runs: int) -> None:
    """One bench in its own process; prints its lease and intervals as JSON."""
    from edgekit.bench import benchmark
    from edgekit.devices.lab import lease as lab_lease
    from edgekit.devices.spec import ConnectOptions

    released = []
    release = lab_lease.PlaceLease.release

    def timed_release(self):  # the benchmark's stopwatch on labgrid's release round trip
        out = release(self)
        if self.release_s is not None:
            released.append((self.release_s, self.released_at))
        return out

    lab_lease.PlaceLease.release = timed_release
    t0 = time.time()
    r = benchmark([model], devices=[device], inventory=inventory, runs=runs, warmup=5,
                  connect=ConnectOptions(known_hosts=known_hosts))[0]
    json.dump({"device": device, "ok": r.ok, "error": r.error, "lease": r.lease,
               "started": t0, "measured": [r.metrics["started_at"],
                                           r.metrics["started_at"] + r.metrics["wall_s"]]
               if r.ok else None, "p50_ms": r.latency("p50"),
               "release_s": released[0][0] if released else None,
               "released_at": released[0][1] if released else None}, sys.stdout)


def overlaps(intervals) -> int:
    iv = sorted(intervals)
    return sum(1 for a, b in zip(iv, iv[1:], strict=False) if b[0] < a[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--benches", type=int, default=8)
    ap.add_argument("--places", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, runs=args.runs)
        return 0

    from conftest_lab import start_lab
    from conftest_ssh import _tmpdir, build_digits_models, start_sshd, user_key

    print("training the digits model, starting sshd and the lab ...", file=sys.stderr)
    digits = build_digits_models()
    sshd = start_sshd(user_key())
    lab = start_lab(sshd.port, boards=args.places)
    state = _tmpdir("edgekit-lab-state-")
    try:
        places = [lab.make_place(f"bench-{i + 1}", g) for i, g in enumerate(lab.boards)]
        inv = lab.folder / "devices.toml"
        inv.write_text(f'[labgrid]\ncoordinator = "{lab.address}"\nkey = "{sshd.user_key}"\n'
                       f'workdir = "{_tmpdir("edgekit-lab-cache-")}"\n'
                       f'python = "{sys.executable}"\n')
        env = dict(os.environ, PYTHONPATH=str(ROOT), EDGEKIT_LAB_STATE=str(state))
        print(f"{args.benches} benches on {len(places)} places ...", file=sys.stderr)
        t0 = time.time()
        procs = [subprocess.Popen(
            [sys.executable, __file__, "--runs", str(args.runs), "--child",
             str(digits.tflite_fp32), f"labgrid:{places[i % len(places)]}", str(inv),
             str(sshd.known_hosts)], env=env, stdout=subprocess.PIPE, text=True)
            for i in range(args.benches)]
        docs = [json.loads(p.communicate(timeout=1800)[0]) for p in procs]
        wall = time.time() - t0
    finally:
        lab.stop()
        sshd.stop()

    print("| bench | place | ok | waited s | connect s | acquire s | release s | "
          "lock overhead s | measured (s from start) | p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, d in enumerate(docs):
        le = d["lease"] or {}
        over = (le.get("lock_s") or 0) + (d["release_s"] or 0)
        span = (f"{d['measured'][0] - t0:.2f} .. {d['measured'][1] - t0:.2f}"
                if d["measured"] else d["error"])
        print(f"| {i + 1} | {d['device']} | {d['ok']} | {le.get('waited_s', 0):.2f} | "
              f"{le.get('connect_s', 0):.3f} | {le.get('lock_s', 0):.3f} | "
              f"{d['release_s'] or 0:.3f} | {over:.3f} | {span} | {d['p50_ms'] or 0:.4f} |")
    print()
    total_meas = total_hold = 0
    for place in places:
        mine = [d for d in docs if d["device"] == f"labgrid:{place}" and d["ok"]]
        m = overlaps([tuple(d["measured"]) for d in mine])
        h = overlaps([(d["lease"]["acquired_at"], d["released_at"]) for d in mine])
        total_meas, total_hold = total_meas + m, total_hold + h
        print(f"- {place}: {len(mine)} benches, overlapping measurements {m}, "
              f"overlapping holds {h}")
    overs = [(d["lease"]["lock_s"] + (d["release_s"] or 0)) for d in docs if d["ok"]]
    print(f"- all ok: {all(d['ok'] for d in docs)}; wall {wall:.1f} s; overlapping "
          f"measurements {total_meas} (target 0); lock overhead per bench median "
          f"{statistics.median(overs):.3f} s, max {max(overs):.3f} s (target <= 0.5 s); "
          f"session connect median {statistics.median(d['lease']['connect_s'] for d in docs if d['ok']):.3f} s")
    return 0 if total_meas == 0 and all(d["ok"] for d in docs) else 1


if __name__ == "__main__":
    sys.exit(main())

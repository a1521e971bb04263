"""Write time per result: SQLite (a file, edgekit's default) vs PostgreSQL (a local server), side
by side in one run.

    python benchmarks/bench_results_db.py [--results 300]

Each result is one ``ResultStore.add`` (one transaction), the way ``edgekit bench`` writes; the
two stores are written alternately, one result each in turn, so both see the same machine load.
Documents are the size of a real result (agent run + probe documents, ~4 KiB). PostgreSQL is
started from Debian's package (as the tests do, tests/conftest_pg.py) on loopback, with
``fsync`` turned back on: a commit waits for the disk, as on a production server. SQLite runs
as edgekit sets it up: WAL, ``synchronous=NORMAL`` (a commit survives a crash of the writer,
not necessarily a power cut). Also timed: reading every result back (``list``).

Prints one table (markdown) on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "results"))
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from conftest_pg import _bin, start_postgres  # noqa: E402
from results_sample import make  # noqa: E402

from edgekit.results import ResultStore  # noqa: E402


def realistic(i: int):
    """A result with agent documents of a real run's size (8 CPUs, 4 thermal zones)."""
    r = make(10.0 + i % 7, device=f"board-{i % 4}", sha=f"{i % 16:064x}")
    cpus = {f"cpu{c}": {"governor": "schedutil", "min_khz": 408000, "cur_khz": 1800000,
                        "max_khz": 1800000} for c in range(8)}
    temps = {f"zone{z}": 45.0 + z for z in range(4)}
    r.metrics.update({"runtime": "ai_edge_litert", "runtime_version": "1.2.0", "threads": 1,
                      "provider": "xnnpack", "init_ms": 3.2, "first_inference_ms": 4.1,
                      "system": {"before": {"temperatures_c": temps, "frequencies": cpus},
                                 "after": {"temperatures_c": temps, "frequencies": cpus}},
                      "inputs": [{"name": "x", "shape": [1, 28, 28, 1], "dtype": "float32",
                                  "quantization": None}]})
    r.device_info = {"arch": "aarch64", "cpu": {"model": "Cortex-A72", "cores": 8,
                                                "frequencies": cpus, "features": ["asimd"]},
                     "temperatures_c": temps, "hostname": f"board-{i % 4}",
                     "python": {"version": "3.11.2", "numpy": "1.26.4"}}
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=int, default=300, help="results written to each store")
    args = ap.parse_args()

    server = start_postgres("bench")
    try:
        # The tests' server runs with fsync off (its command line); a real server has it on.
        subprocess.run([*server.run_as, _bin("pg_ctl"), "-D", str(server.folder / "data"),
                        "-l", str(server.folder / "server.log"), "-w", "-t", "60", "-o",
                        f"-k {server.folder} -p {server.port} -h 127.0.0.1", "restart"],
                       check=True, capture_output=True, timeout=120)
        admin = sa.create_engine(server.url)
        with admin.connect() as conn:
            fsync = conn.exec_driver_sql("SHOW fsync").scalar()
        admin.dispose()
        with tempfile.TemporaryDirectory() as tmp:
            stores = {"sqlite": ResultStore(Path(tmp) / "r.db"),
                      f"postgresql (fsync {fsync})": ResultStore(server.url)}
            times = {name: [] for name in stores}
            for i in range(args.results):
                for name, store in stores.items():
                    r = realistic(i)
                    t0 = time.perf_counter()
                    store.add(r)
                    times[name].append((time.perf_counter() - t0) * 1e3)
                if (i + 1) % 100 == 0:
                    print(f"{i + 1}/{args.results}", file=sys.stderr)
            reads = {}
            for name, store in stores.items():
                t0 = time.perf_counter()
                n = len(store.list(limit=None))
                reads[name] = ((time.perf_counter() - t0) * 1e3, n)
                store.close()
    finally:
        server.stop()

    base = statistics.median(times["sqlite"])
    print(f"{args.results} results per store, written alternately, one transaction each\n")
    print("| store | write p50 ms | write mean ms | write p90 ms | x sqlite (p50) "
          "| list all ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, t in times.items():
        p90 = statistics.quantiles(t, n=10)[-1]
        print(f"| {name} | {statistics.median(t):.2f} | {statistics.fmean(t):.2f} | {p90:.2f} "
              f"| {statistics.median(t) / base:.2f} | {reads[name][0]:.0f} ({reads[name][1]}) |")


if __name__ == "__main__":
    main()

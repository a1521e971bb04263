"""Benchmark of ``edgekit optimize`` on ``local``: the recipe it finds vs FP32 and vs each raw
tool's default INT8, and one worker vs two for a fixed budget.

The model is bench_convert's MobileNetV2 reference (alpha 0.35, 96x96 RGB, trained on the
digits upsampled to 96x96, cached in ``~/.cache/edgekit-bench/``):

    python benchmarks/bench_optimize.py                        # search budget 24, workers 8+8
    python benchmarks/bench_optimize.py --budget 40 --workers-budget 10
    python benchmarks/bench_optimize.py --json out.json        # also write the raw numbers
    python benchmarks/bench_optimize.py --prune 0.5 0.75 --skip-workers   # + pruning, fine-tuned
    python benchmarks/bench_optimize.py --arch-scaling 0.5 0.34 --arch-epochs 10 --skip-workers
        # + distilled MobileNetV2 students at 1/2 and 1/3 of the input resolution

Every number comes from the study itself: latency is the p50 the agent measured on this machine
for each trial (repeats of one recipe averaged), accuracy is top-1 on the 450-sample eval split
measured by the agent, sizes are the artifacts' bytes. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_convert import MOBILENET, data_files, trained_model

TARGET_SPEEDUP = 2.5        # the target: best ≥ 2.5× faster than FP32 at ≤ 1 point
TARGET_WORKERS_RATIO = 0.65  # two workers finish a fixed budget in ≤ 0.65× one worker's time


def run_search(model, calib, evalf, out: Path, budget: int, workers: int, runs: int, seed: int,
               threads=(1, 2), train=None, prune_ratios=(), time_budget_s=None, arch=None):
    from edgekit.search.loop import optimize
    from edgekit.search.settings import Constraints
    from edgekit.search.space import SearchSpace

    t0 = time.perf_counter()
    study = optimize(model, "local", calibration=calib, eval=evalf, train=train,
                     constraints=Constraints(max_accuracy_drop=1.0), budget=budget, runs=runs,
                     out=out, workers=workers, seed=seed, time_budget_s=time_budget_s,
                     space=SearchSpace(threads=threads, prune_ratios=tuple(prune_ratios),
                                       **(arch or {})),
                     progress=lambda m: print(f"    {m}", flush=True))
    return study, time.perf_counter() - t0


def _side_ms(study, name: str):
    """The finalist's median p50 from the side-by-side re-measurement, or None."""
    side = getattr(study, "finalists", None)
    f = side.get(name) if side is not None else None
    return f.p50_ms if f is not None else None


def comparison(study) -> list[dict]:
    best = study.best
    rows = []
    for c in sorted(study.candidates, key=lambda c: c.p50_ms):
        if not (c.role or c.chosen):
            continue
        rows.append({"recipe": c.name, "role": "chosen" if c.chosen else c.role,
                     "p50_ms": c.p50_ms, "side_by_side_ms": _side_ms(study, c.name),
                     "bytes": c.bytes, "accuracy": c.accuracy,
                     "accuracy_drop": c.accuracy_drop, "feasible": c.feasible,
                     "trials": len(c.trials),
                     "best_speedup": c.p50_ms / best.p50_ms if best else None,
                     "best_size_ratio": best.bytes / c.bytes if best else None})
    return rows


def table(study, seconds: float) -> str:
    best = study.best
    lines = [f"{'recipe':34} {'role':13} {'p50 ms':>8} {'side ms':>8} {'KiB':>8} {'top-1 %':>8} "
             f"{'drop':>6} {'best is ×faster':>15} {'best size ×':>11}"]
    for r in comparison(study):
        side = f"{r['side_by_side_ms']:8.3f}" if r["side_by_side_ms"] else f"{'-':>8}"
        lines.append(f"{r['recipe']:34} {r['role']:13} {r['p50_ms']:8.3f} {side} "
                     f"{r['bytes'] / 1024:8.1f} {100 * r['accuracy']:8.2f} "
                     f"{r['accuracy_drop']:6.2f} {r['best_speedup']:15.2f} "
                     f"{r['best_size_ratio']:11.2f}")
    done = [t for t in study.trials if t.state in ("complete", "failed")]
    failed = [t for t in study.trials if t.state == "failed"]
    lines.append(f"trials: {len(done)} ({len(failed)} failed: "
                 + (", ".join(f"{t.name} [{t.failed_stage}]" for t in failed) or "none")
                 + f"), distinct recipes measured: {len(study.candidates)}, wall time "
                   f"{seconds / 60:.1f} min, chosen: {best.name if best else None}")
    return "\n".join(lines)


def checks(study) -> dict:
    """The targets, on the side-by-side re-measurement when the best and the fp32 baselines
    have one (trials minutes apart on a loaded host are not comparable), else on the trials."""
    best = study.best
    fp32 = [c for c in study.candidates if c.role == "baseline"]
    ms = {c.name: c.p50_ms for c in [*fp32, *([best] if best else [])]}
    side = {n: _side_ms(study, n) for n in ms}
    on_side = all(v is not None for v in side.values())
    if on_side:
        ms = side
    out = {}
    if best and fp32:
        fastest = min(ms[c.name] for c in fp32)
        speed = fastest / ms[best.name]
        out["measured"] = "side by side" if on_side else "per-trial means"
        out["speedup_vs_fastest_fp32"] = speed
        out[f"best ≥ {TARGET_SPEEDUP}× faster than FP32 at ≤ 1 point"] = \
            speed >= TARGET_SPEEDUP and best.accuracy_drop <= 1.0
        out["best never slower than FP32"] = all(ms[best.name] <= ms[c.name] for c in fp32)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=24, help="trials of the main search")
    ap.add_argument("--workers-budget", type=int, default=8,
                    help="trials of each of the one-worker and two-worker runs")
    ap.add_argument("--runs", type=int, default=30, help="timed inferences per trial")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-workers", action="store_true")
    ap.add_argument("--prune", type=float, nargs="*", default=None, metavar="RATIO",
                    help="also search pruning with fine-tuning at these ratios (0 included), "
                         "on the digits train split upsampled like the model's input")
    ap.add_argument("--arch-scaling", type=float, nargs="*", default=None, metavar="SCALE",
                    help="also search distilled students (architecture scaling) at these "
                         "input-resolution scales (the source's alpha; none: the defaults)")
    ap.add_argument("--arch-epochs", type=int, default=10,
                    help="distillation epochs per student (the reference trained 10)")
    ap.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                    help="wall-clock limit of the main search")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgekit-bench")
    ap.add_argument("--out", type=Path, default=None, help="keep the study folders here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    model, meta = trained_model(MOBILENET, args.cache, retrain=False)
    calib, evalf = data_files(MOBILENET, args.cache)
    root = args.out or Path(tempfile.mkdtemp(prefix="edgekit-bench-opt-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"model {model.name} ({meta.get('params')} params), host {platform.machine()}, "
          f"{os.cpu_count()} CPUs; studies in {root}", flush=True)
    result = {"model": str(model), "host": {"machine": platform.machine(),
                                            "cpus": os.cpu_count()}}

    print(f"\n== search: budget {args.budget}, 1 worker, runs {args.runs} ==", flush=True)
    train = None
    if args.prune is not None or args.arch_scaling is not None:
        import numpy as np
        from bench_convert import images

        train = args.cache / f"digits-train-rgb{MOBILENET.image_size}.npz"
        if not train.exists():
            x, y = images(MOBILENET, "train")
            np.savez(train, x=x, y=y)
    study, seconds = run_search(model, calib, evalf, root / "search", args.budget, 1, args.runs,
                                args.seed, train=train,
                                prune_ratios=tuple(args.prune or ()) and
                                tuple(sorted({0.0, *args.prune})),
                                time_budget_s=args.time_budget,
                                arch=None if args.arch_scaling is None else dict(
                                    arch_scaling=True, arch_epochs=args.arch_epochs,
                                    **({"arch_resolution_scales": tuple(args.arch_scaling)}
                                       if args.arch_scaling else {})))
    text = table(study, seconds)
    result["search"] = {"budget": args.budget, "seconds": seconds, "rows": comparison(study),
                        "checks": checks(study), "explanation": study.text}
    if not args.skip_workers:
        timing = {}
        for workers in (1, 2):
            print(f"\n== fixed budget {args.workers_budget}, {workers} worker(s), empty build "
                  "cache ==", flush=True)
            s, secs = run_search(model, calib, evalf, root / f"workers{workers}",
                                 args.workers_budget, workers, args.runs, args.seed)
            timing[workers] = {"seconds": secs, "trials": len(
                [t for t in s.trials if t.state in ("complete", "failed")])}
        ratio = timing[2]["seconds"] / timing[1]["seconds"]
        timing["ratio_2_over_1"] = ratio
        timing[f"≤ {TARGET_WORKERS_RATIO}×"] = ratio <= TARGET_WORKERS_RATIO
        result["workers"] = timing
    print("\n" + text)
    for k, v in result["search"]["checks"].items():
        print(f"  {k}: {v if not isinstance(v, float) else f'{v:.2f}'}")
    print("explanation:")
    for line in study.text[:8]:
        print(f"  • {line}")
    if "workers" in result:
        w = result["workers"]
        print(f"fixed budget {args.workers_budget}: 1 worker {w[1]['seconds']:.0f} s, "
              f"2 workers {w[2]['seconds']:.0f} s, ratio {w['ratio_2_over_1']:.2f} "
              f"(target ≤ {TARGET_WORKERS_RATIO})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

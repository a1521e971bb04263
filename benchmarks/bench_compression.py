"""Benchmark of the compression toolbox on MobileNetV2 (alpha 0.35, 96x96, trained on digits).

The reference model is the converters benchmark's (``bench_convert.MOBILENET``, cached in
``~/.cache/edgekit-bench``; the same one ``bench_pruning.py`` prunes). Each technique starts from
it, is fine-tuned/trained on the digits train split (upsampled to 96x96 RGB), then converted with
``edgekit.api.convert`` to ``tflite-fp32`` and ``tflite-int8``; sparse models are also converted
with LiteRT's sparse tensor encoding (``converters.tflite_weights.convert_sparse``:
``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``). Every artifact's size is its file's bytes, and the
gzip (level 9) and zstd (level 19) sizes are of the real file compressed; ratios are to the
reference's ``tflite-fp32`` file. Accuracy is top-1 of the artifact itself on the 450-sample eval
split (run by ``device_agents.agent``); latency is batch 1, all artifacts timed side by side in
interleaved rounds (``bench_convert.interleaved_latency``), ratio to the reference fp32::

    python benchmarks/bench_compression.py                    # ~30-60 min on 2 busy cores
    python benchmarks/bench_compression.py --epochs 1 --no-lottery   # quicker
    python benchmarks/bench_compression.py --json out.json    # also write the raw numbers
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_convert as bc
import numpy as np

from converters.sparsity import file_sizes

# The targets.
CLUSTER_GZIP_MAX = 0.20  # k = 16 clustering + gzip, x FP32 dense size
CLUSTER_DROP_MAX = 1.0  # points
SPARSE_INT8_GZIP_MAX = 0.10  # 80% sparsity + INT8 + gzip
SPARSE_INT8_DROP_MAX = 1.5  # points


def _artifact_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    from device_agents.agent import load_model

    m = load_model(str(path), threads=1)
    preds = m.run_float([x])[0]  # the model's fixed batch of 1 is filled sample by sample
    return float(np.mean(np.argmax(preds, axis=-1) == y))


def _plain_interpreter(path: Path):
    """LiteRT without its default delegate (XNNPACK): the built-in kernels, which read the
    sparse tensor encoding that XNNPACK may refuse."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path), num_threads=1,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def _feed(it, x1: np.ndarray) -> np.ndarray:
    d = it.get_input_details()[0]
    if np.dtype(d["dtype"]) == np.float32:
        return x1.astype(np.float32)
    scale, zero = d["quantization"]
    info = np.iinfo(d["dtype"])
    return np.clip(np.round(x1 / scale + zero), info.min, info.max).astype(d["dtype"])


def _plain_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    it = _plain_interpreter(path)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    hits = 0
    for i in range(len(x)):
        it.set_tensor(inp["index"], _feed(it, x[i:i + 1]))
        it.invoke()
        hits += int(np.argmax(it.get_tensor(out["index"])) == y[i])
    return hits / len(x)


def _plain_latency(paths: dict, x1: np.ndarray, rounds: int, runs: int = 20) -> dict:
    """p50 ms per artifact with the built-in kernels (no XNNPACK), interleaved rounds."""
    its = {}
    for name, path in paths.items():
        it = _plain_interpreter(path)
        it.set_tensor(it.get_input_details()[0]["index"], _feed(it, x1))
        it.invoke()
        its[name] = it
    samples = {name: [] for name in paths}
    names = list(paths)
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            for _ in range(runs):
                t0 = time.perf_counter_ns()
                its[name].invoke()
                samples[name].append(time.perf_counter_ns() - t0)
    return {n: float(np.percentile(np.asarray(v) / 1e6, 50)) for n, v in samples.items()}


def _convert(path: Path, targets, calib: Path, evalf: Path, out: Path, **options) -> dict:
    """edgekit's conversion with the fidelity gate opened (like bench_convert): a compressed
    model that loses accuracy in INT8 is still measured, and its drop shows in the table."""
    from converters import ConvertOptions
    from edgekit.api import convert

    with bc.quiet():
        arts = convert(path, targets, calibration=calib, eval=evalf, out=out,
                       options=ConvertOptions(max_accuracy_drop=100.0, **options))
    return {a.target: Path(a.path) for a in arts}


def _copy(model):
    import keras

    m = keras.models.clone_model(model)
    m.set_weights(model.get_weights())
    return m


def _folder(work: Path, name: str) -> Path:
    return work / name.replace(" ", "_").replace("%", "").replace("=", "")


def _reused(work: Path, name: str, args):
    """A model trained by an earlier run into the same ``--out`` (with ``--reuse``)."""
    import keras

    folder = _folder(work, name)
    if not (args.reuse and (folder / "model.keras").is_file() and (folder / "info.json").is_file()):
        return None
    return (name, keras.saving.load_model(folder / "model.keras", safe_mode=True),
            json.loads((folder / "info.json").read_text()))


def techniques(base, args, data, work: Path):
    """(name, compressed Keras model, info) per technique; each starts from ``base``."""
    from converters.clustering import ClusterSpec, cluster_copy
    from converters.lottery import LotterySpec, lottery_ticket, random_reinit_control
    from converters.rigl import RigLSpec, rigl
    from converters.sparsity import SparsitySpec, kernels_for, sparsify
    from converters.train_loop import LoopSpec

    x, y = data
    mag = f"magnitude {round(100 * args.magnitude_sparsity)}%" + \
        ("" if args.pattern == "unstructured" else f" {args.pattern}")
    combo = f"{mag} + cluster k={args.combo_clusters}"
    control = "lottery 80% random re-init"
    names = ["cluster k=16", mag, combo] + (["lottery 80%", control] if args.lottery else []) + \
        ["rigl 90%"]
    if args.only:
        keys = {"cluster k=16": "cluster", mag: "magnitude", combo: "combo", control: "lottery"}
        names = [n for n in names if keys.get(n, n.split()[0]) in args.only]
    done = {n: _reused(work, n, args) for n in names}
    if combo in names and mag not in names:  # the combination starts from the sparse model
        done[mag] = _reused(work, mag, argparse.Namespace(reuse=True))
        if done[mag] is None:
            names.insert(names.index(combo), mag)

    def fresh():
        return _copy(base), time.perf_counter()

    if "cluster k=16" not in names:
        pass
    elif done["cluster k=16"]:
        yield done["cluster k=16"]
    else:
        t0 = time.perf_counter()
        m, rep = cluster_copy(base, ClusterSpec(16, fold_batchnorm=args.fold_bn), data=(x, y),
                              loop_spec=LoopSpec(epochs=args.epochs, learning_rate=args.cluster_lr))
        yield "cluster k=16", m, {"seconds": time.perf_counter() - t0, "epochs": args.epochs,
                                  "lr": args.cluster_lr,
                                  "batchnorm_folded": len(rep["batchnorm_folded"])}
    if mag not in names:
        pass
    elif done[mag]:
        yield done[mag]
    else:
        m, t0 = fresh()
        rep = sparsify(m, SparsitySpec(sparsity=args.magnitude_sparsity, frequency=10,
                                       pattern=args.pattern,
                                       keep_sensitive=not args.prune_sensitive),
                       data=(x, y), epochs=args.epochs, learning_rate=args.lr)
        done[mag] = (mag, m, {"seconds": time.perf_counter() - t0, "epochs": args.epochs,
                              "lr": args.lr, "kept_dense": len(rep["kept_dense"]),
                              "sparsity_all_kernels": rep["sparsity_all_kernels"]})
        yield done[mag]
    if combo not in names:
        pass
    elif done[combo]:
        yield done[combo]
    else:
        # Sparsity, then weight sharing over the surviving weights (zeros stay zeros): the
        # file's nonzero weights take k values, which gzip codes in fewer bits than 255.
        sparse = done[mag][1]
        t0 = time.perf_counter()
        m, rep = cluster_copy(sparse, ClusterSpec(args.combo_clusters, preserve_sparsity=True,
                                                  fold_batchnorm=args.fold_bn),
                              data=(x, y), loop_spec=LoopSpec(epochs=args.combo_epochs,
                                                              learning_rate=args.cluster_lr))
        yield combo, m, {"seconds": time.perf_counter() - t0, "epochs": args.combo_epochs,
                         "lr": args.cluster_lr, "from": mag,
                         "batchnorm_folded": len(rep["batchnorm_folded"])}
    spec = LotterySpec(sparsity=0.8, rounds=args.rounds, rewind_epoch=1,
                       epochs=args.lottery_epochs, learning_rate=args.lr,
                       keep_sensitive=args.sparse_keep_sensitive)
    ticket = masks = None
    if "lottery 80%" not in names:
        pass
    elif done["lottery 80%"]:
        ticket = done["lottery 80%"][1]
        yield done["lottery 80%"]
    else:
        ticket, t0 = fresh()
        _, masks = lottery_ticket(ticket, spec, x, y)
        yield "lottery 80%", ticket, {"seconds": time.perf_counter() - t0,
                                      "epochs": f"{args.lottery_epochs} + {args.rounds} rounds "
                                                f"x {args.lottery_epochs - 1}", "lr": args.lr,
                                      "keep_sensitive": args.sparse_keep_sensitive}
    if control not in names:
        pass
    elif done[control]:
        yield done[control]
    elif ticket is not None:
        # The paper's control: the ticket's mask on fresh random weights, trained as long as
        # one round (a reused ticket's mask is where its kernels are nonzero).
        if masks is None:
            masks = {v.path: (np.asarray(v.numpy()) != 0).astype(np.float32)
                     for _, v in kernels_for(ticket, spec)}
        t0 = time.perf_counter()
        c = random_reinit_control(ticket, masks, spec, x, y)
        yield control, c, {"seconds": time.perf_counter() - t0,
                           "epochs": args.lottery_epochs - 1, "lr": args.lr}
    if "rigl 90%" not in names:
        pass
    elif done["rigl 90%"]:
        yield done["rigl 90%"]
    else:
        m, t0 = fresh()
        rigl(m, RigLSpec(sparsity=0.9, keep_sensitive=args.sparse_keep_sensitive), x, y,
             LoopSpec(epochs=args.rigl_epochs or args.epochs, learning_rate=args.lr))
        yield "rigl 90%", m, {"seconds": time.perf_counter() - t0,
                              "epochs": args.rigl_epochs or args.epochs, "lr": args.lr,
                              "keep_sensitive": args.sparse_keep_sensitive}


def run(args) -> dict:
    import keras

    from converters.tflite_weights import convert_sparse

    cfg = bc.MOBILENET
    model_path, _ = bc.trained_model(cfg, args.cache, retrain=False)
    calib, evalf = bc.data_files(cfg, args.cache)
    x_train, y_train = bc.images(cfg, "train")
    x_eval, y_eval = bc.images(cfg, "eval")
    x_cal, _ = bc.images(cfg, "calibration")
    work = Path(args.out or tempfile.mkdtemp(prefix="bench-compression-"))
    work.mkdir(parents=True, exist_ok=True)
    base = keras.saving.load_model(model_path, safe_mode=True)
    rows = {}
    arts = _convert(model_path, ["tflite-fp32", "tflite-int8"], calib, evalf, work / "reference")
    rows["reference fp32"] = {"path": arts["tflite-fp32"], "technique": "reference"}
    rows["reference int8"] = {"path": arts["tflite-int8"], "technique": "reference"}
    if args.per_tensor:
        pt = _convert(model_path, ["tflite-int8"], calib, evalf, work / "reference" / "per-tensor",
                      per_channel=False)
        rows["reference int8 per-tensor"] = {"path": pt["tflite-int8"], "technique": "reference"}
    for name, model, info in techniques(base, args, (x_train, y_train), work):
        folder = _folder(work, name)
        folder.mkdir(exist_ok=True)
        kpath = folder / "model.keras"
        model.save(kpath)
        (folder / "info.json").write_text(json.dumps(info))
        arts = _convert(kpath, ["tflite-fp32", "tflite-int8"], calib, evalf, folder)
        rows[f"{name} fp32"] = {"path": arts["tflite-fp32"], "technique": name, **info}
        rows[f"{name} int8"] = {"path": arts["tflite-int8"], "technique": name, **info}
        if args.per_tensor:  # one scale per weight tensor: a layer's k values stay k values
            pt = _convert(kpath, ["tflite-int8"], calib, evalf, folder / "per-tensor",
                          per_channel=False)
            rows[f"{name} int8 per-tensor"] = {"path": pt["tflite-int8"], "technique": name,
                                               **info}
        if "cluster" not in name and "re-init" not in name:
            with bc.quiet():
                sp = convert_sparse(model, folder / "sparse_fp32.tflite")
                sp8 = convert_sparse(model, folder / "sparse_int8.tflite",
                                     representative=x_cal[:200])
            rows[f"{name} fp32 sparse-format"] = {"path": sp, "technique": name, **info}
            rows[f"{name} int8 sparse-format"] = {"path": sp8, "technique": name, **info}
        print(f"{name}: trained in {info['seconds']:.0f} s ({info.get('epochs', '?')} epochs, "
              f"lr {info.get('lr', '?')})", flush=True)
    from converters.tflite_weights import weight_uniques
    from device_agents.agent import AgentModelError

    for name, row in rows.items():
        if "cluster" in name:  # what the artifact stores, per layer and per channel
            ws = weight_uniques(row["path"])
            row["max_unique_per_layer"] = max(w["unique"] for w in ws)
            row["max_unique_per_channel"] = max(w["max_unique_per_channel"] for w in ws)
    for row in rows.values():
        row.update(file_sizes(row["path"]))
        try:
            row["acc"] = _artifact_accuracy(row["path"], x_eval, y_eval)
        except AgentModelError as e:
            # XNNPACK refuses some sparse-encoded ops: say so, and run the built-in kernels.
            row["xnnpack_error"] = str(e).split(": ", 1)[-1].splitlines()[0]
            row["acc"] = _plain_accuracy(row["path"], x_eval, y_eval)
    ok = {k: r["path"] for k, r in rows.items() if "xnnpack_error" not in r}
    lat = bc.interleaved_latency(ok, x_eval[:1], threads=args.threads,
                                 rounds=args.rounds_latency, round_budget_s=args.round_budget)
    for name, row in rows.items():
        row["p50_ms"] = lat[name]["p50_ms"] if name in lat else None
    # Sparse encoding vs dense, both on LiteRT's built-in kernels (no XNNPACK), side by side.
    pairs = {}
    for name in rows:
        if name.endswith("sparse-format"):
            pairs[name] = rows[name]["path"]
            pairs[name.replace(" sparse-format", "")] = rows[name.replace(" sparse-format", "")][
                "path"]
    plain = _plain_latency(pairs, x_eval[:1], rounds=args.rounds_latency)
    for name, ms in plain.items():
        rows[name]["p50_plain_ms"] = ms
    return {"rows": rows, "epochs": args.epochs, "work": str(work)}


def table(result: dict) -> str:
    rows = result["rows"]
    b = rows["reference fp32"]
    head = ("| artifact | acc % | Δacc (pts) | bytes× | gzip× | zstd× | KiB | gzip KiB | p50 ms "
            "| ×latency | p50 ms built-in kernels |")
    lines = [head, "|" + "---|" * 11]
    for name, r in rows.items():
        lat = ("XNNPACK refused" if r["p50_ms"] is None else
               f"{r['p50_ms']:.2f} | {r['p50_ms'] / b['p50_ms']:.2f}")
        lat = lat if r["p50_ms"] is not None else lat + " | -"
        plain = f"{r['p50_plain_ms']:.2f}" if r.get("p50_plain_ms") else ""
        lines.append(
            f"| {name} | {100 * r['acc']:.2f} | {100 * (r['acc'] - b['acc']):+.2f} | "
            f"{r['bytes'] / b['bytes']:.3f} | {r['gzip_bytes'] / b['bytes']:.3f} | "
            f"{r['zstd_bytes'] / b['bytes']:.3f} | {r['bytes'] / 1024:.0f} | "
            f"{r['gzip_bytes'] / 1024:.0f} | {lat} | {plain} |")
    return "\n".join(lines)


def checks(result: dict) -> list:
    rows = result["rows"]
    b = rows["reference fp32"]
    items = []
    for prec in ("fp32", "int8", "int8 per-tensor"):
        c = rows.get(f"cluster k=16 {prec}")
        if c is not None:
            items += [(f"cluster k=16 {prec} + gzip: size", c["gzip_bytes"] / b["bytes"],
                       CLUSTER_GZIP_MAX, "x"),
                      (f"cluster k=16 {prec}: accuracy drop", 100 * (b["acc"] - c["acc"]),
                       CLUSTER_DROP_MAX, " pts")]
    for name, s in rows.items():  # the target is for 80%; other levels are checked alike
        if name.startswith("magnitude") and " int8" in name and "sparse-format" not in name:
            what = name[len("magnitude "):].replace(" int8", " + INT8", 1)
            items += [(f"{what} + gzip: size", s["gzip_bytes"] / b["bytes"],
                       SPARSE_INT8_GZIP_MAX, "x"),
                      (f"{what}: accuracy drop", 100 * (b["acc"] - s["acc"]),
                       SPARSE_INT8_DROP_MAX, " pts")]
    out = [f"{'PASS' if v <= lim else 'FAIL'}  {what}: {v:.3f}{unit} (target <= {lim}{unit})"
           for what, v, lim, unit in items]
    for name, r in rows.items():
        if "max_unique_per_layer" in r:
            out.append(f"note  {name}: weights in the artifact hold at most "
                       f"{r['max_unique_per_layer']} distinct values per layer, "
                       f"{r['max_unique_per_channel']} per output channel")
        if name.endswith("sparse-format"):
            dense = rows[name.replace(" sparse-format", "")]
            ratio = r["p50_plain_ms"] / dense["p50_plain_ms"]
            xnn = (f"XNNPACK refused it ({r['xnnpack_error']})" if "xnnpack_error" in r else
                   f"with XNNPACK {r['p50_ms'] / dense['p50_ms']:.2f}x of the dense file")
            out.append(f"note  {name}: {r['bytes'] / dense['bytes']:.2f}x the dense-format file; "
                       f"built-in kernels {ratio:.2f}x its latency "
                       f"({'faster' if ratio < 0.95 else 'NOT faster'} on this host); {xnn}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning/training epochs per technique")
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate (sparsity techniques)")
    p.add_argument("--cluster-lr", type=float, default=3e-4, help="centroid learning rate")
    p.add_argument("--no-lottery", dest="lottery", action="store_false",
                   help="skip the lottery ticket (its rounds cost the most)")
    p.add_argument("--rounds", type=int, default=2, help="lottery rounds")
    p.add_argument("--lottery-epochs", type=int, default=3, help="lottery dense-run epochs")
    p.add_argument("--only", nargs="+", choices=["cluster", "magnitude", "combo", "lottery",
                                                  "rigl"],
                   help="run only these techniques (default: all)")
    p.add_argument("--magnitude-sparsity", type=float, default=0.8,
                   help="magnitude pruning's target (over the kernels it prunes)")
    p.add_argument("--pattern", choices=["unstructured", "block4"], default="unstructured",
                   help="magnitude pruning's pattern (block4: blocks of 4 input channels)")
    p.add_argument("--combo-clusters", type=int, default=16,
                   help="combo: clusters per layer over the magnitude model's surviving weights")
    p.add_argument("--combo-epochs", type=int, default=3, help="combo: centroid fine-tuning epochs")
    p.add_argument("--no-per-tensor", dest="per_tensor", action="store_false",
                   help="skip the per-tensor tflite-int8 rows")
    p.add_argument("--rigl-epochs", type=int, default=None, help="RigL epochs (default --epochs)")
    p.add_argument("--sparse-keep-sensitive", action="store_true",
                   help="lottery/RigL: keep the first conv and depthwise kernels dense")
    p.add_argument("--prune-sensitive", action="store_true",
                   help="magnitude: prune the first conv and depthwise kernels too (the first run)")
    p.add_argument("--no-fold-bn", dest="fold_bn", action="store_false",
                   help="cluster without folding BatchNorm first (the 2026-11-23 first run)")
    p.add_argument("--cache", type=Path, default=Path("~/.cache/edgekit-bench").expanduser())
    p.add_argument("--out", type=Path, help="keep models and artifacts here")
    p.add_argument("--reuse", action="store_true",
                   help="reuse the compressed models an earlier run left in --out")
    p.add_argument("--threads", type=int, default=1, help="runtime threads for latency")
    p.add_argument("--rounds-latency", type=int, default=10, help="interleaved latency rounds")
    p.add_argument("--round-budget", type=float, default=0.2, help="seconds per model per round")
    p.add_argument("--json", type=Path, help="write the raw numbers here")
    args = p.parse_args(argv)
    args.cache = args.cache.expanduser()
    t0 = time.perf_counter()
    result = run(args)
    print()
    print(f"MobileNetV2 alpha 0.35 96x96, digits; training per technique as printed above; "
          f"ratios vs the reference tflite-fp32 file; latency: LiteRT, {args.threads} thread, "
          f"batch 1, interleaved; total {time.perf_counter() - t0:.0f} s")
    print(table(result))
    print()
    for line in checks(result):
        print(line)
    if args.json:
        rows = {k: {kk: (str(vv) if isinstance(vv, Path) else vv) for kk, vv in v.items()}
                for k, v in result["rows"].items()}
        args.json.write_text(json.dumps({**result, "rows": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

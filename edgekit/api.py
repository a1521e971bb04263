"""The Python API that mirrors `edgekit convert` and `edgekit inspect`."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import numpy as np

from converters.options import DEFAULT_CALIBRATION_SAMPLES, ConvertOptions
from converters.registry import TargetInfo, check_target_for_source, get_target
from converters.sources import detect_format, load_source
from edgekit import verify
from edgekit.artifact import Artifact, write_manifest
from edgekit.compression_record import with_compression
from edgekit.errors import (
    CalibrationError,
    ConversionError,
    EdgekitError,
    InputError,
    ModelLoadError,
    VerificationError,
)
from edgekit.fsutil import atomic_output, sha256_file
from edgekit.gate import QUANTIZED, gate_for
from edgekit.spec import Quantization, TensorSpec

log = logging.getLogger(__name__)

DataArg = Union[str, os.PathLike, "object", None]  # a path, a calibration_data.Dataset, or None


def convert(source, targets: Iterable[Union[str, TargetInfo]], *, calibration: DataArg = None,
            eval: DataArg = None, out="build", options: Optional[ConvertOptions] = None,
            on_event: Optional[Callable[[str, dict], None]] = None, for_device=None,
            for_cpu: Optional[str] = None, connect=None, inventory=None) -> list[Artifact]:
    """Convert a model to each target, verify every artifact against the source, write the manifest.

    Args:
        source: model path (``.keras``, ``.h5``, SavedModel folder, ``.onnx``, ``.tflite``).
        targets: target names (see ``edgekit targets``) or ``TargetInfo`` values.
        calibration: calibration data (path or ``calibration_data.Dataset``); needed by int8 targets.
        eval: evaluation data with optional labels; fidelity is measured on it (else on the
            calibration data, else on seeded random inputs).
        out: output folder; artifacts are ``<model>.<target>.<ext>`` plus ``manifest.json``.
        options: conversion options; defaults are ``ConvertOptions()``.
        on_event: called with ``("start"|"done"|"failed", info)`` per target (progress bars).
        for_device: the device the artifacts are for (``local``, an inventory or ``~/.ssh/config``
            name, ``user@host[:port]``, or a DeviceSpec): it is probed, and the layout fields
            left ``None`` in ``options`` (onnx-int8's activation type, 7-bit weights, operator
            format) are chosen for its CPU (``converters.cpu_layouts``). Default: this machine.
        for_cpu: instead of a device, a CPU class (``converters.cpu_layouts.CpuClass`` values)
            or a ``converters.cpu_layouts.Target`` already probed.
        connect: SSH options (``ConnectOptions``) for probing ``for_device``.
        inventory: a devices.toml to resolve ``for_device`` from.

    Returns:
        The artifacts, in target order.

    Raises:
        InputError (and subclasses): bad model, target, data or output folder; nothing is written.
        ConversionError: one or more targets failed; ``.artifacts`` holds those that succeeded
            (already in the manifest), ``.failures`` maps target → message and ``.errors``
            target → exception (chained to the tool's own error).
    """
    options = options or ConvertOptions()
    emit = on_event or (lambda event, info: None)
    source_path = Path(source)
    if not source_path.exists():
        raise ModelLoadError(f"model not found: {source_path}")
    infos = _resolve_targets(targets)
    fmt = detect_format(source_path)
    for t in infos:
        check_target_for_source(t, "h5" if fmt == "h5" else fmt)
    cpu = cpu_target(for_device, for_cpu, connect, inventory)
    created = _missing_folders(out)
    out = _prepare_out(out)
    try:
        prep = _prepare(source_path, infos, calibration, eval, options)
    except BaseException:
        _remove_empty(created)
        raise

    stem = source_path.stem if source_path.is_file() else source_path.name
    artifacts, failures, errors = [], {}, {}
    with _SigintWatch() as interrupt:
        for info in infos:
            emit("start", {"target": info.name})
            try:
                final = out / f"{stem}.{info.name}.{info.format}"
                art = _run_target(info, prep, options, final, cpu)
            except (ConversionError, VerificationError) as e:
                if interrupt.seen:
                    # Ctrl-C inside TensorFlow surfaces as a SystemError that the pass wraps: an
                    # interrupt, not a failed target (and TF is unusable for the next one).
                    raise KeyboardInterrupt from e
                failures[info.name] = str(e)
                errors[info.name] = e  # with its chained cause, for --debug
                log.debug("target %s failed", info.name, exc_info=True)
                emit("failed", {"target": info.name, "error": str(e)})
                continue
            artifacts.append(art)
            emit("done", {"target": info.name, "artifact": art})
            if interrupt.seen:  # TF may swallow the KeyboardInterrupt and finish the pass anyway
                raise KeyboardInterrupt
    if artifacts:
        write_manifest(out, artifacts)
    if failures:
        _remove_empty(created)  # every target failed: leave no empty folder behind
        err = ConversionError(f"{len(failures)} of {len(infos)} targets failed: " + "; ".join(
            f"{name}: {msg}" for name, msg in failures.items()))
        err.artifacts, err.failures, err.errors = artifacts, failures, errors
        raise err
    return artifacts


class _SigintWatch:
    """Notes SIGINT while targets run, then lets the previous handler act as usual.

    TensorFlow turns a KeyboardInterrupt raised inside its C++ calls into an unrelated
    ``SystemError``, so the interrupt would otherwise read as a failed target. Only the main
    thread can install signal handlers; elsewhere this watches nothing.
    """

    def __init__(self):
        self.seen = False
        self._installed = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame):
        self.seen = True
        if callable(self._previous):
            self._previous(signum, frame)
        elif self._previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._installed:
            previous = self._previous if self._previous is not None else signal.SIG_DFL
            signal.signal(signal.SIGINT, previous)
        return False


@dataclass
class _Prepared:
    """The loaded source, its data, and its outputs on the verification inputs."""

    src: object
    calib: object
    feeds: dict
    labels: object
    reference: list
    origin: str  # eval | calibration-holdout | calibration | synthetic


def _prepare(source_path: Path, infos, calibration, eval, options) -> _Prepared:
    """Load the source and data, and run the source once on the verification inputs.

    Without ``eval`` data, a part of the calibration data is held apart from the quantizer and
    verification runs on it (``HOLDOUT_*``); with neither, on seeded made-up inputs.
    """
    src = load_source(source_path, input_shapes=options.input_shapes, allow_unsafe=options.allow_unsafe)
    needs_calib = [t.name for t in infos if t.needs_calibration]
    evalset = _load_data(eval, src, "eval", options) if eval is not None else None
    holdout = None
    if calibration is not None and evalset is None:
        calib, holdout = _load_calibration_with_holdout(calibration, src, options)
    else:
        calib = _load_data(calibration, src, "calibration", options) if calibration is not None else None
    if needs_calib and calib is None:
        raise CalibrationError(
            f"target(s) {', '.join(needs_calib)} need calibration data: pass --calibration FILE "
            f"(.npz/.npy/.csv or an image folder; e.g. the shipped calibration_data/digits)")
    feeds, labels, origin = _verification_data(src, evalset, calib, holdout)
    names = [t.name for t in src.inputs]
    reference = verify.run_batched(lambda xs: src.predict(dict(zip(names, xs, strict=True))), feeds, names,
                                   chunk=_source_chunk(src))
    return _Prepared(src, calib, feeds, labels, reference, origin)


# Without --eval, verification runs on the calibration samples the quantizer does not use (it
# takes up to DEFAULT_CALIBRATION_SAMPLES): judging an artifact on the very samples that set its
# int8 ranges flatters it. The quantizer's own samples stay exactly what they would be with --eval,
# so the artifact's bytes do not depend on whether --eval was given. Fewer than HOLDOUT_MIN left
# over: the calibration samples themselves are used, and the record says so.
HOLDOUT_MIN = 8
HOLDOUT_MAX = 1000


def _load_calibration_with_holdout(data, src, options):
    """(calibration set, held-out set or None) from one calibration source."""
    from calibration_data import Dataset, load_dataset
    from calibration_data.dataset import sample_indices

    if not isinstance(data, Dataset) and Path(data).is_dir():  # image folders are read sampled
        return _load_data(data, src, "calibration", options), None
    full = data if isinstance(data, Dataset) else load_dataset(data, src.inputs, role="calibration")
    explicit = options.calibration_samples is not None
    n = options.calibration_samples if explicit else DEFAULT_CALIBRATION_SAMPLES
    calib = full.take(n, strict=explicit)
    if len(full) - n < HOLDOUT_MIN:
        return calib, None
    used = sample_indices(len(full), n, full.labels, 0)  # the samples take() kept
    rest = np.setdiff1d(np.arange(len(full)), used)[:HOLDOUT_MAX]
    return calib, full.subset(rest)


def diagnose(source, target: str = "onnx-int8", *, calibration=None, eval=None,
             options: Optional[ConvertOptions] = None, device=None, connect=None,
             inventory=None, divergence=None) -> dict:
    """Per-layer sensitivity of a quantized target: which ops add the most error.

    Quantizes the whole model once (naive), measures its fidelity, then ranks groups of ops by
    the damage they do (ONNX: the local SQNR of each activation's QDQ pair; TFLite: the measured
    output SQNR when that op group is left in float). With ``device``, also runs the naive
    artifact there and compares its intermediate tensors with this machine's, layer by layer
    (``edgekit.divergence``): where the device's kernels depart from the host's.

    Args:
        device: ``local``, an inventory name, ``user@host[:port]`` or a DeviceSpec.
        connect / inventory: as for :func:`edgekit.bench.benchmark`.
        divergence: ``edgekit.divergence.DivergenceOptions`` (samples, threshold).

    Returns:
        ``{"source", "target", "naive": fidelity dict, "gate": {...}, "gate_misses": [...],
        "ranking": [{"rank", "nodes", "label", "score"}]}``, plus ``"device"`` (see
        ``edgekit.divergence.measure_divergence``) when ``device`` is given.

    Raises:
        InputError: bad model, target or data. ConversionError: the naive conversion failed.
        DeviceError / AgentError: the device could not be reached or its comparison failed.
    """
    import tempfile

    from converters.repair import rank_groups

    options = options or ConvertOptions()
    source_path = Path(source)
    if not source_path.exists():
        raise ModelLoadError(f"model not found: {source_path}")
    info = get_target(target)
    if info.precision not in QUANTIZED or info.name.endswith("dynamic") or info.name.endswith("16x8"):
        raise InputError(f"diagnose works on tflite-int8 and onnx-int8, not {target!r}")
    fmt = detect_format(source_path)
    check_target_for_source(info, fmt)
    if info.name == "onnx-int8":  # the layout convert would choose first on this machine
        from converters import cpu_layouts

        first = cpu_layouts.layouts_for(options, cpu_layouts.this_machine())[0]
        options = dataclasses.replace(options, **first.options())
    prep = _prepare(source_path, [info], calibration, eval, options)
    src, calib = prep.src, prep.calib
    with tempfile.TemporaryDirectory(prefix="edgekit-diagnose-") as wd:
        naive = Path(wd) / f"naive.{info.format}"
        with _quiet_tools():
            info.load()(src, options, calib, naive)

            def evaluate(path):
                return _evaluate(info, path, prep, options)

            fid = evaluate(naive)[0]
            ranking = rank_groups(info, src, options, calib, naive, evaluate)
        on_device = None
        if device is not None:
            from converters.onnx_common import float_model
            from edgekit.divergence import measure_divergence

            fm = float_model(src, options)[0] if info.format == "onnx" else None
            with _quiet_tools():  # LiteRT's C++ INFO lines on the host
                on_device = measure_divergence(naive, prep.feeds, device, float_model=fm,
                                               options=divergence, connect=connect,
                                               inventory=inventory)
            on_device["artifact"] = on_device["device_artifact"] = \
                f"naive {info.name} of {source_path.name}"  # its temp path is gone
    gate = _gate(info, fid, options)
    verdict = gate.check(fid)
    report = {"source": str(source_path), "target": info.name, "naive": fid.to_dict(),
              "gate": gate.to_dict(), "gate_misses": verdict.misses,
              "gate_warnings": verdict.warnings,
              "ranking": [{"rank": i, "nodes": g["nodes"], "label": g["label"],
                           "score": float(g["score"])} for i, g in enumerate(ranking, 1)]}
    if on_device is not None:
        report["device"] = on_device
    return report


def evaluate_artifact(source, artifact, *, calibration=None, eval=None, task: str = "auto",
                      quantized: bool = True, options: Optional[ConvertOptions] = None) -> dict:
    """Measure any artifact file (one edgekit did not build, e.g. a raw tool's) against its
    source the way ``convert`` does, and judge it with the gate of a quantized (or float) target.

    Args:
        source: the source model path.
        artifact: a ``.tflite`` / ``.onnx`` file computing the same function.
        calibration / eval: as for :func:`convert` (without ``eval``, calibration samples held
            apart from quantization are used, as ``convert`` would).
        task: the outputs' task (``edgekit.fidelity.tasks.Task`` values).
        quantized: judge with the quantized gate (else the near-exact float gate).

    Returns:
        ``{"fidelity": dict, "gate": dict, "gate_misses": [...], "gate_warnings": [...]}``.

    Raises:
        InputError: bad model or data. VerificationError: the artifact does not load or run.
    """
    from converters.registry import TargetInfo

    options = dataclasses.replace(options or ConvertOptions(), task=task)
    source_path, path = Path(source), Path(artifact)
    for p in (source_path, path):
        if not p.exists():
            raise ModelLoadError(f"model not found: {p}")
    prep = _prepare(source_path, [], calibration, eval, options)
    fmt = path.suffix.lstrip(".")
    info = TargetInfo(name=f"{fmt}-given", format=fmt, precision="int8" if quantized else "fp32",
                      sources=frozenset(), needs_calibration=False, requires=(), options=(),
                      module="", summary="a given artifact")
    fid = _evaluate(info, path, prep, options)[0]
    gate = _gate(info, fid, options)
    verdict = gate.check(fid)
    fid.warnings = list(fid.warnings) + verdict.warnings
    return {"fidelity": fid.to_dict(), "gate": gate.to_dict(), "gate_misses": verdict.misses,
            "gate_warnings": verdict.warnings}


def _source_chunk(src) -> int:
    """Samples per source.predict call: a batch pinned by --input-shape (e.g. x=1,3,48,192) is
    the only batch the pinned source model accepts."""
    fixed = {t.shape[0] for t in src.inputs if t.shape and t.shape[0] is not None}
    return fixed.pop() if len(fixed) == 1 else 64


def cpu_target(for_device=None, for_cpu: Optional[str] = None, connect=None, inventory=None):
    """The CPU a conversion is chosen for (``converters.cpu_layouts.Target``).

    Raises:
        InputError: both given, or an unknown CPU class.
        DeviceError: the device cannot be reached or probed.
    """
    from converters import cpu_layouts

    if for_device is not None and for_cpu is not None:
        raise InputError("give --for (a device) or --for-cpu (a CPU class), not both")
    if isinstance(for_cpu, cpu_layouts.Target):
        return for_cpu
    if for_cpu is not None:
        try:
            return cpu_layouts.target_for_class(str(for_cpu))
        except ValueError:
            known = ", ".join(c.value for c in cpu_layouts.CpuClass)
            raise InputError(f"unknown CPU class {for_cpu!r}; expected one of: {known}") from None
    if for_device is None:
        return cpu_layouts.this_machine()
    from edgekit.bench import resolve_devices
    from edgekit.devices.device import Device

    spec = resolve_devices([for_device], inventory,
                           connect.ssh_config if connect is not None else None)[0]
    if spec.is_local:
        return cpu_layouts.this_machine()
    with Device.open(spec, connect) as dev:
        doc = dev.probe()
    return cpu_layouts.target_from_probe(doc, f"device {spec.name}")


class _LayoutMissed(Exception):
    """A CPU-chosen onnx-int8 layout missed the gate and another one is left to try."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


def _run_target(info, prep: _Prepared, options, final: Path, cpu=None) -> Artifact:
    """Build and verify one target; onnx-int8's layout fields left ``None`` are chosen for
    ``cpu``, falling back to its next layout when one misses the gate (the cause is recorded)."""
    if info.name != "onnx-int8":
        art = _build_target(info, prep, options, final)
        if cpu is not None and info.name == "tflite-fp16":
            # the same file either way; what differs is how the CPU runs it
            art.pass_config["for_cpu"] = {**cpu.to_dict(), "runs_as": (
                "fp16 arithmetic (XNNPACK's fp16 inference)" if cpu.fp16_arithmetic else
                "fp32 arithmetic: the fp16 weights are dequantized at load, so tflite-int8 is "
                "this CPU's fast TFLite artifact")}
        return art
    from converters import cpu_layouts

    layouts = cpu_layouts.layouts_for(options, cpu)
    chosen_for_cpu = cpu is not None and bool(cpu_layouts.unset_layout_fields(options))
    # For another CPU, this machine's fused int8 kernels prove nothing about the device's (x86
    # without VNNI saturates where ARM's SDOT does not): verify the exact int8 arithmetic.
    reference = cpu is not None and cpu.cpu_class is not cpu_layouts.this_machine().cpu_class
    fell_back = []

    def build(lay, may_fall_back):
        art = _build_target(info, prep, dataclasses.replace(options, **lay.options()), final,
                            may_fall_back=may_fall_back, reference_int8=reference)
        if chosen_for_cpu:
            art.pass_config["layout"] = {**cpu.to_dict(), "chosen": lay.label,
                                         "fastest": layouts[0].label, "why": cpu.choice.why,
                                         "fell_back": fell_back,
                                         "verified_with": "reference int8 arithmetic"
                                         if reference else "this machine's int8 kernels"}
        return art

    if chosen_for_cpu and len(layouts) > 1:
        for lay in layouts:
            try:
                return build(lay, may_fall_back=True)
            except _LayoutMissed as e:
                fell_back.append({"layout": lay.label, "cause": e.cause})
                log.info("%s: %s missed the gate (%s)", info.name, lay.label, e.cause)
        # None meets the gate as it is: the fastest one goes on to the repair (or the refusal),
        # which starts from the CPU's own layout rather than from its last fallback.
        tried = "; ".join(f"{f['layout']}: {f['cause']}" for f in fell_back)
        try:
            return build(layouts[0], may_fall_back=False)
        except VerificationError as e:
            raise VerificationError(f"{e}; every layout for {cpu.cpu_class.value} missed "
                                    f"({tried})") from e
    return build(layouts[0], may_fall_back=False)


def _build_target(info, prep: _Prepared, options, final: Path, may_fall_back=False,
                  reference_int8=False) -> Artifact:
    src, calib = prep.src, prep.calib
    started = time.perf_counter()
    with atomic_output(final) as tmp:
        with _quiet_tools():
            result = info.load()(src, options, calib, tmp)
        seconds = time.perf_counter() - started

        def evaluate(path):
            return _evaluate(info, path, prep, options, reference_int8)

        fid, loaded_io, runtime = evaluate(tmp)
        gate = _gate(info, fid, options)
        verdict = gate.check(fid)
        if may_fall_back and verdict.misses:
            raise _LayoutMissed("; ".join(verdict.misses))
        repaired = False
        if options.repair and info.precision in QUANTIZED and (verdict.misses or verdict.uncertain):
            from converters.repair import repair

            with _quiet_tools():
                result, fid, loaded_io = repair(info, src, options, calib, tmp, evaluate, gate, fid)
            verdict = gate.check(fid)
            repaired = bool(result.repair)
        if verdict.misses:
            raise VerificationError(_refusal(info, prep, options, fid, verdict, gate))
        if repaired:
            from edgekit.alternatives import check_repair_stays_quantized

            check_repair_stays_quantized(info, prep, options, tmp, fid, gate)
        fid.warnings = list(fid.warnings) + verdict.warnings
        for w in verdict.warnings:  # recorded in the fidelity; the CLI prints them under its table
            log.info("%s: %s", info.name, w)
        from converters.content import check_artifact

        try:  # refuses a file whose precision is not its target's
            content = check_artifact(info, tmp)
        except VerificationError as e:
            from edgekit.alternatives import alternative_text

            alt = alternative_text(info, prep, options)
            raise VerificationError(f"{e}; {alt}" if alt else str(e)) from e
        size, digest = tmp.stat().st_size, sha256_file(tmp)
    config = (result.options or options).subset(info.options)
    config["gate"] = gate.to_dict()
    config["gate"]["task"] = options.task
    if result.repair:
        config["repair"] = result.repair
    if result.notes:
        config["notes"] = result.notes
    calib_desc = None
    if info.needs_calibration:
        calib_desc = {**calib.describe(), "method": result.method}
        calib_desc["path"] = str(calib_desc["path"]) if calib_desc.get("path") else None
    return Artifact(
        path=final, target=info.name, format=info.format, precision=info.precision, bytes=size,
        sha256=digest, inputs=loaded_io[0], outputs=loaded_io[1],
        source=with_compression(src.describe()),
        calibration=calib_desc, fidelity=fid, pass_config=config,
        tools={**result.tools, **runtime}, float_ops=result.float_ops, conversion_seconds=seconds,
        content=content.to_dict() if content else None)


def _evaluate(info, path, prep: _Prepared, options, reference_int8=False):
    """Load an artifact file and measure its fidelity; returns (fidelity, (inputs, outputs), runtime).

    ``reference_int8``: run ONNX Runtime without graph optimizations, so QDQ pairs compute the
    int8 arithmetic exactly (dequantize, float op, quantize) instead of this machine's fused
    int8 kernels, whose saturation another CPU does not share."""
    from device_agents.agent import load_model

    try:
        loaded = load_model(str(path), ort_opt_level="disable" if reference_int8 else "all")
    except Exception as e:
        raise VerificationError(f"the artifact does not load in "
                                f"{_runtime_name(info.format)}: {e}") from e
    fid = verify.fidelity(loaded, prep.src, prep.feeds, prep.reference, prep.labels,
                          task=options.task, data_origin=prep.origin,
                          precision_kind="quantized" if info.precision in QUANTIZED else "float")
    if prep.origin == "calibration":
        fid.warnings.append("verified on the calibration samples themselves (too few to hold "
                            "any apart): pass --eval with real samples")
    return fid, (_specs(loaded.inputs), _specs(loaded.outputs)), {loaded.runtime: loaded.runtime_version}


def _gate(info, fid, options):
    return gate_for(info.precision, fid, max_accuracy_drop=options.max_accuracy_drop,
                    min_top1_agreement=options.min_top1_agreement, min_sqnr_db=options.min_sqnr_db,
                    min_task_metric=options.min_task_metric)


def _refusal(info, prep, options, fid, verdict, gate) -> str:
    """The one-line reason an artifact is refused, with what to do (and, for a quantized target,
    a measured alternative)."""
    msg = f"missed the fidelity gate on {fid.samples} {_origin_words(prep.origin)}: " + "; ".join(
        verdict.misses)
    if info.precision in QUANTIZED:
        if not options.repair:
            msg += "; try --auto-mixed-precision, or see `edgekit diagnose`"
        if info.name == "onnx-int8" and not options.reduce_range:
            from converters.onnx_common import host_int8_may_saturate

            if host_int8_may_saturate():
                msg += ("; this CPU has AVX2 without VNNI, where ONNX Runtime's int8 kernels "
                        "saturate: --reduce-range avoids it")
        from edgekit.alternatives import alternative_text

        alt = alternative_text(info, prep, options)
        if alt:
            msg += "; " + alt
    return msg


def _origin_words(origin: str) -> str:
    return {"eval": "eval samples", "calibration-holdout": "calibration samples held apart",
            "calibration": "calibration samples", "synthetic": "made-up inputs"}.get(origin, "samples")


@contextlib.contextmanager
def _quiet_tools():
    """Keep converters' prints (Keras export listings, tf2onnx chatter) off stdout, which belongs
    to --json; they are kept in the debug log instead."""
    from edgekit.quiet import captured_native_output

    buf = io.StringIO()  # C++ writes to fd 1/2 (MLIR quantizer, XNNPACK) are captured below that
    with captured_native_output(fds=(1, 2)), contextlib.redirect_stdout(buf), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            if buf.getvalue().strip():
                log.debug("tool output:\n%s", buf.getvalue())


def _specs(items) -> list[TensorSpec]:
    return [TensorSpec(d["name"], tuple(d["shape"]), d["dtype"], Quantization.from_dict(d.get("quantization")))
            for d in items]


def _runtime_name(fmt: str) -> str:
    return {"tflite": "LiteRT", "onnx": "ONNX Runtime", "ort": "ONNX Runtime"}.get(fmt, fmt)


def _resolve_targets(targets) -> list[TargetInfo]:
    if isinstance(targets, str):
        targets = [t for t in targets.split(",") if t.strip()]
    infos = [t if isinstance(t, TargetInfo) else get_target(str(t).strip()) for t in targets]
    if not infos:
        raise InputError("no targets given; see `edgekit targets`")
    seen = set()
    return [t for t in infos if not (t.name in seen or seen.add(t.name))]


def _missing_folders(out) -> list[Path]:
    """The folders ``_prepare_out`` will create for ``out``, deepest first."""
    missing, p = [], Path(out)
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders this run created (deepest first) while they are still empty."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:  # not empty (something was written), or already gone
            return


def _prepare_out(out) -> Path:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".edgekit-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise InputError(f"cannot write to output folder {out}: {e.strerror or e}") from e
    return out


def _load_data(data, src, role: str, options: ConvertOptions):
    from calibration_data import Dataset, load_dataset

    if isinstance(data, Dataset):
        return data
    if role == "calibration":
        explicit = options.calibration_samples is not None
        n = options.calibration_samples if explicit else DEFAULT_CALIBRATION_SAMPLES
        return load_dataset(data, src.inputs, samples=n, strict_samples=explicit, role=role)
    return load_dataset(data, src.inputs, role=role)


def _verification_data(src, evalset, calib, holdout=None):
    """(feeds, labels, origin) for verification: the eval data, else calibration samples held
    apart, else the calibration samples, else seeded made-up inputs."""
    for data, origin in ((evalset, "eval"), (holdout, "calibration-holdout"), (calib, "calibration")):
        if data is not None:
            if origin == "calibration-holdout":
                log.info("no --eval data: verifying on %d calibration samples held apart from the "
                         "quantizer", len(data))
            return data.feeds(), data.labels, origin  # keeps each input's layout
    log.info("no --eval data: verifying on %d seeded made-up inputs; the verdict is advisory "
                "(pass --eval with real samples to judge)", verify.SYNTHETIC_SAMPLES)
    return verify.synthetic_feeds(src.inputs), None, "synthetic"


def inspect_artifact(path) -> dict:
    """I/O names, shapes, dtypes, quantization, op counts, parameter count and size of an artifact.

    Raises:
        ModelLoadError: the file is missing or is not a TFLite/ONNX model.
    """
    from edgekit.inspect import inspect_file

    return inspect_file(Path(path))


__all__ = ["convert", "diagnose", "evaluate_artifact", "inspect_artifact", "EdgekitError"]

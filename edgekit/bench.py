"""``benchmark()``: artifacts x devices. Devices run in parallel (a bounded thread pool), artifacts
one at a time per device so runs do not disturb each other. Every device's results or errors come
back; one failing device never loses the others' results.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from edgekit.artifact import MANIFEST_NAME, Artifact, read_manifest
from edgekit.devices.device import ORT_OPT_LEVELS, Device, RunSettings
from edgekit.devices.lab import is_lab
from edgekit.devices.spec import ConnectOptions, DeviceSpec, load_inventory, parse_device
from edgekit.errors import CalibrationError, DeviceError, InputError
from edgekit.fsutil import sha256_file
from edgekit.results import Result, ResultStore, _now

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".tflite", ".onnx", ".ort")
#: progress(device, message, done, total): called from worker threads.
BenchProgress = Callable[[str, str, int, int], None]


@dataclass(frozen=True)
class BenchOptions(RunSettings):
    """How each artifact is measured (the ``RunSettings`` of every agent run: runs, warmup,
    threads, runtime, timeout, memory_limit_mb, xnnpack, ort_opt_level, per_layer), with the
    data it is measured on and how many devices run at once.

    Attributes:
        eval: .npz with ``x`` (+ ``y`` labels) or arrays per input name: accuracy, and the
            latency input. Without it inputs are generated from the I/O spec.
        reference: .npz of reference outputs (per output name) for output agreement.
        host_reference: with eval data and no ``reference``, run each artifact on this host
            on the eval data and report the device's agreement with it (catches device-side
            numerical divergence: other runtime versions, delegates, CPU kernels).
        parallel: devices benchmarked at once.
    """

    eval: Optional[Path] = None
    reference: Optional[Path] = None
    host_reference: bool = True
    parallel: int = 4

    def run_settings(self) -> RunSettings:
        """The part of these options each agent run is asked to do."""
        return RunSettings(**{f.name: getattr(self, f.name) for f in fields(RunSettings)})

    def validate(self) -> "BenchOptions":
        if self.runs < 1 or self.warmup < 0 or self.threads < 1 or self.parallel < 1:
            raise InputError("runs >= 1, warmup >= 0, threads >= 1 and parallel >= 1 expected, "
                             "got "
                             f"runs={self.runs} warmup={self.warmup} threads={self.threads} "
                             f"parallel={self.parallel}")
        if self.ort_opt_level not in ORT_OPT_LEVELS:
            raise InputError(f"ort_opt_level must be one of {', '.join(ORT_OPT_LEVELS)}, got "
                             f"{self.ort_opt_level!r}")
        for label, p in (("eval", self.eval), ("reference", self.reference)):
            if p is not None and not Path(p).is_file():
                raise InputError(f"--{label} file {p} does not exist")
        return self


@dataclass(frozen=True)
class BenchArtifact:
    """One model file to benchmark, with what the manifest says about it (if any)."""

    path: Path
    sha256: str
    target: Optional[str] = None
    format: Optional[str] = None
    precision: Optional[str] = None
    fidelity: Optional[dict] = None
    #: the model's inputs (TensorSpecs) as the manifest records them; None for a bare file.
    inputs: Optional[tuple] = None

    def describe(self) -> dict:
        return {"path": str(self.path), "name": self.path.name, "sha256": self.sha256,
                "target": self.target, "format": self.format, "precision": self.precision,
                "bytes": self.path.stat().st_size, "fidelity": self.fidelity}


def resolve_artifacts(items) -> list[BenchArtifact]:
    """Artifacts from a build folder (manifest.json), a manifest file, model files or Artifacts.

    Raises:
        InputError: nothing to benchmark, an unknown file type, or a file changed since convert.
    """
    if isinstance(items, (str, Path, Artifact)):
        items = [items]
    out: list[BenchArtifact] = []
    for item in items:
        if isinstance(item, BenchArtifact):
            out.append(item)
            continue
        if isinstance(item, Artifact):
            out.append(_from_manifest_entry(item))
            continue
        path = Path(item)
        if path.is_dir() and (path / MANIFEST_NAME).is_file() or path.name == MANIFEST_NAME:
            out += [_from_manifest_entry(a) for a in read_manifest(path)]
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in MODEL_SUFFIXES)
            if not files:
                raise InputError(f"{path} has no manifest.json and no {'/'.join(MODEL_SUFFIXES)} "
                                 "files: run `edgekit convert` first or pass model files")
            out += [_bare(p) for p in files]
        elif path.is_file():
            out.append(_bare(path))
        else:
            raise InputError(f"{path} does not exist")
    if not out:
        raise InputError("nothing to benchmark: the manifest lists no artifacts")
    return out


def _bare(path: Path) -> BenchArtifact:
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise InputError(f"cannot benchmark {path}: expected a build folder with manifest.json or "
                         f"a {'/'.join(MODEL_SUFFIXES)} file")
    return BenchArtifact(path, sha256_file(path), format=path.suffix.lower().lstrip("."))


def _from_manifest_entry(a: Artifact) -> BenchArtifact:
    path = Path(a.path)
    if not path.is_file():
        raise InputError(f"artifact {path} (target {a.target}) listed in the manifest is missing")
    sha = sha256_file(path)
    if sha != a.sha256:
        raise InputError(f"{path} changed since it was converted (sha256 {sha[:12]} != manifest "
                         f"{a.sha256[:12]}): re-run `edgekit convert`")
    return BenchArtifact(path, sha, a.target, a.format, a.precision,
                         a.fidelity.to_dict() if a.fidelity else None, tuple(a.inputs))


def _input_spec(art: BenchArtifact) -> Optional[list]:
    """The artifact's inputs: from the manifest, else read with a runtime on this host (None
    when this host has none for the format: the agent still checks on the device)."""
    if art.inputs is not None:
        return list(art.inputs)
    from device_agents.agent import AgentModelError, NoRuntimeError, load_model
    from edgekit.spec import TensorSpec

    try:
        model = load_model(str(art.path), threads=1)
    except (AgentModelError, NoRuntimeError, ImportError, OSError, RuntimeError) as e:
        log.debug("cannot read the inputs of %s on this host: %s", art.path.name, e)
        return None
    return [TensorSpec(s["name"], tuple(s["shape"] or ()), s["dtype"]) for s in model.inputs]


def check_eval_data(arts: Sequence[BenchArtifact], path) -> None:
    """Refuse eval data whose arrays do not fit every artifact's inputs, before any device is
    touched: the agent would refuse them on every device (it never resizes an input).

    Raises:
        CalibrationError: naming the artifact, the input, the shapes expected and found.
        InputError: a file that is not a readable .npz.
    """
    import zipfile

    import numpy as np

    from calibration_data.errors import data_error
    from calibration_data.layouts import detect_layout

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise InputError(f"--eval {path} is not a readable .npz: {e}") from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        return  # a bare .npy: the agent says what it expects
    with data:
        arrays: dict[str, np.ndarray] = {}
        for art in arts:
            spec = _input_spec(art)
            if not spec:
                continue
            try:
                for s in spec:
                    key = "x" if "x" in data.files and len(spec) == 1 else s.name
                    if key not in data.files:
                        raise data_error(
                            "eval", path, f"no array for input {s.name!r}: it has "
                            f"{sorted(data.files)}", hint="name arrays after the model inputs "
                            f"{[t.name for t in spec]} (or 'x' for a single input)")
                    if key not in arrays:
                        arrays[key] = data[key]
                    detect_layout(arrays[key], s, role="eval", path=path)
            except CalibrationError as e:
                raise CalibrationError(f"{art.path.name}: {e}") from e


def resolve_devices(devices, inventory=None, ssh_config=None) -> list[DeviceSpec]:
    """DeviceSpecs from names / ``user@host[:port]`` / ``local`` / DeviceSpec values."""
    from edgekit.devices.lab import with_inventory

    inv = load_inventory(inventory) if inventory else None
    specs = []
    for d in devices or ["local"]:
        spec = d if isinstance(d, DeviceSpec) else parse_device(str(d), inv, ssh_config)
        specs.append(with_inventory(spec, inventory))  # labgrid:PLACE: the [labgrid] table
    return specs


def benchmark(artifacts, devices: Sequence[Union[str, DeviceSpec]] = ("local",),
              options: Optional[BenchOptions] = None, *, connect: Optional[ConnectOptions] = None,
              store: Union[ResultStore, str, Path, None] = None, inventory=None,
              progress: Optional[BenchProgress] = None, **overrides) -> list[Result]:
    """Benchmark every artifact on every device.

    Args:
        artifacts: a build folder with manifest.json, a manifest, model files, or Artifacts.
        devices: ``local``, inventory names, ``user@host[:port]``, ssh aliases, or DeviceSpecs.
        options: BenchOptions; keyword ``overrides`` (e.g. ``runs=50``) replace its fields.
        connect: SSH options (host-key policy, ssh_config, timeouts).
        store: where each result is written as soon as it exists (None: not stored): a
            ResultStore, or a database location (a SQLite path or an SQLAlchemy URL such as
            ``postgresql://user@host/db``) opened only once the inputs are checked (so
            a bad device or data file leaves no database behind) and closed at the end.
        inventory: a devices.toml to resolve names from.
        progress: called as (device, message, done, total).

    Returns:
        one Result per (device, artifact), in device then artifact order; failed ones have
        ``ok=False`` and ``error``.

    Raises:
        InputError: bad artifacts, devices or options (before anything runs).
        CalibrationError: eval data that does not fit an artifact's inputs (before anything
            runs).
    """
    known = {f.name for f in fields(BenchOptions)}
    unknown = set(overrides) - known
    if unknown:
        raise InputError(f"unknown benchmark options {sorted(unknown)}; known: {sorted(known)}")
    opts = replace(options or BenchOptions(), **overrides).validate()
    connect = connect or ConnectOptions()
    arts = resolve_artifacts(artifacts)
    specs = resolve_devices(devices, inventory, connect.ssh_config)
    if opts.eval is not None:
        check_eval_data(arts, opts.eval)
    if any(is_lab(s) for s in specs):
        from edgekit.devices.lab.lease import check_places

        check_places(specs, connect)  # an unknown place is bad input, said before anything runs
    if store is None or isinstance(store, ResultStore):
        return _run(arts, specs, opts, connect, store, progress)
    with ResultStore(store) as opened:
        return _run(arts, specs, opts, connect, opened, progress)


def _run(arts, specs, opts: BenchOptions, connect: ConnectOptions,
         store: Optional[ResultStore], progress: Optional[BenchProgress]) -> list[Result]:
    lock = threading.Lock()

    def save(result: Result) -> None:
        if store is not None:
            with lock:
                store.add(result)

    lab = any(is_lab(s) for s in specs)
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp, \
            ThreadPoolExecutor(max_workers=min(opts.parallel, len(specs)),
                               thread_name_prefix="edgekit-bench") as pool:
        refs = _HostReferences(Path(tmp), opts)
        futures = [pool.submit(_bench_device, s, arts, opts, connect, save, progress, refs)
                   for s in specs]
        try:
            return [r for f in futures for r in f.result()]
        except KeyboardInterrupt:
            if lab:  # a device waiting for its labgrid place stops waiting (the pool joins it)
                from edgekit.devices.lab.lease import interrupt_waits

                interrupt_waits()
            raise


class _HostReferences:
    """Outputs of each artifact on this host for the eval data, computed once per bench."""

    def __init__(self, folder: Path, opts: BenchOptions):
        self.folder, self.opts = folder, opts
        self._locks: dict[str, threading.Lock] = {}
        self._done: dict[str, Optional[Path]] = {}
        self._guard = threading.Lock()

    def get(self, art: BenchArtifact) -> Optional[Path]:
        """The reference .npz for ``art`` (None when not wanted or not computable here)."""
        if self.opts.reference is not None:
            return Path(self.opts.reference)
        if not (self.opts.eval and self.opts.host_reference):
            return None
        with self._guard:
            lock = self._locks.setdefault(art.sha256, threading.Lock())
        with lock:
            if art.sha256 not in self._done:
                self._done[art.sha256] = self._compute(art)
            return self._done[art.sha256]

    def _compute(self, art: BenchArtifact) -> Optional[Path]:
        import numpy as np

        from device_agents.agent import (
            AgentModelError,
            NoRuntimeError,
            RunFailed,
            load_model,
            run_eval,
        )

        try:
            model = load_model(art.path, threads=1)
            with np.load(self.opts.eval, allow_pickle=False) as data:
                names = [s["name"] for s in model.inputs]
                feeds = [data["x"]] if "x" in data.files and len(names) == 1 else \
                    [data[n] for n in names]
            outs = run_eval(model, feeds)  # full-shape samples (e.g. a scalar input) run one by one
        except (AgentModelError, NoRuntimeError, RunFailed, KeyError, OSError, ValueError) as e:
            log.warning("no host reference for %s (agreement left out): %s", art.path.name, e)
            return None
        path = self.folder / f"{art.sha256}.npz"
        _save_npz_deterministic(path, {s["name"]: o for s, o in zip(model.outputs, outs, strict=True)})
        return path


def _save_npz_deterministic(path: Path, arrays: dict) -> None:
    """np.savez with fixed zip timestamps, so equal arrays give an equal file (and sha256)."""
    import io
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                        buf.getvalue())


def _settings(opts: BenchOptions, eval_sha: Optional[str]) -> dict:
    reference = ("file" if opts.reference else "host" if eval_sha and opts.host_reference
                 else None)
    out = {"runs": opts.runs, "warmup": opts.warmup, "threads": opts.threads,
           "runtime": opts.runtime, "eval_sha256": eval_sha, "reference": reference,
           "memory_limit_mb": opts.memory_limit_mb}
    # Runtime settings only when not the runtimes' defaults: rows of default runs keep the
    # settings key they had before these settings existed (and still compare with new ones).
    if not opts.xnnpack:
        out["xnnpack"] = False
    if opts.ort_opt_level != "all":
        out["ort_opt_level"] = opts.ort_opt_level
    return out


def _bench_device(spec: DeviceSpec, arts: list[BenchArtifact], opts: BenchOptions,
                  connect: ConnectOptions, save, progress, refs: _HostReferences) -> list[Result]:
    eval_sha = sha256_file(opts.eval) if opts.eval else None
    settings = _settings(opts, eval_sha)
    results: list[Result] = []
    total = len(arts)

    def tell(msg: str) -> None:
        if progress:
            progress(spec.name, msg, len(results), total)

    def fail_rest(error: str, info: Optional[dict]) -> list[Result]:
        for art in arts[len(results):]:
            r = Result(spec.name, art.describe(), settings, False, error, device_info=info)
            save(r)
            results.append(r)
        tell(f"failed: {error}")
        return results

    tell("connecting")
    try:
        device = Device.open(spec, connect, progress=tell)  # labgrid:PLACE: held until closed
    except DeviceError as e:
        log.warning("%s: %s", spec.name, e)
        return fail_rest(str(e), None)
    info = None
    try:
        eval_remote = None
        if opts.eval:
            eval_remote, _ = device.ensure_file(opts.eval, eval_sha, "eval.npz")
        shared_upload = device.upload_bytes  # agent + eval data, charged to the first result
        run = opts.run_settings()
        for art in arts:
            started = _now()
            tell(f"{art.path.name}: uploading")
            before = device.upload_bytes
            remote, _ = device.ensure_file(art.path, art.sha256)
            ref = refs.get(art)
            ref_remote = device.ensure_file(ref, None, "reference.npz")[0] if ref else None
            tell(f"{art.path.name}: running")
            doc = device.run_model(remote, run, eval_remote, ref_remote)
            # The agent's run document carries the device facts (its probe): no extra round trip.
            info = doc.pop("device", None) or info
            if info:
                info["python_used"] = device.python
                device.pin_python(info)
            uploaded = device.upload_bytes - before + shared_upload
            shared_upload = 0
            error = None if doc.get("ok") else _error_line(doc.get("error") or {}, spec.name)
            r = Result(spec.name, art.describe(), settings, bool(doc.get("ok")), error,
                       doc if doc.get("ok") else {"error": doc.get("error")}, info, uploaded,
                       started, _now(), lease=device.lease.info.to_dict() if device.lease else None)
            save(r)
            results.append(r)
            tell(f"{art.path.name}: {'done' if r.ok else 'failed'}")
        return results
    except DeviceError as e:
        log.warning("%s: %s", spec.name, e)
        return fail_rest(str(e), info)
    finally:
        device.close()


def _error_line(err: dict, device: str) -> str:
    """One line naming the cause: type, message, and the last stderr line if any."""
    text = f"{err.get('type', 'Error')}: {err.get('message', 'unknown error')}"
    if err.get("type") == "NoRuntimeError":
        text += f" (`edgekit devices setup {device}`)"
    tail = [t for t in err.get("stderr_tail") or [] if t.strip()]
    if tail and tail[-1] not in text:
        text += f" (stderr: {tail[-1].strip()[:200]})"
    return text

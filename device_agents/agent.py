#!/usr/bin/env python3
"""edgekit device agent: probe a device and benchmark one model file on it.

Runs as ``python3 agent.py probe`` or ``python3 agent.py run MODEL [options]`` and prints ONE
JSON document (``"protocol": 1``) on stdout; logs go to stderr. Also importable in-process:
``from device_agents.agent import load_model``.

Constraints (this file is copied alone onto boards and phones): Python >= 3.8 syntax; imports
only the standard library, numpy, and whichever runtime is present (ai_edge_litert,
tflite_runtime, tensorflow.lite, onnxruntime). It never imports edgekit.

``run`` is a supervisor: the measurement happens in a fresh child process (forked) so that
memory figures are clean, and so that a model that crashes the runtime, runs out of memory or hangs
becomes an error document naming the signal, exit code and stderr tail instead of a lost run.

``run --per-layer`` adds an optional ``per_layer`` object (its own ``version``; see ``per_layer``)
measured in a short pass after everything else, so the plain figures are not disturbed.

``layers MODEL --reference R.npz`` (agent 0.3) compares intermediate tensors with the host's
values for the same inputs and prints compact per-tensor statistics (see ``compare_layers``).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time

np = None  # numpy: imported by _import_numpy(); `probe` and the `run` supervisor never need it


def _import_numpy():
    """Import numpy into the module global ``np`` (None if missing); return it."""
    global np
    if np is None:
        try:
            import numpy
        except ImportError:
            return None
        np = numpy
    return np


# In-process users (host-side verification) get numpy at import; the command-line supervisor and
# probe skip it, so a bare device can still answer and a run starts faster.
if not (__name__ == "__main__" and sys.argv[1:2] in (["probe"], ["run"], ["version"])):
    _import_numpy()

PROTOCOL_VERSION = 1
AGENT_VERSION = "0.3.0"  # 0.2: run --sha256/--eval-sha256/--reference-sha256, --agent-sha256;
# 0.3: the `layers` command
EXIT_ERROR = 3  # the agent ran and reports a failure in its JSON document
TFLITE_RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")
ONNX_RUNTIMES = ("onnxruntime",)
FORMATS = {".tflite": TFLITE_RUNTIMES, ".onnx": ONNX_RUNTIMES, ".ort": ONNX_RUNTIMES}
_DISTRIBUTIONS = {
    "ai_edge_litert": ("ai-edge-litert", "ai-edge-litert-nightly"),
    "tflite_runtime": ("tflite-runtime", "tflite_runtime"),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-aarch64", "tf-nightly"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-silicon"),
    "numpy": ("numpy",),
}
_ONNX_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
    "tensor(uint16)": "uint16", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(uint32)": "uint32", "tensor(uint64)": "uint64", "tensor(bool)": "bool",
    "tensor(string)": "object",
}
_QUANTIZED_DTYPES = ("int8", "uint8", "int16")
# ONNX Runtime's graph optimization levels by the names `run --ort-opt-level` takes (the host
# imports this tuple as edgekit.devices.device.ORT_OPT_LEVELS). "all" is ORT's own default.
ORT_OPT_LEVELS = ("disable", "basic", "extended", "all")
_ORT_LEVEL_ATTRS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                    "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}

log = logging.getLogger("edgekit.agent")


class AgentModelError(ValueError):
    """The model file cannot be used: missing, unknown extension, or rejected by the runtime."""


class NoRuntimeError(RuntimeError):
    """No runtime that can run this model format is installed on this Python."""


class RunFailed(RuntimeError):
    """The runtime failed while running the model (bad feeds, kernel error)."""


# ----------------------------------------------------------------------------------------------
# Runtimes
# ----------------------------------------------------------------------------------------------

_DIST_INDEX = {}


def _norm(name):
    return name.lower().replace("-", "_").replace(".", "_")


def _dist_index():
    """{normalized distribution name: version} from the *.dist-info / *.egg-info folder names on
    sys.path (a few listdirs; importlib.metadata costs ~0.1 s of CPU on a board)."""
    if not _DIST_INDEX:
        for entry in sys.path:
            try:
                names = os.listdir(entry or ".")
            except OSError:
                continue
            for n in names:
                if n.endswith((".dist-info", ".egg-info")):
                    name, _, version = n.rsplit(".", 1)[0].partition("-")
                    _DIST_INDEX.setdefault(_norm(name), version.split("-")[0])
        _DIST_INDEX.setdefault("", "")  # scanned, even if nothing was found
    return _DIST_INDEX


def _dist_version(module):
    index = _dist_index()
    for dist in _DISTRIBUTIONS.get(module, (module,)):
        if index.get(_norm(dist)):
            return index[_norm(dist)]
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    for dist in _DISTRIBUTIONS.get(module, (module,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _module_version(name):
    """An imported runtime's version: its ``__version__``, else its distribution's."""
    module = sys.modules.get(name)
    version = getattr(module, "__version__", None) if module is not None else None
    return str(version) if version else (_dist_version(name) or "unknown")


def _has_module(name):
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def available_runtimes():
    """Runtimes importable by this Python, without importing them (TensorFlow takes seconds).

    Returns:
        list of {"name", "version", "formats"}.
    """
    import importlib.util

    found = []
    for name in TFLITE_RUNTIMES + ONNX_RUNTIMES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        formats = [ext for ext, names in sorted(FORMATS.items()) if name in names]
        found.append({"name": name, "version": _dist_version(name) or "unknown",
                      "formats": formats})
    return found


def _op_resolver_without_delegates(runtime):
    """LiteRT's ``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`` (optimized built-in kernels,
    XNNPACK not applied), from wherever this runtime keeps the enum."""
    try:
        if runtime == "ai_edge_litert":
            from ai_edge_litert.interpreter import OpResolverType
        elif runtime == "tflite_runtime":
            from tflite_runtime.interpreter import OpResolverType
        else:
            import tensorflow as tf
            OpResolverType = tf.lite.experimental.OpResolverType
    except (ImportError, AttributeError) as e:
        raise AgentModelError("%s %s cannot turn XNNPACK off (no OpResolverType; it needs "
                              "TFLite >= 2.5): %s" % (runtime, _module_version(runtime), e)) from e
    return OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def _tflite_interpreter_class(runtime):
    if runtime == "ai_edge_litert":
        from ai_edge_litert.interpreter import Interpreter
    elif runtime == "tflite_runtime":
        from tflite_runtime.interpreter import Interpreter
    elif runtime == "tensorflow":
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter
    else:
        raise NoRuntimeError("unknown TFLite runtime %r (expected one of %s)"
                             % (runtime, ", ".join(TFLITE_RUNTIMES)))
    return Interpreter


def _pick_runtime(path, runtime):
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise AgentModelError("cannot tell the format of %r: expected a file ending in %s"
                              % (path, ", ".join(sorted(FORMATS))))
    candidates = FORMATS[ext]
    if runtime is not None:
        if runtime not in candidates:
            raise AgentModelError("runtime %r cannot run %s files (use one of %s)"
                                  % (runtime, ext, ", ".join(candidates)))
        candidates = (runtime,)
    import importlib.util

    for name in candidates:
        try:
            if importlib.util.find_spec(name) is not None:
                return name
        except (ImportError, ValueError):
            continue
    raise NoRuntimeError(
        "no runtime for %s files on this Python (%s): install one of %s, e.g. run "
        "`edgekit devices setup` for this device" % (ext, sys.executable, ", ".join(candidates)))


def _spec(name, shape, dtype, quantization):
    return {"name": name, "shape": list(shape), "dtype": dtype, "quantization": quantization}


def _tflite_spec(name, d):
    sig = d.get("shape_signature")
    if sig is None or len(sig) == 0 and len(d["shape"]) > 0:
        sig = d["shape"]
    shape = [None if int(s) < 0 else int(s) for s in sig]
    q = d.get("quantization_parameters") or {}
    scales = q.get("scales")
    quant = None
    if scales is not None and len(scales) > 0:
        quant = {"scale": [float(s) for s in scales],
                 "zero_point": [int(z) for z in q.get("zero_points", [0] * len(scales))],
                 "axis": int(q.get("quantized_dimension", 0)) if len(scales) > 1 else None}
    return _spec(name, shape, np.dtype(d["dtype"]).name, quant)


def _natural_key(name):
    head, _, tail = name.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


# ----------------------------------------------------------------------------------------------
# LoadedModel
# ----------------------------------------------------------------------------------------------

class LoadedModel:
    """A model loaded into a runtime, with its I/O spec and raw / float run helpers.

    Attributes:
        runtime: the runtime module name ("ai_edge_litert", "tflite_runtime", "tensorflow",
            "onnxruntime").
        runtime_version: its version string.
        threads: the number of threads asked for.
        provider: the delegate / execution provider used ("cpu", "CPUExecutionProvider").
        runtime_settings: what the runtime was asked for and what it did: TFLite
            {"xnnpack": bool, "delegated_nodes": DELEGATE nodes in the graph (None: unknown)};
            ONNX Runtime {"ort_opt_level": one of ORT_OPT_LEVELS, read back from the session}.
        inputs, outputs: lists of {"name", "shape" (None for dynamic dims), "dtype" (numpy name),
            "quantization" ({"scale", "zero_point", "axis"} or None)}.
    """

    def __init__(self, path, runtime, runtime_version, threads, provider, inputs, outputs):
        self.path = path
        self.runtime = runtime
        self.runtime_version = runtime_version
        self.threads = threads
        self.provider = provider
        self.inputs = inputs
        self.outputs = outputs
        self.runtime_settings = {}

    def run_raw(self, feeds):
        """Run once on feeds in the model's own dtypes.

        Args:
            feeds: list of arrays in ``self.inputs`` order (or a dict keyed by input name).

        Returns:
            list of output arrays in ``self.outputs`` order, in the model's dtypes.

        Raises:
            RunFailed: wrong number of feeds, or the runtime rejected them.
        """
        feeds = self._feed_list(feeds)
        try:
            return self._run(feeds)
        except (ValueError, RuntimeError, TypeError) as e:
            if isinstance(e, RunFailed):
                raise
            raise RunFailed("%s failed to run %s: %s" % (self.runtime, self.path, e)) from e

    def run_float(self, feeds):
        """Run on float32 feeds of any leading batch size; return float32 outputs.

        Quantized int8/uint8/int16 inputs are quantized with the model's scale and zero point
        (round, then clip); quantized outputs are dequantized. A dynamic batch dim is resized to
        the feeds' batch; a fixed one is filled sample by sample and the outputs concatenated.

        Args:
            feeds: list of float arrays in ``self.inputs`` order (or a dict keyed by input name).

        Returns:
            list of float32 arrays in ``self.outputs`` order, with the feeds' batch size.

        Raises:
            RunFailed: feeds that do not fit the model, or a runtime failure.
        """
        feeds = [np.asarray(f) for f in self._feed_list(feeds)]
        feeds = [quantize(f, spec) for f, spec in zip(feeds, self.inputs)]
        # Only inputs whose first axis is the batch count: a state [2, batch, 128] is not batched
        # along axis 0, and a scalar has no axis at all.
        lead = [k for k, spec in enumerate(self.inputs) if batch_first(spec["shape"])]
        batch = feeds[lead[0]].shape[0] if lead and feeds[lead[0]].ndim > 0 else None
        fixed = None
        for k in lead:
            if self.inputs[k]["shape"][0] is not None:
                fixed = self.inputs[k]["shape"][0]
        if batch is None or fixed is None or fixed == batch:
            outs = self.run_raw(feeds)
        else:
            if batch % fixed:
                raise RunFailed("batch of %d samples does not split into the model's fixed batch "
                                "of %d (%s)" % (batch, fixed, self.path))
            parts = [self.run_raw([f[i:i + fixed] if k in lead else f for k, f in enumerate(feeds)])
                     for i in range(0, batch, fixed)]
            outs = [np.concatenate([p[k] for p in parts], axis=0) for k in range(len(self.outputs))]
        return [dequantize(o, spec) for o, spec in zip(outs, self.outputs)]

    def make_step(self, feeds):
        """A zero-argument callable that runs one inference on fixed raw feeds (for timing)."""
        feeds = self._feed_list(feeds)
        self._run(feeds)  # resize/allocate once, outside the timed loop
        return self._step_fn(feeds)

    def _feed_list(self, feeds):
        if isinstance(feeds, dict):
            missing = [s["name"] for s in self.inputs if s["name"] not in feeds]
            if missing:
                raise RunFailed("missing feeds for inputs %s (model inputs: %s)"
                                % (missing, [s["name"] for s in self.inputs]))
            feeds = [feeds[s["name"]] for s in self.inputs]
        feeds = list(feeds)
        if len(feeds) != len(self.inputs):
            raise RunFailed("%d feeds given, the model has %d inputs (%s)"
                            % (len(feeds), len(self.inputs), [s["name"] for s in self.inputs]))
        return feeds

    def _run(self, feeds):  # pragma: no cover - overridden
        raise NotImplementedError

    def _step_fn(self, feeds):  # pragma: no cover - overridden
        raise NotImplementedError


class _TFLiteModel(LoadedModel):
    def __init__(self, path, runtime, threads, xnnpack=True, preserve_all_tensors=False):
        Interpreter = _tflite_interpreter_class(runtime)
        kwargs = {}
        if not xnnpack:  # the argument is left out otherwise: runtimes older than 2.5 lack it
            kwargs["experimental_op_resolver_type"] = _op_resolver_without_delegates(runtime)
        if preserve_all_tensors:  # intermediate tensors kept readable (no buffer reuse)
            kwargs["experimental_preserve_all_tensors"] = True
        try:
            self._interp = Interpreter(model_path=path, num_threads=threads, **kwargs)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise AgentModelError("%s could not load %s: %s" % (runtime, path, e)) from e
        interp = self._interp
        main_in = interp.get_input_details()
        main_out = interp.get_output_details()
        self._runner = None
        sigs = interp.get_signature_list() if hasattr(interp, "get_signature_list") else {}
        if len(sigs) == 1:
            runner = interp.get_signature_runner(list(sigs)[0])
            sin, sout = runner.get_input_details(), runner.get_output_details()
            pos = {d["index"]: i for i, d in enumerate(main_in)}
            in_items = sorted(sin.items(), key=lambda kv: (pos.get(kv[1]["index"], 1 << 30), kv[0]))
            out_items = sorted(sout.items(), key=lambda kv: _natural_key(kv[0]))
            main_idx = {d["index"] for d in main_in} | {d["index"] for d in main_out}
            if not all(d["index"] in main_idx for _, d in in_items + out_items):
                self._runner = runner  # signature on another subgraph: go through the runner
        else:
            in_items = [(d["name"], d) for d in main_in]
            out_items = [(d["name"], d) for d in main_out]
        self._in_idx = [d["index"] for _, d in in_items]
        self._out_idx = [d["index"] for _, d in out_items]
        self._shapes = [tuple(int(s) for s in d["shape"]) for _, d in in_items]
        LoadedModel.__init__(
            self, path, runtime, _module_version(runtime), threads, "cpu",
            [_tflite_spec(n, d) for n, d in in_items], [_tflite_spec(n, d) for n, d in out_items])
        self.runtime_settings = {"xnnpack": bool(xnnpack),
                                 "delegated_nodes": self._delegated_nodes()}

    def tensor(self, index):
        """A copy of tensor ``index`` after the last run (intermediate tensors hold their values
        only when loaded with ``preserve_all_tensors`` and not inside a delegate)."""
        return self._interp.get_tensor(int(index))

    def _delegated_nodes(self):
        """DELEGATE nodes in the graph: > 0 when XNNPACK (or another delegate) took ops over.

        ``_get_ops_details`` is the interpreter's only listing of nodes after delegation (the
        public ``get_tensor_details`` shows tensors, not nodes); None where a runtime lacks it.
        """
        details = getattr(self._interp, "_get_ops_details", None)
        if details is None:
            return None
        try:
            return sum(1 for d in details() if d.get("op_name") == "DELEGATE")
        except (ValueError, RuntimeError, KeyError) as e:
            log.debug("cannot list the graph's nodes: %s", e)
            return None

    def _run(self, feeds):
        feeds = [np.ascontiguousarray(f, dtype=s["dtype"]) for f, s in zip(feeds, self.inputs)]
        if self._runner is not None:
            res = self._runner(**{s["name"]: f for s, f in zip(self.inputs, feeds)})
            return [np.array(res[s["name"]]) for s in self.outputs]
        self._resize(feeds)
        interp = self._interp
        for idx, f in zip(self._in_idx, feeds):
            interp.set_tensor(idx, f)
        interp.invoke()
        return [interp.get_tensor(i) for i in self._out_idx]

    def _resize(self, feeds):
        changed = False
        for k, f in enumerate(feeds):
            if tuple(f.shape) != self._shapes[k]:
                self._interp.resize_tensor_input(self._in_idx[k], list(f.shape), strict=False)
                self._shapes[k] = tuple(f.shape)
                changed = True
        if changed:
            self._interp.allocate_tensors()

    def _step_fn(self, feeds):
        feeds = [np.ascontiguousarray(f, dtype=s["dtype"]) for f, s in zip(feeds, self.inputs)]
        if self._runner is not None:
            kwargs = {s["name"]: f for s, f in zip(self.inputs, feeds)}
            runner = self._runner
            return lambda: runner(**kwargs)
        interp, pairs, out_idx = self._interp, list(zip(self._in_idx, feeds)), self._out_idx
        set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor
        if len(pairs) == 1 and len(out_idx) == 1:  # the common case, without loop overhead
            (i0, f0), o0 = pairs[0], out_idx[0]

            def step1():
                set_tensor(i0, f0)
                invoke()
                return get_tensor(o0)
            return step1

        def step():
            for idx, f in pairs:
                set_tensor(idx, f)
            invoke()
            return [get_tensor(i) for i in out_idx]
        return step


class _OnnxModel(LoadedModel):
    def __init__(self, path, threads, opt_level="all"):
        import onnxruntime as ort

        if opt_level not in ORT_OPT_LEVELS:
            raise AgentModelError("ORT graph optimization level %r is not one of %s"
                                  % (opt_level, ", ".join(ORT_OPT_LEVELS)))
        self._opt_level = opt_level
        opts = self.session_options(ort, threads)
        try:
            self._sess = ort.InferenceSession(path, sess_options=opts,
                                              providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own untyped Fail/InvalidGraph errors
            raise AgentModelError("onnxruntime could not load %s: %s" % (path, e)) from e
        ins = [_spec(i.name, [d if isinstance(d, int) and d >= 0 else None for d in i.shape],
                     _ONNX_DTYPES.get(i.type, i.type), None) for i in self._sess.get_inputs()]
        outs = [_spec(o.name,
                      [d if isinstance(d, int) and d >= 0 else None for d in (o.shape or [])],
                      _ONNX_DTYPES.get(o.type, o.type), None) for o in self._sess.get_outputs()]
        self._out_names = [o["name"] for o in outs]
        LoadedModel.__init__(self, path, "onnxruntime", ort.__version__, threads,
                             self._sess.get_providers()[0], ins, outs)
        # Read back from the session, not echoed from the argument: what ORT really used.
        used = self._sess.get_session_options().graph_optimization_level
        names = dict((getattr(ort.GraphOptimizationLevel, a), n)
                     for n, a in _ORT_LEVEL_ATTRS.items())
        self.runtime_settings = {"ort_opt_level": names.get(used, str(used))}

    def session_options(self, ort, threads=None):
        """SessionOptions as this model was loaded with (the per-layer pass adds profiling)."""
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                _ORT_LEVEL_ATTRS[self._opt_level])
        return opts

    def _run(self, feeds):
        feed = {s["name"]: np.ascontiguousarray(f, dtype=s["dtype"])
                for s, f in zip(self.inputs, feeds)}
        try:
            return self._sess.run(self._out_names, feed)
        except Exception as e:  # ORT's errors are not a stable public hierarchy
            raise RunFailed("onnxruntime failed to run %s: %s" % (self.path, e)) from e

    def _step_fn(self, feeds):
        feed = {s["name"]: np.ascontiguousarray(f, dtype=s["dtype"])
                for s, f in zip(self.inputs, feeds)}
        run, names = self._sess.run, self._out_names
        return lambda: run(names, feed)


def load_model(path, runtime=None, threads=1, xnnpack=True, ort_opt_level="all",
               preserve_all_tensors=False):
    """Load a .tflite / .onnx / .ort model into the first available runtime for its format.

    Args:
        path: the model file.
        runtime: force one runtime ("ai_edge_litert", "tflite_runtime", "tensorflow",
            "onnxruntime"); default: the first one found, in that order, for the file's format.
        threads: the number of threads the runtime may use.
        xnnpack: TFLite applies its default XNNPACK delegate (False: the built-in kernels
            only). Ignored by ONNX Runtime.
        ort_opt_level: ONNX Runtime's graph optimization level (``ORT_OPT_LEVELS``). Ignored
            by TFLite.
        preserve_all_tensors: TFLite keeps every intermediate tensor readable
            (``experimental_preserve_all_tensors``; see ``_TFLiteModel.tensor``). Ignored by
            ONNX Runtime.

    Returns:
        a LoadedModel.

    Raises:
        AgentModelError (a ValueError): missing file, unknown extension, or the runtime rejects it.
        NoRuntimeError (a RuntimeError): no runtime for this format is installed.
    """
    if _import_numpy() is None:
        raise NoRuntimeError("numpy is not installed on this Python (%s): run `edgekit devices "
                             "setup` for this device" % sys.executable)
    path = str(path)
    if not os.path.isfile(path):
        raise AgentModelError("model file not found: %s" % path)
    threads = int(threads)
    if threads < 1:
        raise AgentModelError("threads must be >= 1, got %d" % threads)
    name = _pick_runtime(path, runtime)
    if name in TFLITE_RUNTIMES:
        return _TFLiteModel(path, name, threads, xnnpack=xnnpack,
                            preserve_all_tensors=preserve_all_tensors)
    return _OnnxModel(path, threads, opt_level=ort_opt_level)


# ----------------------------------------------------------------------------------------------
# Quantization and generated inputs
# ----------------------------------------------------------------------------------------------

def _broadcast(values, spec, ndim):
    q = spec["quantization"]
    arr = np.asarray(values, dtype=np.float64)
    if q.get("axis") is None or arr.size == 1:
        return arr.reshape(()) if arr.size == 1 else arr
    shape = [1] * ndim
    shape[q["axis"]] = arr.size
    return arr.reshape(shape)


def batch_first(shape):
    """Whether an input's first axis is its batch axis: it is dynamic, or no axis is dynamic
    (a fixed batch). ``[2, None, 128]`` (a recurrent state) and ``[]`` (a scalar) are not.

    Mirrors ``calibration_data.layouts.batch_first``, which this file may not import.
    """
    shape = list(shape or [])
    return bool(shape) and (shape[0] is None or all(d is not None for d in shape[1:]))


def eval_full_shape(model, arrays):
    """Per input, whether its eval array holds N samples of the input's full shape
    (``[N, *shape]``, fed one sample at a time) rather than batched ones (``[N, *shape[1:]]``)."""
    return [np.ndim(a) == len(spec["shape"]) + 1 for a, spec in zip(arrays, model.inputs)]


def run_eval(model, arrays):
    """Run a model over eval arrays (samples first), returning float32 outputs per sample.

    Batched arrays run through :meth:`LoadedModel.run_float` at once. When any array holds
    full-shape samples (a scalar input, or one whose batch axis is not first), the samples cannot
    be joined along axis 0, so each runs alone and the outputs are stacked: ``[N, *output]``.

    Args:
        model: a loaded model.
        arrays: one array per model input, in ``model.inputs`` order.

    Returns:
        list of float32 arrays in ``model.outputs`` order, one row per sample.

    Raises:
        RunFailed: arrays that do not fit the model, or a runtime failure.
    """
    full = eval_full_shape(model, arrays)
    if not any(full):
        return model.run_float(arrays)
    n = len(arrays[0])
    outs = [model.run_float([a[i, ...] if f else a[i:i + 1] for a, f in zip(arrays, full)])
            for i in range(n)]
    return [np.stack([o[k] for o in outs]) for k in range(len(model.outputs))]


def quantize(x, spec):
    """Float array -> the input's dtype: affine-quantized if it has quantization, else cast."""
    dtype = np.dtype(spec["dtype"])
    x = np.asarray(x)
    if x.dtype == dtype:
        return x
    if spec.get("quantization") and spec["dtype"] in _QUANTIZED_DTYPES:
        scale = _broadcast(spec["quantization"]["scale"], spec, x.ndim)
        zp = _broadcast(spec["quantization"]["zero_point"], spec, x.ndim)
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zp), info.min, info.max).astype(dtype)
    if dtype.kind in "iu" and x.dtype.kind == "f":
        info = np.iinfo(dtype)
        return np.clip(np.round(x), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def dequantize(y, spec):
    """Output array -> float32, undoing the output's quantization if it has one."""
    y = np.asarray(y)
    if spec.get("quantization") and spec["dtype"] in _QUANTIZED_DTYPES:
        scale = _broadcast(spec["quantization"]["scale"], spec, y.ndim)
        zp = _broadcast(spec["quantization"]["zero_point"], spec, y.ndim)
        return ((y.astype(np.float64) - zp) * scale).astype(np.float32)
    return y.astype(np.float32)


def generate_inputs(model, batch=1, seed=0):
    """Float feeds drawn from each input's spec (dynamic dims -> 1, batch dim -> ``batch``)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for spec in model.inputs:
        shape = [1 if d is None else d for d in spec["shape"]]
        if shape and spec["shape"][0] is None:
            shape[0] = batch
        dtype = np.dtype(spec["dtype"])
        if dtype.kind == "f" or spec.get("quantization"):
            feeds.append(rng.random(shape, dtype=np.float64).astype(np.float32))
        elif dtype.kind == "b":
            feeds.append(rng.random(shape) < 0.5)
        else:
            feeds.append(rng.integers(0, 10, size=shape).astype(np.float32))
    return feeds


# ----------------------------------------------------------------------------------------------
# System readings (/proc and /sys; absent files are simply left out)
# ----------------------------------------------------------------------------------------------

def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _proc_status_bytes(key):
    text = _read("/proc/self/status") or ""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None


def temperatures():
    """{zone type: degrees C} from /sys/class/thermal."""
    temps = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        raw = _read(os.path.join(zone, "temp"))
        if raw and raw.lstrip("-").isdigit():
            name = _read(os.path.join(zone, "type")) or os.path.basename(zone)
            if name in temps:
                name = "%s.%s" % (name, os.path.basename(zone))
            temps[name] = int(raw) / 1000.0
    return temps


def frequencies():
    """{cpuN: {governor, min_khz, cur_khz, max_khz}} from cpufreq."""
    freqs = {}
    cpus = glob.glob("/sys/devices/system/cpu/cpu[0-9]*")
    for cpu in sorted(cpus, key=lambda p: int(p.rsplit("cpu", 1)[1])):
        base = os.path.join(cpu, "cpufreq")
        if not os.path.isdir(base):
            continue
        entry = {"governor": _read(os.path.join(base, "scaling_governor"))}
        for key, fname in (("min_khz", "scaling_min_freq"), ("cur_khz", "scaling_cur_freq"),
                           ("max_khz", "scaling_max_freq")):
            raw = _read(os.path.join(base, fname))
            entry[key] = int(raw) if raw and raw.isdigit() else None
        freqs[os.path.basename(cpu)] = entry
    return freqs


def _cpu_model():
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "Processor", "cpu model"):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key and ":" in line:
                return line.split(":", 1)[1].strip()
    board = (_read("/sys/firmware/devicetree/base/model") or "").strip("\x00")
    return board or platform.processor()


# CPU features that decide which quantized kernels are fast: x86 int8 dot products (VNNI/AMX)
# and AVX2/AVX-512 widths; ARM NEON dot product (asimddp), int8 matmul (i8mm) and fp16
# arithmetic (fphp/asimdhp). The full flag list is ~100 names per run document; these suffice.
_CPU_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
                 "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16", "neon",
                 "asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2", "vfpv4")


def cpu_features():
    """The listed CPU features /proc/cpuinfo reports ("flags" on x86, "Features" on ARM).

    The host reads its own CPU with this function too (``converters.cpu_layouts``)."""
    found = set()
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            found.update(value.split())
    return [f for f in _CPU_FEATURES if f in found]


def _meminfo():
    out = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("MemTotal:", "MemAvailable:"):
            out[parts[0][:-1]] = int(parts[1]) * 1024
    return {"total_bytes": out.get("MemTotal"), "available_bytes": out.get("MemAvailable")}


def _os_release():
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Android" if os.environ.get("ANDROID_ROOT") else None


_ARCH_FAMILIES = {"x86_64": "x86_64", "amd64": "x86_64", "i386": "x86", "i486": "x86",
                  "i586": "x86", "i686": "x86", "aarch64": "aarch64", "arm64": "aarch64",
                  "armv8l": "arm", "armv7l": "arm", "armv6l": "arm", "arm": "arm",
                  "riscv64": "riscv64", "ppc64le": "ppc64le", "s390x": "s390x"}


def _arch_family(name):
    name = (name or "").strip().lower()
    return _ARCH_FAMILIES.get(name, name or None)


# A 64-bit kernel runs its 32-bit userland natively (Raspberry Pi OS armhf on an arm64 kernel).
_NATIVE_COMPAT = {("arm", "aarch64"), ("x86", "x86_64")}


def _native_on(process, kernel):
    return process == kernel or (process, kernel) in _NATIVE_COMPAT


def _cpuinfo_family(text):
    """The CPU family /proc/cpuinfo describes ("x86", "arm", or None when it cannot tell)."""
    keys = {line.split(":")[0].strip().lower() for line in text.splitlines() if ":" in line}
    if "vendor_id" in keys and ("flags" in keys or "model name" in keys):
        return "x86"
    if "cpu implementer" in keys or "cpu architecture" in keys:
        return "arm"
    return None


def emulation():
    """Whether this Python runs under a CPU emulator, so its timings are not the hardware's.

    qemu-user (binfmt_misc) answers ``uname()`` with the guest's arch but leaves the kernel's
    own facts alone: ``/proc/sys/kernel/arch`` names the host arch, and qemu before 8.1 passes
    the host's ``/proc/cpuinfo`` through (x86 vendor and flags on an "aarch64" machine). On macOS
    Rosetta 2 sets the ``sysctl.proc_translated`` flag.

    Returns:
        {"emulated": True / False / None (nothing could be checked), "emulator": "qemu-user",
        "rosetta" or None, "host_arch": the kernel's arch when it differs or None,
        "evidence": [why, one line each]}.
    """
    machine = platform.machine()
    family = _arch_family(machine)
    evidence, host_arch, emulator, checked = [], None, None, False
    if platform.system() == "Darwin":
        checked = True
        try:
            out = subprocess.run(["sysctl", "-n", "sysctl.proc_translated"], check=False,
                                 capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out == "1":
            evidence.append("sysctl.proc_translated=1 (Rosetta 2 translates this process)")
            emulator, host_arch = "rosetta", "arm64"
    kernel_arch = _read("/proc/sys/kernel/arch")
    if kernel_arch:
        checked = True
        if not _native_on(family, _arch_family(kernel_arch)):
            evidence.append("the kernel is %s (/proc/sys/kernel/arch) but this process reports %s"
                            % (kernel_arch, machine))
            host_arch = kernel_arch
    cpuinfo = _read("/proc/cpuinfo")
    if cpuinfo:
        checked = True
        cpu = _cpuinfo_family(cpuinfo)
        own = {"x86_64": "x86", "aarch64": "arm"}.get(family, family)
        if cpu is not None and cpu != own:
            evidence.append("/proc/cpuinfo describes an %s CPU but this process reports %s"
                            % (cpu, machine))
            host_arch = host_arch or {"x86": "x86_64", "arm": "aarch64"}[cpu]
    if evidence and emulator is None and platform.system() == "Linux":
        emulator = "qemu-user"  # the user-mode emulator binfmt_misc runs foreign binaries with
    return {"emulated": bool(evidence) if checked else None, "emulator": emulator,
            "host_arch": host_arch, "evidence": evidence}


def probe(cache_dir):
    """Facts about this device and Python, as a protocol document."""
    cache_dir = os.path.expanduser(cache_dir)
    existing = cache_dir
    while existing and not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    disk = shutil.disk_usage(existing or "/")
    return {
        "protocol": PROTOCOL_VERSION, "kind": "probe", "ok": True, "agent_version": AGENT_VERSION,
        "hostname": platform.node(), "arch": platform.machine(),
        "libc": dict(zip(("name", "version"), platform.libc_ver())),
        "os": {"system": platform.system(), "kernel": platform.release(), "release": _os_release()},
        "cpu": {"model": _cpu_model(), "cores": os.cpu_count(), "frequencies": frequencies(),
                "features": cpu_features()},
        "temperatures_c": temperatures(), "memory": _meminfo(),
        "disk": {"path": cache_dir, "free_bytes": disk.free},
        "python": {"version": platform.python_version(), "executable": sys.executable,
                   "implementation": platform.python_implementation(),
                   "numpy": _dist_version("numpy") if _has_module("numpy") else None},
        "runtimes": available_runtimes(),
        "emulation": emulation(),
    }


# ----------------------------------------------------------------------------------------------
# Per-layer latency (`run --per-layer`): a short separate pass after the timed runs
# ----------------------------------------------------------------------------------------------

PER_LAYER_VERSION = 1  # of the optional "per_layer" object in a run document
PER_LAYER_TOP = 15  # nodes kept by name; the rest are summed into one "other" line
PER_LAYER_MAX_CUTS = 64  # TFLite: at most this many truncated sub-models (consecutive ops grouped)
# Both methods estimate each layer's undisturbed time; the gap to the whole-model p50 is the time
# spent outside the layers (feeding, dispatch) plus the interference the p50 includes.


def _profile_runs(runs):
    return max(3, min(int(runs), 20))


def _onnx_layer_times(model, raw, runs):
    """ONNX Runtime's own profiler on a second session: each node's median kernel time over the
    profiled runs (time the process was descheduled lands in random nodes: medians leave it out,
    as the fastest prefix does for TFLite)."""
    import tempfile

    import onnxruntime as ort

    folder = tempfile.mkdtemp(prefix="edgekit-prof-")
    try:
        opts = model.session_options(ort)
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(folder, "ort")
        sess = ort.InferenceSession(model.path, sess_options=opts,
                                    providers=["CPUExecutionProvider"])
        feed = {s["name"]: np.ascontiguousarray(f, dtype=s["dtype"])
                for s, f in zip(model.inputs, raw)}
        warm = 2
        for _ in range(warm + runs):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    timed = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("cat") == "Session" and e.get("name") == "model_run")[warm:]
    if not timed:
        raise RunFailed("onnxruntime's profile of %s has no model_run events" % model.path)
    nodes = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        run = [k for k, (a, b) in enumerate(timed) if a <= e["ts"] <= b]
        if not run:
            continue
        args = e.get("args") or {}
        name = e["name"][:-len("_kernel_time")] or args.get("op_name", "?")
        # Keyed by the node's index: names may repeat (or be empty) after ORT's graph rewrites.
        node = nodes.setdefault(args.get("node_index", name), {
            "name": name, "op_type": args.get("op_name", "?"),
            "provider": args.get("provider", "?"), "ms": [0.0] * len(timed)})
        node["ms"][run[0]] += e["dur"] / 1e3
    for node in nodes.values():  # the median run of each node, as latency_ms reports p50
        node["ms"] = sorted(node["ms"])[len(timed) // 2]
    walls = sorted((b - a) / 1e3 for a, b in timed)
    return "onnxruntime-profiler", list(nodes.values()), {
        "runs": len(timed), "profiled_run_p50_ms": walls[len(walls) // 2]}


def _fb_table(buf, pos, field):
    """Absolute position of a flatbuffer table's offset-typed field (None if absent)."""
    import struct

    vtable = pos - struct.unpack_from("<i", buf, pos)[0]
    vsize = struct.unpack_from("<H", buf, vtable)[0]
    if 4 + 2 * field >= vsize:
        return None
    off = struct.unpack_from("<H", buf, vtable + 4 + 2 * field)[0]
    if not off:
        return None
    return pos + off + struct.unpack_from("<I", buf, pos + off)[0]


def _tflite_cut_points(buf):
    """(position of the main subgraph's operators vector, of its outputs vector) in the file."""
    import struct

    root = struct.unpack_from("<I", buf, 0)[0]
    subgraphs = _fb_table(buf, root, 2)
    first = subgraphs + 4 + struct.unpack_from("<I", buf, subgraphs + 4)[0]
    return _fb_table(buf, first, 3), _fb_table(buf, first, 2)


def _tflite_groups(ops, n):
    """{node index: delegate node index} for the original nodes a delegate (XNNPACK) took over:
    walk back from each DELEGATE node's outputs to its inputs."""
    producer = {}
    for d in ops[:n]:
        for t in d["outputs"]:
            producer[int(t)] = d["index"]
    owner = {}
    for d in ops[n:]:
        if d["op_name"] != "DELEGATE":
            continue
        stop, todo = set(int(t) for t in d["inputs"]), [int(t) for t in d["outputs"]]
        while todo:
            node = producer.get(todo.pop())
            if node is None or node in owner:
                continue
            owner[node] = d["index"]
            todo += [int(t) for t in ops[node]["inputs"] if int(t) not in stop and t >= 0]
    return owner


def _tflite_layer_times(model, raw, runs):
    """Truncated sub-models: the first k operators of the main subgraph, k at up to
    PER_LAYER_MAX_CUTS cut points, each timed like the model; a segment's time is the difference
    of consecutive prefixes (LiteRT's Python API has no per-op profiler)."""
    import struct

    if model._runner is not None:
        raise RunFailed("per-layer timing of a model whose signature runs another subgraph is "
                        "not supported")
    with open(model.path, "rb") as f:
        original = f.read()
    try:
        ops_at, outs_at = _tflite_cut_points(original)
        n = struct.unpack_from("<I", original, ops_at)[0]
    except (struct.error, TypeError) as e:
        raise RunFailed("cannot read the operator list of %s: %s" % (model.path, e)) from e
    details = getattr(model._interp, "_get_ops_details", None)
    if details is None or n == 0:
        raise RunFailed("%s %s lists no nodes of %s (per-layer timing needs its "
                        "_get_ops_details)" % (model.runtime, model.runtime_version, model.path))
    ops = details()
    owner = _tflite_groups(ops, n)
    cuts = sorted(set(int(round(n * (i + 1) / min(n, PER_LAYER_MAX_CUTS)))
                      for i in range(min(n, PER_LAYER_MAX_CUTS))))
    kwargs = {}
    if not model.runtime_settings.get("xnnpack", True):
        kwargs["experimental_op_resolver_type"] = _op_resolver_without_delegates(model.runtime)
    Interpreter = _tflite_interpreter_class(model.runtime)
    feeds = [np.ascontiguousarray(f, dtype=s["dtype"]) for f, s in zip(raw, model.inputs)]
    clock, times, skipped = time.perf_counter_ns, [], 0
    for k in cuts:
        buf = bytearray(original)
        outs = [int(t) for t in ops[k - 1]["outputs"] if t >= 0]
        if k < n:
            if not outs:
                skipped += 1
                continue
            struct.pack_into("<I", buf, ops_at, k)
            struct.pack_into("<II", buf, outs_at, 1, outs[0])
        try:
            interp = Interpreter(model_content=bytes(buf), num_threads=model.threads, **kwargs)
            for idx, x in zip(model._in_idx, feeds):
                interp.resize_tensor_input(idx, list(x.shape), strict=False)
            interp.allocate_tensors()
            for idx, x in zip(model._in_idx, feeds):
                interp.set_tensor(idx, x)
            for _ in range(2):
                interp.invoke()
            samples = []
            for _ in range(runs):
                t0 = clock()
                interp.invoke()
                samples.append(clock() - t0)
        except (ValueError, RuntimeError) as e:
            if k == n:
                raise RunFailed("%s: the whole model failed in the per-layer pass: %s"
                                % (model.path, e)) from e
            log.info("per-layer: the first %d ops do not run alone (%s); merged with the next", k, e)
            skipped += 1
            continue
        # The fastest run: interference (other processes, a frequency dip) only adds time, and
        # a difference of two noisy medians is mostly noise on a busy device.
        times.append((k, min(samples) / 1e6))
    fitted = _monotone([t for _, t in times])
    nodes, start, prev = [], 0, 0.0
    for (k, _), t in zip(times, fitted):
        span = ops[start:k]
        names = sorted(set(d["op_name"] for d in span))
        groups = sorted(set(owner[d["index"]] for d in span if d["index"] in owner))
        delegated = sum(1 for d in span if d["index"] in owner)
        node = {"name": span[0]["op_name"] + "#%d" % start if k - start == 1
                else "ops %d-%d" % (start, k - 1),
                "op_type": names[0] if len(names) == 1 else "mixed",
                "provider": "builtin" if not delegated else "XNNPACK" if delegated == len(span)
                else "XNNPACK+builtin", "ms": t - prev, "ops": k - start}
        if groups:
            node["delegate_groups"] = ["DELEGATE#%d" % g for g in groups]
        if len(names) > 1:
            node["op_types"] = names
        nodes.append(node)
        start, prev = k, t
    return "tflite-prefix-submodels", nodes, {
        "runs": runs, "segments": len(nodes), "ops": n, "unmeasured_cuts": skipped,
        "pooled_segments": sum(1 for a, b in zip([0.0] + fitted, fitted) if b == a),
        "delegate_groups": len(set(owner.values())), "profiled_run_p50_ms": times[-1][1]}


def _monotone(values):
    """The closest non-decreasing sequence (pool adjacent violators): a longer prefix cannot
    take less time, so a dip is noise, averaged with its neighbours rather than clipped."""
    blocks = []  # [mean, count]
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, c2), (m1, c1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return [m for m, c in blocks for _ in range(c)]


def per_layer(model, raw, runs, whole_p50_ms, top=PER_LAYER_TOP):
    """Per-layer latency of ``model`` on ``raw`` feeds, summarised for the run document.

    Returns:
        {"version", "method", "unit", "total_ms", "whole_model_p50_ms", "gap_pct", "node_count",
        "nodes": top nodes + "other", "op_types", ...method facts}; or {"version", "error"} when
        the runtime cannot give per-layer times (the run itself still counts).
    """
    t0 = time.time()
    runs = _profile_runs(runs)
    try:
        if model.runtime == "onnxruntime":
            method, nodes, facts = _onnx_layer_times(model, raw, runs)
        else:
            # One interpreter per cut: fewer runs each (their fastest is the figure) keep the
            # pass within ~10x a plain run on MobileNetV2-sized models.
            method, nodes, facts = _tflite_layer_times(model, raw, min(runs, 10))
    except (RunFailed, AgentModelError, OSError, ValueError, KeyError, RuntimeError) as e:
        return {"version": PER_LAYER_VERSION, "error": "%s: %s" % (type(e).__name__, e)}
    total = sum(d["ms"] for d in nodes)
    share = (lambda ms: ms / total) if total > 0 else (lambda ms: 0.0)
    kinds = {}
    for d in nodes:
        d["name"] = d["name"][:96]
        d["share"] = share(d["ms"])
        k = kinds.setdefault(d["op_type"], {"op_type": d["op_type"], "ms": 0.0, "count": 0,
                                            "providers": []})
        k["ms"] += d["ms"]
        k["count"] += 1
        if d["provider"] not in k["providers"]:
            k["providers"].append(d["provider"])
    ranked = sorted(nodes, key=lambda d: -d["ms"])
    kept, rest = ranked[:top], ranked[top:]
    if rest:
        ms = sum(d["ms"] for d in rest)
        kept.append({"name": "other", "op_type": "other", "provider": "", "ms": ms,
                     "share": share(ms), "count": len(rest)})
    kinds = sorted(kinds.values(), key=lambda k: -k["ms"])
    for d in kept + kinds:
        d["share"] = round(share(d["ms"]), 4)
        d["ms"] = round(d["ms"], 4)
    doc = {"version": PER_LAYER_VERSION, "method": method, "unit": "ms", "total_ms": total,
           "whole_model_p50_ms": whole_p50_ms,
           "gap_pct": 100.0 * (total - whole_p50_ms) / whole_p50_ms if whole_p50_ms else None,
           "node_count": len(nodes), "nodes": kept, "op_types": kinds[:40]}
    doc.update(facts)
    doc["wall_s"] = time.time() - t0
    return doc


# ----------------------------------------------------------------------------------------------
# Measurement (runs in the fresh child process)
# ----------------------------------------------------------------------------------------------

def _stats(samples_ns):
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"min": float(a.min()), "mean": float(a.mean()), "std": float(a.std()),
            "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(a.max()),
            "runs": int(a.size)}


def _eval_feeds(model, data):
    if "x" in data.files and len(model.inputs) == 1:
        return [data["x"]]
    missing = [s["name"] for s in model.inputs if s["name"] not in data.files]
    if missing:
        raise AgentModelError("eval data has arrays %s; expected 'x' or arrays named after the "
                              "model inputs %s" % (data.files, [s["name"] for s in model.inputs]))
    return [data[s["name"]] for s in model.inputs]


def _shape_text(shape):
    return "[%s]" % ",".join("?" if d is None else str(d) for d in shape)


def check_eval_shapes(model, arrays):
    """Refuse eval arrays whose samples are not the model's input shape.

    Each array holds batched samples (``[N, *shape[1:]]``, for an input whose first axis is its
    batch) or N samples of the full shape (``[N, *shape]``); fixed dims must match, dynamic ones
    (``None``) take any size. Inputs are never resized to fit: a runtime would run (and time)
    the model at another size than the one it was built for.

    Raises:
        AgentModelError: naming the input, the shape expected and the shape found.
    """
    for a, spec in zip(arrays, model.inputs):
        shape, found = list(spec["shape"] or []), list(np.shape(a))
        if len(found) == len(shape) + 1:
            want, got = shape, found[1:]
        elif len(found) == len(shape) and batch_first(shape):
            want, got = shape[1:], found[1:]
        else:
            want, got = None, found
        if want is None or any(w is not None and w != g for w, g in zip(want, got)):
            accepted = "[N%s]" % "".join(",%s" % ("?" if d is None else d) for d in shape)
            if batch_first(shape):
                accepted = "[N%s] or %s" % (
                    "".join(",%s" % ("?" if d is None else d) for d in shape[1:]), accepted)
            raise AgentModelError(
                "eval data for input %r has shape %s; the model's input is %s, so expected %s "
                "(the agent does not resize inputs: give data of the model's input size)"
                % (spec["name"], _shape_text(found), _shape_text(shape), accepted))


def _agreement(outs, reference, model):
    ref_keys = list(reference.files)
    result = []
    for k, spec in enumerate(model.outputs):
        key = spec["name"] if spec["name"] in ref_keys else (
            ref_keys[k] if k < len(ref_keys) else None)
        if key is None:
            continue
        ref = np.asarray(reference[key], dtype=np.float64)
        got = np.asarray(outs[k], dtype=np.float64)[:len(ref)]
        ref = ref[:len(got)]
        if ref.shape != got.shape:
            raise AgentModelError("reference %r has shape %s, output %r has %s"
                                  % (key, ref.shape, spec["name"], got.shape))
        err = got - ref
        noise = float(np.mean(err ** 2))
        entry = {"name": spec["name"], "max_abs_error": float(np.max(np.abs(err))),
                 "mean_abs_error": float(np.mean(np.abs(err))),
                 "sqnr_db": float(10 * np.log10(np.mean(ref ** 2) / noise)) if noise > 0 else None,
                 "top1_agreement": None}
        if ref.ndim == 2 and ref.shape[1] > 1:
            entry["top1_agreement"] = float(np.mean(ref.argmax(1) == got.argmax(1)))
        result.append(entry)
    return result


def measure(args):
    """Load, time and evaluate one model; return the run document (raises on failure)."""
    t_start = time.time()
    before = {"temperatures_c": temperatures(), "frequencies": frequencies()}
    if _import_numpy() is not None and os.path.isfile(args.model):
        # Import the runtime first: init_ms and the RSS delta are the model's, not the library's.
        runtime = _pick_runtime(args.model, args.runtime)
        if runtime in TFLITE_RUNTIMES:
            _tflite_interpreter_class(runtime)
        else:
            import onnxruntime  # noqa: F401
    rss_before = _proc_status_bytes("VmRSS")
    t0 = time.perf_counter_ns()
    model = load_model(args.model, runtime=args.runtime, threads=args.threads,
                       xnnpack=args.xnnpack == "on", ort_opt_level=args.ort_opt_level)
    init_ms = (time.perf_counter_ns() - t0) / 1e6
    rss_after = _proc_status_bytes("VmRSS")
    data = np.load(args.eval, allow_pickle=False) if args.eval else None
    if data is not None:
        eval_x = _eval_feeds(model, data)
        check_eval_shapes(model, eval_x)
        full = eval_full_shape(model, eval_x)
        fixed = model.inputs[0]["shape"][0] if model.inputs and model.inputs[0]["shape"] else None
        if any(full):  # full-shape samples run one at a time (see run_eval)
            fixed = None
        if fixed and len(eval_x[0]) % fixed:  # a fixed batch of N takes the samples N at a time
            keep = len(eval_x[0]) - len(eval_x[0]) % fixed
            log.info("eval: using %d of %d samples (the model's batch is fixed at %d)",
                     keep, len(eval_x[0]), fixed)
            eval_x = [x[:keep] for x in eval_x]
        feeds = [x[0, ...] if f else x[: (fixed or 1)] for x, f in zip(eval_x, full)]
        input_source = "eval"
    else:
        feeds = generate_inputs(model)
        input_source = "generated"
    raw = [quantize(np.asarray(f), s) for f, s in zip(feeds, model.inputs)]
    t0 = time.perf_counter_ns()
    model.run_raw(raw)
    first_ms = (time.perf_counter_ns() - t0) / 1e6
    step = model.make_step(raw)
    for _ in range(args.warmup):
        step()
    clock = time.perf_counter_ns
    samples = [0] * args.runs
    for i in range(args.runs):
        t0 = clock()
        step()
        samples[i] = clock() - t0
    peak = _proc_status_bytes("VmHWM")
    accuracy, agreement = None, None
    if data is not None:
        outs = run_eval(model, eval_x)
        n = len(outs[0])
        if "y" in data.files:
            y = np.asarray(data["y"])
            if y.ndim == 2:
                y = y.argmax(1)
            pred = outs[0].reshape(n, -1).argmax(1)
            accuracy = {"samples": int(n), "top1": float(np.mean(pred == y[:n]))}
        if args.reference:
            agreement = _agreement(outs, np.load(args.reference, allow_pickle=False), model)
    latency = _stats(samples)
    extra = {}
    if getattr(args, "per_layer", False):  # after everything else, so nothing above is disturbed
        extra["per_layer"] = per_layer(model, raw, args.runs, latency["p50"], args.per_layer_top)
    return dict({
        "protocol": PROTOCOL_VERSION, "kind": "run", "ok": True, "agent_version": AGENT_VERSION,
        "model": {"path": args.model, "bytes": os.path.getsize(args.model)},
        "runtime": model.runtime, "runtime_version": model.runtime_version,
        "threads": model.threads, "provider": model.provider,
        "runtime_settings": model.runtime_settings,
        "inputs": model.inputs, "outputs": model.outputs, "input_source": input_source,
        "init_ms": init_ms, "first_inference_ms": first_ms, "warmup": args.warmup,
        "latency_ms": latency,
        "memory": {"peak_rss_bytes": peak,
                   "model_rss_delta_bytes": (rss_after - rss_before)
                   if rss_after is not None and rss_before is not None else None},
        "accuracy": accuracy, "agreement": agreement,
        "system": {"before": before,
                   "after": {"temperatures_c": temperatures(), "frequencies": frequencies()}},
        "python": platform.python_version(), "started_at": t_start, "wall_s": time.time() - t_start,
        "emulation": emulation(),  # emulated latencies are not the board's: say so in the run
    }, **extra)


# ----------------------------------------------------------------------------------------------
# Per-layer divergence (`layers`): the device's intermediate tensors against the host's
# ----------------------------------------------------------------------------------------------

LAYERS_VERSION = 1  # of the "layers" object in a `layers` document
LAYERS_MAX_TENSORS = 512  # compared at most (the host sends fewer); bounds the document's size


def _round(x, digits=4):
    return None if x is None else float(round(float(x), digits))


def _tensor_stats(acc):
    """SQNR (dB; None when identical), max |error| and cosine from running sums."""
    sig, noise, dot, n_got, max_err = acc
    sqnr = None
    if noise > 0:
        sqnr = 10 * math.log10(sig / noise) if sig > 0 else -999.0
    denom = math.sqrt(sig * n_got)
    cosine = dot / denom if denom > 0 else (1.0 if sig == n_got else 0.0)
    return {"sqnr_db": _round(sqnr, 2), "max_abs_error": _round(max_err, 6),
            "cosine": _round(cosine, 6)}


def _feeds_of(model, reference):
    feeds = []
    for j, spec in enumerate(model.inputs):
        key = "in%d" % j
        if key not in reference.files:
            raise AgentModelError("layers reference has no %r (feeds for input %r)"
                                  % (key, spec["name"]))
        feeds.append(reference[key])
    return feeds


def _accumulate(model, feeds, names, refs, quant, indices=None):
    """Run each sample once; per name, running sums for ``_tensor_stats`` (None: not compared:
    the model does not output it, or the host sent no values). ``indices``: TFLite tensor
    indices to read instead of outputs by name."""
    if indices is not None:
        count = len(model._interp.get_tensor_details())
        where = dict((n, int(t)) for n, t in zip(names, indices) if 0 <= int(t) < count)
    else:
        where = dict((spec["name"], k) for k, spec in enumerate(model.outputs))
    acc = [[0.0, 0.0, 0.0, 0.0, 0.0] if n in where and r is not None else None
           for n, r in zip(names, refs)]
    for s in range(len(feeds[0]) if feeds else 0):
        outs = model.run_raw([f[s] for f in feeds])
        for i, name in enumerate(names):
            if acc[i] is None:
                continue
            value = model.tensor(where[name]) if indices is not None else outs[where[name]]
            got = np.asarray(value, dtype=np.float64).ravel()
            ref = np.asarray(refs[i][s], dtype=np.float64).ravel()
            if quant[i] is not None:  # both sides alike: equal int8 values compare equal
                got = (got - float(quant[i][1])) * float(quant[i][0])
                ref = (ref - float(quant[i][1])) * float(quant[i][0])
            if ref.shape != got.shape:
                raise AgentModelError("tensor %r: the reference has %d values, the device %d"
                                      % (name, ref.size, got.size))
            err = got - ref
            a = acc[i]
            a[0] += float(np.dot(ref, ref))
            a[1] += float(np.dot(err, err))
            a[2] += float(np.dot(ref, got))
            a[3] += float(np.dot(got, got))
            a[4] = max(a[4], float(np.max(np.abs(err))) if err.size else 0.0)
    return acc


def _stats_list(acc):
    out = []
    for i, a in enumerate(acc):
        if a is not None:
            entry = {"index": i}
            entry.update(_tensor_stats(a))
            out.append(entry)
    return out


def compare_layers(model, reference, artifact=None):
    """Run the reference's input samples and compare each named output with the host's values.

    The model is one the host edited so that the tensors to compare are graph outputs (ONNX
    Runtime offers no other way to read an intermediate tensor). The reference ``.npz`` holds
    ``names`` (the tensors, in graph order), ``t<i>`` (the host's values of tensor i in the
    model's dtype, one row per sample), optionally ``q<i>`` ([scale, zero_point]: tensor i is
    quantized; both sides are dequantized before comparing), ``in<j>`` (input j's raw feeds, one
    per sample), ``o<k>`` (the host's values of the unedited artifact's output k) and, for a
    TFLite model (loaded with ``preserve_all_tensors``), ``tensor_index`` (the tensors to read,
    by index, instead of outputs by name).

    Args:
        model: the edited model (a LoadedModel).
        reference: the loaded ``.npz``.
        artifact: the unedited artifact (a LoadedModel) or None. Exposing tensors can change
            which kernels run (ORT stops fusing a QDQ group whose tensor is a graph output), so
            its outputs are compared too: the kernels the user ships.

    Returns:
        the ``layers`` object: ``version``, ``samples``, ``tensor_count``, ``missing`` (indices
        the model does not output), ``tensors``: ``[{"index", "sqnr_db", "max_abs_error",
        "cosine"}]`` in the reference's order (names stay on the host: the document's size is
        bounded by the count, not by how long exporters make names) and, with ``artifact``,
        ``artifact_outputs`` in the same form (``index``: the artifact's output index).

    Raises:
        AgentModelError: a malformed reference or one that does not fit the model.
    """
    files = set(reference.files)
    if "names" not in files:
        raise AgentModelError("layers reference has no 'names' array (arrays: %s)"
                              % sorted(files)[:8])
    names = [str(n) for n in reference["names"]]
    if len(names) > LAYERS_MAX_TENSORS:
        raise AgentModelError("layers reference names %d tensors; at most %d are compared"
                              % (len(names), LAYERS_MAX_TENSORS))
    feeds = _feeds_of(model, reference)
    refs = [reference["t%d" % i] if "t%d" % i in files else None for i in range(len(names))]
    quant = [reference["q%d" % i] if "q%d" % i in files else None for i in range(len(names))]
    indices = None
    if "tensor_index" in files:  # TFLite: tensors are read by index, not as outputs
        if not hasattr(model, "tensor"):
            raise AgentModelError("the reference reads TFLite tensors by index; %s is not a "
                                  "TFLite model" % model.path)
        indices = [int(t) for t in reference["tensor_index"]]
    acc = _accumulate(model, feeds, names, refs, quant, indices)
    doc = {"version": LAYERS_VERSION, "samples": len(feeds[0]) if feeds else 0,
           "tensor_count": len(names), "missing": [i for i, a in enumerate(acc) if a is None],
           "tensors": _stats_list(acc)}
    if artifact is not None:
        out_names = [o["name"] for o in artifact.outputs]
        refs = [reference["o%d" % k] if "o%d" % k in files else None
                for k in range(len(out_names))]
        acc = _accumulate(artifact, _feeds_of(artifact, reference), out_names, refs,
                          [None] * len(out_names))
        doc["artifact_outputs"] = _stats_list(acc)
    return doc


def measure_layers(args):
    """The ``layers`` document for one model and reference (raises on failure)."""
    t_start = time.time()
    tflite = _pick_runtime(args.model, args.runtime) in TFLITE_RUNTIMES
    model = load_model(args.model, runtime=args.runtime, threads=args.threads,
                       xnnpack=args.xnnpack == "on", ort_opt_level=args.ort_opt_level,
                       preserve_all_tensors=tflite)
    # The artifact as it ships: TFLite with its default XNNPACK delegate, whatever the read-out
    # (which needs the built-in kernels: a delegate's inner tensors are never written).
    artifact = load_model(args.artifact, runtime=args.runtime, threads=args.threads,
                          ort_opt_level=args.ort_opt_level) if args.artifact else None
    reference = np.load(args.reference, allow_pickle=False)
    layers = compare_layers(model, reference, artifact)
    layers["method"] = "tflite-preserve-all-tensors" if tflite else "onnxruntime-extra-outputs"
    return {"protocol": PROTOCOL_VERSION, "kind": "layers", "ok": True,
            "agent_version": AGENT_VERSION, "model": {"path": args.model},
            "runtime": model.runtime, "runtime_version": model.runtime_version,
            "threads": model.threads, "provider": model.provider,
            "runtime_settings": model.runtime_settings, "layers": layers,
            "python": platform.python_version(), "wall_s": time.time() - t_start}


def sha256_of(path):
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_or_none(path):
    try:
        return sha256_of(path)
    except OSError:
        return None  # a missing or unreadable file is reported where it is opened


def _hash_files(paths):
    """sha256 of each path (None: unreadable). On POSIX a forked child hashes: hashlib's OpenSSL
    (~4 MB of RSS, 4x faster than the interpreter's own SHA-256) never enters this supervisor,
    whose memory the measuring child inherits and reports."""
    if not hasattr(os, "fork"):  # pragma: no cover - Windows measures in a new interpreter
        return [_sha256_or_none(p) for p in paths]
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the hashing child: never returns
        code = 1
        try:
            os.close(r)
            data = json.dumps([_sha256_or_none(p) for p in paths]).encode()
            while data:
                data = data[os.write(w, data):]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    try:
        return json.loads(b"".join(chunks).decode())
    except ValueError:
        return [None] * len(paths)


def check_cached_files(expected, kind):
    """A ``CacheCorrupt`` error document naming each file whose sha256 is not the one expected
    (a cache entry damaged on the device since it was verified), else None.

    Hashing reads the file once, which is cheap next to loading a model from it.

    Args:
        expected: ``(role, path, sha256)`` triples; a None sha256 is not checked.
        kind: the document's kind (``run`` or ``probe``).
    """
    expected = [(role, path, want) for role, path, want in expected if want and path]
    if not expected:
        return None
    corrupt = []
    for (role, path, want), got in zip(expected, _hash_files([p for _, p, _ in expected])):
        if got is not None and got != want.lower():
            corrupt.append({"role": role, "path": os.path.abspath(path), "expected": want.lower(),
                            "found": got})
    if not corrupt:
        return None
    return _error_doc(kind, "CacheCorrupt", "%s: sha256 differs from the expected one (damaged "
                      "on the device)" % ", ".join(c["path"] for c in corrupt), corrupt=corrupt)


def _error_doc(kind, etype, message, **extra):
    doc = {"protocol": PROTOCOL_VERSION, "kind": kind, "ok": False, "agent_version": AGENT_VERSION,
           "error": {"type": etype, "message": message}}
    doc["error"].update(extra)
    return doc


def supervise(args, argv, timeout):
    """Measure in a fresh child process; turn crashes, OOM kills and hangs into error documents.

    On POSIX the child is forked from this small supervisor (which has not imported numpy or any
    runtime), saving an interpreter start-up; elsewhere it is a new ``_measure`` interpreter.

    Returns:
        (run document, device facts probed while the child was measuring).
    """
    if hasattr(os, "fork"):
        code, out, err, timed_out, facts = _fork_measure(args, timeout)
    else:  # pragma: no cover - Windows
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_measure"] + argv,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        facts = probe(_cache_dir_of(args.model))
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            timed_out = True
        code = proc.returncode
    text = err.decode("utf-8", "replace")
    sys.stderr.write(text)
    tail = text.strip().splitlines()[-20:]
    if timed_out:
        return _error_doc("run", "Timeout", "measuring %s took more than %s s; killed"
                          % (args.model, timeout), stderr_tail=tail), facts
    out = out.decode("utf-8", "replace").strip()
    if code in (0, EXIT_ERROR) and out:
        try:
            return json.loads(out.splitlines()[-1]), facts
        except ValueError:
            pass
    if code < 0:
        sig = -code
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "signal %d" % sig
        hint = " (likely out of memory: the kernel's OOM killer)" if sig == signal.SIGKILL else ""
        return _error_doc("run", "Crashed", "the runtime was killed by %s while measuring %s%s"
                          % (name, args.model, hint), signal=name, exit_code=code,
                          stderr_tail=tail), facts
    limit = (" under a %d MiB memory limit" % args.memory_limit_mb) if args.memory_limit_mb else ""
    return _error_doc("run", "Crashed", "the measuring process exited %d without a result for %s%s"
                      % (code, args.model, limit), exit_code=code, stderr_tail=tail), facts


def _cache_dir_of(model):
    return os.path.dirname(os.path.dirname(os.path.abspath(model)))


def _fork_measure(args, timeout):
    import select
    import tempfile

    err_file = tempfile.TemporaryFile()
    out_r, out_w = os.pipe()
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the measuring child: never returns
        code = 70
        try:
            os.close(out_r)
            # Runtimes print from C to fd 1 and 2: both go to the log file, so the supervisor's
            # stdout carries nothing but its one JSON document.
            os.dup2(err_file.fileno(), 1)
            os.dup2(err_file.fileno(), 2)
            die_with_parent()
            if os.getppid() != parent:
                os._exit(code)
            _limit_memory(args.memory_limit_mb)
            try:
                doc = measure(args)
            except (AgentModelError, NoRuntimeError, RunFailed, OSError, MemoryError) as e:
                doc = _error_doc("run", type(e).__name__, str(e))
            data = (json.dumps(doc) + "\n").encode()
            while data:
                data = data[os.write(out_w, data):]
            code = 0 if doc.get("ok") else EXIT_ERROR
        except BaseException:  # noqa: B036, BLE001 - the child must report and _exit, never unwind
            import traceback

            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(out_w)
    facts = probe(_cache_dir_of(args.model))  # while the child loads and measures
    out, deadline, timed_out = bytearray(), time.monotonic() + timeout, False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            timed_out = True
            break
        ready, _, _ = select.select([out_r], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(out_r, 1 << 16)
            if not chunk:
                break
            out += chunk
    os.close(out_r)
    _, status = os.waitpid(pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    err_file.seek(0)
    err = err_file.read()
    err_file.close()
    return code, bytes(out), err, timed_out, facts


def _limit_memory(megabytes):
    """Cap the measuring process's address space (emulate a smaller board); None: no cap."""
    if not megabytes:
        return
    import resource

    limit = int(megabytes) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def die_with_parent():
    """Linux: if the supervisor is killed, the kernel kills this child too (the measuring child
    here; edgekit's supervised CLI child as well)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError) as e:
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", e)


def _parser():
    p = argparse.ArgumentParser(prog="agent.py", description="edgekit device agent")
    sub = p.add_subparsers(dest="command")
    pp = sub.add_parser("probe", help="describe this device as JSON")
    _agent_sha256_option(pp)
    pp.add_argument("--cache-dir", default="~/.cache/edgekit")
    for name in ("run", "_measure"):
        r = sub.add_parser(name, help="benchmark one model file" if name == "run" else None)
        r.add_argument("model")
        r.add_argument("--runs", type=int, default=100)
        r.add_argument("--warmup", type=int, default=10)
        r.add_argument("--threads", type=int, default=1)
        r.add_argument("--runtime", default=None)
        r.add_argument("--xnnpack", choices=("on", "off"), default="on",
                       help="TFLite: apply the default XNNPACK delegate (off: built-in kernels)")
        r.add_argument("--ort-opt-level", choices=ORT_OPT_LEVELS, default="all",
                       help="ONNX Runtime's graph optimization level")
        r.add_argument("--eval", default=None, help=".npz with x (+ y) or arrays per input name")
        r.add_argument("--reference", default=None, help=".npz of reference outputs")
        r.add_argument("--per-layer", action="store_true",
                       help="after the timed runs, time each layer in a short separate pass")
        r.add_argument("--per-layer-top", type=int, default=PER_LAYER_TOP,
                       help="layers kept by name in the document (the rest: one 'other' line)")
        r.add_argument("--timeout", type=float, default=900.0)
        r.add_argument("--memory-limit-mb", type=int, default=None,
                       help="cap the measuring process's address space (RLIMIT_AS)")
        _agent_sha256_option(r)
        for what in ("", "eval-", "reference-"):
            r.add_argument("--%ssha256" % what, default=None,
                           help="the %s file's expected sha256: a mismatch is a CacheCorrupt "
                                "error, nothing is run" % (what.rstrip("-") or "model"))
    lp = sub.add_parser("layers", help="compare intermediate tensors with the host's")
    lp.add_argument("model", help="the model, edited on the host so the tensors are outputs")
    lp.add_argument("--reference", required=True,
                    help=".npz: names, t<i> host values, q<i> quantization, in<j> feeds")
    lp.add_argument("--artifact", default=None,
                    help="the unedited model: its outputs are compared too (o<k> in the reference)")
    lp.add_argument("--threads", type=int, default=1)
    lp.add_argument("--runtime", default=None)
    lp.add_argument("--xnnpack", choices=("on", "off"), default="on")
    lp.add_argument("--ort-opt-level", choices=ORT_OPT_LEVELS, default="all")
    _agent_sha256_option(lp)
    for what in ("", "reference-", "artifact-"):
        lp.add_argument("--%ssha256" % what, default=None,
                        help="the %s file's expected sha256 (CacheCorrupt on a mismatch)"
                        % (what.rstrip("-") or "model"))
    _agent_sha256_option(sub.add_parser("version"))
    return p


def _agent_sha256_option(parser):
    parser.add_argument("--agent-sha256", default=None,
                        help="refuse to run (CacheCorrupt) unless this file has this sha256")


def main(argv=None):
    """Command-line entry point; returns the exit code (0 ok, 3 error document, 2 usage)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="agent: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    own = check_cached_files([("agent", os.path.abspath(__file__),
                               getattr(args, "agent_sha256", None))], args.command or "version")
    if own is not None:
        doc = own
    elif args.command == "probe":
        doc = probe(args.cache_dir)
    elif args.command == "version":
        doc = {"protocol": PROTOCOL_VERSION, "kind": "version", "ok": True,
               "agent_version": AGENT_VERSION}
    elif args.command == "run":
        if args.runs < 1 or args.warmup < 0 or args.threads < 1:
            doc = _error_doc("run", "BadOptions", "runs >= 1, warmup >= 0, threads >= 1 expected")
        else:
            doc = check_cached_files([("model", args.model, args.sha256),
                                      ("eval", args.eval, args.eval_sha256),
                                      ("reference", args.reference, args.reference_sha256)], "run")
            if doc is None:
                doc, facts = supervise(args, argv[1:], args.timeout)
                doc["device"] = facts
    elif args.command == "layers":
        doc = check_cached_files([("model", args.model, args.sha256),
                                  ("reference", args.reference, args.reference_sha256),
                                  ("artifact", args.artifact, args.artifact_sha256)], "layers")
        if doc is None:
            try:
                doc = measure_layers(args)
            except (AgentModelError, NoRuntimeError, RunFailed, OSError, MemoryError,
                    ValueError) as e:  # ValueError: np.load of a damaged .npz
                doc = _error_doc("layers", type(e).__name__, str(e))
    elif args.command == "_measure":
        die_with_parent()
        _limit_memory(args.memory_limit_mb)
        try:
            doc = measure(args)
        except (AgentModelError, NoRuntimeError, RunFailed, OSError, MemoryError) as e:
            doc = _error_doc("run", type(e).__name__, str(e))
    else:
        _parser().print_help(sys.stderr)
        return 2
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
    return 0 if doc.get("ok") else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

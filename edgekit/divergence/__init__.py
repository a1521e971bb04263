"""Where a device's kernels start to diverge from the host's, layer by layer (ONNX artifacts).

The host runs the artifact on a few samples and keeps its intermediate tensors; the device runs
the same artifact (``agent.py layers``) and compares its own tensors with them, returning only
per-tensor statistics. ONNX Runtime reads an intermediate tensor only as a graph output, and a
device may have no ``onnx`` package, so the host edits the graph (the tensors become extra
outputs) and pushes the edited copy; host and device both run that copy.

Which tensors: in a QDQ model, the outputs of the ``QuantizeLinear`` nodes (the int8 activations
as the artifact defines them) plus the graph outputs; in any other model, every node's float/int8
output. Each is named after the op that computes it (Q/DQ skipped).

Measured caveat (ORT 1.32 on x86-64): with signed int8 activations, which ORT converts to uint8
on x86 (its ``qdq_s8_to_u8`` rewrite), a QDQ group whose int8 tensor is a graph output is not
fused, so the copy runs that layer as DequantizeLinear -> float op -> QuantizeLinear instead of
the fused ``QLinear*`` kernel; with uint8 activations (edgekit's x86 layout) every group stays
fused. The report counts the fused int8 kernels of the artifact and of the copy on this machine
(``int8_kernels``) and compares the unedited artifact's outputs on the device as well
(``artifact_outputs``): when those depart while every layer of the copy agrees, the difference
is in fused int8 kernels the copy did not run.

The report's fields are described in docs/convert.md ("On a device").
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgekit.errors import AgentError, InputError

log = logging.getLogger(__name__)

#: A tensor departs when the device-vs-host SQNR falls below this (identical is +inf). ORT's int8
#: kernels of two CPU families differ by a rounding step here and there (~40 dB and up); a
#: kernel that computes something else is far below.
DEPARTS_BELOW_DB = 30.0
DEFAULT_SAMPLES = 4
#: Tensors compared at most (evenly spaced over the graph beyond it, the last always kept): the
#: agent's document stays ~60 bytes a tensor, the reference pushed ~samples x tensor sizes.
MAX_TENSORS = 256
#: Largest reference pushed to the device (the host's tensors for every sample): beyond it fewer
#: samples are compared (at least one), and the result says so.
MAX_REFERENCE_BYTES = 64 << 20
_SKIP_OPS = {"QuantizeLinear", "DequantizeLinear", "Constant", "Shape", "ConstantOfShape"}
_COMPARED_TYPES = {1: "float32", 3: "int8", 2: "uint8", 10: "float16"}  # onnx elem types
_INT8_TYPES = (2, 3)
# QOperator ops: the input positions of their output's scale and zero point.
_OUTPUT_QPARAMS = {"QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QLinearAdd": (6, 7),
                   "QLinearMul": (6, 7), "QLinearSigmoid": (3, 4), "QLinearLeakyRelu": (3, 4),
                   "QLinearAveragePool": (3, 4), "QLinearGlobalAveragePool": (3, 4),
                   "QLinearSoftmax": (3, 4), "QLinearConcat": (0, 1), "QuantizeLinear": (1, 2)}


@dataclass(frozen=True)
class Probe:
    """One tensor compared: the value read (``name``), the float tensor it stands for in the
    source (``float_name``), the op that computes it and the quantization it is read with."""

    name: str
    float_name: Optional[str]
    layer: str
    op_type: str
    node_index: int
    scale: Optional[float] = None
    zero_point: Optional[float] = None
    tensor_index: Optional[int] = None  # TFLite: read by index


def plan_probes(model, max_tensors: int = MAX_TENSORS) -> tuple[list[Probe], int]:
    """The tensors of an ``onnx.ModelProto`` to compare, in graph order.

    Returns:
        (probes, how many there were before the ``max_tensors`` bound).
    """
    from onnx import numpy_helper, shape_inference

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            producer[out] = (i, node)
    try:
        inferred = shape_inference.infer_shapes(model).graph
        types = {v.name: v.type.tensor_type.elem_type
                 for v in list(inferred.value_info) + list(inferred.output)}
    except Exception as e:  # noqa: BLE001 - shape inference is a filter only; without it, keep all
        log.debug("shape inference failed (%s): comparing every node output", e)
        types = {}

    def origin(name):
        """The op that computes ``name``, looking through Q/DQ pairs."""
        seen = 0
        while name in producer and producer[name][1].op_type in ("QuantizeLinear",
                                                                 "DequantizeLinear") and seen < 8:
            name, seen = producer[name][1].input[0], seen + 1
        if name not in producer:
            return -1, name, "Input"
        i, node = producer[name]  # ORT's QOperator quantizer names its nodes "<node>_quant"
        return i, (node.name or name).removesuffix("_quant"), node.op_type

    def scalar(name):
        return float(numpy_helper.to_array(inits[name]).ravel()[0]) \
            if name in inits and np.prod(inits[name].dims or [1]) == 1 else None

    qdq = any(n.op_type == "QuantizeLinear" for n in graph.node) and not any(
        n.op_type.startswith("QLinear") for n in graph.node)  # QOperator: QLinear* ops
    probes, seen = [], set()
    for node in graph.node:
        if qdq and node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            scale = scalar(node.input[1])
            zp = scalar(node.input[2]) if len(node.input) > 2 and node.input[2] else 0.0
            if scale is None:
                continue  # a per-axis activation: not read back
            i, layer, op = origin(node.input[0])
            # ORT's quantizer renames a graph output's float tensor "<name>_QuantizeLinear_Input"
            float_name = node.input[0].removesuffix("_QuantizeLinear_Input")
            probes.append(Probe(node.output[0], float_name, layer, op, i, scale, zp))
        elif not qdq and node.op_type not in _SKIP_OPS:
            where = _OUTPUT_QPARAMS.get(node.op_type)
            scale = scalar(node.input[where[0]]) if where else None
            zp = (scalar(node.input[where[1]]) if len(node.input) > where[1]
                  and node.input[where[1]] else 0.0) if scale is not None else None
            for out in node.output:
                kind = types.get(out, 1)
                if out and kind in _COMPARED_TYPES:
                    i, layer, op = origin(out)
                    # an int8 tensor of unknown scale: compared in steps, not against float
                    float_name = out.removesuffix("_quantized") if scale is not None else (
                        None if kind in _INT8_TYPES else out)
                    probes.append(Probe(out, float_name, layer, op, i, scale, zp))
        seen.update(p.name for p in probes)
    for out in graph.output:
        made = producer.get(out.name, (0, None))[1]
        if made is not None and made.op_type == "DequantizeLinear" and made.input[0] in seen:
            continue  # the dequantized copy of a probed int8 tensor: the same values
        if out.name not in seen:
            i, layer, op = origin(out.name)
            probes.append(Probe(out.name, out.name, layer, op, i if i >= 0 else len(graph.node)))
    return bounded(probes, max_tensors)


def bounded(probes: list, max_tensors: int) -> tuple[list, int]:
    """(at most ``max_tensors`` probes evenly spaced, the last kept; how many there were)."""
    total = len(probes)
    if total > max_tensors:
        keep = sorted(set(np.linspace(0, total - 1, max_tensors).round().astype(int).tolist()))
        probes = [probes[k] for k in keep]
    return probes, total


def with_outputs(model, names: Sequence[str], out_path: Path) -> Path:
    """Save a copy of ``model`` whose graph outputs also list ``names`` (types left to ORT)."""
    from onnx import ValueInfoProto, save

    copy = type(model)()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    copy.graph.output.extend([ValueInfoProto(name=n) for n in names if n not in have])
    save(copy, str(out_path))
    return out_path


def sample_feeds(model_inputs, feeds, samples: int) -> list[list[np.ndarray]]:
    """Per sample, the raw feeds (one-sample batch) in the model's input order and dtypes."""
    arrays = list(feeds.values()) if isinstance(feeds, dict) else list(feeds)
    if len(arrays) != len(model_inputs):
        raise InputError(f"{len(arrays)} eval arrays for a model of {len(model_inputs)} inputs "
                         f"({[s['name'] for s in model_inputs]})")
    n = min(samples, min(len(a) for a in arrays))
    if n < 1:
        raise InputError("no eval samples to compare layers on")
    return [[np.ascontiguousarray(a[k:k + 1], dtype=spec["dtype"])
             for a, spec in zip(arrays, model_inputs, strict=True)] for k in range(n)]


def host_values(path: Path, names: Sequence[str], per_sample, ort_opt_level: str) -> dict:
    """{name: [samples, n]} of the named outputs in their own dtypes (int8 activations stay
    int8: the agent dequantizes both sides alike, so equal kernels compare exactly equal)."""
    from device_agents.agent import load_model

    model = load_model(str(path), ort_opt_level=ort_opt_level)
    where = {s["name"]: k for k, s in enumerate(model.outputs)}
    rows = [model.run_raw(feeds) for feeds in per_sample]
    return {n: np.stack([np.asarray(r[where[n]]).ravel() for r in rows])
            for n in names if n in where}


def tensor_stats(ref: np.ndarray, got: np.ndarray) -> dict:
    """SQNR (dB; None when identical), max |error|, cosine of ``got`` against ``ref`` (the
    agent's ``compare_layers`` computes the same on the device)."""
    ref, got = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
    err = got - ref
    sig, noise = float(ref @ ref), float(err @ err)
    denom = float(np.sqrt(sig * float(got @ got)))
    return {"sqnr_db": None if noise == 0 else (
                round(float(10 * np.log10(sig / noise)), 2) if sig > 0 else -999.0),
            "max_abs_error": float(np.max(np.abs(err))) if err.size else 0.0,
            "cosine": float(ref @ got) / denom if denom > 0 else 1.0}


def _dequantized(values: np.ndarray, probe: Probe) -> np.ndarray:
    values = np.asarray(values, np.float64)
    if probe.scale is None:
        return values
    return (values - probe.zero_point) * probe.scale


def fit_reference(values: dict, per_sample: list, outputs: list,
                  max_bytes: Optional[int] = None) -> tuple[dict, list, list, Optional[str]]:
    """``values`` / ``per_sample`` / ``outputs`` cut to the samples whose tensors fit in
    ``max_bytes`` (default ``MAX_REFERENCE_BYTES``; at least one sample), and a note saying so
    (None when all fit)."""
    max_bytes = MAX_REFERENCE_BYTES if max_bytes is None else max_bytes
    n = len(per_sample)
    total = sum(np.asarray(v).nbytes for v in values.values()) + \
        sum(np.asarray(o).nbytes for o in outputs) + \
        sum(np.asarray(a).nbytes for s in per_sample for a in s)
    if n <= 1 or total <= max_bytes:
        return values, per_sample, outputs, None
    k = max(1, int(max_bytes // (total / n)))
    if k >= n:
        return values, per_sample, outputs, None
    note = (f"{k} of {n} samples compared: the host's tensors take {total / n / (1 << 20):.1f} "
            f"MiB a sample, the reference pushed to the device at most "
            f"{max_bytes / (1 << 20):.0f} MiB")
    return ({name: np.asarray(v)[:k] for name, v in values.items()}, per_sample[:k],
            [np.asarray(o)[:k] for o in outputs], note)


def write_reference(path: Path, probes: Sequence[Probe], values: dict, per_sample,
                    outputs: Sequence[np.ndarray] = ()) -> Path:
    """The ``.npz`` the agent's ``layers`` command compares against (see ``compare_layers``);
    ``outputs``: the unedited artifact's outputs on this machine, in its output order."""
    arrays = {"names": np.array([p.name for p in probes])}
    for k, out in enumerate(outputs):
        arrays[f"o{k}"] = out
    if probes and probes[0].tensor_index is not None:
        arrays["tensor_index"] = np.array([p.tensor_index for p in probes], np.int64)
    for i, p in enumerate(probes):
        if p.name in values:
            arrays[f"t{i}"] = values[p.name]
        if p.scale is not None:
            arrays[f"q{i}"] = np.array([p.scale, p.zero_point], np.float64)
    for j in range(len(per_sample[0])):
        arrays[f"in{j}"] = np.stack([s[j] for s in per_sample])
    np.savez(path, **arrays)
    return path


def int8_kernels(path: Path, ort_opt_level: str = "all") -> int:
    """How many nodes of ONNX Runtime's optimized graph for ``path`` (on this machine) are
    fused int8 kernels (``QLinear*``, ``*Integer``)."""
    import onnx
    import onnxruntime as ort

    from device_agents.agent import load_model

    with tempfile.TemporaryDirectory(prefix="edgekit-fused-") as wd:
        out = Path(wd) / "optimized.onnx"
        model = load_model(str(path), ort_opt_level=ort_opt_level)
        opts = model.session_options(ort)
        opts.optimized_model_filepath = str(out)
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(out)).graph
    return sum(1 for n in graph.node
               if n.op_type.startswith("QLinear") or n.op_type.endswith("Integer"))


def first_departure(rows: Sequence[dict], threshold_db: float = DEPARTS_BELOW_DB) -> Optional[dict]:
    """The first row (graph order) whose device-vs-host SQNR is below ``threshold_db``."""
    for row in rows:
        sqnr = row.get("device_sqnr_db")
        if row.get("device_compared") and sqnr is not None and sqnr < threshold_db:
            return row
    return None


@dataclass(frozen=True)
class DivergenceOptions:
    """How the device's layers are compared.

    Attributes:
        samples: eval samples run on both sides.
        threshold_db: device-vs-host SQNR below which a tensor departs.
        max_tensors: tensors compared at most (evenly spaced beyond it).
        ort_opt_level: ONNX Runtime's graph optimization level on both sides.
        timeout: seconds the agent may take.
    """

    samples: int = DEFAULT_SAMPLES
    threshold_db: float = DEPARTS_BELOW_DB
    max_tensors: int = MAX_TENSORS
    ort_opt_level: str = "all"
    timeout: float = 600.0


def measure_divergence(artifact, feeds, device, *, device_artifact=None, float_model=None,
                       options: Optional[DivergenceOptions] = None, connect=None,
                       inventory=None) -> dict:
    """Compare a device's intermediate tensors with this machine's, layer by layer.

    Args:
        artifact: the ``.onnx`` artifact the host runs (its tensors are the reference).
        feeds: eval inputs, ``{name: [N, ...]}`` or a list in the model's input order.
        device: ``local``, an inventory name, ``user@host[:port]`` or a DeviceSpec.
        device_artifact: what the device runs instead (default: ``artifact``), e.g. a rebuilt
            or repaired copy with the same tensor names.
        float_model: the float ``.onnx`` (or ModelProto) the artifact was quantized from: each
            layer's host-int8 vs float SQNR, where tensor names match.
        options: DivergenceOptions.
        connect / inventory: as for :func:`edgekit.bench.benchmark`.

    Returns:
        ``{"device", "artifact", "samples", "threshold_db", "tensor_count", "compared",
        "method", "runtime", "runtime_version", "layers": [row...], "first_departure": row or
        None, "int8_kernels": {"artifact", "copy"}, "artifact_outputs": [{"output",
        "device_sqnr_db", "device_max_abs_error", "device_cosine"}], "artifact_departs"}``; a
        row: ``{"index", "tensor", "layer", "op_type", "quant_sqnr_db", "device_sqnr_db",
        "device_max_abs_error", "device_cosine", "device_compared"}``. SQNR ``None``: identical.

    Raises:
        InputError: not an ONNX artifact, or unusable feeds. AgentError / DeviceError: the
        device did not answer, or answered with an error.
    """
    from edgekit.bench import resolve_devices
    from edgekit.devices.device import Device

    options = options or DivergenceOptions()
    artifact = Path(artifact)
    fmt = artifact.suffix.lower()
    if fmt not in (".onnx", ".tflite"):
        raise InputError(f"per-layer divergence compares .onnx and .tflite artifacts; got "
                         f"{artifact.name}")
    [spec] = resolve_devices([device], inventory, getattr(connect, "ssh_config", None))
    from device_agents.agent import load_model

    loaded = load_model(str(artifact), ort_opt_level=options.ort_opt_level)
    out_names = [o["name"] for o in loaded.outputs]
    per_sample = sample_feeds(loaded.inputs, feeds, options.samples)
    with tempfile.TemporaryDirectory(prefix="edgekit-layers-") as wd:
        prep = (_prepare_onnx if fmt == ".onnx" else _prepare_tflite)(
            artifact, device_artifact, float_model, per_sample, out_names, options, Path(wd))
        with Device.open(spec, connect) as dev:
            remote_model, _ = dev.ensure_file(prep.model, name="layers" + fmt)
            remote_ref, _ = dev.ensure_file(prep.reference, name="reference.npz")
            remote_art, _ = dev.ensure_file(device_artifact or artifact)
            doc = dev.layers(remote_model, remote_ref, remote_artifact=remote_art,
                             ort_opt_level=options.ort_opt_level, xnnpack=fmt != ".tflite",
                             timeout=options.timeout)
    probes, total, quant, kernels = prep.probes, prep.total, prep.quant, prep.kernels
    if not doc.get("ok"):
        err = doc.get("error") or {}
        raise AgentError(f"{spec.name}: per-layer comparison failed: {err.get('type')}: "
                         f"{err.get('message')}")
    stats = {t["index"]: t for t in doc["layers"]["tensors"]}
    rows = []
    for i, p in enumerate(probes):
        s = stats.get(i)
        rows.append({"index": i, "tensor": p.name, "layer": p.layer, "op_type": p.op_type,
                     "quant_sqnr_db": quant.get(p.name),
                     "device_sqnr_db": s and s["sqnr_db"],
                     "device_max_abs_error": s and s["max_abs_error"],
                     "device_cosine": s and s["cosine"], "device_compared": s is not None})
    outs = {t["index"]: t for t in doc["layers"].get("artifact_outputs", [])}
    outputs = [{"output": n, "device_sqnr_db": outs[k]["sqnr_db"],
                "device_max_abs_error": outs[k]["max_abs_error"],
                "device_cosine": outs[k]["cosine"]} for k, n in enumerate(out_names) if k in outs]
    return {"device": spec.name, "artifact": str(artifact),
            "device_artifact": str(device_artifact or artifact),
            "samples": prep.samples or len(per_sample), "threshold_db": options.threshold_db,
            "tensor_count": total, "compared": len(stats),
            "method": doc["layers"].get("method"), "runtime": doc.get("runtime"),
            "runtime_version": doc.get("runtime_version"), "layers": rows,
            "first_departure": first_departure(rows, options.threshold_db),
            "int8_kernels": kernels, "note": prep.note, "artifact_outputs": outputs,
            "artifact_departs": any(o["device_sqnr_db"] is not None
                                    and o["device_sqnr_db"] < options.threshold_db
                                    for o in outputs)}


@dataclass
class _Prepared:
    """What goes to the device, and what the host already knows."""

    probes: list
    total: int
    model: Path  # what the device reads out (ONNX: an edited copy; TFLite: the file itself)
    reference: Path
    quant: dict
    kernels: Optional[dict] = None
    note: Optional[str] = None
    samples: Optional[int] = None  # samples in the reference (fewer than asked when capped)


def _prepare_onnx(artifact, device_artifact, float_model, per_sample, out_names, options,
                  wd: Path) -> _Prepared:
    import onnx

    model = onnx.load(str(artifact))
    probes, total = plan_probes(model, options.max_tensors)
    names = [p.name for p in probes]
    host_model = with_outputs(model, names, wd / "host.onnx")
    values = host_values(host_model, names, per_sample, options.ort_opt_level)
    plain = host_values(artifact, out_names, per_sample, options.ort_opt_level)
    values, per_sample, outs, capped = fit_reference(values, per_sample,
                                                     [plain[n] for n in out_names])
    ref = write_reference(wd / "reference.npz", probes, values, per_sample, outs)
    on_device = host_model if device_artifact is None else with_outputs(
        onnx.load(str(device_artifact)), names, wd / "device.onnx")
    quant = _float_comparison(float_model, probes, values, per_sample, wd)
    kernels = {"artifact": int8_kernels(artifact, options.ort_opt_level),
               "copy": int8_kernels(host_model, options.ort_opt_level)}
    return _Prepared(probes, total, on_device, ref, quant, kernels, capped, len(per_sample))


def _prepare_tflite(artifact, device_artifact, float_model, per_sample, out_names, options,
                    wd: Path) -> _Prepared:
    from edgekit.divergence.tflite import plan_tflite, tflite_outputs, tflite_values

    probes, total = plan_tflite(artifact, options.max_tensors)
    values = tflite_values(artifact, probes, per_sample)
    values, per_sample, outs, capped = fit_reference(values, per_sample,
                                                     list(tflite_outputs(artifact, per_sample)))
    ref = write_reference(wd / "reference.npz", probes, values, per_sample, outs)
    note = ("layers read with LiteRT's built-in kernels (XNNPACK off, all tensors preserved: "
            "no buffer reuse); the artifact's outputs with its default XNNPACK delegate")
    note = note if capped is None else f"{note}; {capped}"
    return _Prepared(probes, total, Path(device_artifact or artifact), ref, {}, None, note,
                     len(per_sample))


def _float_comparison(float_model, probes, values, per_sample, wd: Path) -> dict:
    """{probe name: host-int8 vs float SQNR} for the probes whose float tensor the float model
    has (by name); empty without a float model."""
    if float_model is None:
        return {}
    import onnx

    fm = float_model if isinstance(float_model, onnx.ModelProto) else onnx.load(str(float_model))
    known = {o for n in fm.graph.node for o in n.output} | {o.name for o in fm.graph.output}
    consumers: dict = {}
    for n in fm.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)

    def activated(name):
        """A tensor read only by a Relu/Clip stands for that op's output: a quantizer that
        folds the activation into the int8 range (QOperator) keeps the pre-activation name."""
        users = consumers.get(name, [])
        if len(users) == 1 and users[0].op_type in ("Relu", "Clip"):
            return users[0].output[0]
        return name

    float_of = {p.name: activated(p.float_name) for p in probes
                if p.float_name and p.float_name in known}
    wanted = sorted(set(float_of.values()))
    if not wanted:
        return {}
    path = with_outputs(fm, wanted, wd / "float.onnx")
    try:
        floats = host_values(path, wanted, per_sample, "all")
    except (ValueError, RuntimeError) as e:  # the float graph takes other inputs: no column
        log.info("float model not comparable per layer: %s", e)
        return {}
    out = {}
    for p in probes:
        if float_of.get(p.name) in floats and p.name in values:
            f = floats[float_of[p.name]]
            q = _dequantized(values[p.name], p)
            if f.shape == q.shape:
                out[p.name] = tensor_stats(f, q)["sqnr_db"]
    return out


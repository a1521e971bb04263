"""What the ``onnx-*`` passes share: the float32 ONNX graph of a source, and ORT's pre-processing."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from pathlib import Path

from edgekit.errors import ConversionError

log = logging.getLogger(__name__)

# Per-channel weight scales in QDQ form need DequantizeLinear's `axis` (opset 13).
MIN_QDQ_OPSET = 13


def float_model(source, options, notes: list | None = None):
    """The float32 ``onnx.ModelProto`` for ``source`` (tf2onnx for TF sources, cached per opset),
    specialised for ``options.fix_inputs`` (``converters.fix_inputs``; what was folded is
    appended to ``notes``).

    Returns:
        (model, tools) where tools maps tool names to versions.

    Raises:
        ConversionError: tf2onnx failed.
    """
    import onnx

    if source.format == "onnx":
        return _fixed(_copy(source.model), options, notes), {"onnx": onnx.__version__}
    cache = source.__dict__.setdefault("_onnx_cache", {})
    if options.opset not in cache:
        import tensorflow as tf
        import tf2onnx

        try:
            model = source.to_onnx(options.opset)
        except ConversionError:
            raise
        except Exception as e:  # tf2onnx raises anything from ValueError to KeyError
            raise ConversionError(
                f"tf2onnx failed on {source.path.name} at opset {options.opset}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
        canonical_names(model)
        cache[options.opset] = (model, {"tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__,
                                        "onnx": onnx.__version__})
    model, tools = cache[options.opset]
    return _fixed(_copy(model), options, notes), dict(tools)


def _fixed(model, options, notes):
    if not getattr(options, "fix_inputs", None):
        return model
    from converters.fix_inputs import specialise

    return specialise(model, dict(options.fix_inputs), notes if notes is not None else [])


_GENERATED = re.compile(r"__(\d+)")


def canonical_names(model) -> None:
    """Renumber the names tf2onnx generates, in graph order, so one model converts to equal bytes.

    tf2onnx suffixes the nodes and constants it inserts with a process-wide counter
    (``Transpose__63``), names the graph after the traced function (``__inference_fn_293``) and
    keeps one of several equal constants by set order (``const_starts__15`` or ``const_axes__20``),
    so two conversions of one model differed in names only, and ``convert --recipe`` could not
    reproduce an artifact's bytes. Generated constants become ``const__<k>`` and initializers are
    stored in first-use order; user-given names (no ``__<n>`` suffix) are kept.
    """
    g = model.graph
    numbers: dict[str, int] = {}

    def renum(name: str) -> str:
        return _GENERATED.sub(lambda m: f"__{numbers.setdefault(m.group(1), len(numbers) + 1)}",
                              name)

    inits = {i.name: i for i in g.initializer}
    rename: dict[str, str] = {}
    order: list[str] = []
    for node in g.node:
        for name in node.input:
            if name in inits and name not in rename:
                order.append(name)
                rename[name] = (f"const__c{len(order)}" if _GENERATED.search(name) else name)
    for node in g.node:
        node.name = renum(node.name)
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name) or renum(name)
        for i, name in enumerate(node.output):
            node.output[i] = renum(name)
    kept = [inits[n] for n in order] + [i for n, i in inits.items() if n not in rename]
    copies = [type(i)() for i in kept]
    for new, old in zip(copies, kept, strict=True):
        new.CopyFrom(old)
        new.name = rename.get(old.name, old.name)
    del g.initializer[:]
    g.initializer.extend(copies)
    for value in list(g.input) + list(g.output) + list(g.value_info):
        value.name = rename.get(value.name) or renum(value.name)
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = renum(dim.dim_param)
    g.doc_string = _GENERATED.sub("", g.doc_string) if "__inference" not in g.doc_string \
        else "converted by tf2onnx"


def source_notes(source) -> list:
    """How the source was loaded, when that is worth a note in the artifact's pass config."""
    return list(source.loader_notes()) if hasattr(source, "loader_notes") else []


def opset_of(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model, minimum: int, notes: list):
    """Upgrade the default-domain opset to ``minimum`` when it is lower (needed for QDQ per-channel)."""
    from onnx import version_converter

    current = opset_of(model)
    if current >= minimum:
        return model
    try:
        upgraded = version_converter.convert_version(model, minimum)
    except Exception as e:  # the version converter raises RuntimeError/ValueError
        raise ConversionError(f"cannot upgrade ONNX opset {current} → {minimum} for quantization: "
                              f"{str(e).splitlines()[0]}") from e
    notes.append(f"opset upgraded {current} -> {minimum} for QDQ per-channel quantization")
    return upgraded


def preprocess(model, workdir: Path, notes: list) -> Path:
    """ORT's quantization pre-processing (shape inference + graph optimization), with fallbacks.

    ORT's symbolic shape inference fails on some graphs; then ONNX's own inference is used, and if
    that fails too the model is quantized as is. Each fallback is recorded in ``notes``.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    raw = workdir / "float.onnx"
    onnx.save(model, str(raw))
    out = workdir / "preprocessed.onnx"
    for skip_symbolic in (False, True):
        try:
            # ORT's symbolic shape inference saves sym_shape_infer_temp.onnx (+ <uuid>.data) into
            # the current directory when it fails: keep that litter in our work dir.
            with _cwd(workdir):
                quant_pre_process(str(raw), str(out), skip_symbolic_shape=skip_symbolic)
        except Exception as e:  # shape inference raises anything; we fall back
            log.info("quant_pre_process(skip_symbolic_shape=%s) failed: %s", skip_symbolic, e,
                     exc_info=log.isEnabledFor(logging.DEBUG))
            continue
        if skip_symbolic:
            notes.append("ORT symbolic shape inference failed; used ONNX shape inference")
        _flatten_file_gemm_biases(out, notes)
        return out
    notes.append("ORT pre-processing failed; quantized without it")
    _flatten_file_gemm_biases(raw, notes)
    return raw


def _flatten_file_gemm_biases(path: Path, notes: list) -> None:
    """:func:`flatten_gemm_biases` on a model file, rewritten only when something changed."""
    import onnx

    model = onnx.load(str(path))
    changed = flatten_gemm_biases(model)
    if changed:
        onnx.save(model, str(path))
        notes.append(f"{changed} Gemm bias(es) of shape [1, N] stored as [N] for quantization")


def flatten_gemm_biases(model) -> int:
    """Store each Gemm's constant bias ``C`` of shape ``[1, N]`` as ``[N]`` (same result).

    ORT's pre-processing fuses ``MatMul`` + ``Add`` into a ``Gemm`` whose ``C`` keeps the Add's
    broadcast shape; graphs from jax2tf / tf2onnx (``x @ W + b.reshape(1, -1)``) give ``[1, N]``.
    ORT's per-channel static quantizer then indexes that bias per output channel and compares a
    whole row with a scalar ("The truth value of an array with more than one element is
    ambiguous"). Gemm broadcasts ``C`` to ``[M, N]``, so ``[N]`` computes the same output.
    Top-level graph only; an initializer other nodes also read is copied, not changed in place.

    Returns:
        How many Gemm biases were rewritten.
    """
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    readers: dict[str, int] = {}
    for node in g.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    changed = 0
    for node in g.node:
        if node.op_type != "Gemm" or len(node.input) < 3 or node.input[2] not in inits:
            continue
        bias = inits[node.input[2]]
        if len(bias.dims) != 2 or bias.dims[0] != 1:
            continue
        flat = numpy_helper.to_array(bias).reshape(-1)
        if readers[bias.name] > 1:
            name = f"{bias.name}_flat_{changed}"
            g.initializer.append(numpy_helper.from_array(flat, name))
            node.input[2] = name
        else:
            bias.CopyFrom(numpy_helper.from_array(flat, bias.name))
        changed += 1
    return changed


@contextlib.contextmanager
def _cwd(path: Path):
    """Run a block in ``path`` (for tools that write scratch files into the current directory)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def host_int8_may_saturate() -> bool:
    """True on x86 CPUs with AVX2 but no VNNI, where ONNX Runtime's int8 kernels can saturate."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


def workdir():
    return tempfile.TemporaryDirectory(prefix="edgekit-onnx-")


def save(model, out_path: Path) -> None:
    import onnx

    onnx.save(model, str(out_path))


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _copy(model):
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m

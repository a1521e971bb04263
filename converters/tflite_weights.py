"""What a converted .tflite really stores: distinct weight values per layer, the LiteRT sparse
tensor encoding; and the rewrite a float .tflite needs before LiteRT's quantizer can quantize it
(``for_quantizer``: float16 weights behind ``DEQUANTIZE``, operator codes of an older schema).

Used to check that clustering survives conversion (a clustered layer's weights hold <= k values
per output channel in the artifact, also after INT8 per-channel quantization), and to measure
what ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY`` does to a sparse model's size and speed. That
flag makes the converter store sufficiently sparse constant weights in the TACO-style
``SparsityParameters`` encoding of the flatbuffer schema; which kernels can run it directly
depends on the runtime build (the reference kernels densify sparse weights at prepare time), so
whether it is smaller or faster is measured, never assumed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import InputError

SIGNATURE_KEY = "serving_default"  # what the TFLite converter names a Keras model's signature

# op -> (weight input index, output-channel axis of the weight in TFLite layout)
_WEIGHT_OPS = {"CONV_2D": (1, 0), "FULLY_CONNECTED": (1, 0), "DEPTHWISE_CONV_2D": (1, -1),
               "CONV_3D": (1, -1), "TRANSPOSE_CONV": (1, 0)}


def _interpreter(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # older stacks: the TensorFlow-bundled one
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(path))


def weight_uniques(path) -> list:
    """Distinct values of every Conv/Depthwise/FullyConnected weight in a .tflite file.

    Returns:
        ``[{"op", "tensor", "dtype", "shape", "unique", "max_unique_per_channel"}]`` in op
        order; int8 weights are counted as stored (int8), float ones as float.

    Raises:
        InputError: a file that is not a readable .tflite model.
    """
    path = Path(path)
    try:
        interp = _interpreter(path)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise InputError(f"cannot read {path} as a .tflite model: {e}") from e
    details = {d["index"]: d for d in interp.get_tensor_details()}
    out = []
    for op in interp._get_ops_details():  # the only public-enough view of op inputs
        spec = _WEIGHT_OPS.get(op["op_name"])
        if spec is None or len(op["inputs"]) <= spec[0]:
            continue
        idx = int(op["inputs"][spec[0]])
        try:
            w = np.asarray(interp.get_tensor(idx))
        except ValueError:
            continue  # not a constant (e.g. a runtime-computed weight)
        if w.ndim < 2:
            continue
        ch = np.moveaxis(w, spec[1], 0).reshape(w.shape[spec[1]], -1)
        out.append({"op": op["op_name"], "tensor": details[idx]["name"],
                    "dtype": np.dtype(w.dtype).name, "shape": list(w.shape),
                    "unique": int(np.unique(w).size),
                    "max_unique_per_channel": max(int(np.unique(r).size) for r in ch)})
    return out


def convert_sparse(model, out, *, representative=None) -> Path:
    """Convert a Keras model to .tflite with ``EXPERIMENTAL_SPARSITY`` (sparse weight encoding).

    Args:
        model: a Keras model.
        out: the .tflite path to write.
        representative: ``None`` for float32, or calibration inputs (an array of samples) for
            full INT8 (``DEFAULT`` + ``EXPERIMENTAL_SPARSITY``, int8 inputs and outputs kept
            float like the ``tflite-int8`` target).

    Returns:
        ``out``.
    """
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    opts = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    if representative is not None:
        opts.insert(0, tf.lite.Optimize.DEFAULT)
        calib = np.asarray(representative, dtype="float32")

        def gen():
            for i in range(min(len(calib), 200)):
                yield [calib[i:i + 1]]

        conv.representative_dataset = gen
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.optimizations = opts
    out = Path(out)
    out.write_bytes(conv.convert())
    return out


def for_quantizer(model_bytes: bytes, *, signature: bool = False) -> tuple[bytes, list]:
    """A float .tflite rewritten the way LiteRT's quantizer needs it to quantize anything.

    Two things in real files make the quantizer quantize nothing, without an error:

    - float16 weights behind ``DEQUANTIZE`` ops (what TFLite's float16 quantization writes): the
      quantizer only quantizes constant float32 weights. They are folded back into float32
      constants (float16 -> float32 is exact) and the DEQUANTIZE ops removed.
    - operator codes written before the schema's int32 ``builtin_code`` existed (older
      MediaPipe models): the op is only in ``deprecated_builtin_code``, the quantizer reads
      ``builtin_code`` (0, i.e. ADD) and sees every op as an ADD. The schema's own rule
      (``max`` of the two) is written into ``builtin_code``.

    And the quantizer calibrates through a signature, which older files lack.

    Args:
        model_bytes: a .tflite flatbuffer.
        signature: add a ``serving_default`` signature over the main graph's inputs and outputs
            (named after their tensors) when the file has none; ``drop_signatures`` removes it.

    Returns:
        ``(bytes, notes)``: the input unchanged and no notes when nothing needed doing, or when
        the weights live outside the flatbuffer (models over 2 GB are not rewritten).
    """
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    if any(b.offset > 1 for b in model.buffers or []):
        return model_bytes, []
    notes = []
    upgraded = 0
    for oc in model.operatorCodes or []:
        if oc.builtinCode < oc.deprecatedBuiltinCode:
            oc.builtinCode = oc.deprecatedBuiltinCode
            upgraded += 1
    if upgraded:
        notes.append(f"{upgraded} operator codes of an older schema upgraded (builtin_code)")
    folded = _fold_fp16(model, fb)
    if folded:
        notes.append(f"{folded} float16 weights behind DEQUANTIZE folded back to float32 "
                     f"constants")
    if signature and not model.signatureDefs and model.subgraphs:
        model.signatureDefs = [_signature(model.subgraphs[0], fb)]
        notes.append(f"a {SIGNATURE_KEY} signature added for calibration (not kept in the "
                     f"artifact)")
    if not notes:
        return model_bytes, []
    return _pack(model, len(model_bytes)), notes


def drop_signatures(model_bytes: bytes) -> bytes:
    """The .tflite without signature defs (undoes ``for_quantizer(..., signature=True)``)."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    if not model.signatureDefs or any(b.offset > 1 for b in model.buffers or []):
        return model_bytes
    model.signatureDefs = None
    return _pack(model, len(model_bytes))


def _pack(model, size_hint: int) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(size_hint * 2 + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _signature(sg, fb):
    def tensor_map(i):
        m = fb.TensorMapT()
        m.name, m.tensorIndex = sg.tensors[i].name, i
        return m

    sig = fb.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = SIGNATURE_KEY, 0
    sig.inputs = [tensor_map(i) for i in _ints(sg.inputs)]
    sig.outputs = [tensor_map(i) for i in _ints(sg.outputs)]
    return sig


def _fold_fp16(model, fb) -> int:
    """Fold every float16 constant -> float32 DEQUANTIZE of ``model`` in place; how many."""
    codes = [max(oc.builtinCode, oc.deprecatedBuiltinCode) for oc in model.operatorCodes or []]
    folded = 0
    for s, sg in enumerate(model.subgraphs or []):
        keep_ops, dropped = [], set()
        for op in sg.operators or []:
            src = _fp16_constant_input(model, sg, op, codes, fb)
            if src is None:
                keep_ops.append(op)
                continue
            out = sg.tensors[op.outputs[0]]
            buf = fb.BufferT()
            data = np.asarray(model.buffers[sg.tensors[src].buffer].data, dtype=np.uint8)
            buf.data = np.frombuffer(data.tobytes(), dtype="<f2").astype("<f4").view(np.uint8)
            model.buffers.append(buf)
            out.buffer = len(model.buffers) - 1
            dropped.add(src)
            folded += 1
        sg.operators = keep_ops
        _drop_unread_tensors(model, s, sg, dropped)
    return folded


def _fp16_constant_input(model, sg, op, codes, fb):
    """The index of the float16 constant a float32 ``DEQUANTIZE`` reads, or None."""
    if codes[op.opcodeIndex] != fb.BuiltinOperator.DEQUANTIZE or len(op.inputs) != 1:
        return None
    src, out = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
    data = model.buffers[src.buffer].data if 0 < src.buffer < len(model.buffers) else None
    if (src.type != fb.TensorType.FLOAT16 or out.type != fb.TensorType.FLOAT32 or data is None
            or not len(data) or op.outputs[0] in _ints(sg.outputs)):
        return None
    return int(op.inputs[0])


def _drop_unread_tensors(model, s: int, sg, candidates: set) -> None:
    """Remove the folded float16 tensors nothing reads any more, renumbering every reference."""
    read = {i for op in sg.operators
            for i in _ints(op.inputs) + _ints(op.outputs) + _ints(op.intermediates)}
    read |= set(_ints(sg.inputs)) | set(_ints(sg.outputs))
    gone = {i for i in candidates if i not in read}
    if not gone:
        return
    for i in gone:  # the float16 bytes would stay in the file otherwise (buffers are by index)
        b = sg.tensors[i].buffer
        if sum(t.buffer == b for g in model.subgraphs for t in g.tensors) == 1:
            model.buffers[b].data = None
    remap, kept = {}, []
    for i, t in enumerate(sg.tensors):
        if i not in gone:
            remap[i] = len(kept)
            kept.append(t)
    sg.tensors = kept

    def renumber(indices):
        return None if indices is None else [remap[int(i)] if i >= 0 else int(i) for i in indices]

    for op in sg.operators:
        op.inputs, op.outputs = renumber(op.inputs), renumber(op.outputs)
        op.intermediates = renumber(op.intermediates)
    sg.inputs, sg.outputs = renumber(sg.inputs), renumber(sg.outputs)
    for sig in model.signatureDefs or []:
        if sig.subgraphIndex == s:
            for m in list(sig.inputs or []) + list(sig.outputs or []):
                m.tensorIndex = remap[m.tensorIndex]


def _ints(indices) -> list:
    """Tensor indices of the object API (a numpy array, a list, or None) as a list of ints."""
    return [] if indices is None else [int(i) for i in indices]

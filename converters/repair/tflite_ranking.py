"""Selective TFLite int8 quantization: keep chosen ops in float with the quantization debugger.

The debugger (``tf.lite.experimental.QuantizationDebugger``) calibrates once and can then emit the
model with any set of ops deny-listed (left in float) in milliseconds, so ranking here measures the
real end-to-end effect of keeping each group in float rather than guessing from local statistics.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from converters.tflite_common import representative_dataset
from edgekit.errors import ConversionError

log = logging.getLogger(__name__)
MAX_RANKED_GROUPS = 48


def selective_debugger(source, options, calibration):
    """A quantization debugger for ``source`` configured like the tflite-int8 pass."""
    import tensorflow as tf

    converter = source.tflite_converter()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(calibration)
    # Float kernels must be available for the ops kept in float.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    if not options.float_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    if not options.per_channel:
        converter._experimental_disable_per_channel = True
    names = [t.name for t in source.inputs]

    def debug_dataset():  # the debugger wants lists in input order, not dicts
        for i, batch in enumerate(calibration.batches(1)):
            if i >= 16:
                break
            yield [batch[n] for n in names]

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=debug_dataset)
    except Exception as e:  # the debugger re-raises converter errors of any type
        raise ConversionError(f"TFLite quantization debugger failed: {str(e).splitlines()[0]}") from e


def write_selective(debugger, float_nodes, out_path: Path) -> None:
    """Write the int8 model with ``float_nodes`` (op output tensor names) left in float."""
    debugger.options.denylisted_nodes = list(float_nodes)
    with contextlib.redirect_stdout(io.StringIO()):
        Path(out_path).write_bytes(debugger.get_nondebug_quantized_model())


def op_groups(model_path: Path) -> list:
    """Per op of the int8 model: its output tensor name and the names of the ops consuming it."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model_path))
    ops = interp._get_ops_details()  # the interpreter's own op list; no public equivalent
    names = {d["index"]: d["name"] for d in interp.get_tensor_details()}
    skip = {"QUANTIZE", "DEQUANTIZE"}
    out_name = {op["index"]: names.get(op["outputs"][0]) for op in ops if len(op["outputs"])}
    groups = []
    for op in ops:
        if op["op_name"] in skip or op["index"] not in out_name:
            continue
        produced = set(op["outputs"])
        consumers = [out_name[c["index"]] for c in ops
                     if c["op_name"] not in skip and produced & set(c["inputs"]) and c["index"] in out_name]
        groups.append({"nodes": [out_name[op["index"]]] + consumers, "op": op["op_name"]})
    return groups


def rank_tflite(source, options, calib, naive_path: Path, evaluate) -> list:
    """Groups ranked by how much keeping them in float improves the output SQNR."""
    debugger = selective_debugger(source, options, calib)
    groups = op_groups(naive_path)[:MAX_RANKED_GROUPS]
    ranked = []
    for g in groups:
        path = Path(naive_path).with_name(Path(naive_path).name + ".rank.tflite")
        try:
            write_selective(debugger, g["nodes"], path)
            fid, _, _ = evaluate(path)
        except Exception as e:  # noqa: BLE001 - a deny-list the converter rejects is skipped
            log.info("ranking %s failed: %s", g["nodes"][0], e)
            continue
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        score = -(fid.sqnr_db + 100 * (fid.accuracy or 0.0))  # lower = keeping it float helps more
        ranked.append({"nodes": g["nodes"], "score": score,
                       "label": f"{g['op']} {g['nodes'][0]!r}: in float, output SQNR "
                                f"{fid.sqnr_db:.1f} dB"})
    ranked.sort(key=lambda r: r["score"])
    return ranked

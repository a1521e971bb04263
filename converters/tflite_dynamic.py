"""tflite-dynamic: int8 weights, float activations (dynamic-range quantization, no calibration).

The TFLite converter leaves weights under 1024 elements in float32 (a floor it does not expose),
so on a small model most weights, or all of them, can stay float: a float32 file under a
dynamic-int8 name. When it leaves most compute weights in float, the float32 conversion is
quantized by the LiteRT quantizer instead, which has no such floor.
"""

import tempfile
from pathlib import Path

from converters.base import PassResult
from converters.content import INT8_DTYPES, MIN_INT8_WEIGHT_SHARE, audit_artifact
from converters.tflite_common import run_converter


def convert(source, options, calibration, out_path) -> PassResult:
    from converters.litert_quantizer import quantize_tflite, quantize_tflite_file

    if source.format == "tflite":
        return quantize_tflite(source, out_path, "dynamic_wi8_afp32")

    def configure(c, tf):
        c.optimizations = [tf.lite.Optimize.DEFAULT]

    result = run_converter(source, out_path, configure)
    share = audit_artifact(out_path, "tflite").weight_share(INT8_DTYPES)
    if share is None or share >= MIN_INT8_WEIGHT_SHARE:
        return result
    with tempfile.TemporaryDirectory(prefix="edgekit-dynamic-") as wd:
        fp32 = Path(wd) / "float32.tflite"
        run_converter(source, fp32, lambda c, tf: None)
        quantized = quantize_tflite_file(fp32, out_path, "dynamic_wi8_afp32")
    quantized.tools = {**result.tools, **quantized.tools}
    quantized.notes = [f"the TFLite converter stored {share:.0%} of the weight parameters as int8 "
                       f"(it keeps weights under 1024 elements in float); quantized by the "
                       f"LiteRT quantizer instead", *quantized.notes]
    return quantized


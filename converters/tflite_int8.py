"""tflite-int8: full-integer model, int8 weights (per-channel scales by default), int8 activations
and I/O.

With ``float_io`` the model keeps float32 inputs/outputs and quantizes/dequantizes inside, which is
easier to drop into an app but costs two ops; int8 I/O is the default because MCU and NPU
delegates want it.

``per_channel=False`` gives one weight scale per tensor: every channel of a layer shares one int8
grid. That is what weight sharing wants (a layer clustered to k values keeps exactly <= k int8
values, and the file carries no per-channel scale/zero-point arrays, so it gzips far smaller),
and what some older NPU delegates require.
"""

from converters.base import PassResult
from converters.tflite_common import representative_dataset, run_converter
from edgekit.errors import InputError


def convert(source, options, calibration, out_path) -> PassResult:
    if source.format == "tflite":
        if not options.per_channel:
            raise InputError("tflite-int8 from a .tflite source: per-tensor weight scales need a "
                             "Keras or SavedModel source (LiteRT's quantizer is per-channel)")
        from converters.litert_quantizer import quantize_tflite

        result = quantize_tflite(source, out_path, "static_wi8_ai8", calibration)
        result.method = "minmax"
        return result

    if options.float_nodes:
        from converters.repair.tflite_ranking import selective_debugger, write_selective

        write_selective(selective_debugger(source, options, calibration), options.float_nodes,
                        out_path)
        import tensorflow as tf

        return PassResult(tools={"tensorflow": tf.__version__}, method="minmax",
                          notes=[f"{len(options.float_nodes)} ops kept in float (quantization debugger)"])

    def configure(c, tf):
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = representative_dataset(calibration)
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if not options.float_io:
            c.inference_input_type = tf.int8
            c.inference_output_type = tf.int8
        if not options.per_channel:
            c._experimental_disable_per_channel = True

    result = run_converter(source, out_path, configure)
    result.method = "minmax"
    return result

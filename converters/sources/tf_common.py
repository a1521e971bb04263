"""What Keras and SavedModel sources share: a traced function and TFLite converters."""

from __future__ import annotations

import numpy as np

from converters.base import Source


def np_dtype(tf_dtype) -> str:
    return np.dtype(tf_dtype.as_numpy_dtype).name


class TFSource(Source):
    """A source TensorFlow can trace. Subclasses provide ``tf_function`` and ``tflite_converter``."""

    def tf_function(self):
        """A ``tf.function`` with a fixed input signature returning ``{output_name: tensor}``."""
        raise NotImplementedError

    def input_signature(self):
        import tensorflow as tf

        return [tf.TensorSpec(list(t.shape), tf.as_dtype(t.dtype), name=t.name) for t in self.inputs]

    def tflite_converter(self):
        """A fresh ``tf.lite.TFLiteConverter`` for this model (one per pass: converters are stateful)."""
        raise NotImplementedError

    def to_onnx(self, opset: int):
        """The float32 ONNX graph of this model, from tf2onnx.

        Args:
            opset: ONNX opset to convert to.

        Returns:
            An ``onnx.ModelProto`` whose inputs and outputs carry this source's names.
        """
        import tf2onnx

        # from_keras breaks on Keras 3, so convert the traced tf.function instead.
        model, _ = tf2onnx.convert.from_function(
            self.tf_function(), input_signature=self.input_signature(), opset=opset)
        return model

    def loader_notes(self) -> list:
        """Remarks on how the model was loaded, kept in every artifact's pass notes."""
        return []

    def predict(self, feeds):
        fn = self.tf_function()
        out = fn(**{t.name: feeds[t.name] for t in self.inputs})
        return [np.asarray(out[o.name]) for o in self.outputs]

"""TensorFlow SavedModel folders (the ``serving_default`` signature).

Loaded with TensorFlow 2's loader; a SavedModel it cannot revive (a Keras 2 model saved with its
optimizer state, without ``tf_keras`` installed) is loaded through the v1 graph path instead
(``savedmodel_v1``), and the artifacts' source description says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from converters.sources import apply_pins
from converters.sources.tf_common import TFSource, np_dtype
from edgekit.errors import ConversionError, ModelLoadError
from edgekit.fsutil import sha256_tree
from edgekit.spec import TensorSpec

log = logging.getLogger(__name__)
SIGNATURE = "serving_default"
V1_LOADER = "tf1-graph"
# What TF2's object-graph revival raises for objects it cannot rebuild (an optimizer without its
# Keras module: AttributeError on add_slot; a missing Keras package: ImportError). A folder that
# is not a readable SavedModel raises other types (OSError, DecodeError) and is not retried.
REVIVAL_ERRORS = (AttributeError, ImportError, TypeError, KeyError)


class SavedModelSource(TFSource):
    format = "savedmodel"

    def __init__(self, path, sha256, inputs, outputs, loaded, signature, v1=None, v1_reason=None):
        super().__init__(path, sha256, inputs, outputs)
        self.loaded = loaded
        self.signature = signature
        self.v1 = v1  # a V1SavedModel when TF2's loader could not load the folder
        self.v1_reason = v1_reason
        self._fn = None

    @classmethod
    def load(cls, path: Path, *, input_shapes: dict, allow_unsafe: bool) -> "SavedModelSource":
        """Load the folder's ``serving_default`` signature (TF2 loader, else the v1 graph path).

        Args:
            path: the SavedModel folder.
            input_shapes: input name → full shape, pinning dynamic dims.
            allow_unsafe: unused (a SavedModel holds no Python code to deserialize).

        Returns:
            The source; ``v1`` is set when it was loaded through the v1 graph path.

        Raises:
            ModelLoadError: unreadable folder, or no ``serving_default`` signature.
            InputError: an ``input_shapes`` entry does not fit the model.
        """
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(path))
        except REVIVAL_ERRORS as e:
            return cls._load_v1(path, input_shapes, e)
        except Exception as e:  # TF raises many unrelated types for a bad folder
            raise ModelLoadError(f"cannot load SavedModel {path}: {_first_line(e)}") from e
        sigs = getattr(loaded, "signatures", {})
        if SIGNATURE not in sigs:
            raise ModelLoadError(
                f"SavedModel {path} has no {SIGNATURE!r} signature (found: {', '.join(sigs) or 'none'}); "
                f"export it with a serving signature")
        sig = sigs[SIGNATURE]
        in_specs = sig.structured_input_signature[1]
        inputs = [TensorSpec(name, tuple(s.shape.as_list()), np_dtype(s.dtype))
                  for name, s in sorted(in_specs.items())]
        inputs = apply_pins(inputs, input_shapes, path)
        outs = sig.structured_outputs
        outputs = [TensorSpec(name, tuple(s.shape.as_list()), np_dtype(s.dtype))
                   for name, s in sorted(outs.items())]
        return cls(path, sha256_tree(path), inputs, outputs, loaded, sig)

    @classmethod
    def _load_v1(cls, path: Path, input_shapes: dict, tf2_error: Exception) -> "SavedModelSource":
        """Load through TensorFlow's v1 graph path after TF2's loader failed with ``tf2_error``.

        Raises:
            ModelLoadError: the v1 loader failed too (both reasons are given).
        """
        from converters.sources.savedmodel_v1 import V1SavedModel

        reason = f"TensorFlow 2's loader failed: {type(tf2_error).__name__}: {_first_line(tf2_error)}"
        try:
            v1 = V1SavedModel(path, SIGNATURE)
        except ModelLoadError as e:
            raise ModelLoadError(f"cannot load SavedModel {path}: {reason}; {e}") from tf2_error
        log.info("SavedModel %s: %s; loaded through the v1 graph path", path, reason)
        inputs = apply_pins([TensorSpec(t.key, t.shape, t.dtype) for t in v1.inputs],
                            input_shapes, path)
        outputs = [TensorSpec(t.key, t.shape, t.dtype) for t in v1.outputs]
        return cls(path, sha256_tree(path), inputs, outputs, None, None, v1=v1, v1_reason=reason)

    def describe(self) -> dict:
        desc = super().describe()
        if self.v1 is not None:
            desc["loader"] = V1_LOADER
            desc["loader_note"] = (f"{self.v1_reason}; loaded, converted and verified through "
                                   f"TensorFlow's v1 graph path")
        return desc

    def loader_notes(self) -> list:
        if self.v1 is None:
            return []
        return [f"source loaded through TensorFlow's v1 graph path ({self.v1_reason})"]

    def _pinned(self) -> dict:
        """Input name → shape for inputs whose declared dims were pinned by ``--input-shape``."""
        declared = {t.key: tuple(t.shape) for t in self.v1.inputs}
        return {t.name: tuple(t.shape) for t in self.inputs if declared[t.name] != tuple(t.shape)}

    def tf_function(self):
        if self.v1 is not None:
            raise ConversionError(
                f"{self.path.name} was loaded through TensorFlow's v1 graph path "
                f"({self.v1_reason}); it has no TF2 function to trace")
        if self._fn is None:
            import tensorflow as tf

            sig = self.signature
            in_names = [t.name for t in self.inputs]
            out_names = [o.name for o in self.outputs]

            @tf.function(input_signature=self.input_signature())
            def fn(*args):
                y = sig(**dict(zip(in_names, args, strict=True)))
                return {n: y[n] for n in out_names}

            self._fn = fn
        return self._fn

    def to_onnx(self, opset: int):
        if self.v1 is None:
            return super().to_onnx(opset)
        return self.v1.to_onnx(opset, self._pinned())

    def predict(self, feeds):
        import tensorflow as tf

        if self.v1 is not None:  # the SavedModel's own graph and variables, run in its session
            return self.v1.run(feeds)
        y = self.signature(**{t.name: tf.constant(np.asarray(feeds[t.name])) for t in self.inputs})
        return [np.asarray(y[o.name]) for o in self.outputs]

    def tflite_converter(self):
        import tensorflow as tf

        if self.v1 is not None:
            return self.v1.tflite_converter(self._pinned())
        declared = {name: tuple(s.shape.as_list())
                    for name, s in self.signature.structured_input_signature[1].items()}
        if any(declared.get(t.name) != tuple(t.shape) for t in self.inputs):
            # --input-shape pinned a dim: convert the traced function, whose signature carries
            # the pinned shapes (from_saved_model would keep the file's dynamic dims).
            fn = self.tf_function().get_concrete_function()
            return tf.lite.TFLiteConverter.from_concrete_functions([fn], self.loaded)
        if any(t.dynamic_dims[1:] for t in self.inputs):
            log.info("SavedModel inputs keep their dynamic dims in TFLite; resize at run time")
        return tf.lite.TFLiteConverter.from_saved_model(str(self.path), signature_keys=[SIGNATURE])


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__

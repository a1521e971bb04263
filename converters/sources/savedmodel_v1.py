"""A SavedModel's serving signature through TensorFlow's v1 graph path (graph + session).

TensorFlow 2's loader revives the whole object graph, optimizer included. A Keras 2 SavedModel
saved with a legacy (``OptimizerV2``) optimizer's state needs ``tf_keras`` to revive it; without
it the optimizer comes back as a plain ``_UserObject`` and loading stops at its slot variables
("'_UserObject' object has no attribute 'add_slot'"). The v1 loader reads only the MetaGraph
and the variables, so it loads such models, and so do the v1 converters built on it:
``tf.compat.v1.lite.TFLiteConverter.from_saved_model`` for TFLite and tf2onnx's graph-def path
(on the frozen graph) for ONNX.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import ConversionError, ModelLoadError

log = logging.getLogger(__name__)
SERVE_TAG = "serve"


@dataclass(frozen=True)
class GraphTensor:
    """A signature entry: its key (the name edgekit uses) and its tensor in the graph."""

    key: str
    tensor: str  # e.g. "serving_default_image:0"
    dtype: str  # numpy dtype name
    shape: tuple  # None for a dynamic dim

    @property
    def op(self) -> str:
        return self.tensor.split(":")[0]


class V1SavedModel:
    """One signature of a SavedModel, loaded in its own ``tf.Graph`` and ``tf.compat.v1.Session``.

    Inputs and outputs are listed in graph tensor-name order, the order the v1 TFLite converter
    gives the artifact's inputs and outputs, so artifacts line up with the source by position
    where their names differ.
    """

    def __init__(self, path: Path, signature_key: str):
        import tensorflow as tf

        self.path = Path(path)
        self.signature_key = signature_key
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        try:
            with self.graph.as_default(), quiet_tf_deprecations():
                meta = tf.compat.v1.saved_model.loader.load(self.session, [SERVE_TAG], str(path))
        except Exception as e:  # the v1 loader raises RuntimeError, ValueError, OSError...
            self.session.close()
            raise ModelLoadError(f"cannot load SavedModel {path} with TensorFlow's v1 loader "
                                 f"(tag {SERVE_TAG!r}): {_first_line(e)}") from e
        if signature_key not in meta.signature_def:
            self.session.close()
            raise ModelLoadError(
                f"SavedModel {path} has no {signature_key!r} signature (found: "
                f"{', '.join(meta.signature_def) or 'none'}); export it with a serving signature")
        sig = meta.signature_def[signature_key]
        self.inputs = _graph_tensors(sig.inputs)
        self.outputs = _graph_tensors(sig.outputs)
        self._frozen = None

    def run(self, feeds: dict) -> list[np.ndarray]:
        """Run the signature; ``feeds`` maps input keys to arrays, outputs in ``self.outputs`` order."""
        fetches = [t.tensor for t in self.outputs]
        ys = self.session.run(fetches, {t.tensor: np.asarray(feeds[t.key]) for t in self.inputs})
        return [np.asarray(y) for y in ys]

    def frozen_graph_def(self):
        """The signature's subgraph with variables folded into constants (computed once)."""
        if self._frozen is None:
            import tensorflow as tf

            with self.graph.as_default(), quiet_tf_deprecations():
                self._frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                    self.session, self.graph.as_graph_def(), [t.op for t in self.outputs])
        return self._frozen

    def to_onnx(self, opset: int, pinned: dict):
        """tf2onnx's graph-def conversion of the frozen signature; ONNX I/O named by signature keys.

        Args:
            opset: ONNX opset.
            pinned: input key → full shape, for inputs whose dynamic dims were pinned.

        Returns:
            An ``onnx.ModelProto``.
        """
        import tf2onnx

        by_key = {t.key: t for t in self.inputs}
        rename = {t.tensor: t.key for t in self.inputs + self.outputs}
        model, _ = tf2onnx.convert.from_graph_def(
            self.frozen_graph_def(), name=self.path.name,
            input_names=[t.tensor for t in self.inputs],
            output_names=[t.tensor for t in self.outputs], opset=opset,
            shape_override={by_key[k].tensor: list(s) for k, s in pinned.items()} or None,
            tensors_to_rename=rename)
        return model

    def tflite_converter(self, pinned: dict):
        """A fresh ``tf.compat.v1.lite.TFLiteConverter`` for the signature.

        Args:
            pinned: input key → full shape, for inputs whose dynamic dims were pinned.
        """
        by_key = {t.key: t for t in self.inputs}
        shapes = {by_key[k].op: list(s) for k, s in pinned.items()} or None
        try:
            with quiet_tf_deprecations():
                return _v1_converter_class({t.op: t.key for t in self.inputs}).from_saved_model(
                    str(self.path), input_shapes=shapes, tag_set={SERVE_TAG},
                    signature_key=self.signature_key)
        except Exception as e:  # the converter raises ValueError, RuntimeError...
            raise ConversionError(f"TensorFlow's v1 TFLite converter cannot read {self.path.name}: "
                                  f"{_first_line(e)}") from e

    def close(self) -> None:
        self.session.close()


def _v1_converter_class(op_keys: dict):
    """``tf.compat.v1.lite.TFLiteConverter``, adapted to what the ``tflite-*`` passes hand it.

    - The passes' representative datasets yield ``{input_name: array}`` dicts, which TFLite's
      calibrator only maps through a model's signatures; a graph converted by the v1 converter
      has none, so each dict becomes a list in the converter's input order (``op_keys`` maps
      an input op's name to its signature key).
    - ``convert()`` writes a line per traced function to ``sys.stderr`` while collecting debug
      info ("Use '@tf.function' ..."); that goes to the debug log instead.
    """
    import tensorflow as tf

    class V1Converter(tf.compat.v1.lite.TFLiteConverter):
        @property
        def representative_dataset(self):
            return self._edgekit_dataset

        @representative_dataset.setter
        def representative_dataset(self, value):
            if callable(value):
                keys = [op_keys[t.name.split(":")[0]] for t in self._input_tensors]
                value = _samples_as_lists(value, keys)
            self._edgekit_dataset = value

        def convert(self):
            buf = io.StringIO()
            try:
                with contextlib.redirect_stderr(buf), quiet_tf_deprecations():
                    return super().convert()
            finally:
                if buf.getvalue().strip():
                    log.debug("v1 TFLite converter output:\n%s", buf.getvalue())

    return V1Converter


def _samples_as_lists(gen_fn, keys: list):
    """A representative-dataset generator whose dict samples become lists in ``keys`` order."""
    def gen():
        for sample in gen_fn():
            yield [sample[k] for k in keys] if isinstance(sample, dict) else sample

    return gen


def _graph_tensors(infos) -> list[GraphTensor]:
    import tensorflow as tf

    out = []
    for key, info in infos.items():
        shape = () if info.tensor_shape.unknown_rank else tuple(
            d.size if d.size >= 0 else None for d in info.tensor_shape.dim)
        out.append(GraphTensor(key, info.name, np.dtype(tf.as_dtype(info.dtype).as_numpy_dtype).name,
                               shape))
    return sorted(out, key=lambda t: t.tensor)


@contextlib.contextmanager
def quiet_tf_deprecations():
    """Silence TensorFlow's "is deprecated" warnings for the v1 calls made on purpose here."""
    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    tf_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tf_log.setLevel(level)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__

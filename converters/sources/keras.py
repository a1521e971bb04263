"""Keras 3 ``.keras`` and legacy ``.h5`` sources, loaded in safe mode by default."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from converters.sources import apply_pins
from converters.sources.tf_common import TFSource
from edgekit.errors import ModelLoadError
from edgekit.fsutil import sha256_file
from edgekit.spec import TensorSpec

log = logging.getLogger(__name__)


class KerasSource(TFSource):
    format = "keras"

    def __init__(self, path, sha256, inputs, outputs, model, fmt):
        super().__init__(path, sha256, inputs, outputs)
        self.model = model
        self.format = fmt
        self._fn = None

    @classmethod
    def load(cls, path: Path, *, input_shapes: dict, allow_unsafe: bool) -> "KerasSource":
        fmt = "h5" if path.suffix.lower() in (".h5", ".hdf5") else "keras"
        _check_container(path, fmt)
        import keras

        try:
            model = keras.saving.load_model(path, compile=False, safe_mode=not allow_unsafe)
        except ValueError as e:
            if "safe_mode" in str(e) or "Lambda" in str(e) or "unsafe" in str(e).lower():
                raise ModelLoadError(
                    f"{path.name} contains a Lambda layer (arbitrary Python code) and was refused in "
                    f"safe mode; pass --allow-unsafe (allow_unsafe=True) only if you trust the file"
                ) from e
            raise ModelLoadError(f"cannot load Keras model {path}: {_first_line(e)}") from e
        except (OSError, TypeError, KeyError, zipfile.BadZipFile) as e:
            raise ModelLoadError(f"cannot load Keras model {path}: {_first_line(e)}") from e
        if _has_lambda(model) and not allow_unsafe and fmt == "h5":
            # Legacy H5 deserialization does not always honour safe_mode: refuse after the fact.
            raise ModelLoadError(
                f"{path.name} contains a Lambda layer (arbitrary Python code); pass --allow-unsafe "
                f"(allow_unsafe=True) only if you trust the file")
        inputs = [TensorSpec(_clean(t.name, i, "input"), tuple(t.shape), np.dtype(t.dtype).name)
                  for i, t in enumerate(model.inputs)]
        inputs = apply_pins(inputs, input_shapes, path)
        names = list(getattr(model, "output_names", None) or [])
        if len(names) != len(model.outputs):
            names = [f"output_{i}" for i in range(len(model.outputs))]
        outputs = [TensorSpec(n, tuple(t.shape), np.dtype(t.dtype).name)
                   for n, t in zip(names, model.outputs, strict=True)]
        return cls(path, sha256_file(path), inputs, outputs, model, fmt)

    def _pinned_model(self):
        """The model itself, or a wrapper whose inputs carry the pinned shapes."""
        import keras

        if all(tuple(t.shape) == tuple(s.shape) for t, s in zip(self.model.inputs, self.inputs, strict=True)):
            return self.model
        ins = [keras.Input(batch_shape=s.shape, dtype=s.dtype, name=s.name) for s in self.inputs]
        outs = self.model(ins if len(ins) > 1 else ins[0])
        return keras.Model(ins, outs)

    def tf_function(self):
        if self._fn is None:
            import tensorflow as tf

            model = self.model
            names = [t.name for t in self.inputs]
            out_names = [o.name for o in self.outputs]

            @tf.function(input_signature=self.input_signature())
            def fn(*args):
                y = model(list(args) if len(args) > 1 else args[0], training=False)
                ys = list(y.values()) if isinstance(y, dict) else y if isinstance(y, (list, tuple)) else [y]
                return dict(zip(out_names, ys, strict=True))

            # tf.function with positional args keeps the TensorSpec names as graph input names.
            self._fn = fn
            self._arg_names = names
        return self._fn

    def predict(self, feeds):
        xs = [np.asarray(feeds[t.name]) for t in self.inputs]
        y = self.model(xs if len(xs) > 1 else xs[0], training=False)
        ys = list(y.values()) if isinstance(y, dict) else y if isinstance(y, (list, tuple)) else [y]
        return [np.asarray(v) for v in ys]

    def tflite_converter(self):
        import tensorflow as tf

        return tf.lite.TFLiteConverter.from_keras_model(self._pinned_model())


def _check_container(path: Path, fmt: str) -> None:
    """Refuse truncated or mislabelled files with a one-line reason before Keras sees them."""
    with open(path, "rb") as f:
        head = f.read(8)
    if fmt == "keras":
        if not zipfile.is_zipfile(path):
            raise ModelLoadError(f"{path} is not a valid .keras file (not a zip archive: truncated or "
                                 f"not a Keras 3 model)")
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
                if "config.json" not in z.namelist():
                    raise ModelLoadError(f"{path} is a zip without config.json: not a Keras model")
        except zipfile.BadZipFile as e:
            raise ModelLoadError(f"{path} is a corrupt .keras archive: {e}") from e
        if bad is not None:
            raise ModelLoadError(f"{path} is a corrupt .keras archive (bad member {bad})")
    elif head != b"\x89HDF\r\n\x1a\n":
        raise ModelLoadError(f"{path} is not an HDF5 file (truncated or not a legacy Keras .h5)")


def _has_lambda(model) -> bool:
    import keras

    def walk(layer):
        if isinstance(layer, keras.layers.Lambda):
            return True
        return any(walk(sub) for sub in getattr(layer, "layers", []) or [])

    return walk(model)


def _clean(name: str, i: int, prefix: str) -> str:
    name = (name or "").split(":")[0]
    return name or f"{prefix}_{i}"


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__

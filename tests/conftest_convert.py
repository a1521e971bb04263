"""Real models for the converter tests, trained in the test session, plus artifact probes.

Every model here is trained for a few seconds on the shipped digits data with a fixed seed, so
int8 fidelity checks measure something real. Builders are memoised per process: a session builds
each model once however many test modules ask for it. ``tests/conftest.py`` exposes them as
session fixtures; test modules import the probes (``onnx_ops``, ``tflite_tensors``...) from here,
the same way ``test_agent.py`` imports ``conftest_ssh`` (tests/ is not a package).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration_data.digits import digits_path, load_split
from converters.registry import targets_for

# Every target a Keras model can go to, in registry order (a new target joins the session build
# and the "every target" tests by being registered); the digits CNN is converted to each once.
ALL_TARGETS = tuple(t.name for t in targets_for("keras"))
ONNX_TARGETS = ("onnx-fp32", "onnx-fp16", "onnx-dynamic", "onnx-int8")
VOCAB_POSITIONS, VOCAB_VALUES = 64, 17  # sequence model: token = pixel position * 17 + value


def _tmpdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass(frozen=True)
class TrainedModel:
    """One trained Keras model saved in its source formats, with data shaped for its inputs."""

    folder: Path
    keras: Path
    calibration: Path  # .npz keyed by input name (or x), labels under y
    eval: Path
    eval_accuracy: float  # the Keras model's own top-1 accuracy on ``eval``
    h5: Path | None = None
    savedmodel: Path | None = None
    onnx: Path | None = None  # tf2onnx export with a dynamic batch dim


def _export_onnx(model, folder: Path, name: str) -> Path:
    """tf2onnx export of a Keras model through a traced function (dynamic batch, named outputs)."""
    import tensorflow as tf
    import tf2onnx

    sig = [tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=t.name.split(":")[0])
           for t in model.inputs]
    out_names = list(model.output_names)

    @tf.function(input_signature=sig)
    def fn(*args):
        y = model(list(args) if len(args) > 1 else args[0], training=False)
        ys = y if isinstance(y, (list, tuple)) else [y]
        return dict(zip(out_names, ys, strict=True))

    import onnx

    model, _ = tf2onnx.convert.from_function(fn, input_signature=sig, opset=17)
    # tf2onnx sorts dict outputs by name; put them back in the Keras model's order.
    by_name = {o.name: o for o in model.graph.output}
    ordered = [by_name[n] for n in out_names]
    del model.graph.output[:]
    model.graph.output.extend(ordered)
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


@functools.cache
def build_digits_cnn() -> TrainedModel:
    """A small digits CNN trained on the train split, saved as .keras, .h5, SavedModel and ONNX."""
    _quiet_tf()
    import keras

    folder = _tmpdir("edgekit-conv-digits-")
    x, y = load_split("train")
    x_eval, y_eval = load_split("eval")
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(8, 8, 1), name="image")
    h = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(inp)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(32, activation="relu")(h)
    out = keras.layers.Dense(10, activation="softmax", name="probs")(h)
    model = keras.Model(inp, out)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=10, batch_size=32, verbose=0)
    acc = float(np.mean(model.predict(x_eval, verbose=0).argmax(1) == y_eval))
    model.save(folder / "digits.keras")
    model.save(folder / "digits.h5")
    model.export(str(folder / "digits_savedmodel"), verbose=False)
    onnx_path = _export_onnx(model, folder, "digits")
    return TrainedModel(folder, folder / "digits.keras", digits_path("calibration"),
                        digits_path("eval"), acc, h5=folder / "digits.h5",
                        savedmodel=folder / "digits_savedmodel", onnx=onnx_path)


def tokens(x: np.ndarray) -> np.ndarray:
    """Digits images as int64 token ids: one token per pixel, ``position * 17 + value``."""
    values = np.rint(x.reshape(len(x), VOCAB_POSITIONS) * 16).astype(np.int64)
    return np.arange(VOCAB_POSITIONS, dtype=np.int64)[None, :] * VOCAB_VALUES + values


@functools.cache
def build_sequence_model() -> TrainedModel:
    """A non-image model: int64 token ids → Embedding → GlobalAveragePooling1D → Dense softmax."""
    _quiet_tf()
    import keras

    folder = _tmpdir("edgekit-conv-seq-")
    x, y = load_split("train")
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(VOCAB_POSITIONS,), dtype="int64", name="tokens")
    h = keras.layers.Embedding(VOCAB_POSITIONS * VOCAB_VALUES, 16)(inp)
    h = keras.layers.GlobalAveragePooling1D()(h)
    out = keras.layers.Dense(10, activation="softmax", name="probs")(h)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(tokens(x), y, epochs=15, batch_size=32, verbose=0)
    for split in ("calibration", "eval"):
        xs, ys = load_split(split)
        np.savez(folder / f"{split}.npz", tokens=tokens(xs), y=ys)
    x_eval, y_eval = load_split("eval")
    acc = float(np.mean(model.predict(tokens(x_eval), verbose=0).argmax(1) == y_eval))
    model.save(folder / "tokens.keras")
    onnx_path = _export_onnx(model, folder, "tokens")
    return TrainedModel(folder, folder / "tokens.keras", folder / "calibration.npz",
                        folder / "eval.npz", acc, onnx=onnx_path)


def aux_features(x: np.ndarray) -> np.ndarray:
    """Four per-image statistics: the second input of the two-input model."""
    return np.stack([x.mean((1, 2, 3)), x.std((1, 2, 3)), x[:, :4].mean((1, 2, 3)),
                     x[:, 4:].mean((1, 2, 3))], axis=1).astype(np.float32)


@functools.cache
def build_two_io_model() -> TrainedModel:
    """Two inputs (image, aux features) and two outputs (digit softmax, brightness regression).

    Names are chosen so that alphabetical order differs from model order on both sides
    (``aux`` < ``image``, ``brightness`` < ``digit``): a converter that matches by position
    after sorting, or by sorted names, would pair the wrong tensors.
    """
    _quiet_tf()
    import keras

    folder = _tmpdir("edgekit-conv-two-")
    x, y = load_split("train")
    keras.utils.set_random_seed(0)
    img = keras.Input(shape=(8, 8, 1), name="image")
    aux = keras.Input(shape=(4,), name="aux")
    h = keras.layers.Concatenate()([keras.layers.Flatten()(img), aux])
    h = keras.layers.Dense(32, activation="relu")(h)
    digit = keras.layers.Dense(10, activation="softmax", name="digit")(h)
    bright = keras.layers.Dense(1, name="brightness")(h)
    model = keras.Model([img, aux], [digit, bright])
    model.compile(optimizer="adam", loss=["sparse_categorical_crossentropy", "mse"])
    model.fit([x, aux_features(x)], [y, x.mean((1, 2, 3))[:, None]], epochs=10, batch_size=32,
              verbose=0)
    for split in ("calibration", "eval"):
        xs, ys = load_split(split)
        np.savez(folder / f"{split}.npz", image=xs, aux=aux_features(xs), y=ys)
    x_eval, y_eval = load_split("eval")
    pred = model.predict([x_eval, aux_features(x_eval)], verbose=0)[0]
    model.save(folder / "two_io.keras")
    onnx_path = _export_onnx(model, folder, "two_io")
    return TrainedModel(folder, folder / "two_io.keras", folder / "calibration.npz",
                        folder / "eval.npz", float(np.mean(pred.argmax(1) == y_eval)), onnx=onnx_path)


@dataclass(frozen=True)
class Build:
    """The artifacts of one ``edgekit.convert`` run, by target name."""

    out: Path
    artifacts: dict  # target -> Artifact
    failures: dict  # target -> message, for targets that failed (asserted empty by a test)


@functools.cache
def build_digits_all_targets() -> Build:
    """The digits CNN converted to every target once (with calibration and labelled eval data)."""
    from edgekit.api import convert
    from edgekit.errors import ConversionError

    model = build_digits_cnn()
    out = _tmpdir("edgekit-conv-build-")
    try:
        arts, failures = convert(model.keras, ALL_TARGETS, calibration=model.calibration,
                                 eval=model.eval, out=out), {}
    except ConversionError as e:  # keep the rest usable; the "every target" test reports these
        arts, failures = e.artifacts, e.failures
    return Build(out, {a.target: a for a in arts}, failures)


# ----------------------------------------------------------------------------------------------
# Probes: what is inside an artifact, read with the tools themselves
# ----------------------------------------------------------------------------------------------

def onnx_ops(path) -> Counter:
    """Op type → count (custom domains prefixed) of an ONNX file."""
    import onnx

    model = onnx.load(str(path))
    return Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                   for n in model.graph.node)


def onnx_initializer_dtypes(path) -> Counter:
    """numpy dtype name → number of initializers of an ONNX file."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return Counter(numpy_helper.to_array(i).dtype.name for i in model.graph.initializer)


def onnx_io_dtypes(path) -> tuple[list[int], list[int]]:
    """ONNX elem types of the graph inputs (initializers excluded) and outputs."""
    import onnx

    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    return ([v.type.tensor_type.elem_type for v in model.graph.input if v.name not in inits],
            [v.type.tensor_type.elem_type for v in model.graph.output])


def tflite_tensors(path) -> tuple[Counter, list, list, Counter]:
    """(tensor dtype counts, input dtypes, output dtypes, op counts) of a TFLite file."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    dtypes = Counter(np.dtype(d["dtype"]).name for d in interp.get_tensor_details())
    ins = [np.dtype(d["dtype"]).name for d in interp.get_input_details()]
    outs = [np.dtype(d["dtype"]).name for d in interp.get_output_details()]
    # _get_ops_details is the interpreter's only op listing (edgekit.inspect uses it too).
    ops = Counter(op["op_name"] for op in interp._get_ops_details())
    return dtypes, ins, outs, ops


def run_artifact(path, feeds) -> list[np.ndarray]:
    """Run an artifact on float feeds with the device agent's loader (as a device would)."""
    from device_agents.agent import load_model

    return load_model(str(path)).run_float(feeds)


def files_in(folder) -> list[str]:
    """Every file name under ``folder`` (hidden temp files included), sorted."""
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

"""Architecture scaling for ``optimize`` (off by default): smaller students of a
``keras.applications`` MobileNetV2, trained by distillation from the user's model.

A source built by ``keras.applications.MobileNetV2(..., include_top=True)`` is recognised by its
layer names (``Conv1``, ``expanded_conv_project``, ``block_16_project``, ``out_relu``) and a
``Dense`` classifier; its width multiplier comes from the model's name (Keras names it
``mobilenetv2_<alpha>_<rows>``) or else from ``block_16_project``'s filters (320 × alpha). The
candidate students are ``MobileNetV2(alpha=a, weights=None)`` with a smaller ``a`` and/or a
smaller input resolution; a lower resolution is a ``Resizing`` layer in front, so the student
takes the same input as the user's model (the app feeding it does not change). A student is
described by a plain dict (``Recipe.student``) and rebuilt from it: seeded, with TensorFlow's
deterministic ops, the same data give the same weights, so its recipe replays byte-identically
(the trained student's sha256 is recorded too, to say which model the artifact came from).
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import InputError

log = logging.getLogger(__name__)

FAMILY = "mobilenetv2"
_LAYERS = ("Conv1", "expanded_conv_project", "block_16_project", "out_relu")
_MIN_RESOLUTION = 32  # keras.applications.MobileNetV2 refuses smaller inputs


@dataclass(frozen=True)
class Family:
    """What was recognised in the source model.

    Attributes:
        family: ``mobilenetv2``.
        alpha: its width multiplier.
        input_shape: (height, width, channels).
        classes / activation: the classifier's units and activation name.
    """

    family: str
    alpha: float
    input_shape: tuple
    classes: int
    activation: str

    def describe(self) -> str:
        """E.g. ``mobilenetv2 alpha 0.35 at 96x96``, for messages."""
        return f"{self.family} alpha {self.alpha:g} at {self.input_shape[0]}x{self.input_shape[1]}"


def detect(model) -> Family | None:
    """The ``keras.applications`` family of a Keras model, or None when it is not one we scale."""
    import keras

    names = {layer.name for layer in model.layers}
    if not set(_LAYERS) <= names:
        return None
    head = model.layers[-1]
    if not isinstance(head, keras.layers.Dense):
        return None
    m = re.fullmatch(r"mobilenetv2_(\d+(?:\.\d+)?)_\d+", model.name)
    alpha = float(m.group(1)) if m else round(model.get_layer("block_16_project").filters / 320,
                                               2)
    shape = tuple(int(d) for d in model.input_shape[1:])
    activation = keras.activations.serialize(head.activation)
    if isinstance(activation, dict):
        activation = activation.get("config", {}).get("name", "softmax")
    return Family(FAMILY, alpha, shape, int(head.units), str(activation))


def recognise(model, where) -> Family:
    """``detect(model)``, or an error saying why it is not a model we scale.

    Raises:
        InputError: ``model`` (loaded from ``where``) is not a scalable family.
    """
    fam = detect(model)
    if fam is None:
        raise InputError(f"{where}: arch scaling: the model is not a keras.applications "
                         f"MobileNetV2 (no {', '.join(_LAYERS)} layers and Dense classifier): "
                         "drop --arch-scaling")
    return fam


def student_name(alpha: float, resolution: int) -> str:
    return f"{FAMILY}-a{alpha:g}-r{resolution}"


def parse_student(name: str) -> dict:
    """``mobilenetv2-a0.25-r32`` → {"family", "alpha", "resolution"}.

    Raises:
        InputError: not a student name.
    """
    m = re.fullmatch(rf"{FAMILY}-a(\d+(?:\.\d+)?)-r(\d+)", name)
    if not m:
        raise InputError(f"{name!r} is not a student (expected e.g. {FAMILY}-a0.35-r96)")
    return {"family": FAMILY, "alpha": float(m.group(1)), "resolution": int(m.group(2))}


def candidates(fam: Family, alphas, resolution_scales) -> tuple:
    """Student names smaller than the source: alpha <= its own and resolution <= its own
    (not both equal), resolutions rounded to multiples of 8 and at least 32."""
    rows = fam.input_shape[0]
    out = []
    for r_scale in sorted(set(resolution_scales), reverse=True):
        res = max(_MIN_RESOLUTION, int(round(rows * r_scale / 8)) * 8)
        res = min(res, rows)
        for a in sorted(set(alphas), reverse=True):
            if a > fam.alpha or (a == fam.alpha and res == rows):
                continue
            name = student_name(a, res)
            if name not in out:
                out.append(name)
    return tuple(out)


def build_student(fam: Family, alpha: float, resolution: int):
    """An untrained student (``weights=None``) taking the source's input."""
    import keras

    h, w, c = fam.input_shape
    base = keras.applications.MobileNetV2(input_shape=(resolution, resolution, c), alpha=alpha,
                                          weights=None, classes=fam.classes,
                                          classifier_activation=fam.activation)
    if (h, w) == (resolution, resolution):
        return base
    inp = keras.Input((h, w, c), name="image")
    out = base(keras.layers.Resizing(resolution, resolution, name="student_resize")(inp))
    return keras.Model(inp, out, name=f"student_{student_name(alpha, resolution)}")


def train_student(model, student: dict, train, path) -> Path:
    """Build the student ``student`` describes and distill it from ``model`` on ``train``;
    write it to ``path`` (``.keras``).

    Raises:
        InputError: no training data, or a source that is not a scalable family.
    """
    import keras
    import tensorflow as tf

    from edgekit.train_api import distill, load_keras_model

    if train is None:
        raise InputError("this recipe trains a smaller student by distillation: pass the "
                         "training data (--train)")
    # Keras names unnamed layers from a per-process counter (input_layer_3,
    # global_average_pooling2d_2...) and those names reach the .keras file and the artifact's
    # tensor names: reset it, so a student built after other models has the same bytes.
    keras.backend.clear_session()
    teacher = load_keras_model(model)
    fam = detect(teacher)
    if fam is None:
        raise InputError(f"{model} is not a keras.applications MobileNetV2: architecture "
                         "scaling cannot rebuild its student")
    keras.utils.set_random_seed(int(student.get("seed", 0)))
    tf.config.experimental.enable_op_determinism()
    net = build_student(fam, float(student["alpha"]), int(student["resolution"]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    distill(net, teacher, train, temperature=float(student.get("temperature", 4.0)),
            alpha=float(student.get("kd_alpha", 0.7)), epochs=int(student.get("epochs", 1)),
            learning_rate=float(student.get("learning_rate", 1e-3)), out=path)
    return path


def estimate(model, train, students, epochs: int, batch_size: int = 32) -> dict:
    """Seconds of distillation the students will cost here: epochs × steps per epoch × a
    measured step time (per student: a few real distillation steps on the training data, the
    first, which traces the graph, not counted).

    Returns:
        {"students": {name: {"step_s", "steps_per_epoch", "seconds"}}, "seconds": total}.
    """
    import keras

    from converters.distill import DistillSpec, FitSpec, fit
    from edgekit.train_api import load_keras_model, load_training_data

    teacher = load_keras_model(model)
    fam = detect(teacher)
    x, y = load_training_data(train, teacher)
    steps = max(1, math.ceil(len(x) / batch_size))
    probe_n = min(len(x), 4 * batch_size)
    out = {}

    class _Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times, self._t = [], 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._t)

    for name in students:
        s = parse_student(name)
        clock = _Clock()
        fit(build_student(fam, s["alpha"], s["resolution"]), x[:probe_n], y[:probe_n],
            FitSpec(epochs=1, batch_size=batch_size), teacher=teacher,
            distill_spec=DistillSpec(), callbacks=[clock])
        timed = clock.times[1:] or clock.times
        step = sum(timed) / len(timed)
        out[name] = {"step_s": step, "steps_per_epoch": steps, "seconds": epochs * steps * step}
    return {"students": out, "seconds": sum(v["seconds"] for v in out.values())}


__all__ = ["Family", "detect", "recognise", "candidates", "build_student", "train_student", "estimate",
           "parse_student", "student_name", "FAMILY"]

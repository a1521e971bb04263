"""Quantization-aware training for Keras 3 (no tf-keras, no TF Model Optimization Toolkit).

Training graph: ``FakeQuant`` layers are inserted where TFLite keeps an int8 tensor (the model
input and the end of each Conv/Dense -> BatchNorm -> activation chain, each add, concat...);
each learns its range as an exponential moving average of batch min/max and rounds values to the
int8 grid with a straight-through gradient. Kernels are fake-quantized per output channel
(symmetric, [-127, 127], as TFLite does) by keeping float master weights: every step runs
forward and backward on the rounded weights and applies the update to the masters.

Export: the original architecture with the trained weights already on the int8 grid. Per-channel
symmetric rounding commutes with BatchNorm folding (a per-channel scale), so the converter's
weight quantization reproduces the trained integer weights exactly. Activation ranges are
re-measured by the converter's min/max calibration; ``qat_ranges`` reports the trained ones so
they can be compared.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np

from edgekit.errors import InputError

log = logging.getLogger(__name__)

_KERNELS = {"Conv1D": -1, "Conv2D": -1, "Conv3D": -1, "Dense": -1, "DepthwiseConv1D": -2,
            "DepthwiseConv2D": -2}
_FUSES_INTO_PREVIOUS = {"BatchNormalization", "ReLU", "Activation", "LeakyReLU", "ELU"}
_SAME_SCALE = {"MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "Flatten", "Reshape", "Dropout",
               "ZeroPadding1D", "ZeroPadding2D", "Cropping2D", "GlobalMaxPooling1D",
               "GlobalMaxPooling2D", "SpatialDropout2D", "UpSampling2D", "Identity"}


@dataclass(frozen=True)
class QATSpec:
    """QAT options.

    Attributes:
        epochs / batch_size / learning_rate: fine-tuning (Adam, cosine decay).
        ema_decay: weight of the old range in the moving average of activation ranges.
        seed: seed of shuffling.
    """

    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-4
    ema_decay: float = 0.99
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.ema_decay < 1:
            raise InputError(f"ema_decay must be in (0, 1), got {self.ema_decay!r}")


_FAKE_QUANT = []


def _fake_quant_layer_class():
    if _FAKE_QUANT:
        return _FAKE_QUANT[0]
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="edgekit")
    class FakeQuant(keras.layers.Layer):
        """Rounds to an int8 grid over a learned (EMA of batch min/max) range; STE gradient."""

        def __init__(self, ema_decay: float = 0.99, **kwargs):
            super().__init__(**kwargs)
            self.ema_decay = ema_decay

        def build(self, input_shape):
            init = keras.initializers.Zeros()
            self.lo = self.add_weight(shape=(), initializer=init, trainable=False, name="lo")
            self.hi = self.add_weight(shape=(), initializer=init, trainable=False, name="hi")
            self.seen = self.add_weight(shape=(), initializer=init, trainable=False, name="seen")

        def call(self, x, training=False):
            if training:
                bmin = ops.minimum(ops.min(x), 0.0)
                bmax = ops.maximum(ops.max(x), 0.0)
                d = self.ema_decay * self.seen
                self.lo.assign(d * self.lo + (1 - d) * bmin)
                self.hi.assign(d * self.hi + (1 - d) * bmax)
                self.seen.assign(1.0)
            lo, hi = ops.minimum(self.lo, 0.0), ops.maximum(self.hi, 1e-6)
            scale = (hi - lo) / 255.0
            zero = ops.round(-lo / scale) - 128.0
            xc = ops.clip(x, lo, hi)
            q = ops.clip(ops.round(xc / scale) + zero, -128.0, 127.0)
            return xc + ops.stop_gradient((q - zero) * scale - xc)

        def get_config(self):
            return {**super().get_config(), "ema_decay": self.ema_decay}

    _FAKE_QUANT.append(FakeQuant)
    return FakeQuant


def quantize_kernel(w: np.ndarray, axis: int) -> np.ndarray:
    """Per-channel symmetric int8 round trip (TFLite: [-127, 127], scale = max|w| / 127)."""
    axes = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    amax = np.max(np.abs(w), axis=axes, keepdims=True)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    return (np.clip(np.round(w / scale), -127, 127) * scale).astype(w.dtype)


def _kernel_vars(model) -> list:
    out = []
    for layer in model.layers:
        axis = _KERNELS.get(type(layer).__name__)
        if axis is None:
            continue
        for v in layer.weights:
            if v.path.split("/")[-1] == "kernel":
                out.append((v, axis))
    return out


def _weight_quantizer(model):
    """Callback: forward/backward on rounded kernels, updates applied to float masters."""
    import keras

    kernels = _kernel_vars(model)

    class _WeightFakeQuant(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.masters = [np.asarray(v.numpy()) for v, _ in kernels]
            self.rounded = [quantize_kernel(m, axis) for m, (_, axis) in zip(self.masters, kernels, strict=True)]
            for (v, _), r in zip(kernels, self.rounded, strict=True):
                v.assign(r)

        def on_train_batch_end(self, batch, logs=None):
            for (v, _), m, r in zip(kernels, self.masters, self.rounded, strict=True):
                v.assign(m + (np.asarray(v.numpy()) - r))

    return _WeightFakeQuant()


def _quant_points(graph) -> set:
    """Layers after whose output TFLite keeps an int8 tensor of its own scale."""
    consumers: dict = {}
    for node in graph.nodes:
        for ref in node.inputs:
            consumers.setdefault(ref[0], []).append(node.class_name)
    points = set()
    for node in graph.nodes:
        if node.class_name in _SAME_SCALE:
            continue
        nxt = consumers.get(node.name, [])
        fuses = len(nxt) == 1 and nxt[0] in _FUSES_INTO_PREVIOUS and \
            node.class_name in (*_KERNELS, "BatchNormalization", "SeparableConv2D")
        if not fuses:
            points.add(node.name)
    return points


def prepare_qat(model, ema_decay: float = 0.99):
    """The training model: ``model``'s layers and weights plus ``FakeQuant`` layers.

    Raises:
        InputError: a subclassed model.
    """
    import keras

    from converters.pruning.graph import DependencyGraph, strip_build_configs

    graph = DependencyGraph.build(model)  # also refuses subclassed models
    FakeQuant = _fake_quant_layer_class()
    points = _quant_points(graph)
    config = strip_build_configs(graph.config)
    fq = {name: f"{name}_fq" for name in points}

    def fq_cfg(name):
        return {"module": None, "class_name": "edgekit>FakeQuant",
                "registered_name": "edgekit>FakeQuant",
                "config": {"name": fq[name], "ema_decay": ema_decay, "trainable": False}}

    if graph.kind == "sequential":
        layers = []
        for spec in config["layers"]:
            layers.append(spec)
            name = spec["config"]["name"]
            if name in fq:
                layers.append(fq_cfg(name))
        config["layers"] = layers
        qat = keras.Sequential.from_config(config, custom_objects={"FakeQuant": FakeQuant})
    else:
        layers = []
        for spec in config["layers"]:
            _rename_refs(spec.get("inbound_nodes", []), fq)
            layers.append(spec)
            if spec["name"] in fq:
                entry = fq_cfg(spec["name"])
                entry["name"] = fq[spec["name"]]
                entry["inbound_nodes"] = [{"args": [{"class_name": "__keras_tensor__", "config": {
                    "shape": list(graph.shape((spec["name"], 0, 0))), "dtype": "float32",
                    "keras_history": [spec["name"], 0, 0]}}],
                    "kwargs": {}}]
                layers.append(entry)
        config["layers"] = layers
        config["output_layers"] = _rename_outputs(config["output_layers"], fq)
        qat = keras.Model.from_config(config, custom_objects={"FakeQuant": FakeQuant})
    for layer in model.layers:
        if layer.weights:
            qat.get_layer(layer.name).set_weights(layer.get_weights())
    return qat


def _rename_refs(obj, fq: dict) -> None:
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            hist = obj["config"]["keras_history"]
            if hist[0] in fq:
                hist[0] = fq[hist[0]]
            return
        for v in obj.values():
            _rename_refs(v, fq)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _rename_refs(v, fq)


def _rename_outputs(value, fq: dict):
    if value and isinstance(value[0], str):
        return [fq.get(value[0], value[0]), *value[1:]]
    return [[fq.get(v[0], v[0]), *v[1:]] for v in value]


def qat_ranges(qat_model) -> dict:
    """Learned activation ranges: ``{layer name: [lo, hi]}`` (the layer the range follows)."""
    return {layer.name[: -len("_fq")]: [float(layer.lo.numpy()), float(layer.hi.numpy())]
            for layer in qat_model.layers if type(layer).__name__ == "FakeQuant"}


def export_qat(model, qat_model):
    """``model``'s architecture with the QAT-trained weights, kernels on the int8 grid."""
    import keras

    cls = keras.Sequential if isinstance(model, keras.Sequential) else keras.Model
    out = cls.from_config(copy.deepcopy(model.get_config()))
    for layer in model.layers:
        if layer.weights:
            out.get_layer(layer.name).set_weights(qat_model.get_layer(layer.name).get_weights())
    for v, axis in _kernel_vars(out):
        v.assign(quantize_kernel(np.asarray(v.numpy()), axis))
    return out


def qat(model, x: np.ndarray, y: np.ndarray, spec: QATSpec = QATSpec()):
    """Quantization-aware fine-tuning.

    Args:
        model: a single-input classifier (Sequential or functional); not changed.
        x, y: labelled training data.
        spec: QAT options.

    Returns:
        ``(exported model, {"ranges": learned activation ranges, "loss": last loss})``; convert
        the exported model with the ``tflite-int8`` target.

    Raises:
        InputError: a subclassed model, or data that do not fit.
    """
    import keras

    from converters.distill import FitSpec, check_training_data, output_kind, task_loss

    x, y = check_training_data(model, x, y)
    keras.utils.set_random_seed(spec.seed)
    qmodel = prepare_qat(model, spec.ema_decay)
    fit = FitSpec(epochs=spec.epochs, batch_size=spec.batch_size,
                  learning_rate=spec.learning_rate, seed=spec.seed)
    qmodel.compile(optimizer=fit.optimizer(len(x)), loss=task_loss(output_kind(model, x)))
    hist = qmodel.fit(x, y, epochs=spec.epochs, batch_size=spec.batch_size, verbose=0,
                      shuffle=True, callbacks=[_weight_quantizer(qmodel)])
    return export_qat(model, qmodel), {"ranges": qat_ranges(qmodel),
                                       "loss": float(hist.history["loss"][-1])}

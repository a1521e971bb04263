"""Small models for the pruning tests and a helper that zeroes the channels a plan removes.

A plain module the tests import (not a conftest: tests/conftest.py owns that module name).
"""

from __future__ import annotations

import numpy as np


def sequential_cnn():
    import keras

    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1"),
        keras.layers.Conv2D(32, 3, padding="same", name="c2"),
        keras.layers.BatchNormalization(name="bn2"),
        keras.layers.ReLU(name="r2"),
        keras.layers.MaxPooling2D(name="pool"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(64, activation="relu", name="fc"),
        keras.layers.Dense(10, activation="softmax", name="probs"),
    ], name="seq_cnn")


def mlp():
    import keras

    keras.utils.set_random_seed(2)
    return keras.Sequential([
        keras.Input((20,), name="features"),
        keras.layers.Dense(64, activation="relu", name="h1"),
        keras.layers.Dropout(0.1, name="drop"),
        keras.layers.Dense(48, activation="relu", name="h2"),
        keras.layers.Dense(32, activation="relu", name="h3"),
        keras.layers.Dense(3, name="logits"),
    ], name="mlp")


def resnet_like():
    """Stem, two residual blocks (adds couple their channels), a concat, flatten and a head."""
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(3)
    i = keras.Input((12, 12, 3), name="image")
    x = L.ReLU(name="stem_relu")(L.BatchNormalization(name="stem_bn")(
        L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(i)))
    for b in range(2):
        y = L.Conv2D(24, 3, padding="same", name=f"b{b}_c1")(x)
        y = L.ReLU(name=f"b{b}_r1")(L.BatchNormalization(name=f"b{b}_bn1")(y))
        y = L.Conv2D(16, 3, padding="same", name=f"b{b}_c2")(y)
        y = L.BatchNormalization(name=f"b{b}_bn2")(y)
        x = L.ReLU(name=f"b{b}_out")(L.Add(name=f"b{b}_add")([x, y]))
    d = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    s = L.SeparableConv2D(24, 3, padding="same", activation="relu", name="sep")(d)
    p = L.Conv2D(8, 1, activation="relu", name="proj")(x)
    c = L.Concatenate(name="cat")([s, p])
    c = L.BatchNormalization(name="cat_bn")(c)
    g = L.GlobalAveragePooling2D(name="gap")(c)
    h = L.Dense(32, activation="relu", name="fc")(g)
    return keras.Model(i, L.Dense(4, name="logits")(h), name="resnet_like")


def mobilenet_v2(size: int = 32):
    import keras

    keras.utils.set_random_seed(4)
    return keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=0.35, weights=None,
                                          classes=10)


BUILDERS = {"sequential_cnn": sequential_cnn, "mlp": mlp, "resnet_like": resnet_like}


def randomize_bn(model, seed: int = 0) -> None:
    """Give every BatchNormalization non-trivial statistics, so consistency tests see them."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") if i in (0, 3)
                               else rng.normal(0, 0.2, w.shape).astype("float32")
                               for i, w in enumerate(layer.get_weights())])


def zero_removed_channels(model, plan) -> None:
    """Zero every weight that makes a channel the plan removes, so the channel is exactly 0.

    Then removing it (and the consumers' weights that read it) must not change the outputs.
    """
    for g in plan.pruned_groups:
        drop = np.setdiff1d(np.arange(g.channels), g.keep)
        for m in g.members:
            layer = model.get_layer(m["layer"])
            ws = {v.path.split("/")[-1]: v for v in layer.weights}
            idx = drop + m["offset"]
            if m["role"] in ("conv", "dense", "separable"):
                for name in ("kernel", "pointwise_kernel", "bias"):
                    if name in ws:
                        w = ws[name].numpy()
                        w[..., drop] = 0
                        ws[name].assign(w)
            elif m["role"] == "norm":
                for name in ("gamma", "beta"):
                    w = ws[name].numpy()
                    w[idx] = 0
                    ws[name].assign(w)
            elif m["role"] == "depthwise":
                for v in ws.values():
                    w = v.numpy()
                    if w.ndim > 1:
                        w[..., idx, :] = 0
                    else:
                        w[idx] = 0
                    v.assign(w)


def random_input(model, n: int = 4, seed: int = 0) -> np.ndarray:
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


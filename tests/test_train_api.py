"""edgekit.train_api: prune + fine-tune + distill on digits, distill alone, profile numbers."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import InputError


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    import keras

    from edgekit.demo import train_digits_cnn

    path = train_digits_cnn(tmp_path_factory.mktemp("digits") / "digits_cnn.keras")
    return path, keras.saving.load_model(path, safe_mode=True)


@pytest.fixture(scope="module")
def digits():
    from calibration_data.digits import load_split

    return load_split("train"), load_split("eval")


def test_prune_half_fine_tune_distill_stays_within_one_point(digits_model, digits, tmp_path):
    from converters.distill import accuracy
    from edgekit.profiling import profile_model
    from edgekit.train_api import prune

    path, model = digits_model
    (xt, yt), (xe, ye) = digits
    out = tmp_path / "pruned.keras"
    pruned = prune(path, 0.5, train=(xt, yt), epochs=5, distill=True, out=out)
    base_acc, acc = accuracy(model, xe, ye), accuracy(pruned, xe, ye)
    assert acc >= base_acc - 0.01, (base_acc, acc)
    assert profile_model(pruned).macs <= 0.55 * profile_model(model).macs
    assert out.is_file() and out.with_suffix(".plan.json").is_file()
    assert model.trainable  # the teacher is unfrozen again after distillation


def test_prune_replays_a_saved_plan(digits_model, tmp_path):
    from edgekit.train_api import prune

    _, model = digits_model
    a, _ = prune(model, 0.25, round_to=8, return_plan=True, out=tmp_path / "a.keras")
    b = prune(model, plan=tmp_path / "a.plan.json")
    x = np.random.default_rng(0).uniform(size=(3, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(a(x).numpy(), b(x).numpy(), rtol=1e-6)


def test_distill_trains_a_small_student(digits_model, digits):
    import keras

    from converters.distill import accuracy
    from edgekit.train_api import distill

    _, teacher = digits_model
    (xt, yt), (xe, ye) = digits
    keras.utils.set_random_seed(0)
    student = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(64, activation="relu"),
                                keras.layers.Dense(10)], name="student")
    before = accuracy(student, xe, ye)
    _, result = distill(student, teacher, (xt, yt), epochs=8, learning_rate=3e-3, eval=(xe, ye))
    assert result["accuracy"] > max(0.8, before + 0.5) and np.isfinite(result["loss"])
    assert result["accuracy"] == accuracy(student, xe, ye)  # trained in place


def test_training_data_that_does_not_fit_is_refused(digits_model, digits):
    from edgekit.train_api import prune

    _, model = digits_model
    (xt, yt), _ = digits
    with pytest.raises(InputError, match="expects \\[8, 8, 1\\]"):
        prune(model, 0.5, train=(np.zeros((4, 9, 9, 1), "float32"), yt[:4]), epochs=1)
    with pytest.raises(InputError, match="labels must be"):
        prune(model, 0.5, train=(xt[:4], np.array([0, 1, 2, 12])), epochs=1)
    with pytest.raises(InputError, match="needs training data"):
        prune(model, 0.5, epochs=1)


def test_profile_counts_params_and_macs():
    import keras

    from edgekit.train_api import profile

    model = keras.Sequential([keras.Input((8, 8, 3)),
                              keras.layers.Conv2D(4, 3, padding="same", name="c"),
                              keras.layers.DepthwiseConv2D(3, name="dw"),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(5, name="d")])
    prof = profile(model)
    macs = {lp.name: lp.macs for lp in prof.layers}
    assert macs["c"] == 8 * 8 * 9 * 3 * 4
    assert macs["dw"] == 6 * 6 * 9 * 4
    assert macs["d"] == 4 * 5
    assert prof.params == model.count_params() and prof.flops == 2 * prof.macs
    assert prof.to_dict()["layers"][0]["flops"] == 2 * macs["c"]


def test_batchnorm_recalibration_reaches_nested_layers_and_fixes_inference():
    """A BN with keras.applications' momentum (0.999) trained for a few steps keeps its
    initial moving statistics; recalibration sets them from the data, in a nested model too."""
    import keras

    from converters.distill import recalibrate_batchnorm

    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(6, use_bias=False),
                              keras.layers.BatchNormalization(momentum=0.999)], name="backbone")
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(3)(inner(inp)))
    rng = np.random.default_rng(0)
    x = (3.0 + 2.0 * rng.normal(size=(512, 6))).astype("float32")
    y = (x[:, 0] > 3).astype("int64") + (x[:, 1] > 3).astype("int64")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)  # 8 steps: moving stats barely move
    bn = inner.layers[-1]
    h = inner.layers[0](x).numpy()
    assert not np.allclose(bn.moving_mean.numpy(), h.mean(axis=0), atol=0.1)
    train_mode = model(x, training=True).numpy()
    assert not np.allclose(model(x, training=False).numpy(), train_mode, atol=0.1)
    assert recalibrate_batchnorm(model, x, batch_size=64) == 1
    assert np.allclose(bn.moving_mean.numpy(), h.mean(axis=0), atol=1e-3)
    assert np.allclose(bn.moving_variance.numpy(), h.var(axis=0), rtol=0.05)
    assert bn.momentum == 0.999  # restored
    assert np.allclose(model(x, training=False).numpy(), train_mode, atol=0.05)
    assert recalibrate_batchnorm(keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)]),
                                 x) == 0

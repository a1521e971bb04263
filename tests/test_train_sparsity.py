"""Unstructured, block4 and 2:4 magnitude sparsity: exact sparsity, schedule, compressed size, errors."""

from __future__ import annotations

import numpy as np
import pytest

from converters.sparsity import SparsitySpec, magnitude_mask, sparsify
from edgekit.errors import InputError


def _mlp():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(4)], name="mlp")


def test_unstructured_mask_removes_the_smallest_weights():
    w = np.arange(1, 101, dtype="float32").reshape(10, 10) * np.where(np.arange(100) % 2, 1, -1).reshape(10, 10)
    mask = magnitude_mask(w, 0.3, "unstructured")
    assert mask.sum() == 70 and np.all(np.abs(w[mask == 0]) <= 30)


def test_two_four_pattern_keeps_two_of_every_four_along_the_reduction_axis():
    w = np.random.default_rng(0).normal(size=(3, 3, 8, 5)).astype("float32")
    mask = magnitude_mask(w, 0.5, "2:4")
    groups = mask.reshape(-1, 4, 5)
    assert np.all(groups.sum(axis=1) == 2)
    kept = np.abs(w).reshape(-1, 4, 5) * groups
    dropped = np.abs(w).reshape(-1, 4, 5) * (1 - groups)
    assert np.all(kept.max(axis=1) >= dropped.max(axis=1))


def test_block4_pattern_zeros_whole_blocks_of_input_channels_with_the_smallest_norm():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 3, 10, 6)).astype("float32")  # 10 inputs: blocks 4 + 4 + 2
    mask = magnitude_mask(w, 0.5, "block4")
    blocks = [mask[:, :, 0:4, :], mask[:, :, 4:8, :], mask[:, :, 8:10, :]]
    for b in blocks:  # each block is all kept or all zeroed, per (h, w, out)
        assert np.all((b.min(axis=2) == b.max(axis=2)))
    norms = np.stack([np.sqrt((w[:, :, s, :] ** 2).sum(axis=2))
                      for s in (slice(0, 4), slice(4, 8), slice(8, 10))])
    kept = np.stack([b[:, :, 0, :] for b in blocks]).astype(bool)
    assert kept.sum() == kept.size - kept.size // 2
    assert norms[kept].min() >= norms[~kept].max()
    dense = magnitude_mask(rng.normal(size=(12, 5)).astype("float32"), 0.75, "block4")  # 15 blocks, 11 go
    assert dense.sum() == 4 * 4 and np.all(dense.reshape(3, 4, 5).std(axis=1) == 0)


def test_block4_sparsity_gzips_smaller_than_unstructured_in_the_tflite_file(tmp_path):
    """Same model, same sparsity: the block pattern's zero runs compress better in the
    converted file (OHWI / [out, in] store input channels contiguously)."""
    import keras
    import tensorflow as tf

    from converters.sparsity import file_sizes

    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 16, 16, 8)).astype("float32")
    y = (x[:, :8, :8, :4].mean(axis=(1, 2)).argmax(axis=1)).astype("int64")
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.Input((16, 16, 8)),
                             keras.layers.Conv2D(64, 3, activation="relu"),
                             keras.layers.Conv2D(64, 1, activation="relu"),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])
    base.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    base.fit(x, y, epochs=1, batch_size=64, verbose=0)
    sizes, zeros = {}, {}
    for pattern in ("unstructured", "block4"):
        m = keras.models.clone_model(base)
        m.set_weights(base.get_weights())
        report = sparsify(m, SparsitySpec(sparsity=0.8, schedule="constant", pattern=pattern,
                                          keep_sensitive=False))
        zeros[pattern] = report["sparsity"]
        conv = tf.lite.TFLiteConverter.from_keras_model(m)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]  # int8 weights: the mask's share shows
        path = tmp_path / f"{pattern}.tflite"
        path.write_bytes(conv.convert())
        sizes[pattern] = file_sizes(path)
    assert zeros["block4"] == pytest.approx(zeros["unstructured"], abs=0.01)
    assert sizes["block4"]["bytes"] == sizes["unstructured"]["bytes"]
    # Measured 0.92x (gzip) and 0.89x (zstd) here; a dense file would be 1.0x.
    assert sizes["block4"]["gzip_bytes"] < 0.95 * sizes["unstructured"]["gzip_bytes"]
    assert sizes["block4"]["zstd_bytes"] < 0.95 * sizes["unstructured"]["zstd_bytes"]


def test_polynomial_schedule_ramps_to_the_target():
    spec = SparsitySpec(sparsity=0.8)
    values = [spec.at(t, 100) for t in (0, 25, 50, 100, 150)]
    assert values[0] == 0 and values[-2] == pytest.approx(0.8) and values[-1] == pytest.approx(0.8)
    assert values == sorted(values) and values[1] > 0.8 * 0.25  # front-loaded, as in Zhu & Gupta
    assert SparsitySpec(sparsity=0.8, schedule="constant").at(0, 100) == 0.8


def test_gradual_sparsity_while_fine_tuning_hits_the_target_and_model_still_learns():
    model = _mlp()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 64)).astype("float32")
    y = (x[:, :4].argmax(axis=1)).astype("int64")
    report = sparsify(model, SparsitySpec(sparsity=0.75, frequency=4), data=(x, y), epochs=6,
                      learning_rate=3e-3)
    assert report["sparsity"] == pytest.approx(0.75, abs=0.01) and report["kernels"] == 2
    acc = float(np.mean(model.predict(x, verbose=0).argmax(axis=1) == y))
    assert acc > 0.6  # chance is 0.25


def test_sparsify_api_reports_smaller_compressed_size(tmp_path):
    from edgekit.train_api import sparsify as api_sparsify

    model = _mlp()
    _, report = api_sparsify(model, SparsitySpec(sparsity=0.9, schedule="constant"),
                                  out=tmp_path / "s.keras")
    assert report["sparse_gzip_bytes"] < 0.5 * report["dense_gzip_bytes"]
    assert abs(report["sparse_bytes"] - report["dense_bytes"]) < 2048  # dense format: same size
    assert np.count_nonzero(model.layers[0].kernel.numpy()) == 64 * 64  # the input is untouched


def test_bad_sparsity_options():
    for bad in (0, 1, 1.2, "x"):
        with pytest.raises(InputError, match="sparsity must be in"):
            SparsitySpec(sparsity=bad)
    with pytest.raises(InputError, match="pattern"):
        SparsitySpec(pattern="4:8")
    with pytest.raises(InputError, match="needs training data"):
        sparsify(_mlp(), SparsitySpec(), epochs=1)

"""Weight clustering: k-means, fine-tuning keeps k shared values, accuracy, conversion keeps the
cluster structure (values counted in the .tflite), sizes measured, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from compression_helpers import trained_digits

from converters.clustering import ClusteringWarning, ClusterSpec, cluster, kmeans_1d
from edgekit.errors import InputError


@pytest.fixture(scope="module")
def digits_path(tmp_path_factory):
    return trained_digits(tmp_path_factory)


@pytest.fixture(scope="module")
def splits():
    from calibration_data.digits import load_split

    return load_split("train"), load_split("eval")


@pytest.mark.parametrize("init", ["linear", "density", "kmeans++"])
def test_kmeans_1d_finds_the_clusters_and_beats_its_initialisation(init):
    rng = np.random.default_rng(0)
    centres = np.array([-2.0, -0.5, 0.1, 1.0, 3.0])
    v = np.concatenate([c + 0.01 * rng.normal(size=200) for c in centres])
    c, a = kmeans_1d(v, 5, init, iterations=50, rng=np.random.default_rng(1))
    assert len(c) == 5 and np.all(np.diff(c) > 0)
    err = np.mean((v - c[a]) ** 2)
    c0, a0 = kmeans_1d(v, 5, init, iterations=0, rng=np.random.default_rng(1))
    assert err <= np.mean((v - c0[a0]) ** 2)
    if init != "linear":  # linear spacing can put two centroids in one gap of real data
        assert np.allclose(c, centres, atol=0.01)
    assert np.all(np.abs(v - c[a]) <= np.abs(v[:, None] - c[None, :]).min(axis=1) + 1e-12)


def test_k16_fine_tuned_within_one_point_and_k_values_survive_conversion(digits_path, splits,
                                                                          tmp_path):
    import keras

    from converters.distill import accuracy
    from converters.tflite_weights import weight_uniques
    from edgekit.api import convert
    from edgekit.train_api import cluster as api_cluster

    (xt, yt), (xe, ye) = splits
    base = keras.saving.load_model(digits_path, safe_mode=True)
    out = tmp_path / "clustered.keras"
    model, report = api_cluster(digits_path, 16, train=(xt, yt), epochs=2, out=out)
    assert accuracy(model, xe, ye) >= accuracy(base, xe, ye) - 0.01
    assert set(report["layers"]) == {"conv2d", "conv2d_1", "dense", "probs"}
    reloaded = keras.saving.load_model(out, safe_mode=True)
    for layer in reloaded.layers:
        if layer.name in report["layers"]:
            assert np.unique(layer.kernel.numpy()).size <= 16, layer.name
    # Measured sizes: the clustered file compresses to a fraction of the source's.
    assert report["sizes"]["gzip_bytes"] < 0.3 * report["source_sizes"]["gzip_bytes"]
    assert report["sizes"]["zstd_bytes"] < 0.3 * report["source_sizes"]["zstd_bytes"]
    assert (tmp_path / "clustered.compression.json").is_file()
    from calibration_data.digits import digits_path as split_path

    arts = convert(out, ["tflite-fp32", "tflite-int8"], calibration=split_path("calibration"),
                   eval=split_path("eval"), out=tmp_path / "build")
    comp = arts[1].source["compression"]  # the manifest records the technique
    assert comp["technique"] == "clustering" and comp["params"]["clusters"] == 16
    assert comp["params"]["only_layers"] == [] and "layers" not in comp["params"]
    from edgekit.artifact import read_manifest

    assert read_manifest(tmp_path / "build")[0].source["compression"] == arts[0].source[
        "compression"]
    fp32, int8 = (weight_uniques(a.path) for a in arts)
    assert len(fp32) == 4 and all(w["unique"] <= 16 for w in fp32)  # no BN: values kept exactly
    assert all(w["dtype"] == "int8" and w["max_unique_per_channel"] <= 16 for w in int8)
    # The unclustered model's int8 weights hold far more values: the check can fail.
    plain = convert(digits_path, ["tflite-int8"], calibration=split_path("calibration"),
                    out=tmp_path / "plain")
    assert max(w["max_unique_per_channel"] for w in weight_uniques(plain[0].path)) > 64
    assert "compression" not in plain[0].source
    # Per-tensor int8: one grid per layer, so the layer keeps <= 16 values (per channel, each
    # channel's own scale spreads the same 16 centroids over different int8 values), the
    # file drops its per-channel scale arrays, and it gzips smaller at no cost in accuracy.
    from converters import ConvertOptions
    from converters.sparsity import file_sizes

    pt = convert(out, ["tflite-int8"], calibration=split_path("calibration"),
                 eval=split_path("eval"), out=tmp_path / "per-tensor",
                 options=ConvertOptions(per_channel=False))[0]
    assert pt.pass_config["per_channel"] is False and arts[1].pass_config["per_channel"] is True
    assert all(w["dtype"] == "int8" and w["unique"] <= 16 for w in weight_uniques(pt.path))
    assert max(w["unique"] for w in int8) > 16
    assert file_sizes(pt.path)["gzip_bytes"] < file_sizes(arts[1].path)["gzip_bytes"]
    assert pt.fidelity.accuracy >= arts[1].fidelity.accuracy - 0.01


def test_per_channel_preserve_sparsity_keeps_zeros_and_names_skipped_layers(digits_path):
    import keras

    from converters.sparsity import SparsitySpec, sparsify

    model = keras.saving.load_model(digits_path, safe_mode=True)
    sparsify(model, SparsitySpec(sparsity=0.6, schedule="constant"))
    zeros = {layer.name: layer.kernel.numpy() == 0 for layer in model.layers[1:]
             if hasattr(layer, "kernel")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = cluster(model, ClusterSpec(16, per_channel=True, preserve_sparsity=True,
                                            init="density"))
    # conv2d has 9 weights per channel: fewer than 16, named in a warning, not reported.
    assert "conv2d" not in report["layers"] and "conv2d" in report["skipped"]
    assert any(issubclass(w.category, ClusteringWarning) and "conv2d" in str(w.message)
               for w in caught)
    for layer in model.layers:
        if layer.name in report["layers"]:
            w = layer.kernel.numpy()
            assert np.array_equal(w == 0, zeros[layer.name]) or zeros[layer.name].sum() == 0
            assert np.all(w[zeros[layer.name]] == 0)
            per = max(np.unique(w[..., c]).size for c in range(w.shape[-1]))
            assert per <= 16 and np.unique(w).size > 16  # per channel, not per layer
            assert report["layers"][layer.name]["max_unique_per_channel"] == per


def test_bad_clustering_input(digits_path):
    import keras

    model = keras.saving.load_model(digits_path, safe_mode=True)
    for bad in (1, 0, -3, 2.5, True, 257):
        with pytest.raises(InputError, match="clusters must be"):
            ClusterSpec(bad)
    with pytest.raises(InputError, match="init"):
        ClusterSpec(8, init="random")
    with pytest.raises(InputError, match="no layer named"):
        cluster(model, ClusterSpec(8, layers=("nope",)))
    with pytest.raises(InputError, match="not a layer type that can be clustered"):
        cluster(model, ClusterSpec(8, layers=("flatten",)))
    with pytest.raises(InputError, match="clusters=200"):  # 64 weights per channel < 200
        cluster(model, ClusterSpec(200, per_channel=True, layers=("probs",)))


def test_custom_layers_and_big_embeddings_are_named_and_left_alone():
    import keras

    @keras.saving.register_keras_serializable("edgekit_tests")
    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], shape[-1]), initializer="ones")

        def call(self, x):
            return x @ self.w

    inp = keras.Input((4,), dtype="int32")
    h = keras.layers.Embedding(5000, 64, name="big_table")(inp)
    h = keras.layers.Flatten()(h)
    h = Scale(name="custom")(h)
    out = keras.layers.Dense(10, name="head")(h)
    model = keras.Model(inp, out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = cluster(model, ClusterSpec(8, max_embedding_params=100_000))
    msgs = [str(w.message) for w in caught if issubclass(w.category, ClusteringWarning)]
    assert any("big_table" in m for m in msgs) and any("custom" in m for m in msgs)
    assert set(report["layers"]) == {"head"}
    assert np.unique(model.get_layer("custom").w.numpy()).size == 1  # untouched (all ones)
    assert np.unique(model.get_layer("big_table").embeddings.numpy()).size > 1000
    assert np.unique(model.get_layer("head").kernel.numpy()).size <= 8


@pytest.mark.slow
def test_mobilenetv2_clusters_survive_batchnorm_folding_and_int8(tmp_path):
    """The MobileNetV2-style reference (depthwise + BatchNorm, folded into the kernels at
    conversion): after per-layer k = 16, every conv/depthwise/FC weight of the fp32 and int8
    artifacts holds <= 16 values per output channel (BN scales each channel differently, so
    per layer it can hold more: the per-channel count is the invariant)."""
    import keras

    from converters.tflite_weights import weight_uniques
    from edgekit.api import convert

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                           classes=10)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # trained-looking BatchNorm, so folding scales channels apart
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n),
                               rng.normal(0, 0.1, n), rng.uniform(0.5, 2.0, n)])
    report = cluster(model, ClusterSpec(16, fold_batchnorm=False))  # folded: test_compression_bn_fold
    assert len(report["layers"]) == 53 and not report["skipped"]  # 52 convs + the classifier
    path = tmp_path / "mnv2.keras"
    model.save(path)
    x = np.random.default_rng(0).random((64, 32, 32, 3), dtype=np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    arts = convert(path, ["tflite-fp32", "tflite-int8"], calibration=tmp_path / "calib.npz",
                   out=tmp_path / "build")
    for art in arts:
        weights = weight_uniques(art.path)
        assert len(weights) == 53, art.target
        assert all(w["max_unique_per_channel"] <= 16 for w in weights), art.target
    assert any(w["unique"] > 16 for w in weight_uniques(arts[0].path))  # BN folded per channel

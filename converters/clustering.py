"""Weight clustering (weight sharing) for Keras 3 models.

Each clustered kernel is replaced by ``centroids[assignments]``: k shared values per layer (or
per output channel). k-means picks the centroids; fine-tuning then trains the *centroids*, not
the weights (the gradient of every weight is summed into its cluster, so weights that share a
value keep sharing it), and the assignments stay fixed. The result is a plain Keras model whose
clustered kernels hold at most k distinct values: a dense format does not get smaller on disk,
but it compresses very well (gzip/zstd), and an INT8 conversion keeps at most k distinct int8
values per output channel.

TF-MOT's ``cluster_weights`` needs the legacy tf-keras; this is a from-scratch equivalent.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np

from edgekit.errors import InputError

log = logging.getLogger(__name__)

# Layer class -> the weights clustered (biases and normalisation are never clustered: few values
# that matter a lot).
_CLUSTERABLE = {"Conv1D": ("kernel",), "Conv2D": ("kernel",), "Conv3D": ("kernel",),
                "Conv1DTranspose": ("kernel",), "Conv2DTranspose": ("kernel",),
                "Dense": ("kernel",), "DepthwiseConv1D": ("kernel",),
                "DepthwiseConv2D": ("kernel",),
                "SeparableConv1D": ("depthwise_kernel", "pointwise_kernel"),
                "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
                "Embedding": ("embeddings",)}
INITS = ("linear", "density", "kmeans++")


class ClusteringWarning(UserWarning):
    """A layer that was asked for or could hold weights was left unclustered (named, with why)."""


@dataclass(frozen=True)
class ClusterSpec:
    """Clustering options.

    Attributes:
        clusters: k, the number of shared values per layer (or per channel); >= 2.
        per_channel: k values per output channel instead of per layer (more accurate; int8
            per-channel quantization then keeps <= k values per channel exactly).
        init: centroid initialisation, one of ``INITS``: ``"linear"`` (evenly spaced between
            min and max, keeps outliers), ``"density"`` (at quantiles of the weights),
            ``"kmeans++"`` (D^2 sampling, seeded). Lloyd iterations follow each.
        preserve_sparsity: zeros stay exactly zero (one of the k values is a fixed 0 and only
            non-zero weights are clustered), so a pruned model stays pruned.
        layers: names of the layers to cluster (empty: every clusterable layer). A named layer
            that cannot be clustered is an error.
        min_params: kernels with fewer weights are left alone when ``layers`` is empty.
        max_embedding_params: embedding tables larger than this are left alone (with a
            ``ClusteringWarning``): k-means over them is slow and they are better quantized.
        iterations: Lloyd iterations after initialisation.
        seed: k-means++ seed.
        fold_batchnorm: fold each BatchNormalization into the Conv2D/DepthwiseConv2D/Dense in
            front of it before clustering (``converters.bn_fold``), so the clustered values are
            the ones a converted file stores. Without it LiteRT folds BN at conversion and
            multiplies each output channel by its own scale: k values per channel, not per
            layer. Needs a new model: ``cluster_copy`` folds, ``cluster`` (in place) refuses.
    """

    clusters: int = 16
    per_channel: bool = False
    init: str = "kmeans++"
    preserve_sparsity: bool = False
    layers: tuple = ()
    min_params: int = 64
    max_embedding_params: int = 1_000_000
    iterations: int = 25
    seed: int = 0
    fold_batchnorm: bool = True

    def __post_init__(self):
        k = self.clusters
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
            raise InputError(f"clusters must be an integer >= 2, got {k!r}")
        if k > 256:
            raise InputError(f"clusters must be <= 256 (int8 holds 256 values), got {k}")
        if self.init not in INITS:
            raise InputError(f"init must be one of {', '.join(INITS)}; got {self.init!r}")
        if self.iterations < 0:
            raise InputError(f"iterations must be >= 0, got {self.iterations!r}")
        object.__setattr__(self, "layers", tuple(self.layers))

    def to_dict(self) -> dict:
        return {"clusters": int(self.clusters), "per_channel": self.per_channel,
                "init": self.init, "preserve_sparsity": self.preserve_sparsity,
                "only_layers": list(self.layers), "fold_batchnorm": self.fold_batchnorm}


# --- k-means in one dimension ----------------------------------------------------------------

def init_centroids(values: np.ndarray, k: int, init: str, rng: np.random.Generator) -> np.ndarray:
    """``k`` initial centroids for 1-D ``values`` (sorted; fewer if there are fewer values)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    uniq = np.unique(v)
    if len(uniq) <= k:
        return uniq
    if init == "linear":
        c = np.linspace(v.min(), v.max(), k)
    elif init == "density":
        c = np.quantile(v, (np.arange(k) + 0.5) / k)
    else:  # k-means++
        c = [v[rng.integers(len(v))]]
        d2 = (v - c[0]) ** 2
        for _ in range(k - 1):
            total = d2.sum()
            pick = rng.integers(len(v)) if total <= 0 else rng.choice(len(v), p=d2 / total)
            c.append(v[pick])
            d2 = np.minimum(d2, (v - v[pick]) ** 2)
        c = np.array(c)
    return np.sort(c)


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``centroids`` for every value."""
    if len(centroids) == 1:
        return np.zeros(values.shape, dtype=np.int64)
    mid = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(mid, values).astype(np.int64)


def kmeans_1d(values: np.ndarray, k: int, init: str = "kmeans++", iterations: int = 25,
              rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means: ``(centroids (<= k, sorted), assignment of each value)``."""
    rng = rng or np.random.default_rng(0)
    v = np.asarray(values, dtype=np.float64).ravel()
    c = init_centroids(v, k, init, rng)
    for _ in range(iterations):
        a = assign(v, c)
        sums = np.bincount(a, weights=v, minlength=len(c))
        counts = np.bincount(a, minlength=len(c))
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)  # empty cluster: keep it
        order = np.argsort(new, kind="stable")
        new = new[order]
        if np.allclose(new, c):
            c = new
            break
        c = new
    return c, assign(v, c)


# --- which weights ----------------------------------------------------------------------------

@dataclass
class ClusteredKernel:
    """One clustered weight: its layer, variable, channel layout and the k-means result.

    ``ids`` index the flat ``centroids`` vector (``channels * k`` long): weight i of the kernel
    (row-major) takes ``centroids[ids[i]]``.
    """

    layer: str
    variable: object
    channels: int
    k: int
    centroids: np.ndarray
    ids: np.ndarray
    frozen: np.ndarray = field(default=None)  # 1 for centroids that must not move (the zero)

    def materialise(self, centroids=None) -> np.ndarray:
        c = self.centroids if centroids is None else centroids
        return np.asarray(c)[self.ids].reshape(tuple(self.variable.shape)).astype("float32")


def _channels(layer_class: str, key: str, shape: tuple, per_channel: bool) -> int:
    if not per_channel or key == "embeddings":
        return 1
    if layer_class.startswith("Depthwise") or key == "depthwise_kernel":
        return int(shape[-2] * shape[-1])  # (h, w, in, multiplier): one filter per in x mult
    if "Transpose" in layer_class:
        return int(shape[-2])  # (h, w, out, in)
    return int(shape[-1])


def select_kernels(model, spec: ClusterSpec) -> tuple[list, list]:
    """``([(layer, class, weight key, variable, channels)], [(layer, why skipped)])``.

    Raises:
        InputError: a layer named in ``spec.layers`` that is missing or cannot be clustered, or
            k larger than a selected kernel (per channel: than a channel's weights).
    """
    names = {layer.name for layer in model.layers}
    missing = [n for n in spec.layers if n not in names]
    if missing:
        raise InputError(f"no layer named {', '.join(missing)} in model {model.name!r}")
    chosen, skipped = [], []
    for layer in model.layers:
        cls = type(layer).__name__
        named = layer.name in spec.layers
        if spec.layers and not named:
            continue
        keys = _CLUSTERABLE.get(cls)
        if keys is None or not type(layer).__module__.startswith("keras"):
            why = f"layer {layer.name!r} ({cls}) is not a layer type that can be clustered"
            if named:
                raise InputError(why + f"; clusterable: {', '.join(sorted(_CLUSTERABLE))}")
            if layer.weights and not type(layer).__module__.startswith("keras"):
                skipped.append((layer.name, why))
            continue
        for v in layer.weights:
            key = v.path.split("/")[-1]
            if key not in keys:
                continue
            size = int(np.prod(v.shape))
            if key == "embeddings" and size > spec.max_embedding_params:
                why = (f"embedding {layer.name!r} has {size:,} weights, above "
                       f"max_embedding_params={spec.max_embedding_params:,}")
                if named:
                    raise InputError(why)
                skipped.append((layer.name, why))
                continue
            ch = _channels(cls, key, tuple(v.shape), spec.per_channel)
            per = size // ch
            if not named and size < spec.min_params:
                continue
            if per < spec.clusters:
                why = (f"layer {layer.name!r} {key} has {per} weights "
                       f"{'per channel' if ch > 1 else ''} but clusters={spec.clusters}")
                if named:
                    raise InputError(why + ": use fewer clusters or leave this layer out")
                skipped.append((layer.name, why.replace("  ", " ")))
                continue
            chosen.append((layer.name, cls, key, v, ch))
    return chosen, skipped


def cluster_kernels(model, spec: ClusterSpec) -> tuple[list, list]:
    """Run k-means on the selected kernels (weights are not changed yet).

    Returns:
        ``([ClusteredKernel], [(layer, why skipped)])``; every skip is also a ``ClusteringWarning``.

    Raises:
        InputError: nothing can be clustered, or a bad ``spec.layers`` (see ``select_kernels``).
    """
    chosen, skipped = select_kernels(model, spec)
    for _name, why in skipped:
        warnings.warn(f"{why}; left unclustered", ClusteringWarning, stacklevel=2)
    if not chosen:
        raise InputError(f"model {model.name!r} has no layer that can be clustered with "
                         f"clusters={spec.clusters} (Conv/Dense/Depthwise/Separable kernels or "
                         f"embeddings with at least {spec.min_params} weights)")
    rng = np.random.default_rng(spec.seed)
    out = []
    for name, cls, _key, v, ch in chosen:
        w = np.asarray(v.numpy(), dtype=np.float64)
        if "Transpose" in cls and ch > 1:
            cols = np.moveaxis(w, -2, -1).reshape(-1, ch)
        else:
            cols = w.reshape(-1, ch)
        k = spec.clusters
        cent = np.zeros((ch, k))
        ids = np.zeros(cols.shape, dtype=np.int64)
        frozen = np.zeros((ch, k))
        for c in range(ch):
            col = cols[:, c]
            if spec.preserve_sparsity:
                nz = col != 0
                frozen[c, 0] = 1.0  # slot 0 is the fixed zero
                if nz.any():
                    cc, aa = kmeans_1d(col[nz], k - 1, spec.init, spec.iterations, rng)
                    cent[c, 1:1 + len(cc)] = cc
                    ids[nz, c] = aa + 1
                ids[~nz, c] = 0
            else:
                cc, aa = kmeans_1d(col, k, spec.init, spec.iterations, rng)
                cent[c, :len(cc)] = cc
                ids[:, c] = aa
        flat_ids = (ids + np.arange(ch)[None, :] * k)  # into the flat (ch * k) centroids
        if "Transpose" in cls and ch > 1:
            shape = list(v.shape)
            moved = shape[:-2] + [shape[-1], shape[-2]]
            flat_ids = np.moveaxis(flat_ids.reshape(moved), -1, -2)
        out.append(ClusteredKernel(name, v, ch, k, cent.ravel().astype("float32"),
                                   flat_ids.ravel().astype("int32"),
                                   frozen.ravel().astype("float32")))
    return out, skipped


def fine_tune(model, kernels: list, x, y, loop_spec) -> dict:
    """Train the model with every clustered kernel tied to its centroids (assignments fixed).

    The kernel's gradient is summed per cluster (``unsorted_segment_sum``) into the centroids;
    every other trainable weight (biases, BatchNorm, unclustered layers) trains as usual.
    """
    import keras
    import tensorflow as tf

    from converters import train_loop

    cent_vars = [keras.Variable(kc.centroids, name=f"centroids_{i}")
                 for i, kc in enumerate(kernels)]
    ids = [tf.constant(kc.ids) for kc in kernels]
    movable = [tf.constant(1.0 - kc.frozen) for kc in kernels]
    shapes = [tuple(kc.variable.shape) for kc in kernels]
    clustered = {id(kc.variable) for kc in kernels}
    by_var = {id(kc.variable): i for i, kc in enumerate(kernels)}
    others = [v for v in model.trainable_variables if id(v) not in clustered]

    def before_step():
        for kc, c, i, s in zip(kernels, cent_vars, ids, shapes, strict=True):
            kc.variable.assign(tf.reshape(tf.gather(c, i), s))

    def transform(grads, variables):
        g_out, v_out = [], []
        cgrads = [None] * len(kernels)
        for g, v in zip(grads, variables, strict=True):
            j = by_var.get(id(v))
            if j is None:
                g_out.append(g)
                v_out.append(v)
            else:
                n = int(kernels[j].centroids.size)
                cgrads[j] = tf.math.unsorted_segment_sum(tf.reshape(g, [-1]), ids[j], n)
        for j, c in enumerate(cent_vars):
            g = cgrads[j] if cgrads[j] is not None else tf.zeros_like(c)
            g_out.append(g * movable[j])
            v_out.append(c)
        return g_out, v_out

    result = train_loop.train(model, x, y, loop_spec, optimizer_variables=others + cent_vars,
                              before_step=before_step, transform=transform)
    for kc, c in zip(kernels, cent_vars, strict=True):
        kc.centroids = np.asarray(c.numpy())
    return result


def strip(kernels: list) -> None:
    """Write ``centroids[ids]`` into every clustered kernel: a plain model, no wrappers left."""
    for kc in kernels:
        kc.variable.assign(kc.materialise())


def unique_values(w) -> int:
    """Distinct values in ``w``."""
    return int(np.unique(np.asarray(w)).size)


def max_unique_per_channel(w: np.ndarray, kc: ClusteredKernel) -> int:
    """Most distinct values in one cluster group (the layer, or one channel) of ``w``."""
    group = (kc.ids // kc.k).reshape(w.shape)
    flat, g = w.ravel(), group.ravel()
    return max(unique_values(flat[g == c]) for c in range(kc.channels))


def cluster(model, spec: ClusterSpec, *, data=None, loop_spec=None) -> dict:
    """Cluster ``model``'s weights in place, fine-tuning the centroids on ``data`` if given.

    Args:
        model: a Keras model (changed in place; any kind whose layers expose their weights).
        spec: clustering options.
        data: ``(x, y)`` labelled training data for fine-tuning (``None``: k-means only).
        loop_spec: ``converters.train_loop.LoopSpec`` (epochs, batch size, learning rate);
            needed with ``data``.

    Returns:
        ``{"technique": "clustering", **spec.to_dict(), "layers": {name: {"weights",
        "unique_values", "max_unique_per_channel", "channels"}}, "skipped": {name: why}, "loss"}``. ``unique_values`` is
        counted on the final weights, so a layer is only listed if it really holds <= k values
        per channel.

    Raises:
        InputError: bad options, nothing to cluster, data without ``loop_spec``, or
            ``spec.fold_batchnorm`` on a model that still has BatchNorm to fold (folding builds
            a new model: use ``cluster_copy``).
    """
    if spec.fold_batchnorm:
        from converters.bn_fold import plan_folds

        try:
            pairs = plan_folds(model)[2]
        except InputError:  # subclassed: nothing can be folded, nothing is claimed
            pairs = []
        if pairs:
            raise InputError(
                f"model {model.name!r} has {len(pairs)} BatchNorm layers to fold (e.g. "
                f"{pairs[0][1]!r} after {pairs[0][0]!r}) and cluster() works in place: use "
                f"cluster_copy() to fold then cluster, or ClusterSpec(fold_batchnorm=False)")
    kernels, skipped = cluster_kernels(model, spec)
    loss = None
    if data is not None:
        if loop_spec is None:
            raise InputError("fine-tuning clustered weights needs epochs (a LoopSpec)")
        loss = fine_tune(model, kernels, data[0], data[1], loop_spec)["loss"]
    strip(kernels)
    layers = {}
    for kc in kernels:
        w = np.asarray(kc.variable.numpy())
        per = max_unique_per_channel(w, kc)
        if per > kc.k:  # would be a bug: never report such a layer as clustered
            raise RuntimeError(f"layer {kc.layer}: {per} unique values in a channel after "
                               f"clustering to {kc.k}")
        layers[kc.layer] = {"weights": int(w.size), "channels": kc.channels,
                            "unique_values": unique_values(w), "max_unique_per_channel": per}
    return {"technique": "clustering", **spec.to_dict(), "layers": layers,
            "skipped": dict(skipped), "loss": loss}


def cluster_copy(model, spec: ClusterSpec, *, data=None, loop_spec=None) -> tuple:
    """Cluster a copy of ``model``, with its BatchNorms folded first if ``spec.fold_batchnorm``.

    Args:
        model: a functional or Sequential Keras model (not changed).
        spec, data, loop_spec: as for ``cluster``.

    Returns:
        ``(clustered model, report)``: ``cluster``'s report plus ``batchnorm_folded``, the
        ``[layer, batchnorm]`` pairs folded (empty when none or ``fold_batchnorm=False``).

    Raises:
        InputError: as ``cluster``; a subclassed model when BatchNorm folding is asked for.
        EdgekitError: folding changed the model's outputs (a bug).
    """
    import keras

    from converters.bn_fold import fold_batchnorm

    if spec.fold_batchnorm:
        new, pairs = fold_batchnorm(model)
    else:
        new, pairs = keras.models.clone_model(model), []
        new.set_weights(model.get_weights())
    report = cluster(new, spec, data=data, loop_spec=loop_spec)
    report["batchnorm_folded"] = [list(p) for p in pairs]
    return new, report

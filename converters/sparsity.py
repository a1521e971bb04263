"""Unstructured, block and 2:4 magnitude sparsity, one-shot or gradual (polynomial schedule).

Weights are zeroed, not removed: the model keeps its shapes, and dense formats (.keras, .tflite,
.onnx) keep their size on disk, so what shrinks is the *compressed* size (zip/gzip of the file).
Dense CPU kernels run zeros as fast as other numbers, so latency rarely improves on CPUs; 2:4
patterns (2 of every 4 consecutive weights along the reduction axis kept) are what sparse tensor
cores (e.g. NVIDIA Ampere and later) accelerate. ``block4`` zeros whole blocks of 4 consecutive
input channels, the axis TFLite and ONNX store contiguously (OHWI conv and [out, in]
fully-connected weights), so the zeros of the file come in runs that gzip/zstd encode in a few
bits, instead of a fresh position every weight.
"""

from __future__ import annotations

import gzip
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import InputError

log = logging.getLogger(__name__)

_PRUNABLE = {"Conv1D": "kernel", "Conv2D": "kernel", "Conv3D": "kernel", "Dense": "kernel",
             "DepthwiseConv1D": "kernel", "DepthwiseConv2D": "kernel",
             "SeparableConv1D": "pointwise_kernel", "SeparableConv2D": "pointwise_kernel"}


def check_fraction(value, name: str = "sparsity") -> float:
    """``value`` as a float if it is a number in the open interval (0, 1).

    Raises:
        InputError: anything else (booleans, strings, 0, 1, out of range).
    """
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not ok or not 0 < value < 1:
        raise InputError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def round_sparsity(target: float, round_: int, rounds: int) -> float:
    """Sparsity after ``round_`` of ``rounds`` of iterative pruning to ``target``.

    Each round removes the same fraction of the weights still alive (Frankle & Carbin), so
    round r reaches ``1 - (1 - target) ** (r / rounds)``.
    """
    return 1.0 - (1.0 - target) ** (min(round_, rounds) / rounds)


def cosine_fraction(initial: float, step: int, end_step: int) -> float:
    """Cosine decay of ``initial`` to 0 at ``end_step`` (RigL's drop-fraction schedule)."""
    if step >= end_step:
        return 0.0
    return 0.5 * initial * (1.0 + math.cos(math.pi * step / end_step))


PATTERNS = ("unstructured", "block4", "2:4")
BLOCK = 4  # input channels per block of the "block4" pattern


@dataclass(frozen=True)
class SparsitySpec:
    """Sparsity options.

    Attributes:
        sparsity: final fraction of zeros in each pruned kernel, in (0, 1); 2:4 is always 0.5.
        schedule: ``"polynomial"`` (Zhu & Gupta: s_t = s (1 - (1 - t/T)^3), mask updated
            every ``frequency`` steps of fine-tuning) or ``"constant"`` (final sparsity at once).
        pattern: ``"unstructured"``, ``"block4"`` (aligned blocks of 4 input channels, ranked by
            their L2 norm) or ``"2:4"``.
        frequency: steps between mask updates of the polynomial schedule.
        min_params: kernels smaller than this are left dense (biases are never pruned).
        keep_sensitive: leave the first convolution (it reads the raw input) and every
            DepthwiseConv kernel (9 weights per channel, each a whole spatial filter) dense,
            and reach ``sparsity`` over the remaining kernels. Uniform magnitude pruning of
            these few weights costs the most accuracy for the least size (MobileNetV2: 80%
            everywhere lost 3.6 points); they are ~3% of its conv weights.
    """

    sparsity: float = 0.8
    schedule: str = "polynomial"
    pattern: str = "unstructured"
    frequency: int = 10
    min_params: int = 256
    keep_sensitive: bool = True

    def __post_init__(self):
        if self.pattern == "2:4":
            object.__setattr__(self, "sparsity", 0.5)
        check_fraction(self.sparsity)
        if self.schedule not in ("polynomial", "constant"):
            raise InputError(f"schedule must be 'polynomial' or 'constant', got {self.schedule!r}")
        if self.pattern not in PATTERNS:
            raise InputError(f"pattern must be one of {', '.join(PATTERNS)}; got {self.pattern!r}")
        if self.frequency < 1:
            raise InputError(f"frequency must be >= 1, got {self.frequency!r}")

    def to_dict(self) -> dict:
        return {"sparsity": float(self.sparsity), "schedule": self.schedule,
                "pattern": self.pattern, "frequency": int(self.frequency),
                "min_params": int(self.min_params), "keep_sensitive": self.keep_sensitive}

    def at(self, step: int, total: int) -> float:
        """Target sparsity after ``step`` of ``total`` fine-tuning steps."""
        if self.schedule == "constant" or total <= 0:
            return self.sparsity
        t = min(1.0, step / total)
        return self.sparsity * (1 - (1 - t) ** 3)


def sensitive_layers(model) -> list:
    """Names of the layers ``keep_sensitive`` leaves dense: the first convolution in layer order
    (the one reading the input) and every DepthwiseConv."""
    names, first = [], True
    for layer in model.layers:
        cls = type(layer).__name__
        if cls.startswith("Depthwise"):
            names.append(layer.name)
        elif first and cls in _PRUNABLE and cls.startswith(("Conv", "Separable")):
            names.append(layer.name)
        if cls in _PRUNABLE:
            first = False
    return names


def kernels_for(model, spec, purpose: str | None = None) -> list:
    """``prunable_kernels`` for a technique's spec (anything with ``sparsity``, ``min_params`` and
    ``keep_sensitive``: lottery, RigL). With ``purpose``, none at all is an InputError saying what
    could not be done."""
    kernels = prunable_kernels(model, SparsitySpec(sparsity=spec.sparsity,
                                                   min_params=spec.min_params,
                                                   keep_sensitive=spec.keep_sensitive))
    if purpose and not kernels:
        raise InputError(f"model {model.name!r} has no Conv/Dense kernel with at least "
                         f"{spec.min_params} weights to {purpose}")
    return kernels


def prunable_kernels(model, spec: SparsitySpec) -> list:
    """The kernel variables that are sparsified: ``[(layer name, variable)]``."""
    out = []
    kept = set(sensitive_layers(model)) if spec.keep_sensitive else set()
    for layer in model.layers:
        key = _PRUNABLE.get(type(layer).__name__)
        if key is None or (spec.pattern == "2:4" and type(layer).__name__.startswith("Depthwise")):
            continue  # sparse tensor cores accelerate 2:4 in matmuls, not depthwise windows
        if layer.name in kept:
            continue
        for v in layer.weights:
            if v.path.split("/")[-1] == key and int(np.prod(v.shape)) >= spec.min_params:
                if spec.pattern == "2:4" and int(np.prod(v.shape[:-1])) % 4:
                    log.warning("layer %s: reduction axis of %d is not a multiple of 4; left "
                                "dense for 2:4", layer.name, int(np.prod(v.shape[:-1])))
                    continue
                out.append((layer.name, v))
    return out


def magnitude_mask(w: np.ndarray, sparsity: float, pattern: str) -> np.ndarray:
    """Keep-mask (1 = kept) of the largest-magnitude weights.

    Args:
        w: a kernel, output channels on the last axis.
        sparsity: fraction zeroed (unstructured).
        pattern: ``"unstructured"``: smallest |w| of the whole kernel go; ``"block4"``: the
            blocks of 4 consecutive input channels (axis -2 of a Keras HWIO / (in, out) kernel;
            a last, short block is ranked on its own weights) with the smallest L2 norm go, so
            the zeroed fraction is ``sparsity`` of the blocks; ``"2:4"``: in every 4 consecutive
            weights along the reduction axis (HWIO order: input channels fastest), the 2
            smallest go.

    Returns:
        float32 array shaped like ``w``.
    """
    if pattern == "2:4":
        flat = np.abs(w).reshape(-1, w.shape[-1])
        groups = flat.reshape(flat.shape[0] // 4, 4, flat.shape[1])
        order = np.argsort(groups, axis=1)
        mask = np.ones_like(groups, dtype=np.float32)
        np.put_along_axis(mask, order[:, :2, :], 0.0, axis=1)
        return mask.reshape(w.shape)
    if pattern == "block4" and w.ndim >= 2:
        return _block_mask(w, sparsity)
    k = math.floor(w.size * sparsity)
    if k <= 0:
        return np.ones_like(w, dtype=np.float32)
    order = np.argsort(np.abs(w).ravel(), kind="stable")
    mask = np.ones(w.size, dtype=np.float32)
    mask[order[:k]] = 0.0
    return mask.reshape(w.shape)


def _block_mask(w: np.ndarray, sparsity: float) -> np.ndarray:
    a = np.moveaxis(np.asarray(w, dtype=np.float64), -2, -1)  # (..., out, in)
    n_in = a.shape[-1]
    blocks = -(-n_in // BLOCK)
    sq = np.zeros(a.shape[:-1] + (blocks * BLOCK,))
    sq[..., :n_in] = a * a
    norms = sq.reshape(a.shape[:-1] + (blocks, BLOCK)).sum(axis=-1)
    k = math.floor(norms.size * sparsity)
    keep = np.ones(norms.size, dtype=np.float32)
    keep[np.argsort(norms.ravel(), kind="stable")[:k]] = 0.0
    mask = np.repeat(keep.reshape(norms.shape), BLOCK, axis=-1)[..., :n_in]
    return np.ascontiguousarray(np.moveaxis(mask, -1, -2))


def erk_sparsities(kernels: list, sparsity: float) -> dict:
    """Per-kernel sparsity of the Erdos-Renyi-Kernel distribution (Evci et al. 2020), keyed by
    variable path: a kernel's density is proportional to ``sum(shape) / prod(shape)``, so small
    layers (the classifier, the first convolution) stay denser, at the same total sparsity."""
    sizes = {v.path: int(np.prod(v.shape)) for _, v in kernels}
    raw = {v.path: float(np.sum(v.shape)) / sizes[v.path] for _, v in kernels}
    budget = (1.0 - sparsity) * sum(sizes.values())
    dense = set()
    while True:
        free = [p for p in raw if p not in dense]
        left = budget - sum(sizes[p] for p in dense)
        eps = left / max(1e-12, sum(raw[p] * sizes[p] for p in free))
        over = [p for p in free if eps * raw[p] > 1]
        if not over or len(dense) + len(over) == len(raw):
            break
        dense.update(over)
    return {p: (0.0 if p in dense else min(1.0, max(0.0, 1.0 - eps * raw[p]))) for p in raw}


def kernel_masks(kernels: list, sparsity, pattern: str = "unstructured") -> dict:
    """Magnitude keep-masks of ``kernels`` (``[(layer name, variable)]``), keyed by variable path.

    ``sparsity`` is one fraction for every kernel, or a ``{variable path: fraction}`` dict
    (e.g. from ``erk_sparsities``).
    """
    def s(v):
        return sparsity[v.path] if isinstance(sparsity, dict) else sparsity

    return {v.path: magnitude_mask(np.asarray(v.numpy()), s(v), pattern) for _, v in kernels}


def apply_fixed_masks(kernels: list, masks: dict) -> None:
    """Multiply each kernel by its mask (from ``kernel_masks``) in place."""
    for _, v in kernels:
        v.assign(np.asarray(v.numpy()) * masks[v.path])


def apply_masks(kernels: list, sparsity: float, spec: SparsitySpec) -> None:
    """Zero the smallest weights of each kernel in place, to ``sparsity``."""
    apply_fixed_masks(kernels, kernel_masks(kernels, sparsity, spec.pattern))


def kernel_sparsity(kernels: list) -> float:
    """Zeros / weights over ``kernels``."""
    zeros = sum(int(np.sum(np.asarray(v.numpy()) == 0)) for _, v in kernels)
    total = sum(int(np.prod(v.shape)) for _, v in kernels)
    return zeros / max(1, total)


def fixed_mask_callback(kernels: list, masks: dict):
    """A Keras callback that keeps masked weights at 0 after every training step."""
    import keras

    class _KeepMasks(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            apply_fixed_masks(kernels, masks)

    return _KeepMasks()


def sparsity_callback(model, spec: SparsitySpec, total_steps: int):
    """A Keras callback that raises sparsity along the schedule and keeps pruned weights at 0."""
    import keras

    kernels = prunable_kernels(model, spec)

    class _Sparsify(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step = 0
            self.masks = None

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if self.masks is None or self.step % spec.frequency == 0 or self.step >= total_steps:
                s = spec.sparsity if spec.pattern == "2:4" else spec.at(self.step, total_steps)
                self.masks = kernel_masks(kernels, s, spec.pattern)
            apply_fixed_masks(kernels, self.masks)

    return _Sparsify()


def sparsify(model, spec: SparsitySpec, *, data=None, epochs: int = 0, batch_size: int = 32,
             learning_rate: float = 1e-4) -> dict:
    """Sparsify ``model`` in place: one-shot, or gradually while fine-tuning on ``data``.

    Args:
        model: a Keras model (changed in place).
        spec: sparsity options.
        data: ``(x, y)`` for fine-tuning (a single-output classifier), needed when ``epochs``.
        epochs: fine-tuning epochs (0 = one-shot magnitude pruning).
        batch_size, learning_rate: fine-tuning options.

    Returns:
        ``{"sparsity": zeros / weights over the pruned kernels, "kernels": count,
        "kept_dense": [layers left dense by keep_sensitive], "sparsity_all_kernels": zeros /
        weights over every kernel of a prunable kind and size, the dense ones included}``.

    Raises:
        InputError: ``epochs`` without data, or no kernel large enough to prune.
    """
    import keras

    from converters.distill import check_training_data, output_kind, task_loss

    kernels = prunable_kernels(model, spec)
    if not kernels:
        raise InputError(f"model {model.name!r} has no Conv/Dense kernel with at least "
                         f"{spec.min_params} weights to sparsify")
    if epochs:
        if data is None:
            raise InputError("fine-tuning (epochs > 0) needs training data (--train)")
        x, y = check_training_data(model, *data)
        steps = epochs * math.ceil(len(x) / batch_size)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss=task_loss(output_kind(model, x)))
        model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0,
                  callbacks=[sparsity_callback(model, spec, steps)])
    apply_masks(kernels, spec.sparsity, spec)
    every = prunable_kernels(model, SparsitySpec(sparsity=spec.sparsity, pattern=spec.pattern,
                                                 min_params=spec.min_params,
                                                 keep_sensitive=False))
    kept = {name for name, _ in every} - {name for name, _ in kernels}
    return {"sparsity": kernel_sparsity(kernels), "kernels": len(kernels),
            "kept_dense": sorted(kept), "sparsity_all_kernels": kernel_sparsity(every)}


def gzip_size(path) -> int:
    """Bytes of ``path`` compressed with gzip (level 9)."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9))


def zstd_size(path, level: int = 19) -> int:
    """Bytes of ``path`` compressed with Zstandard (level 19, what OTA pipelines commonly ship)."""
    import zstandard

    return len(zstandard.ZstdCompressor(level=level).compress(Path(path).read_bytes()))


def file_sizes(path) -> dict:
    """Measured sizes of a model file: ``{"bytes", "gzip_bytes", "zstd_bytes"}``.

    The file itself is compressed (not an estimate from weight counts): this is what an app
    store download or an OTA update carries.
    """
    return {"bytes": Path(path).stat().st_size, "gzip_bytes": gzip_size(path),
            "zstd_bytes": zstd_size(path)}

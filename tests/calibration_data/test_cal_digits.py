"""The shipped digits splits: content, split, reproducibility, and helpers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from calibration_data import digits_path, load_dataset
from calibration_data.digits import SPLITS, load_split, upsampled_rgb
from calibration_data.digits.make_digits import check_shipped, main, write_splits
from edgekit.errors import InputError
from edgekit.fsutil import sha256_file
from edgekit.spec import TensorSpec


def test_shipped_splits_content():
    sizes = {}
    for split in SPLITS:
        x, y = load_split(split)
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape[1:] == (8, 8, 1) and len(x) == len(y)
        assert 0.0 <= x.min() and x.max() == 1.0
        sizes[split] = len(x)
        assert set(y.tolist()) == set(range(10))
    assert sum(sizes.values()) == 1797
    assert sizes["train"] / 1797 == pytest.approx(0.60, abs=0.01)
    assert sizes["calibration"] / 1797 == pytest.approx(0.15, abs=0.01)
    assert sizes["eval"] / 1797 == pytest.approx(0.25, abs=0.01)


def test_splits_are_stratified_and_partition_the_digits():
    full = load_digits()
    per_class = sum(np.bincount(load_split(s)[1], minlength=10) for s in SPLITS)
    np.testing.assert_array_equal(per_class, np.bincount(full.target))
    _, y_cal = load_split("calibration")
    share = np.bincount(y_cal) / np.bincount(full.target)
    assert np.all(np.abs(share - 0.15) < 0.02)
    # every shipped image is a digits image with its own label
    x_all = np.concatenate([load_split(s)[0] for s in SPLITS])[..., 0] * 16
    y_all = np.concatenate([load_split(s)[1] for s in SPLITS])
    lookup = {img.astype(np.float32).tobytes(): lab
              for img, lab in zip(full.images, full.target, strict=True)}
    assert all(lookup[img.tobytes()] == lab for img, lab in zip(x_all[:50], y_all[:50], strict=True))


def test_regenerating_gives_identical_arrays_and_bytes(tmp_path):
    first = write_splits(tmp_path / "a")
    second = write_splits(tmp_path / "b")
    for split in SPLITS:
        assert sha256_file(first[split]) == sha256_file(second[split])
        with np.load(first[split]) as fresh, np.load(digits_path(split)) as shipped:
            np.testing.assert_array_equal(fresh["x"], shipped["x"])
            np.testing.assert_array_equal(fresh["y"], shipped["y"])
    assert check_shipped() == []
    assert main(["--check"]) == 0


def test_check_notices_a_changed_file(tmp_path):
    write_splits(tmp_path)
    x, y = load_split("eval")
    np.savez(tmp_path / "eval.npz", x=x, y=np.roll(y, 1))
    (tmp_path / "train.npz").unlink()
    problems = check_shipped(tmp_path)
    assert any("eval.npz: differs" in p for p in problems)
    assert any("train.npz: missing" in p for p in problems)
    assert main(["--check", "--out", str(tmp_path)]) == 1


def test_load_dataset_on_shipped_calibration():
    spec = [TensorSpec("input_1", (None, 8, 8, 1), "float32")]
    data = load_dataset(digits_path("calibration"), spec, samples=200)
    assert len(data) == 200 and data.labels is not None
    assert np.bincount(data.labels).min() >= 19


def test_digits_path_unknown_split():
    with pytest.raises(InputError, match="unknown digits split 'test'"):
        digits_path("test")


def test_upsampled_rgb_matches_tensorflow():
    import tensorflow as tf

    x, _ = load_split("calibration")
    up = upsampled_rgb(x[:16], size=96)
    assert up.shape == (16, 96, 96, 3) and up.dtype == np.float32
    ref = tf.image.resize(x[:16], (96, 96), method="bilinear").numpy()
    np.testing.assert_allclose(up[..., :1], ref, atol=1e-5)
    np.testing.assert_array_equal(up[..., 0], up[..., 2])
    assert upsampled_rgb(x[:2, ..., 0], size=8).shape == (2, 8, 8, 3)
    np.testing.assert_allclose(upsampled_rgb(x[:2], size=8)[..., 0], x[:2, ..., 0], atol=1e-6)
    with pytest.raises(InputError):
        upsampled_rgb(np.zeros((2, 8, 8, 3)))

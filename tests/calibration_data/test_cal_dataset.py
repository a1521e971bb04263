"""Dataset: batching, seeded stratified sampling, fingerprints, describe."""

from __future__ import annotations

import numpy as np
import pytest

from calibration_data import Dataset, sample_indices, top1_accuracy
from edgekit.errors import CalibrationError, InputError


def _data(n=100, labels=True, seed=0):
    rng = np.random.default_rng(seed)
    inputs = {"a": rng.random((n, 4)).astype(np.float32),
              "b": rng.integers(0, 9, (n, 2)).astype(np.int32)}
    y = (np.arange(n) % 5) if labels else None
    return Dataset(inputs, y)


def test_batches_cover_every_sample_in_order():
    data = _data(10)
    batches = list(data.batches(4))
    assert [len(b["a"]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["a"] for b in batches]), data.inputs["a"])
    assert set(batches[0]) == {"a", "b"}


def test_labeled_batches():
    data = _data(7)
    pairs = list(data.labeled_batches(3))
    assert np.concatenate([y for _, y in pairs]).tolist() == data.labels.tolist()
    assert all(y is None for _, y in _data(7, labels=False).labeled_batches(3))


def test_batch_size_must_be_positive():
    with pytest.raises(InputError, match="batch_size must be at least 1"):
        list(_data(3).batches(0))


def test_take_is_stratified():
    y = np.repeat([0, 1, 2], [600, 300, 100])
    data = Dataset({"a": np.arange(1000, dtype=np.float32)[:, None]}, y)
    sample = data.take(100, seed=3)
    assert np.bincount(sample.labels).tolist() == [60, 30, 10]
    # the kept rows are the rows of their labels: sampling kept inputs and labels together
    np.testing.assert_array_equal(y[sample.inputs["a"][:, 0].astype(int)], sample.labels)


def test_take_rounds_to_exactly_n():
    y = np.repeat([0, 1, 2], [34, 33, 33])
    sample = Dataset({"a": np.zeros((100, 1), np.float32)}, y).take(10)
    assert len(sample) == 10
    assert sorted(np.bincount(sample.labels).tolist()) == [3, 3, 4]


def test_take_is_seeded():
    data = _data(200)
    assert data.take(50, seed=1).fingerprint == data.take(50, seed=1).fingerprint
    assert data.take(50, seed=1).fingerprint != data.take(50, seed=2).fingerprint
    unlabeled = _data(200, labels=False)
    assert unlabeled.take(50, 1).fingerprint == unlabeled.take(50, 1).fingerprint
    assert unlabeled.take(50, 1).fingerprint != unlabeled.take(50, 2).fingerprint


def test_take_without_labels_draws_distinct_rows():
    idx = sample_indices(100, 30, None, seed=0)
    assert len(set(idx.tolist())) == 30 and idx.tolist() == sorted(idx.tolist())


def test_take_all_or_more():
    data = _data(20)
    assert data.take(20) is data
    assert data.take(50) is data
    with pytest.raises(CalibrationError, match="too few samples: expected at least 50, found 20"):
        data.take(50, strict=True)
    with pytest.raises(InputError, match="at least 1"):
        data.take(0)


def test_fingerprint_changes_when_one_value_changes():
    x = np.random.default_rng(0).random((10, 4)).astype(np.float32)
    base = Dataset({"a": x}).fingerprint
    x2 = x.copy()
    x2[7, 3] = np.nextafter(x2[7, 3], np.float32(2))
    assert Dataset({"a": x2}).fingerprint != base
    assert Dataset({"a": x.copy()}).fingerprint == base
    assert Dataset({"a": x.astype(np.float64)}).fingerprint != base  # dtype counts
    assert Dataset({"a": x.reshape(10, 2, 2)}).fingerprint != base  # shape counts
    assert Dataset({"b": x}).fingerprint != base  # input name counts
    assert Dataset({"a": x}, np.zeros(10, int)).fingerprint != base  # labels count
    assert (Dataset({"a": x}, np.zeros(10, int)).fingerprint
            != Dataset({"a": x}, np.ones(10, int)).fingerprint)


def test_fingerprint_ignores_input_order():
    a, b = np.zeros((3, 1), np.float32), np.ones((3, 2), np.float32)
    assert Dataset({"a": a, "b": b}).fingerprint == Dataset({"b": b, "a": a}).fingerprint


def test_arrays_are_read_only_and_callers_arrays_are_not():
    x = np.zeros((3, 2), np.float32)
    data = Dataset({"a": x})
    with pytest.raises(ValueError):
        data.inputs["a"][0, 0] = 1
    x[0, 0] = 5  # the caller's array stays writable and is not shared
    assert data.inputs["a"][0, 0] == 0


def test_inputs_of_different_lengths():
    with pytest.raises(CalibrationError, match="same number of samples.*'a': 3, 'b': 4"):
        Dataset({"a": np.zeros((3, 1)), "b": np.zeros((4, 1))})


def test_describe():
    data = Dataset({"a": np.zeros((3, 1), np.float32)}, path="/data/c.npz")
    assert data.describe() == {"path": "/data/c.npz", "sha256": data.fingerprint, "samples": 3,
                               "layouts": {"a": "batched"}}
    assert len(data.fingerprint) == 64


def test_top1_accuracy():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert top1_accuracy(scores, np.array([1, 0, 0, 0])) == 0.75
    with pytest.raises(InputError):
        top1_accuracy(scores, np.array([1]))

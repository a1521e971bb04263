"""load_dataset on real .npz/.npy/.csv files, and every validation error it raises."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from calibration_data import load_dataset
from edgekit.errors import CalibrationError
from edgekit.spec import TensorSpec

IMG = TensorSpec("image", (None, 8, 8, 1), "float32")
IDS = TensorSpec("ids", (None, 4), "int32")
TAB = TensorSpec("features", (None, 3), "float32")


def _images(n=20, seed=0):
    return np.random.default_rng(seed).random((n, 8, 8, 1))


def _raises(match, *args, **kwargs) -> str:
    with pytest.raises(CalibrationError, match=match) as info:
        load_dataset(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# --- npz -----------------------------------------------------------------------------------

def test_npz_keyed_by_input_names_with_labels(tmp_path):
    path = tmp_path / "multi.npz"
    ids = np.arange(80).reshape(20, 4)
    np.savez(path, image=_images(), ids=ids, labels=np.arange(20) % 3)
    data = load_dataset(path, [IMG, IDS])
    assert len(data) == 20
    assert data.inputs["image"].dtype == np.float32
    assert data.inputs["ids"].dtype == np.int32
    np.testing.assert_array_equal(data.inputs["ids"], ids)
    np.testing.assert_array_equal(data.labels, np.arange(20) % 3)
    assert data.labels.dtype == np.int64
    assert data.path == path
    assert data.describe() == {"path": str(path), "sha256": data.fingerprint, "samples": 20,
                               "layouts": {"image": "batched", "ids": "batched"}}


def test_npz_single_input_accepts_x_and_y(tmp_path):
    path = tmp_path / "xy.npz"
    x = _images()
    np.savez(path, x=x, y=np.arange(20) % 2)
    data = load_dataset(path, [IMG])
    np.testing.assert_allclose(data.inputs["image"], x.astype(np.float32))
    np.testing.assert_array_equal(data.labels, np.arange(20) % 2)


@pytest.mark.parametrize("key", ["label", "labels", "y"])
def test_npz_label_keys(tmp_path, key):
    path = tmp_path / "l.npz"
    np.savez(path, x=_images(), **{key: np.ones(20, dtype=np.int32)})
    assert load_dataset(path, [IMG]).labels.tolist() == [1] * 20


def test_input_named_like_a_label_key_is_an_input(tmp_path):
    spec = [TensorSpec("y", (None, 2), "float32"), TensorSpec("label", (None, 1), "float32")]
    path = tmp_path / "yl.npz"
    np.savez(path, y=np.ones((3, 2)), label=np.zeros((3, 1)), labels=np.arange(3))
    data = load_dataset(path, spec)
    assert data.inputs["y"].shape == (3, 2) and data.labels.tolist() == [0, 1, 2]


def test_npz_single_unnamed_array(tmp_path):
    path = tmp_path / "unnamed.npz"
    np.savez(path, _images())  # stored as 'arr_0'
    assert load_dataset(path, [IMG]).inputs["image"].shape == (20, 8, 8, 1)


def test_npz_one_hot_labels_become_class_ids(tmp_path):
    path = tmp_path / "onehot.npz"
    y = np.arange(20) % 4
    np.savez(path, x=_images(), y=np.eye(4)[y])
    np.testing.assert_array_equal(load_dataset(path, [IMG]).labels, y)


def test_samples_and_seed(tmp_path):
    path = tmp_path / "xy.npz"
    np.savez(path, x=_images(100), y=np.arange(100) % 4)
    a = load_dataset(path, [IMG], samples=40, seed=1)
    b = load_dataset(path, [IMG], samples=40, seed=1)
    c = load_dataset(path, [IMG], samples=40, seed=2)
    assert len(a) == 40 and np.bincount(a.labels).tolist() == [10, 10, 10, 10]
    assert a.fingerprint == b.fingerprint != c.fingerprint


# --- npy / csv -----------------------------------------------------------------------------

def test_npy(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, _images(7))
    data = load_dataset(path, [IMG])
    assert data.inputs["image"].shape == (7, 8, 8, 1) and data.labels is None


def test_npy_for_a_multi_input_model(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, _images())
    msg = _raises(r"a \.npy holds one array", path, [IMG, IDS])
    assert "'image'" in msg and "'ids'" in msg and ".npz" in msg


def test_csv_with_header_and_label_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label,c\n1,2,0,3\n4,5,1,6\n7.5,8,2,9\n")
    data = load_dataset(path, [TAB])
    np.testing.assert_array_equal(data.inputs["features"],
                                  np.array([[1, 2, 3], [4, 5, 6], [7.5, 8, 9]], np.float32))
    assert data.labels.tolist() == [0, 1, 2]


def test_csv_without_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("1,2,3\n4,5,6\n")
    data = load_dataset(path, [TAB])
    assert data.inputs["features"].shape == (2, 3) and data.labels is None


def test_csv_integer_input(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("1,2,3,4\n5,6,7,8\n")
    data = load_dataset(path, [IDS])
    assert data.inputs["ids"].dtype == np.int32
    assert data.inputs["ids"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_csv_non_numeric_cell(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n1,2,3\n4,five,6\n")
    msg = _raises("line 3, column 2: expected a number, found 'five'", path, [TAB])
    assert "'features'" in msg


def test_csv_ragged_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("1,2,3\n4,5\n")
    _raises("line 2: expected 3 columns, found 2", path, [TAB])


def test_csv_empty(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n")
    _raises("empty", path, [TAB])


def test_csv_wrong_feature_count(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("1,2,3,4\n")
    msg = _raises("shape mismatch", path, [TAB])
    assert "[?,3]" in msg and "[1, 4]" in msg


# --- validation errors ---------------------------------------------------------------------

def test_missing_file(tmp_path):
    msg = _raises("not found: expected a .npz", tmp_path / "nope.npz", [IMG])
    assert str(tmp_path / "nope.npz") in msg and msg.startswith("calibration data")


def test_unknown_extension(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("1 2 3")
    msg = _raises(r"unsupported format '\.txt'", path, [IMG])
    assert ".npz" in msg and str(path) in msg


def test_truncated_npz(tmp_path):
    path = tmp_path / "cut.npz"
    np.savez(path, x=_images(200))
    path.write_bytes(path.read_bytes()[:3000])
    msg = _raises(r"cannot read the \.npz", path, [IMG])
    assert "truncated or corrupt" in msg and str(path) in msg


def test_corrupt_npy(tmp_path):
    path = tmp_path / "bad.npy"
    path.write_bytes(b"not an npy file at all")
    msg = _raises(r"cannot read the \.npy", path, [IMG])
    assert "input 'image'" in msg


def test_empty_set(tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path, x=np.zeros((0, 8, 8, 1), np.float32))
    msg = _raises("empty", path, [IMG])
    assert "input 'image'" in msg and "at least one sample" in msg


def test_nan_and_inf_counted(tmp_path):
    x = _images()
    x[3, 0, 0, 0] = np.nan
    x[5, 1, 1, 0] = np.nan
    x[7, 2, 2, 0] = np.inf
    path = tmp_path / "nan.npz"
    np.savez(path, x=x)
    msg = _raises("found 2 NaN and 1 Inf", path, [IMG])
    assert "input 'image'" in msg and "first in sample 3" in msg and str(path) in msg


def test_overflow_to_inf_when_cast(tmp_path):
    x = _images()
    x[0, 0, 0, 0] = 1e300  # finite in float64, Inf in float32
    path = tmp_path / "big.npz"
    np.savez(path, x=x)
    _raises("found 0 NaN and 1 Inf", path, [IMG])


def test_shape_mismatch(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, x=np.zeros((5, 8, 7, 1), np.float32))
    msg = _raises("shape mismatch", path, [IMG])
    assert "expected [?,8,8,1]" in msg and "found [5, 8, 7, 1]" in msg and "'image'" in msg


def test_missing_sample_axis_hint(tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, np.zeros((8, 8, 1), np.float32))
    _raises("sample axis looks missing", path, [IMG])


def test_full_shape_samples_of_batch_one_are_held_batched(tmp_path):
    # [N, 1, 8, 8, 1] is N samples of the full input shape [1, 8, 8, 1]: the same samples as
    # [N, 8, 8, 1], so they are held batched and fed together.
    path = tmp_path / "full.npy"
    x = np.random.default_rng(0).random((4, 1, 8, 8, 1)).astype(np.float32)
    np.save(path, x)
    data = load_dataset(path, [IMG])
    assert data.inputs["image"].shape == (4, 8, 8, 1)
    assert data.describe()["layouts"] == {"image": "batched"} and not data.one_at_a_time
    np.testing.assert_array_equal(data.inputs["image"], x[:, 0])


def test_extra_axis_is_refused(tmp_path):
    path = tmp_path / "extra.npy"
    np.save(path, np.zeros((4, 1, 1, 8, 8, 1), np.float32))
    msg = _raises("shape mismatch", path, [IMG])
    assert "[4, 1, 1, 8, 8, 1]" in msg and "[?,8,8,1]" in msg


def test_dynamic_dims_accept_any_size(tmp_path):
    spec = TensorSpec("tokens", (None, None), "int64")
    path = tmp_path / "t.npy"
    np.save(path, np.ones((3, 17), np.int64))
    assert load_dataset(path, [spec]).inputs["tokens"].shape == (3, 17)


def test_fixed_batch_dim_is_the_sample_axis(tmp_path):
    spec = TensorSpec("image", (1, 8, 8, 1), "float32")
    path = tmp_path / "x.npy"
    np.save(path, _images(6))
    assert len(load_dataset(path, [spec])) == 6


def test_float_for_integer_input(tmp_path):
    path = tmp_path / "ids.npz"
    np.savez(path, image=_images(4), ids=np.ones((4, 4), np.float32))
    msg = _raises("dtype mismatch", path, [IMG, IDS])
    assert "input 'ids'" in msg and "int32" in msg and "float32" in msg


def test_integer_out_of_range(tmp_path):
    spec = TensorSpec("q", (None, 2), "int8")
    path = tmp_path / "q.npy"
    np.save(path, np.array([[1, 300]], np.int32))
    msg = _raises("values out of range", path, [spec])
    assert "int8" in msg and "300" in msg


def test_string_data(tmp_path):
    path = tmp_path / "s.npy"
    np.save(path, np.array([["a", "b", "c"]]))
    _raises("dtype mismatch: expected numbers", path, [TAB])


def test_missing_input_name(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, image=_images(4), tokens=np.ones((4, 4), np.int32))
    msg = _raises("missing input 'ids'", path, [IMG, IDS])
    assert "input 'ids'" in msg and "['image', 'tokens']" in msg


def test_x_not_accepted_for_multi_input(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, x=_images(4))
    msg = _raises("missing input 'image', 'ids'", path, [IMG, IDS])
    assert "found keys ['x']" in msg


def test_fewer_samples_than_asked_strict(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, x=_images(10))
    msg = _raises("too few samples: expected at least 200, found 10", path, [IMG],
                  samples=200, strict_samples=True)
    assert str(path) in msg


def test_fewer_samples_than_asked_not_strict_warns(tmp_path, caplog):
    path = tmp_path / "x.npz"
    np.savez(path, x=_images(10))
    with caplog.at_level(logging.WARNING, logger="calibration_data"):
        data = load_dataset(path, [IMG], samples=200)
    assert len(data) == 10
    assert "200 samples asked for, only 10 exist" in caplog.text


def test_labels_length_mismatch(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, x=_images(10), y=np.zeros(9, np.int64))
    _raises(r"labels: expected 10 \(one per sample\), found 9", path, [IMG])


def test_float_labels_that_are_not_class_ids(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, x=_images(3), y=np.array([0.5, 1.0, 2.0]))
    _raises("labels: expected integer class ids", path, [IMG])


def test_role_is_named(tmp_path):
    msg = _raises("not found", tmp_path / "missing.npz", [IMG], role="eval")
    assert msg.startswith("eval data ")

"""Calibration and eval data: load, check against a model's inputs, sample, fingerprint.

    from calibration_data import load_dataset, ImagePreprocess
    data = load_dataset("calib.npz", source.inputs, samples=200)
    for batch in data.batches(8): ...
    manifest["calibration"] = data.describe()
"""

from __future__ import annotations

from .dataset import Dataset, sample_indices, top1_accuracy
from .digits import digits_path
from .layouts import Layout, SampleFeeds
from .loaders import load_dataset
from .preprocess import ImagePreprocess

__all__ = ["Dataset", "ImagePreprocess", "Layout", "SampleFeeds", "digits_path", "load_dataset",
           "sample_indices", "top1_accuracy"]

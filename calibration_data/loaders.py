"""Load calibration or eval data from a file or folder and check it against the model's inputs.

Formats, chosen by what ``path`` is:

- ``.npz``: arrays keyed by input name; a single-input model also accepts ``x``. Labels under
  ``y``, ``labels`` or ``label``. Each input's array is either batched, ``[N, *shape[1:]]``, or
  N samples of the input's full shape, ``[N, *shape]`` (the only layout for an input whose
  batch axis is not first, e.g. a recurrent state ``[2, batch, 128]``, or a scalar); see
  :mod:`calibration_data.layouts`.
- ``.npy``: one array for a single-input model, no labels.
- ``.csv``: numeric columns for a single 2-D input ``(N, features)``, optional header; a column
  named ``label`` or ``y`` holds labels.
- a folder: images, optionally in class subfolders (see :mod:`calibration_data.images`).
"""

from __future__ import annotations

import csv
import logging
import zipfile
from pathlib import Path

import numpy as np

from edgekit.spec import TensorSpec, format_shape

from .dataset import Dataset
from .errors import data_error
from .layouts import Layout, check_batch_agreement
from .preprocess import ImagePreprocess
from .validate import check_input_layout

log = logging.getLogger(__name__)

LABEL_KEYS = ("y", "labels", "label")
SINGLE_INPUT_KEY = "x"
_FORMATS = "a .npz, .npy or .csv file, or a folder of images"


def load_dataset(
    path,
    spec: list[TensorSpec],
    *,
    samples: int | None = None,
    strict_samples: bool = False,
    seed: int = 0,
    preprocess: ImagePreprocess | None = None,
    role: str = "calibration",
) -> Dataset:
    """Load data for a model's inputs, check it, and draw a seeded sample.

    Args:
        path: a ``.npz``, ``.npy`` or ``.csv`` file, or a folder of images.
        spec: the model's inputs, in order.
        samples: keep this many samples (stratified by label when labels exist);
            ``None`` keeps all.
        strict_samples: raise when fewer than ``samples`` exist instead of warning.
        seed: seed of the sampling.
        preprocess: how images become input (image folders only); ``None`` = defaults.
        role: ``"calibration"`` or ``"eval"``, named in every message.

    Returns:
        A :class:`Dataset` whose arrays are cast to the model's dtypes.

    Raises:
        CalibrationError: a missing, unreadable or unsupported file, an empty set, a missing
            input, a shape or dtype mismatch, NaN or Inf, bad labels, or too few samples when
            ``strict_samples``.
    """
    path = Path(path).expanduser()
    spec = list(spec)
    if not spec:
        raise data_error(role, path, "the model has no inputs to feed",
                         hint="check the source model")
    if not path.exists():
        raise data_error(role, path, f"not found: expected {_FORMATS}",
                         hint="check the path")
    if path.is_dir():
        from .images import load_image_folder  # keeps TensorFlow out of non-image loads

        return load_image_folder(path, spec, preprocess or ImagePreprocess(), samples=samples,
                                 strict_samples=strict_samples, seed=seed, role=role)
    if preprocess is not None:
        log.warning("%s data %s: image preprocessing ignored for a %s file",
                    role, path, path.suffix)
    suffix = path.suffix.lower()
    integral_ok = False
    if suffix == ".npz":
        raw, labels = _read_npz(path, spec, role)
    elif suffix == ".npy":
        raw, labels = _read_npy(path, spec, role), None
    elif suffix == ".csv":
        raw, labels = _read_csv(path, spec, role)
        integral_ok = True
    else:
        raise data_error(role, path, f"unsupported format {suffix or '(no extension)'!r}",
                         hint=f"give {_FORMATS}")
    inputs, layouts = {}, {}
    for s in spec:
        inputs[s.name], layouts[s.name] = check_input_layout(
            raw[s.name], s, role=role, path=path, integral_floats_ok=integral_ok)
    if any(v is not Layout.BATCHED for v in layouts.values()):
        check_batch_agreement(inputs, layouts, spec, role=role, path=path)
    data = Dataset(inputs, labels, path=path, role=role, layouts=layouts)
    if samples is not None:
        data = data.take(samples, seed, strict=strict_samples)
    log.info("%s data %s: %d samples, sha256 %s; %s", role, path, len(data),
             data.fingerprint[:12], describe_layouts(data, spec))
    return data


def describe_layouts(data: Dataset, spec: list[TensorSpec]) -> str:
    """One line saying how each input's samples were read, for the log.

    Example: ``layouts: 'input' batched [N,512] of [?,?], 'state' full-shape [N,2,1,128] of
    [2,?,128]; fed one sample at a time``.
    """
    model = {s.name: format_shape(s.shape) for s in spec}
    parts = [f"'{name}' {data.layouts[name].value} {format_shape(('N', *a.shape[1:]))} of "
             f"{model.get(name, '?')}" for name, a in data.inputs.items()]
    how = ("fed one sample at a time" if data.one_at_a_time
           else "fed in batches along the first axis")
    return f"layouts: {', '.join(parts)}; {how}"


def _read_npz(path: Path, spec: list[TensorSpec], role: str):
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise data_error(role, path, f"cannot read the .npz ({type(e).__name__}: {e})",
                         hint="the file looks truncated or corrupt; write it again with "
                              "np.savez") from e
    if not arrays:
        raise data_error(role, path, "empty: the .npz holds no arrays",
                         hint="store one array per model input")
    names = {s.name for s in spec}
    label_key = next((k for k in LABEL_KEYS if k in arrays and k not in names), None)
    labels = arrays.pop(label_key) if label_key else None
    found = sorted(arrays)
    raw: dict[str, np.ndarray] = {}
    missing = []
    for s in spec:
        key = _key_for(s.name, arrays, single=len(spec) == 1)
        if key is None:
            missing.append(s.name)
        else:
            raw[s.name] = arrays[key]
    if missing:
        want = ", ".join(repr(m) for m in missing)
        single = " (or 'x')" if len(spec) == 1 else ""
        raise data_error(
            role, path,
            f"missing input {want}: expected arrays keyed by input name{single}, "
            f"found keys {found}",
            input_name=missing[0] if len(missing) == 1 else None,
            hint="save with np.savez(path, **{input_name: array})")
    unused = sorted(set(found) - {_key_for(s.name, arrays, len(spec) == 1) for s in spec})
    if unused:
        log.warning("%s data %s: arrays %s match no model input and are ignored",
                    role, path, unused)
    return raw, labels


def _key_for(name: str, arrays: dict, single: bool) -> str | None:
    """Which npz key feeds input ``name``: its name (with or without a ':0' tensor suffix),
    or for a single-input model ``x`` or the only array there is."""
    for key in (name, name.split(":")[0]):
        if key in arrays:
            return key
    if single:
        if SINGLE_INPUT_KEY in arrays:
            return SINGLE_INPUT_KEY
        if len(arrays) == 1:  # np.savez(path, x) names it 'arr_0'
            return next(iter(arrays))
    return None


def _read_npy(path: Path, spec: list[TensorSpec], role: str) -> dict[str, np.ndarray]:
    if len(spec) != 1:
        names = ", ".join(repr(s.name) for s in spec)
        raise data_error(role, path, f"a .npy holds one array, but the model has "
                         f"{len(spec)} inputs ({names})",
                         hint="use a .npz keyed by input name")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise data_error(role, path, f"cannot read the .npy ({type(e).__name__}: {e})",
                         input_name=spec[0].name,
                         hint="the file looks truncated or corrupt; write it again with "
                              "np.save") from e
    return {spec[0].name: array}


def _read_csv(path: Path, spec: list[TensorSpec], role: str):
    if len(spec) != 1 or len(spec[0].shape) != 2:
        shapes = ", ".join(f"{s.name}{list(s.shape)}" for s in spec)
        raise data_error(role, path, f"a .csv feeds one 2-D input (samples, features), but "
                         f"the model has {shapes}", hint="use a .npz keyed by input name")
    name = spec[0].name
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise data_error(role, path, f"cannot read the .csv ({type(e).__name__}: {e})",
                         input_name=name, hint="save it as UTF-8 comma-separated text") from e
    header = None
    if rows and not all(_is_number(c) for c in rows[0]):
        header = [c.strip().lower() for c in rows[0]]
        rows = rows[1:]
    if not rows:
        raise data_error(role, path, "empty: expected at least one row of numbers, found none",
                         input_name=name, hint="add samples, one per row")
    width = len(header) if header else len(rows[0])
    values = np.empty((len(rows), width), dtype=np.float64)
    for i, row in enumerate(rows):
        line = i + 1 + (header is not None)
        if len(row) != width:
            raise data_error(role, path, f"line {line}: expected {width} columns, found "
                             f"{len(row)}", input_name=name, hint="give every row the same columns")
        for j, cell in enumerate(row):
            if not _is_number(cell):
                raise data_error(role, path, f"line {line}, column {j + 1}: expected a number, "
                                 f"found {cell.strip()!r}", input_name=name,
                                 hint="keep only numeric columns")
            values[i, j] = float(cell)
    labels = None
    label_col = next((header.index(k) for k in ("label", "y") if header and k in header), None)
    if label_col is not None:
        labels = values[:, label_col]
        values = np.delete(values, label_col, axis=1)
    return {name: values}, labels


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True

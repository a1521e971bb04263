"""ONNX sources: checked, with external data confined to the model's folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from converters.base import Source
from converters.sources import apply_pins
from edgekit.errors import ModelLoadError
from edgekit.fsutil import sha256_file
from edgekit.spec import TensorSpec

log = logging.getLogger(__name__)

ONNX_TO_NUMPY = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
                 7: "int64", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}


class OnnxSource(Source):
    format = "onnx"

    def __init__(self, path, sha256, inputs, outputs, model):
        super().__init__(path, sha256, inputs, outputs)
        self.model = model  # onnx.ModelProto with external data loaded and pins applied
        self._session = None

    @classmethod
    def load(cls, path: Path, *, input_shapes: dict, allow_unsafe: bool) -> "OnnxSource":
        import onnx
        from google.protobuf.message import DecodeError

        try:
            model = onnx.load(str(path), load_external_data=False)
        except (DecodeError, OSError, ValueError) as e:
            raise ModelLoadError(f"cannot parse ONNX model {path} (truncated or not ONNX): {e}") from e
        if not model.graph.node and not model.graph.output:
            raise ModelLoadError(f"{path} parsed as ONNX but holds no graph (truncated or not ONNX)")
        check_external_data(model, path)
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
            onnx.checker.check_model(model if model.ByteSize() < 2_000_000_000 else str(path))
        except (onnx.checker.ValidationError, OSError) as e:
            raise ModelLoadError(f"ONNX checker rejected {path}: {str(e).strip().splitlines()[0]}") from e
        init_names = {i.name for i in model.graph.initializer}
        inputs = [_spec(v) for v in model.graph.input if v.name not in init_names]
        inputs = apply_pins(inputs, input_shapes, path)
        _pin_model(model, inputs)
        outputs = [_spec(v) for v in model.graph.output]
        return cls(path, sha256_file(path), inputs, outputs, model)

    @property
    def opset(self) -> int:
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def session(self):
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            try:
                self._session = ort.InferenceSession(self.model.SerializeToString(), opts,
                                                     providers=["CPUExecutionProvider"])
            except Exception as e:  # ORT raises its own Fail/InvalidGraph types
                first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                # Pinned dims are written into the graph, where ORT's shape inference checks
                # every branch of an If, even one the data never takes (Silero VAD's 8 kHz one).
                raise ModelLoadError(
                    f"ONNX Runtime cannot load {self.path.name}: {first}; if dims were pinned "
                    "with --input-shape, they may not fit every branch of the graph: give "
                    "--calibration/--eval data instead of pinning") from e
        return self._session

    def predict(self, feeds):
        s = self.session()
        ys = s.run(None, {t.name: np.asarray(feeds[t.name]) for t in self.inputs})
        return [np.asarray(y) for y in ys]


def check_external_data(model, path: Path) -> None:
    """Refuse external-data locations that resolve outside the model's folder (path traversal)."""
    from onnx.external_data_helper import _get_all_tensors

    root = path.parent.resolve()
    for tensor in _get_all_tensors(model):
        if tensor.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        info = {e.key: e.value for e in tensor.external_data}
        loc = info.get("location", "")
        target = (root / loc).resolve()
        if os.path.isabs(loc) or not target.is_relative_to(root):
            raise ModelLoadError(
                f"{path.name}: tensor {tensor.name!r} keeps its data at {loc!r}, outside the model's "
                f"folder {root}; refusing to read it (move the data file next to the model)")
        if not target.is_file():
            raise ModelLoadError(
                f"{path.name}: external data file {loc!r} for tensor {tensor.name!r} is missing")


def _spec(value_info) -> TensorSpec:
    tt = value_info.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in tt.shape.dim)
    return TensorSpec(value_info.name, dims, ONNX_TO_NUMPY.get(tt.elem_type, f"onnx:{tt.elem_type}"))


def _pin_model(model, inputs: list[TensorSpec]) -> None:
    """Write pinned dims into the graph inputs so quantizers and runtimes see static shapes."""
    by_name = {t.name: t for t in inputs}
    for v in model.graph.input:
        t = by_name.get(v.name)
        if t is None:
            continue
        for d, size in zip(v.type.tensor_type.shape.dim, t.shape, strict=False):
            if size is not None and not (d.HasField("dim_value") and d.dim_value == size):
                d.Clear()
                d.dim_value = size

"""Float TFLite sources: inspectable and verifiable; re-quantizing them is refused with a reason."""

from __future__ import annotations

from pathlib import Path

from converters.base import Source
from edgekit.errors import ModelLoadError
from edgekit.fsutil import sha256_file
from edgekit.spec import Quantization, TensorSpec


class TFLiteSource(Source):
    format = "tflite"

    def __init__(self, path, sha256, inputs, outputs, loaded):
        super().__init__(path, sha256, inputs, outputs)
        self.loaded = loaded

    @classmethod
    def load(cls, path: Path, *, input_shapes: dict, allow_unsafe: bool) -> "TFLiteSource":
        from device_agents.agent import load_model

        with open(path, "rb") as f:
            head = f.read(8)
        if len(head) < 8 or head[4:8] != b"TFL3":
            raise ModelLoadError(f"{path} is not a TFLite flatbuffer (no TFL3 identifier; truncated?)")
        try:
            loaded = load_model(str(path))
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"cannot load TFLite model {path}: {e}") from e
        inputs = [_spec(d) for d in loaded.inputs]
        outputs = [_spec(d) for d in loaded.outputs]
        return cls(path, sha256_file(path), inputs, outputs, loaded)

    def predict(self, feeds):
        return self.loaded.run_float([feeds[t.name] for t in self.inputs])


def _spec(d: dict) -> TensorSpec:
    return TensorSpec(d["name"], tuple(d["shape"]), d["dtype"], Quantization.from_dict(d.get("quantization")))

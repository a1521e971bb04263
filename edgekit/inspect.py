"""`edgekit inspect`: what is inside an artifact, read with the runtimes themselves."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from edgekit.errors import ModelLoadError
from edgekit.fsutil import sha256_file


def inspect_file(path: Path) -> dict:
    """Describe a ``.tflite`` or ``.onnx`` file.

    Returns:
        ``{"path", "format", "bytes", "gzip_bytes", "zstd_bytes", "sha256", "inputs",
        "outputs", "ops": {op: count}, "op_count", "params"}`` (plus ``"opset"`` for ONNX, and
        for TFLite ``"weights"``: distinct values per Conv/Depthwise/FC weight, see
        ``converters.tflite_weights.weight_uniques``); tensors carry quantization params. The
        gzip/zstd sizes are of the file compressed (what a download or OTA update carries).
        ``"content"``: weights by dtype, ops by kind and the int8 share of the compute, as the
        manifest records them (``converters.content.ArtifactContent.to_dict``).

    Raises:
        ModelLoadError: missing file, unknown suffix, or a file the runtime cannot read.
    """
    if not path.is_file():
        raise ModelLoadError(f"no such artifact: {path}")
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        info = _tflite(path)
    elif suffix in (".onnx", ".ort"):
        info = _onnx(path)
    else:
        raise ModelLoadError(f"cannot inspect {path.name}: expected a .tflite or .onnx file")
    from converters.content import audit_artifact
    from converters.sparsity import file_sizes

    info.update({"path": str(path), **file_sizes(path), "sha256": sha256_file(path),
                 "op_count": sum(info["ops"].values()),
                 "content": audit_artifact(path, info["format"]).to_dict()})
    return info


def _tflite(path: Path) -> dict:
    from device_agents.agent import load_model

    try:
        loaded = load_model(str(path))
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path))
        # _get_ops_details is the interpreter's own op listing; there is no public equivalent.
        ops = interp._get_ops_details()
    except (ValueError, RuntimeError) as e:
        raise ModelLoadError(f"{path.name} is not a loadable TFLite model: {e}") from e
    produced = {t for op in ops for t in op["outputs"]}
    graph_inputs = {d["index"] for d in interp.get_input_details()}
    consts = {t for op in ops for t in op["inputs"] if t >= 0} - produced - graph_inputs
    details = {d["index"]: d for d in interp.get_tensor_details()}
    params = int(sum(int(np.prod(details[t]["shape"])) for t in consts if t in details))
    from converters.tflite_weights import weight_uniques

    return {"format": "tflite", "inputs": loaded.inputs, "outputs": loaded.outputs,
            "ops": dict(Counter(op["op_name"] for op in ops).most_common()), "params": params,
            "weights": weight_uniques(path)}


def _onnx(path: Path) -> dict:
    import onnx
    from google.protobuf.message import DecodeError

    from converters.sources.onnx import _spec

    if path.suffix.lower() == ".ort":
        raise ModelLoadError(f"{path.name}: ORT-format models are inspected through their .onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as e:
        raise ModelLoadError(f"{path.name} is not a readable ONNX model: {e}") from e
    inits = {i.name for i in model.graph.initializer}
    ops = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                  for n in model.graph.node)
    params = int(sum(int(np.prod(i.dims)) for i in model.graph.initializer))
    return {"format": "onnx",
            "inputs": [_spec(v).to_dict() for v in model.graph.input if v.name not in inits],
            "outputs": [_spec(v).to_dict() for v in model.graph.output],
            "ops": dict(ops.most_common()), "params": params,
            "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)}

"""``edgekit.json``: what an app needs to know about a bundled model, from the manifest (I/O,
quantization, recipe, fidelity), the user (labels, normalization) and the results database
(measured figures). Also the embedded forms: TFLite metadata and ONNX ``metadata_props``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from edgekit.artifact import Artifact
from edgekit.bundle import tflite_metadata
from edgekit.envelope import wrap
from edgekit.errors import InputError

BUNDLE_SCHEMA = "edgekit.bundle"
BUNDLE_VERSION = 1
LABELS_FILE = "labels.txt"
#: ONNX ``metadata_props`` keys edgekit writes (Netron shows them; ORT's ``get_modelmeta()``
#: returns them as ``custom_metadata_map``).
ONNX_KEYS = ("edgekit.name", "edgekit.version", "edgekit.description", "edgekit.labels",
             "edgekit.normalization", "edgekit.target", "edgekit.source_sha256")


def read_labels(path) -> list[str]:
    """Labels, one per line (blank trailing lines dropped).

    Raises:
        InputError: the file is missing, not UTF-8, or empty.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read labels {path}: {e}") from e
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InputError(f"labels file {path} is empty: expected one label per line")
    return [ln.strip() for ln in lines]


def _tensor(spec, normalization: Optional[dict] = None) -> dict:
    d = spec.to_dict()
    d["normalization"] = normalization
    return d


def measured_figures(store, artifact_sha256: str) -> list[dict]:
    """The newest successful result per device for this artifact, as compact figures."""
    newest: dict[str, object] = {}
    for r in sorted(store.list(artifact=artifact_sha256, limit=100_000),
                    key=lambda r: (r.finished_at, r.id or 0)):
        if r.ok:
            newest[r.device] = r
    out = []
    for device in sorted(newest):
        r = newest[device]
        m = r.metrics or {}
        lat = m.get("latency_ms") or {}
        out.append({"device": device, "result_id": r.id, "runtime": m.get("runtime"),
                    "runtime_version": m.get("runtime_version"),
                    "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"), "p99_ms": lat.get("p99"),
                    "runs": lat.get("runs"),
                    "peak_rss_bytes": (m.get("memory") or {}).get("peak_rss_bytes"),
                    "accuracy": (m.get("accuracy") or {}).get("top1"),
                    "measured_at": r.finished_at})
    return out


def model_entry(artifact: Artifact, file_name: str, class_name: str, *, labels, mean, std,
                measured: list[dict]) -> dict:
    """The ``models[]`` entry of edgekit.json for one artifact (sha256/bytes filled in later,
    once the file with embedded metadata exists)."""
    norm = {"mean": list(mean), "std": list(std)} if mean else None
    outputs = [_tensor(o) for o in artifact.outputs]
    if labels:
        outputs[0]["labels_file"] = LABELS_FILE
    src = artifact.source
    return {
        "file": file_name, "class": class_name, "target": artifact.target,
        "format": artifact.format, "precision": artifact.precision,
        "sha256": None, "bytes": None, "artifact_sha256": artifact.sha256,
        "inputs": [_tensor(t, norm if i == 0 else None) for i, t in enumerate(artifact.inputs)],
        "outputs": outputs,
        "recipe": {"source": {"file": Path(src.get("path", "")).name, "sha256": src.get("sha256"),
                              "format": src.get("format")},
                   "pass": {"target": artifact.target, "config": artifact.pass_config},
                   "calibration": _calibration(artifact.calibration),
                   "tools": artifact.tools, "float_ops": artifact.float_ops},
        "fidelity": artifact.fidelity.to_dict() if artifact.fidelity else None,
        "measured": measured,
    }


def _calibration(c: Optional[dict]) -> Optional[dict]:
    if not c:
        return None
    c = dict(c)
    if c.get("path"):
        c["path"] = Path(c["path"]).name  # no build machine paths in an app bundle
    return c


def bundle_document(name: str, version: str, platform: str, labels, models: list[dict],
                    files: dict) -> dict:
    """The whole edgekit.json (keys sorted when written; no timestamps)."""
    return wrap(BUNDLE_SCHEMA, BUNDLE_VERSION, {
        "name": name, "version": version, "platform": platform, "labels": labels or None,
        "models": models, "files": dict(sorted(files.items()))})


def dumps(doc: dict) -> bytes:
    """Canonical JSON bytes: sorted keys, 2-space indent, trailing newline."""
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _description(name: str, artifact: Artifact) -> str:
    fid = artifact.fidelity
    acc = f"; accuracy {100 * fid.accuracy:.2f}%" if fid and fid.accuracy is not None else ""
    return (f"{name}: {artifact.target} ({artifact.precision}) converted by edgekit from "
            f"{Path(artifact.source.get('path', '')).name}{acc}")


def embed_tflite(data: bytes, artifact: Artifact, name: str, version: str, labels,
                 mean, std) -> bytes:
    """The .tflite bytes with TFLITE_METADATA (and labels.txt zipped on when labels are known)."""
    def image_kind(shape) -> Optional[str]:
        return {1: "GRAYSCALE", 3: "RGB"}.get(shape[-1]) if len(shape) == 4 else None

    ins = [tflite_metadata.TensorInfo(
        t.name, f"input {t.name}: shape {list(t.shape)}, {t.dtype}", image_kind(t.shape),
        list(mean) if i == 0 else [], list(std) if i == 0 else [])
        for i, t in enumerate(artifact.inputs)]
    outs = [tflite_metadata.TensorInfo(
        t.name, f"output {t.name}: shape {list(t.shape)}, {t.dtype}",
        label_file=LABELS_FILE if labels and i == 0 else None)
        for i, t in enumerate(artifact.outputs)]
    info = tflite_metadata.ModelInfo(name, _description(name, artifact), version,
                                     inputs=ins, outputs=outs)
    associated = {LABELS_FILE: ("\n".join(labels) + "\n").encode()} if labels else None
    return tflite_metadata.embed(data, info, associated)


def embed_onnx(data: bytes, artifact: Artifact, name: str, version: str, labels,
               mean, std) -> bytes:
    """The .onnx bytes with ``doc_string``, ``producer`` untouched, and edgekit ``metadata_props``."""
    import onnx

    model = onnx.load_from_string(data)
    props = {"edgekit.name": name, "edgekit.version": version,
             "edgekit.description": _description(name, artifact),
             "edgekit.labels": json.dumps(labels or []),
             "edgekit.normalization": json.dumps({"mean": list(mean), "std": list(std)}
                                                 if mean else None),
             "edgekit.target": artifact.target, "edgekit.source_sha256":
                 artifact.source.get("sha256", "")}
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key in ONNX_KEYS:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, props[key]
    model.doc_string = _description(name, artifact)
    return model.SerializeToString(deterministic=True)


def read_onnx_metadata(path) -> dict:
    """``metadata_props`` of an ONNX file as a dict."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}

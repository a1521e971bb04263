"""What to offer when an INT8 artifact cannot ship: the float alternative of the same format,
measured, and the rule that a repair must leave an artifact that is still INT8.

A repair that keeps most of a model in float to pass the gate writes a file the size of FP32 under
an ``-int8`` name: that is no repair. So after a repair, the artifact's size is compared with the
FP32 artifact's, and its compute share left in float with ``MAX_FLOAT_COMPUTE_SHARE``; past either
limit it is refused, naming the FP16 artifact's measured figures and quantization-aware training.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Optional

from edgekit.errors import EdgekitError, VerificationError

log = logging.getLogger(__name__)

# A repaired INT8 artifact must stay under this share of the FP32 artifact's bytes (INT8 weights
# are ~0.25x; a few float ops add little; past 0.6x most weights are float).
MAX_REPAIR_SIZE_RATIO = 0.6
# ... and must run at least half of its compute (MAC-weighted where known) in INT8.
MAX_FLOAT_COMPUTE_SHARE = 0.5

# The FP32 artifact (for sizes), then the alternatives offered, cheapest in bytes first: INT8
# weights with float activations (no calibration; often enough where static INT8 is not), FP16.
FLOAT_TWIN = {"onnx": ("onnx-fp32", "onnx-dynamic", "onnx-fp16"),
              "tflite": ("tflite-fp32", "tflite-dynamic", "tflite-fp16")}


def _measure_floats(info, prep, options) -> Optional[dict]:
    """Convert and verify the alternatives of ``info``'s format once per conversion run:
    ``{"fp32_bytes", "alternatives": [{"target", "bytes", "fidelity", "misses"}]}`` (``None`` if
    they fail)."""
    cache = getattr(prep, "_floats", None)
    if cache is not None:
        return cache or None
    from converters.registry import get_target
    from edgekit.api import _evaluate, _gate, _quiet_tools

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-alt-") as wd:
        for name in FLOAT_TWIN.get(info.format, ()):
            t = get_target(name)
            path = Path(wd) / f"alt.{name}.{t.format}"
            try:
                with _quiet_tools():
                    t.load()(prep.src, options, prep.calib, path)
                size = path.stat().st_size
                if name.endswith("fp32"):
                    out["fp32_bytes"] = size
                    continue
                fid = _evaluate(t, path, prep, options)[0]
            except (EdgekitError, OSError) as e:  # an alternative that fails is not offered
                log.info("could not measure the alternative %s: %s", name, e)
                continue
            out.setdefault("alternatives", []).append(
                {"target": name, "bytes": size, "fidelity": fid,
                 "misses": _gate(t, fid, options).misses(fid)})
    prep._floats = out
    return out or None


def alternative_text(info, prep, options) -> str:
    """One phrase naming the measured alternatives (INT8 weights only, FP16) and QAT."""
    from edgekit.fidelity.tasks import metric_text

    floats = _measure_floats(info, prep, options)
    parts = []
    for f in (floats or {}).get("alternatives", []):
        if f["target"] == info.name:
            continue
        main = f["fidelity"].main_output
        ratio = (f"{f['bytes'] / floats['fp32_bytes']:.2f}x the FP32 size"
                 if floats.get("fp32_bytes") else f"{f['bytes']} bytes")
        verdict = "meets the gate" if not f["misses"] else "misses it too"
        parts.append(f"{f['target']} {verdict} ({metric_text(main.metric if main else None)}) "
                     f"at {ratio}")
    if parts:
        parts = ["measured alternatives: " + ", ".join(parts)]
    if prep.src.format in ("keras", "h5", "savedmodel"):
        parts.append("or fine-tune for INT8 with quantization-aware training (`edgekit qat`)")
    elif info.format == "tflite":
        parts.append("or quantization-aware training from the original Keras model (`edgekit qat`)")
    return "; ".join(parts)


def float_compute_share(path: Path) -> Optional[float]:
    """Share of the artifact's compute left in float, from the file's contents (``None`` when the
    content audit cannot tell)."""
    try:
        from converters.content import audit_artifact
        from converters.content import float_compute_share as share
    except ImportError:
        return None
    with contextlib.suppress(Exception):  # the audit is advisory here; the size rule still holds
        return share(audit_artifact(path))
    return None


def check_repair_stays_quantized(info, prep, options, path: Path, fid, gate) -> None:
    """Refuse a repaired artifact that is barely quantized.

    Raises:
        VerificationError: the repaired file is over ``MAX_REPAIR_SIZE_RATIO`` of the FP32
            artifact's bytes or keeps over ``MAX_FLOAT_COMPUTE_SHARE`` of its compute in float.
    """
    floats = _measure_floats(info, prep, options) or {}
    size = Path(path).stat().st_size
    ratio = size / floats["fp32_bytes"] if floats.get("fp32_bytes") else None
    share = float_compute_share(path)
    why = []
    if ratio is not None and ratio > MAX_REPAIR_SIZE_RATIO:
        why.append(f"{ratio:.2f}x the FP32 size (> {MAX_REPAIR_SIZE_RATIO:g}x)")
    if share is not None and share > MAX_FLOAT_COMPUTE_SHARE:
        why.append(f"{100 * share:.0f}% of its compute in float (> {100 * MAX_FLOAT_COMPUTE_SHARE:.0f}%)")
    if not why:
        return
    raise VerificationError(
        f"{info.name}: meeting the gate leaves the artifact barely quantized: "
        + " and ".join(why) + "; it is not shipped as INT8; " + alternative_text(info, prep, options))

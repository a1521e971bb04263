"""The TFLite side of per-layer divergence: which tensors, and the host's values of them.

LiteRT reads any tensor by index after a run when the interpreter keeps them all
(``experimental_preserve_all_tensors``), so nothing is edited: host and device load the artifact
itself. That option stops buffer reuse, and a delegate's inner tensors are never written, so the
read-out runs the built-in kernels (XNNPACK off); the artifact's outputs are compared as well
with its default XNNPACK delegate, the kernels it ships with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_COMPARED = ("float32", "float16", "int8", "uint8", "int16")


def plan_tflite(path: Path, max_tensors: int):
    """(probes, how many before the bound) for a ``.tflite`` file, in execution order."""
    from device_agents.agent import load_model
    from edgekit.divergence import Probe, bounded

    model = load_model(str(path), xnnpack=False, preserve_all_tensors=True)
    interp = model._interp  # the agent's interpreter: the ops listing is LiteRT's private API
    details = {d["index"]: d for d in interp.get_tensor_details()}
    probes = []
    for op in interp._get_ops_details():
        for t in op["outputs"]:
            d = details.get(int(t))
            if d is None or np.dtype(d["dtype"]).name not in _COMPARED:
                continue
            scale, zp = d.get("quantization", (0.0, 0))
            label = d["name"].split(";")[0] or f"{op['op_name']}#{op['index']}"
            probes.append(Probe(f"{int(t)}:{d['name']}", None, label, op["op_name"],
                                int(op["index"]), float(scale) if scale else None,
                                float(zp) if scale else None, int(t)))
    return bounded(probes, max_tensors)


def tflite_values(path: Path, probes, per_sample) -> dict:
    """{probe name: [samples, n]} read on this machine the way the device reads them."""
    from device_agents.agent import load_model

    model = load_model(str(path), xnnpack=False, preserve_all_tensors=True)
    rows = {p.name: [] for p in probes}
    for feeds in per_sample:
        model.run_raw(feeds)
        for p in probes:
            rows[p.name].append(np.asarray(model.tensor(p.tensor_index)).ravel().copy())
    return {n: np.stack(r) for n, r in rows.items()}


def tflite_outputs(path: Path, per_sample) -> list[np.ndarray]:
    """The artifact's outputs on this machine as it ships (XNNPACK on), per output."""
    from device_agents.agent import load_model

    model = load_model(str(path))
    rows = [model.run_raw(feeds) for feeds in per_sample]
    return [np.stack([np.asarray(r[k]).ravel() for r in rows]) for k in range(len(model.outputs))]

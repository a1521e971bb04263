"""The fidelity check every artifact goes through: run it here, compare with the source model."""

from __future__ import annotations

import logging
import re
from typing import Optional

import numpy as np

from edgekit.artifact import Fidelity
from edgekit.errors import InputError, VerificationError
from edgekit.fidelity.metrics import SQNR_CEILING_DB, sqnr_db  # noqa: F401 - the public names

log = logging.getLogger(__name__)

SYNTHETIC_SAMPLES = 32


def is_classifier_output(arr: np.ndarray) -> bool:
    return arr.ndim == 2 and arr.shape[1] > 1


def synthetic_feeds(inputs, seed: int = 0, samples: int = SYNTHETIC_SAMPLES) -> dict:
    """Seeded random inputs for verification when no data is given; dynamic dims must be pinned.

    An input whose batch axis is first gets ``[samples, *shape[1:]]``. A scalar input, or one
    whose batch axis is not first (a state ``[2, batch, 128]``), gets ``samples`` samples of its
    full shape with its one dynamic dim, the batch, set to 1; the feeds then carry those layouts
    so that :func:`run_batched` feeds them one sample at a time.

    Args:
        inputs: the model's input specs.
        seed: seed of the random draw.
        samples: how many samples.

    Returns:
        ``{input_name: array}`` (a :class:`calibration_data.SampleFeeds` with the layouts).

    Raises:
        InputError: a dynamic dim other than the batch, naming the input and the flag that pins it.
    """
    from calibration_data.layouts import Layout, SampleFeeds, batch_first

    rng = np.random.default_rng(seed)
    feeds, layouts = {}, {}
    for t in inputs:
        shape = tuple(t.shape)
        if batch_first(t):
            dynamic = [i for i, d in enumerate(shape) if d is None and i > 0]
            sample_shape, layout = (samples, *shape[1:]), Layout.BATCHED
        else:
            # The batch is the one dynamic dim (a scalar has none); any other must be pinned.
            dynamic = [i for i, d in enumerate(shape) if d is None][1:]
            sample_shape = (samples, *(1 if d is None else d for d in shape))
            layout = Layout.FULL_SHAPE
        if dynamic:
            batch = 0 if batch_first(t) else shape.index(None)
            example = ",".join("1" if i == batch else "N" if d is None else str(d)
                               for i, d in enumerate(shape))
            raise InputError(
                f"input {t.name!r} has dynamic dims {list(shape)} and no --eval/--calibration data "
                f"fixes them; pin them with --input-shape {t.name}={example} (N = a size)")
        layouts[t.name] = layout
        if np.dtype(t.dtype).kind in "iu":
            feeds[t.name] = rng.integers(0, 10, size=sample_shape).astype(t.dtype)
        elif np.dtype(t.dtype).kind == "b":
            feeds[t.name] = rng.integers(0, 2, size=sample_shape).astype(bool)
        else:
            feeds[t.name] = rng.random(sample_shape, dtype=np.float32).astype(t.dtype)
    return SampleFeeds(feeds, layouts)


def run_batched(fn, feeds: dict, names: list, chunk: int = 64) -> list[np.ndarray]:
    """Run a model over every sample of ``feeds`` and collect its outputs sample by sample.

    Batched feeds are cut into chunks of ``chunk`` samples and the outputs joined along axis 0.
    When the feeds carry layouts (:class:`calibration_data.SampleFeeds`) with a full-shape input
    (a scalar, or a batch axis that is not first), samples cannot be joined along axis 0, so
    each is fed alone at its full shape and the outputs are stacked on a new sample axis.

    Args:
        fn: ``fn(list_of_arrays) -> list_of_arrays``, the inputs in ``names`` order.
        feeds: input name -> array with a leading sample axis.
        names: the input names ``fn`` takes, in order.
        chunk: samples per call for batched feeds.

    Returns:
        One array per output: ``[N, *rest]`` joined from batched runs, or
        ``[N, *output_shape]`` when fed one sample at a time.
    """
    from calibration_data.layouts import one_at_a_time, sample_feed

    layouts = {k: v for k, v in getattr(feeds, "layouts", {}).items() if k in names}
    n = len(next(iter(feeds.values())))
    if one_at_a_time(layouts):
        outs = []
        for i in range(n):
            one = sample_feed({name: feeds[name] for name in names}, layouts, i)
            outs.append([np.asarray(y) for y in fn([one[name] for name in names])])
        return [np.stack([o[j] for o in outs], axis=0) for j in range(len(outs[0]))]
    parts: list[list[np.ndarray]] = []
    for i in range(0, n, chunk):
        parts.append([np.asarray(y) for y in fn([feeds[name][i:i + chunk] for name in names])])
    return [np.concatenate([p[j] for p in parts], axis=0) for j in range(len(parts[0]))]


def match_outputs(source_outputs, artifact_outputs) -> list[int]:
    """For each source output, the index of the artifact output that carries it.

    Names are matched when they agree; TFLite renames outputs to ``output_N`` (in source order), and
    anything else is matched by position.
    """
    art = [o["name"] for o in artifact_outputs]
    src = [o.name for o in source_outputs]
    if sorted(art) == sorted(src):
        return [art.index(n) for n in src]
    numbered = [re.fullmatch(r"(?:.*_)?output_(\d+)(?::0)?", n) for n in art]
    if all(numbered) and len(art) == len(src):
        order = sorted(range(len(art)), key=lambda i: int(numbered[i].group(1)))
        return order
    return list(range(len(src)))


def match_inputs(source_inputs, artifact_inputs) -> list[str]:
    """For each artifact input, the source input name that feeds it (by name, else by position)."""
    src = [t.name for t in source_inputs]
    art = [d["name"] for d in artifact_inputs]
    cleaned = [re.sub(r"^serving_default_|:\d+$", "", n) for n in art]
    if sorted(cleaned) == sorted(src):
        return cleaned
    if len(set(cleaned)) == len(cleaned) and set(cleaned) <= set(src):
        return cleaned  # an artifact specialised for some inputs (ConvertOptions.fix_inputs)
    return src[:len(art)]


def fidelity(loaded, source, feeds: dict, reference: list[np.ndarray], labels=None, *,
             task="auto", precision_kind: str = "quantized",
             data_origin: Optional[str] = None) -> Fidelity:
    """Compare an artifact (a loaded agent model) with the source's outputs on the same inputs,
    every output by its task (``edgekit.fidelity.tasks``).

    Args:
        loaded: the artifact, loaded by the device agent's ``load_model``.
        source: the loaded source model (its I/O spec names the outputs).
        feeds: the verification inputs, input name -> samples.
        reference: the source's outputs on ``feeds``.
        labels: class ids per sample, for a classification output's accuracy.
        task: a ``Task`` (or its value) for the outputs whose shape allows it; ``"auto"``
            detects each output's task.
        precision_kind: ``"quantized"`` or ``"float"`` (how much error a flat slice may carry).
        data_origin: where ``feeds`` came from (recorded, and read by the gate).

    Raises:
        VerificationError: the artifact fails to run or its outputs do not line up with the source's.
    """
    from edgekit.fidelity.tasks import Task, judge_detection_pair, judge_output, ssd_pairs

    task = Task(task) if not isinstance(task, Task) else task
    names = match_inputs(source.inputs, loaded.inputs)
    try:
        got_all = run_batched(loaded.run_float, feeds, names)
    except Exception as e:  # runtimes raise anything; the artifact is then unusable
        raise VerificationError(f"artifact does not run: {str(e).strip().splitlines()[0][:300]}") from e
    order = match_outputs(source.outputs, loaded.outputs)
    if len(got_all) < len(reference):
        raise VerificationError(f"artifact has {len(got_all)} outputs, source has {len(reference)}")
    per_output = []
    for o, ref, idx in zip(source.outputs, reference, order, strict=True):
        got = got_all[idx].reshape(ref.shape) if got_all[idx].size == ref.size else None
        if got is None:
            raise VerificationError(
                f"output {o.name!r}: artifact shape {got_all[idx].shape} differs from source {ref.shape}")
        per_output.append((o.name, np.asarray(ref), got))
    outs, labels_used = [], False
    for name, ref, got in per_output:
        of = judge_output(name, ref, got, task=task, precision_kind=precision_kind, inputs=feeds,
                          labels=None if labels_used else labels)
        if "accuracy" in of.details:
            labels_used = True
        outs.append(of)
    if task in (Task.AUTO, Task.DETECTION):
        for bi, si, layout in ssd_pairs([(n, r) for n, r, _ in per_output]):
            if outs[si].task == "detection" or not (outs[bi].judged and outs[si].judged):
                continue
            metric, details = judge_detection_pair(per_output[bi][1], per_output[bi][2],
                                                   per_output[si][1], per_output[si][2], layout)
            outs[si].task, outs[si].metric, outs[si].details = "detection", metric, details
            outs[bi].task, outs[bi].metric = "detection", None
            outs[bi].note = f"boxes of the detection head judged with {outs[si].name!r}"
    judged = [o for o in outs if o.judged] or outs
    first_cls = next((o for o in outs if o.task == "classification"), None)
    agreement = first_cls.metric["value"] if first_cls else None
    with_acc = next((o for o in outs if "accuracy" in o.details), None)
    accuracy = with_acc.details["accuracy"] if with_acc else None
    source_accuracy = with_acc.details["source_accuracy"] if with_acc else None
    tasks = [o.task for o in outs if o.judged]
    main = "detection" if "detection" in tasks else (tasks[0] if tasks else None)
    return Fidelity(samples=int(per_output[0][1].shape[0]) if per_output[0][1].ndim else 1,
                    top1_agreement=agreement,
                    max_abs_error=max(o.max_abs_error for o in judged),
                    sqnr_db=min(o.sqnr_db for o in judged), accuracy=accuracy,
                    source_accuracy=source_accuracy, outputs=outs, task=main,
                    data_origin=data_origin)

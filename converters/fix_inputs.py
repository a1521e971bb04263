"""Specialise an ONNX graph for inputs the user fixes (``ConvertOptions.fix_inputs``).

A model shipped for one configuration (silero-vad for one sample rate) often wraps its whole net
in ``If`` nodes on that input. ONNX Runtime's quantizer does not reach into ``If`` branches, so
such a model gets no int8 weight. With the input fixed, the ``If`` conditions that follow from it
(and from the static dims of the graph's inputs) become constants: each such ``If`` is replaced
by the branch it takes, inlined into the enclosing graph, and the branches they hold in turn are
folded the same way. The fixed input leaves the graph (feeding it would be an error, not a value
silently ignored); the manifest records the value.

Only conditions computed from constants, fixed inputs and static dims are folded: nothing is
inferred from data.
"""

from __future__ import annotations

import logging

import numpy as np

from edgekit.errors import ConversionError, InputError

log = logging.getLogger(__name__)

# Ops evaluated at conversion time when all their inputs are known (shape and scalar logic that
# decides branches; small tensors only).
_FOLDABLE = {"Constant", "Identity", "Equal", "Not", "And", "Or", "Xor", "Greater", "Less",
             "GreaterOrEqual", "LessOrEqual", "Cast", "Squeeze", "Unsqueeze", "Gather", "Shape",
             "Reshape", "Concat", "Slice", "Add", "Sub", "Mul", "Div", "Mod", "Size"}
_MAX_FOLD_ELEMENTS = 1024


def parse_fix_inputs(values) -> dict:
    """``["sr=16000", "mode=1.5"]`` → ``{"sr": 16000, "mode": 1.5}`` (scalars)."""
    out = {}
    for v in values or ():
        name, sep, text = str(v).partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = int(text) if text.lstrip("-").isdigit() else float(text)
        except ValueError:
            raise InputError(f"bad --fix-input {v!r}; expected NAME=VALUE with a number, "
                             f"e.g. sr=16000") from None
    return out


def specialise(model, fixed: dict, notes: list):
    """``model`` (an ``onnx.ModelProto``, changed in place and returned) with the inputs in
    ``fixed`` replaced by constants and every ``If`` whose condition they decide inlined.

    Raises:
        InputError: a fixed name is not an input of the model.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    unknown = [n for n in fixed if n not in inputs]
    if unknown:
        raise InputError(f"--fix-input {', '.join(unknown)}: not an input of the model; its "
                         f"inputs are {', '.join(inputs)}")
    for name, value in fixed.items():
        elem = inputs[name].type.tensor_type.elem_type
        dtype = helper.tensor_dtype_to_np_dtype(elem)
        dims = [d.dim_value if d.HasField("dim_value") else 1
                for d in inputs[name].type.tensor_type.shape.dim]
        arr = np.full(dims, value, dtype=dtype)
        graph.initializer.append(numpy_helper.from_array(arr, name))
        graph.input.remove(inputs[name])
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    folded = 0
    while True:
        n = _fold_once(graph, opset)
        if not n:
            break
        folded += n
    _drop_dead(graph)
    notes.append(f"specialised for {', '.join(f'{k}={v}' for k, v in fixed.items())}: "
                 f"{folded} If nodes folded into the branch they take, "
                 f"{_count_ifs(graph)} left")
    onnx.checker.check_model(model)
    return model


def _static_dims(graph) -> dict:
    """Tensor name → list of dims (``None`` where not static) for the graph's inputs."""
    out = {}
    for vi in graph.input:
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                        for d in vi.type.tensor_type.shape.dim]
    return out


def _fold_once(graph, opset: int) -> int:
    """Evaluate what can be evaluated at the top level, inline every ``If`` whose condition is
    then known; the number inlined."""
    from onnx import numpy_helper

    known = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    dims = _static_dims(graph)
    inlined = 0
    new_nodes = []
    for node in graph.node:
        if node.op_type == "If" and node.input[0] in known:
            cond = bool(np.asarray(known[node.input[0]]).reshape(-1)[0])
            branch = next(a.g for a in node.attribute
                          if a.name == ("then_branch" if cond else "else_branch"))
            new_nodes += _inline(graph, node, branch)
            inlined += 1
            continue
        new_nodes.append(node)
        _evaluate(node, known, dims, opset)
    if inlined:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return inlined


def _evaluate(node, known: dict, dims: dict, opset: int) -> None:
    """Add ``node``'s outputs to ``known`` when they follow from known values or static dims."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    if node.op_type not in _FOLDABLE:
        return
    if node.op_type == "Shape" and node.input[0] not in known:
        d = dims.get(node.input[0])
        if d is not None and all(x is not None for x in d) and not node.attribute:
            known[node.output[0]] = np.array(d, np.int64)
        elif d is not None:
            dims[node.output[0] + "#shape"] = d  # partial: a Gather may pick a static dim
        return
    if node.op_type == "Gather" and node.input[0] + "#shape" in dims and node.input[1] in known:
        d = dims[node.input[0] + "#shape"]
        idx = np.asarray(known[node.input[1]])
        picked = [d[int(i)] for i in idx.reshape(-1)]
        if all(p is not None for p in picked):
            known[node.output[0]] = np.array(picked, np.int64).reshape(idx.shape)
        return
    ins = [i for i in node.input if i]
    if not all(i in known for i in ins):
        return
    if any(np.asarray(known[i]).size > _MAX_FOLD_ELEMENTS for i in ins):
        return
    if node.op_type == "Constant":
        attr = node.attribute[0]
        if attr.name != "value":
            return
    try:
        # One node at a time, in a model of its own (no outer-scope names: all inputs known).
        sess = ReferenceEvaluator(helper.make_graph(
            [node], "fold", [helper.make_tensor_value_info(i, 0, None) for i in ins],
            [helper.make_tensor_value_info(o, 0, None) for o in node.output]),
            opsets={"": opset})
        outs = sess.run(None, {i: known[i] for i in ins})
    except Exception as e:  # noqa: BLE001 - the reference runtime raises anything; the node stays unfolded
        log.debug("not folded: %s %s (%s)", node.op_type, node.name, e)
        return
    for name, value in zip(node.output, outs, strict=True):
        known[name] = np.asarray(value)


def _inline(graph, node, branch) -> list:
    """The nodes of ``branch`` to put in place of ``node``: names the branch defines that the
    enclosing graph already uses are renamed, its outputs feed the ``If``'s outputs."""
    from onnx import helper

    taken = _names(graph, skip=node)
    defined = [t.name for t in branch.initializer] + [o for n in branch.node for o in n.output if o]
    rename = {}
    for name in defined:
        if name in taken:
            new, k = f"{name}__inl", 1
            while new in taken:
                new, k = f"{name}__inl{k}", k + 1
            rename[name] = new
            taken.add(new)
    out = []
    for t in branch.initializer:
        t.name = rename.get(t.name, t.name)
        graph.initializer.append(t)
    for n in branch.node:
        _rename(n, rename)
        out.append(n)
    for k, (src, dst) in enumerate(zip(branch.output, node.output, strict=True)):
        out.append(helper.make_node("Identity", [rename.get(src.name, src.name)], [dst],
                                    name=f"{node.name or dst}__taken{k}"))
    return out


def _rename(node, rename: dict) -> None:
    if not rename:
        return
    for i, name in enumerate(node.input):
        node.input[i] = rename.get(name, name)
    for i, name in enumerate(node.output):
        node.output[i] = rename.get(name, name)
    for g in _subgraphs(node):
        for n in g.node:  # references to outer names, inside nested branches
            _rename(n, rename)
        for o in g.output:
            o.name = rename.get(o.name, o.name)


def _subgraphs(node) -> list:
    """The graphs held in ``node``'s attributes (an ``If``'s branches, a ``Loop``'s body)."""
    return [g for a in node.attribute for g in ([a.g] if a.HasField("g") else []) + list(a.graphs)]


def _names(graph, skip=None) -> set:
    """Every name the graph uses (nested graphs included), leaving out node ``skip``'s branches."""
    out = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for n in graph.node:
        out.update(n.input)
        out.update(n.output)
        if n is not skip:
            for g in _subgraphs(n):
                out |= _names(g)
    return out


def _used(graph) -> set:
    """Every name read anywhere (nested graphs included)."""
    out = {o.name for o in graph.output}
    for n in graph.node:
        out.update(n.input)
        for g in _subgraphs(n):
            out |= _used(g)
    return out


def _drop_dead(graph) -> None:
    """Remove top-level nodes and initializers nothing reads (the branches not taken are gone
    with their ``If``; what fed only their conditions goes here)."""
    while True:
        used = _used(graph)
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = _used(graph)
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _count_ifs(graph) -> int:
    total = 0
    for n in graph.node:
        total += n.op_type == "If"
        total += sum(_count_ifs(g) for g in _subgraphs(n))
    return total


class FixedFeeds:
    """A calibration set's view without the fixed inputs (checked to hold the fixed values)."""

    def __init__(self, calibration, fixed: dict):
        self._calibration, self._fixed = calibration, fixed

    @classmethod
    def wrap(cls, calibration, options):
        """``calibration`` itself when no input is fixed, else its checked view.

        Raises:
            ConversionError: a sample gives a fixed input another value.
        """
        fixed = dict(getattr(options, "fix_inputs", None) or {})
        if not fixed or calibration is None:
            return calibration
        seen: dict = {}
        for feeds in calibration.batches(1):
            for name in fixed:
                if name in feeds:
                    seen.setdefault(name, set()).update(np.asarray(feeds[name]).reshape(-1).tolist())
        check_calibration(fixed, {k: sorted(v) for k, v in seen.items()}, "calibration")
        return cls(calibration, fixed)

    def __getattr__(self, name):
        return getattr(self._calibration, name)

    def batches(self, *args, **kwargs):
        for feeds in self._calibration.batches(*args, **kwargs):
            check_calibration(self._fixed, feeds, "calibration")
            yield {k: v for k, v in feeds.items() if k not in self._fixed}


def check_calibration(fixed: dict, feeds: dict, where: str) -> None:
    """The calibration/eval samples must hold the fixed value wherever they give the input.

    Raises:
        ConversionError: a sample gives another value.
    """
    for name, value in fixed.items():
        if name in feeds:
            vals = np.unique(np.asarray(feeds[name]))
            if vals.size != 1 or vals[0] != value:
                shown = ", ".join(str(v) for v in vals[:5])
                raise ConversionError(
                    f"--fix-input {name}={value}, but the {where} samples give {name} = {shown}; "
                    f"fix the value they hold, or give samples for that configuration only")

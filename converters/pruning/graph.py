"""The channel dependency graph of a Keras 3 Sequential or functional model.

Every tensor's last axis (its channels) is described by a ``Layout``: a list of channel
*variables*, one per concatenated segment, optionally repeated over flattened spatial positions.
A Conv/Dense/SeparableConv layer creates a new variable for its output channels; layers that act
per channel (BatchNormalization, DepthwiseConv, activations, pooling, padding) pass their input's
layout through; Add/Subtract/Multiply/... unify the variables of every branch that meets there;
Concatenate joins segments; Flatten repeats them. Unified variables form one coupled ``Group``:
its channels must be removed together, from every producer, per-channel layer and consumer.

What the graph does not understand (Reshape, attention, custom or shared layers, channels-first
data) is a *boundary*: the channels that reach it, and the channels it emits, are left unpruned
and the group records why. Model inputs and outputs are boundaries too, so output shapes never
change.

Layer handling is a table, ``HANDLERS`` (class name -> handler), which callers may extend with
``register_layer_handler`` for their own layers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgekit.errors import InputError

log = logging.getLogger(__name__)

# Roles a layer plays for the weight surgery in apply.py.
CONV, DENSE, SEPARABLE, DEPTHWISE, NORM, PASS, FIXED, INPUT = (
    "conv", "dense", "separable", "depthwise", "norm", "pass", "fixed", "input")
# Config key holding the output channel count of each producer role.
WIDTH_KEY = {CONV: "filters", SEPARABLE: "filters", DENSE: "units"}

TensorRef = tuple  # (layer name, node index, tensor index)


@dataclass(frozen=True)
class Layout:
    """The channel layout of a tensor's last axis.

    Attributes:
        vars: channel variables of the concatenated segments, in order.
        repeat: > 1 after Flatten: spatial positions outer, channels inner (channels-last).
    """

    vars: tuple
    repeat: int = 1


@dataclass
class LayerNode:
    """One layer of the model as the pruner sees it.

    Attributes:
        name / class_name / config: from ``model.get_config()``.
        inputs: the tensors it reads, as ``(layer, node, tensor)`` references.
        role: one of the role constants above.
        in_layout: layout of the (single) input whose channels the layer consumes, if any.
        out_var: the channel variable the layer produces (producer roles only).
        reason: why a FIXED layer is a boundary.
    """

    name: str
    class_name: str
    config: dict
    inputs: list
    role: str = FIXED
    in_layout: Layout | None = None
    out_var: int | None = None
    reason: str = ""


@dataclass
class Group:
    """Channels that must be pruned together.

    Attributes:
        id: ``"group:<first producer>"``, stable for a given model.
        size: channel count.
        producers: layers whose output channels these are (Conv/Dense/SeparableConv).
        members: every layer touched, as ``{"layer", "role", "offset", "repeat", "stride"}``:
            ``offset`` is where the group's channels start in that layer's channel axis,
            ``stride`` the layer's full channel count (flattened inputs repeat with it).
        reasons: why the group may not be pruned (empty when it may).
    """

    id: str
    size: int
    producers: list = field(default_factory=list)
    members: list = field(default_factory=list)
    reasons: list = field(default_factory=list)
    vars: list = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.reasons and bool(self.producers)


class DependencyGraph:
    """Layers, tensor layouts and coupled channel groups of one model.

    Build with ``DependencyGraph.build(model)``.
    """

    def __init__(self, model, kind: str, config: dict, nodes: list, shapes: dict, outputs: list):
        self.model = model
        self.kind = kind  # "sequential" | "functional"
        self.config = config
        self.nodes = nodes
        self.by_name = {n.name: n for n in nodes}
        self.shapes = shapes
        self.output_refs = outputs
        self._parent: list = []
        self._size: list = []
        self._reasons: dict = {}
        self.layouts: dict = {}
        self.groups: list = []
        self.group_by_root: dict = {}

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def build(cls, model) -> DependencyGraph:
        """Trace ``model``'s layers and couple their channels.

        Raises:
            InputError: a subclassed model (its graph is Python code, not data), or a model
                whose layers have not been built on a ``keras.Input``.
        """
        kind, config, nodes, shapes, outputs = _read_model(model)
        graph = cls(model, kind, config, nodes, shapes, outputs)
        graph._trace()
        return graph

    def new_var(self, size: int) -> int:
        self._parent.append(len(self._parent))
        self._size.append(int(size))
        return len(self._parent) - 1

    def find(self, v: int) -> int:
        while self._parent[v] != v:
            self._parent[v] = self._parent[self._parent[v]]
            v = self._parent[v]
        return v

    def size(self, v: int) -> int:
        return self._size[v]

    def layout_size(self, layout: Layout) -> int:
        return sum(self._size[v] for v in layout.vars) * layout.repeat

    def union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size[ra] != self._size[rb]:
            self.block_var(ra, f"{where}: channel counts {self._size[ra]} and {self._size[rb]} meet")
            self.block_var(rb, f"{where}: channel counts {self._size[ra]} and {self._size[rb]} meet")
        self._parent[rb] = ra
        self._reasons.setdefault(ra, []).extend(self._reasons.pop(rb, []))

    def block_var(self, v: int, reason: str) -> None:
        lst = self._reasons.setdefault(self.find(v), [])
        if reason not in lst:
            lst.append(reason)

    def block(self, layout: Layout, reason: str) -> None:
        for v in layout.vars:
            self.block_var(v, reason)

    def shape(self, ref: TensorRef) -> tuple:
        return tuple(self.shapes.get(tuple(ref), ()))

    def fixed_layout(self, ref: TensorRef, reason: str) -> Layout:
        """A new, unprunable layout for tensor ``ref`` (a boundary's output)."""
        shp = self.shape(ref)
        v = self.new_var(shp[-1] if shp and shp[-1] is not None else 0)
        self.block_var(v, reason)
        return Layout((v,))

    def _trace(self) -> None:
        for node in self.nodes:
            ins = [self.layouts[tuple(r)] for r in node.inputs]
            handler = HANDLERS.get(node.class_name, _unknown)
            if node.role == FIXED and node.reason:  # shared layers, decided while reading
                out = _fixed(self, node, ins, node.reason)
            else:
                out = handler(self, node, ins)
            for ref in self._out_refs(node):
                self.layouts[ref] = out if ref[1:] == (0, 0) else self.fixed_layout(ref, node.reason)
        for ref in self.output_refs:
            self.block(self.layouts[tuple(ref)], "model output (output shapes never change)")
        self._collect_groups()

    def _out_refs(self, node: LayerNode) -> list:
        refs = [r for r in self.shapes if r[0] == node.name]
        return refs or [(node.name, 0, 0)]

    def _collect_groups(self) -> None:
        groups: dict = {}
        for node in self.nodes:
            if node.out_var is not None:
                root = self.find(node.out_var)
                g = groups.setdefault(root, Group(id=f"group:{node.name}", size=self._size[root]))
                g.producers.append(node.name)
                g.members.append({"layer": node.name, "role": node.role, "offset": 0,
                                  "repeat": 1, "stride": self._size[root]})
        for node in self.nodes:
            if node.in_layout is None:
                continue
            offset, stride = 0, sum(self._size[v] for v in node.in_layout.vars)
            for v in node.in_layout.vars:
                g = groups.get(self.find(v))
                if g is not None:
                    role = node.role if node.role in (NORM, DEPTHWISE) else "consumer"
                    g.members.append({"layer": node.name, "role": role, "offset": offset,
                                      "repeat": node.in_layout.repeat, "stride": stride})
                offset += self._size[v]
        for root, g in groups.items():
            g.reasons = list(self._reasons.get(root, []))
            g.vars = [v for v in range(len(self._parent)) if self.find(v) == root]
        self.groups = list(groups.values())
        self.group_by_root = groups

    # -- queries --------------------------------------------------------------------------------

    def group_of(self, v: int) -> Group | None:
        """The group holding channel variable ``v`` (``None`` when no layer produces it)."""
        return self.group_by_root.get(self.find(v))

    def indices(self, layout: Layout, keep: dict) -> np.ndarray:
        """Channel indices of ``layout`` that survive, given ``keep``: var root -> kept indices."""
        parts, off = [], 0
        for v in layout.vars:
            k = keep.get(self.find(v))
            parts.append((np.arange(self._size[v]) if k is None else np.asarray(k)) + off)
            off += self._size[v]
        base = np.concatenate(parts) if parts else np.zeros(0, dtype=int)
        return np.concatenate([base + r * off for r in range(layout.repeat)]).astype(int)

    def signature(self) -> str:
        """A hash of layer names, classes and tensor shapes: plans apply only to the same model."""
        items = [(n.name, n.class_name, [list(self.shape(r)) for r in n.inputs]) for n in self.nodes]
        return hashlib.sha256(json.dumps(items, default=str).encode()).hexdigest()[:16]


# -- reading the model --------------------------------------------------------------------------

def model_kind(model) -> str:
    """``"sequential"`` or ``"functional"``.

    Raises:
        InputError: a subclassed model or not a Keras model.
    """
    import keras

    if isinstance(model, keras.Sequential):
        return "sequential"
    if isinstance(model, keras.Model) and type(model).__name__ == "Functional":
        return "functional"
    if isinstance(model, keras.Model):
        raise InputError(
            f"model {model.name!r} is a subclassed keras.Model ({type(model).__name__}): its "
            f"graph is Python code, not data, so it cannot be pruned; build it as a functional or "
            f"Sequential model")
    raise InputError(f"expected a keras.Model, got {type(model).__name__}")


def strip_build_configs(config: dict) -> dict:
    """A deep copy of a model config without per-layer build configs (they pin old widths)."""
    config = copy.deepcopy(config)
    for layer in config.get("layers", []):
        layer.pop("build_config", None)
    return config


def _read_model(model):
    kind = model_kind(model)
    config = model.get_config()
    if kind == "sequential":
        return (kind, config, *_read_sequential(model, config))
    return (kind, config, *_read_functional(model, config))


def _read_sequential(model, config):
    layers = config["layers"]
    if not layers or layers[0]["class_name"] != "InputLayer":
        raise InputError(f"Sequential model {model.name!r} has no keras.Input: build it with "
                         f"keras.Input(shape) first so its layers have known shapes")
    first = layers[0]["config"]
    nodes = [LayerNode(first["name"], "InputLayer", first, [])]
    shapes = {(first["name"], 0, 0): tuple(first["batch_shape"])}
    prev = first["name"]
    for spec, layer in zip(layers[1:], model.layers, strict=False):
        name = spec["config"]["name"]
        try:
            shapes[(name, 0, 0)] = tuple(layer.output.shape)
        except (AttributeError, ValueError) as e:
            raise InputError(f"layer {name!r} of {model.name!r} has no output shape ({e}); "
                             f"call the model once on data before pruning") from e
        nodes.append(LayerNode(name, spec["class_name"], spec["config"], [(prev, 0, 0)]))
        prev = name
    return nodes, shapes, [(prev, 0, 0)]


def _read_functional(model, config):
    nodes, shapes = [], {}
    for spec in config["layers"]:
        name = spec.get("name") or spec["config"]["name"]
        inbound = spec.get("inbound_nodes") or []
        refs = []
        for call in inbound:
            refs.extend(_tensor_refs(call, shapes))
        node = LayerNode(name, spec["class_name"], spec["config"], refs)
        if len(inbound) > 1:
            node.reason = f"layer {name!r} ({spec['class_name']}) is shared by several calls"
        nodes.append(node)
    for layer_spec in config["layers"]:
        if layer_spec["class_name"] == "InputLayer":
            c = layer_spec["config"]
            shapes.setdefault((c["name"], 0, 0), tuple(c["batch_shape"]))
    outs = _triples(config["output_layers"])
    for ref, tensor in zip(outs, model.outputs, strict=True):
        shapes.setdefault(tuple(ref), tuple(tensor.shape))
    return nodes, shapes, outs


def _triples(value) -> list:
    if value and isinstance(value[0], str):
        return [tuple(value)]
    return [tuple(v) for v in value]


def _tensor_refs(obj, shapes: dict) -> list:
    """Every ``__keras_tensor__`` reference in a serialized call, in order; records shapes."""
    found = []
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            cfg = obj["config"]
            ref = tuple(cfg["keras_history"])
            shapes[ref] = tuple(cfg.get("shape") or ())
            return [ref]
        for key in ("args", "kwargs"):
            if key in obj:
                found.extend(_tensor_refs(obj[key], shapes))
        if "args" not in obj and "kwargs" not in obj:
            for v in obj.values():
                found.extend(_tensor_refs(v, shapes))
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            found.extend(_tensor_refs(item, shapes))
    return found


# -- handlers -----------------------------------------------------------------------------------

Handler = Callable[[DependencyGraph, LayerNode, list], Layout]
HANDLERS: dict = {}


def register_layer_handler(class_name: str, handler: Handler) -> None:
    """Teach the pruner a layer class: ``handler(graph, node, input_layouts) -> output layout``.

    The handler sets ``node.role`` (and ``node.in_layout`` / ``node.out_var``); the built-in
    handlers below are the examples. A handler for an existing class replaces it.
    """
    HANDLERS[class_name] = handler


def _fixed(graph: DependencyGraph, node: LayerNode, ins: list, reason: str) -> Layout:
    node.role, node.reason = FIXED, reason
    for lay in ins:
        graph.block(lay, reason)
    return graph.fixed_layout((node.name, 0, 0), reason)


def _unknown(graph, node, ins):
    return _fixed(graph, node, ins, f"layer {node.name!r} ({node.class_name}) is not understood "
                                    f"by the pruner; channels stop at its boundary")


def _channels_last(node) -> bool:
    return node.config.get("data_format", "channels_last") in (None, "channels_last")


def _single(graph, node, ins) -> Layout | None:
    return ins[0] if len(ins) == 1 else None


def _input(graph, node, ins):
    node.role = INPUT
    return graph.fixed_layout((node.name, 0, 0), "model input")


def _producer(role):
    def handler(graph, node, ins):
        lay = _single(graph, node, ins)
        if lay is None or not _channels_last(node) or node.config.get("groups", 1) != 1:
            return _unknown(graph, node, ins)
        if role == SEPARABLE and node.config.get("depth_multiplier", 1) < 1:
            return _unknown(graph, node, ins)
        if role != DENSE and lay.repeat != 1:
            return _unknown(graph, node, ins)
        node.role, node.in_layout = role, lay
        node.out_var = graph.new_var(node.config[WIDTH_KEY[role]])
        if node.config.get("activation") in ("softmax", "log_softmax"):
            graph.block_var(node.out_var, f"layer {node.name!r} applies softmax over its channels")
        return Layout((node.out_var,))
    return handler


def _depthwise(graph, node, ins):
    lay = _single(graph, node, ins)
    if lay is None or lay.repeat != 1 or not _channels_last(node) \
            or node.config.get("depth_multiplier", 1) != 1:
        return _fixed(graph, node, ins, f"layer {node.name!r} (DepthwiseConv) has "
                                        f"depth_multiplier != 1 or channels-first data")
    if node.config.get("activation") in ("softmax", "log_softmax"):
        graph.block(lay, f"layer {node.name!r} applies softmax over its channels")
    node.role, node.in_layout = DEPTHWISE, lay
    return lay


def _norm(graph, node, ins):
    lay = _single(graph, node, ins)
    axis = node.config.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    rank = len(graph.shape(node.inputs[0])) if node.inputs else 0
    if lay is None or lay.repeat != 1 or axis not in (-1, rank - 1):
        return _unknown(graph, node, ins)
    node.role, node.in_layout = NORM, lay
    return lay


def _passthrough(graph, node, ins):
    lay = _single(graph, node, ins)
    if lay is None or not _channels_last(node):
        return _unknown(graph, node, ins)
    act = node.config.get("activation")
    if node.class_name == "Activation" and act in ("softmax", "log_softmax"):
        return _fixed(graph, node, ins, f"layer {node.name!r} applies softmax over its channels")
    if node.class_name == "Softmax":
        return _fixed(graph, node, ins, f"layer {node.name!r} applies softmax over its channels")
    node.role = PASS
    return lay


def _flatten(graph, node, ins):
    lay = _single(graph, node, ins)
    shp = graph.shape(node.inputs[0]) if node.inputs else ()
    if lay is None or not _channels_last(node) or lay.repeat != 1 \
            or any(d is None for d in shp[1:]):
        return _unknown(graph, node, ins)
    node.role = PASS
    return Layout(lay.vars, int(np.prod(shp[1:-1])) if len(shp) > 2 else 1)


def _merge(graph, node, ins):
    if len(ins) < 2 or any(lay.repeat != ins[0].repeat for lay in ins) \
            or any(len(lay.vars) != len(ins[0].vars) for lay in ins):
        return _fixed(graph, node, ins, f"layer {node.name!r} ({node.class_name}) merges tensors "
                                        f"whose channel layouts differ")
    for lay in ins[1:]:
        for a, b in zip(ins[0].vars, lay.vars, strict=True):
            graph.union(a, b, f"{node.class_name} {node.name!r}")
    node.role = PASS
    return ins[0]


def _concat(graph, node, ins):
    rank = len(graph.shape(node.inputs[0])) if node.inputs else 0
    if node.config.get("axis", -1) not in (-1, rank - 1) or any(lay.repeat != 1 for lay in ins):
        return _fixed(graph, node, ins, f"layer {node.name!r} concatenates along an axis other "
                                        f"than channels")
    node.role = PASS
    return Layout(tuple(v for lay in ins for v in lay.vars))


for _name in ("Conv1D", "Conv2D", "Conv3D"):
    register_layer_handler(_name, _producer(CONV))
register_layer_handler("Dense", _producer(DENSE))
for _name in ("SeparableConv1D", "SeparableConv2D"):
    register_layer_handler(_name, _producer(SEPARABLE))
for _name in ("DepthwiseConv1D", "DepthwiseConv2D"):
    register_layer_handler(_name, _depthwise)
register_layer_handler("BatchNormalization", _norm)
register_layer_handler("InputLayer", _input)
register_layer_handler("Flatten", _flatten)
register_layer_handler("Concatenate", _concat)
for _name in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
    register_layer_handler(_name, _merge)
for _name in ("Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D",
              "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
              "AlphaDropout", "Identity", "ActivityRegularization",
              *(f"{kind}{d}D" for kind in ("MaxPooling", "AveragePooling", "ZeroPadding",
                                           "UpSampling", "Cropping", "GlobalAveragePooling",
                                           "GlobalMaxPooling") for d in (1, 2, 3))):
    register_layer_handler(_name, _passthrough)

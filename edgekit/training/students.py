"""Architecture scaling for ``optimize`` (off by default): smaller students of a
``keras.applications`` MobileNetV2, MobileNetV3 (Small/Large, minimalistic or not) or
EfficientNet (B0–B7, V2 B0–B3), or of a model with one as its backbone, trained by distillation
from the user's model.

Recognised in the loaded Keras model (a ``.keras`` file reloaded keeps the layer names):

- the family by the layer names its constructor gives (``Conv1``/``block_16_project``/
  ``out_relu``; ``conv``/``expanded_conv_10_project``/``conv_1``; ``stem_conv``/``top_conv``,
  with ``stem_conv_pad`` for EfficientNet V1), in the model itself or in a nested model (the
  ``base(inp)`` of a backbone used as a layer, or a ``Sequential`` holding one);
- the variant and width from the structure: MobileNetV2's alpha from the model name
  (``mobilenetv2_<alpha>_<rows>``) or ``block_16_project``'s filters (320 × alpha);
  MobileNetV3's Small/Large by its block count, minimalistic by the absence of squeeze-excite,
  alpha by the blocks' filter counts; EfficientNet's B-variant by (blocks, ``top_conv``
  filters);
- ``pre``: the layers between the model's input and the backbone's stem (the family's own
  ``Rescaling``/``Normalization`` preprocessing, and any of the user's), and ``head``: the
  layers after the backbone's last feature layer (the application's classifier, or the user's
  pooling/dropout/dense head). Both must be chains of single-input layers.

A student keeps the source's input: its ``pre`` layers rebuilt from their configs with their
weights copied (so preprocessing, even an adapted ``Normalization``, is the source's), then a
``Resizing`` to the student's resolution when it is lower, then a smaller backbone built with
``weights=None`` and no preprocessing of its own, then the source's ``head`` rebuilt from its
layers' configs, freshly initialised. Smaller means a smaller alpha (MobileNets) or a smaller
B-variant (EfficientNet, up to ``EFFICIENTNET_STEPS_DOWN`` below the source), and/or a lower
resolution (multiples of 8, at least 32: every family here refuses smaller inputs).

A plain top-level ``MobileNetV2(include_top=True)`` keeps the layout of the first version (the
application's own classifier, a ``Resizing`` in front named ``student_resize``), so its
recipes replay to the same bytes. A student is described by a ``StudentStep``
(``Recipe.student``: family, variant, alpha, minimalistic, resolution, training settings) whose
name encodes the architecture (``parse_student``); it is rebuilt from it and the source model:
seeded,
with TensorFlow's deterministic ops, the same data give the same weights, so its recipe replays
byte-identically (the trained student's sha256 is recorded too).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import InputError
from edgekit.recipe import StudentStep

log = logging.getLogger(__name__)

FAMILY = "mobilenetv2"  # the first family; student dicts without a variant are this one
FAMILIES = ("mobilenetv2", "mobilenetv3", "efficientnet", "efficientnetv2")
EFFICIENTNET_STEPS_DOWN = 3  # EfficientNet students: up to this many B-variants below the source
_LAYERS = ("Conv1", "expanded_conv_project", "block_16_project", "out_relu")
_MIN_RESOLUTION = 32  # keras.applications refuses smaller inputs for all four families

# Layer names each family's constructor gives: all present = that family (MobileNetV2 is
# checked before MobileNetV3, which shares ``expanded_conv_project``).
_SIGNATURES = {
    "mobilenetv2": frozenset(_LAYERS),
    "mobilenetv3": frozenset({"conv", "conv_bn", "expanded_conv_project",
                              "expanded_conv_10_project", "conv_1", "conv_1_bn"}),
    "efficientnet": frozenset({"stem_conv_pad", "stem_conv", "block1a_project_conv",
                               "top_conv", "top_activation"}),
    "efficientnetv2": frozenset({"stem_conv", "block1a_project_conv", "top_conv",
                                 "top_activation"}),
}
# The backbone's first layer after its own preprocessing, and its last feature layer (None:
# MobileNetV3's is an unnamed activation, the layer after ``conv_1_bn``).
_STEM = {"mobilenetv2": "Conv1", "mobilenetv3": "conv", "efficientnet": "stem_conv_pad",
         "efficientnetv2": "stem_conv"}
_END = {"mobilenetv2": "out_relu", "mobilenetv3": None, "efficientnet": "top_activation",
        "efficientnetv2": "top_activation"}
# (blocks, top_conv filters) -> variant, counted on keras.applications' own models.
_EFFICIENTNET = {(16, 1280): "b0", (23, 1280): "b1", (23, 1408): "b2", (26, 1536): "b3",
                 (32, 1792): "b4", (39, 2048): "b5", (45, 2304): "b6", (55, 2560): "b7"}
_EFFICIENTNET_V2 = {(21, 1280): "b0", (27, 1280): "b1", (28, 1408): "b2", (32, 1536): "b3"}
# MobileNetV3's block output filters before alpha (keras.applications' stack_fn).
_V3_DEPTHS = {"small": (16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96),
              "large": (16, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 160, 160, 160)}
_V3_ALPHAS = (1.0, 0.75, 0.5, 0.35, 0.25, *(k / 20 for k in range(1, 61)),
              *(k / 100 for k in range(1, 301)))  # tried in this order: the first that fits
_NOT_SCALABLE = ("arch scaling: the model is not a keras.applications MobileNetV2/V3/"
                 "EfficientNet(V2) or a model with one as its backbone")


@dataclass(frozen=True)
class Family:
    """What was recognised in the source model.

    Attributes:
        family: one of ``FAMILIES``.
        alpha: the width multiplier (MobileNets; 1.0 for EfficientNet).
        input_shape: the model's input (height, width, channels).
        classes / activation: the output's size and the classifier's activation name.
        variant: MobileNetV3 ``small``/``large``; EfficientNet ``b0``..``b7``; else "".
        minimalistic: a minimalistic MobileNetV3.
        resolution / channels: the backbone's input (height, width) and channels after
            ``pre``.
        layout: ``applications``: a top-level ``MobileNetV2(include_top=True)``, students
            built as in the first version; ``backbone``: ``pre`` + backbone + ``head``.
        pre / head: the source's layers before the backbone's stem and after its last feature
            layer, in order (layer objects of the loaded model).
        input_name / input_dtype: the model's input layer.
    """

    family: str
    alpha: float
    input_shape: tuple
    classes: int
    activation: str
    variant: str = ""
    minimalistic: bool = False
    resolution: tuple = ()
    channels: int = 3
    layout: str = "applications"
    pre: tuple = ()
    head: tuple = ()
    input_name: str = "image"
    input_dtype: str = "float32"

    def describe(self) -> str:
        """E.g. ``mobilenetv3 small alpha 0.5 at 96x96``, for messages."""
        h, w = self.resolution or self.input_shape[:2]
        name = " ".join(p for p in (self.family, self.variant,
                                    "minimalistic" if self.minimalistic else "") if p)
        width = f" alpha {self.alpha:g}" if self.family.startswith("mobilenet") else ""
        return f"{name}{width} at {h}x{w}"


def detect(model) -> Family | None:
    """The ``keras.applications`` family of a Keras model (itself or its backbone), or None
    when it is not one we scale (``recognise`` says why)."""
    found = _analyse(model)
    return found if isinstance(found, Family) else None


def recognise(model, where) -> Family:
    """``detect(model)``, or an error saying why it is not a model we scale.

    Raises:
        InputError: ``model`` (loaded from ``where``) is not a scalable family.
    """
    found = _analyse(model)
    if isinstance(found, str):
        raise InputError(f"{where}: {found}: drop --arch-scaling")
    return found


def _analyse(model) -> Family | str:
    """The ``Family`` of ``model``, or the reason it has none."""
    import keras

    found = _locate(model)
    if isinstance(found, str):
        return found
    family, inner, outer_pre, outer_head, feed = found
    stem_in = inner.get_layer(_STEM[family])._inbound_nodes[0].input_tensors[0]
    inner_pre = _walk_back(stem_in, lambda op, node: False)
    inner_head = _walk_back(inner.outputs[0], _is_end(family))
    for part, found in (("before", inner_pre), ("after", inner_head)):
        if isinstance(found, str):
            return f"arch scaling: the layers {part} the {family} backbone's own {found}"
    if inner_head[1]:
        return f"arch scaling: no {_END[family] or 'conv_1'} layer ends the {family} backbone"
    pre, head = (*outer_pre, *inner_pre[0]), (*inner_head[0], *outer_head)
    res = tuple(stem_in.shape[1:3])
    if None in res and feed is not None:  # a backbone built for any size: what it is fed
        res = tuple(feed.shape[1:3])
    if None in res:
        return (f"arch scaling: the {family} backbone's input size is not fixed ({res}); build "
                "it with input_shape=(height, width, channels)")
    width = _width(family, inner)
    if isinstance(width, str):
        return width
    variant, minimalistic, alpha = width
    layout = "applications" if (
        family == "mobilenetv2" and inner is model and not pre
        and [type(layer).__name__ for layer in head] == ["GlobalAveragePooling2D", "Dense"]) \
        else "backbone"
    activation = getattr(head[-1], "activation", None) if head else None
    activation = keras.activations.serialize(activation) if activation is not None else "linear"
    if isinstance(activation, dict):
        activation = activation.get("config", {}).get("name", "linear")
    inp = model.inputs[0]
    return Family(family, alpha, tuple(model.input_shape[1:]), int(model.outputs[0].shape[-1]),
                  str(activation), variant, minimalistic, tuple(int(d) for d in res),
                  int(stem_in.shape[-1]), layout, pre, head,
                  inp._keras_history.operation.name, str(inp.dtype))


def _locate(model):
    """(family, the model holding the application's layers, the layers before and after it in
    ``model``, the tensor it is fed or None when they are ``model``'s own) or the reason
    there is none."""
    import keras

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return (f"arch scaling: the model has {len(model.inputs)} inputs and "
                f"{len(model.outputs)} outputs; students are built for one image input and one "
                "output")
    family = _family_of(model)
    if family is not None:  # the application's layers are the model's own (flat)
        return family, model, (), (), None
    nested = [(layer, f) for layer in model.layers if isinstance(layer, keras.Model)
              for f in [_family_of(layer)] if f is not None]
    if not nested:
        return (f"{_NOT_SCALABLE} (no layers named like Conv1/out_relu (MobileNetV2), "
                "conv/conv_1 (MobileNetV3), stem_conv/top_conv (EfficientNet), in it or in a "
                "nested model)")
    if len(nested) > 1:
        return f"arch scaling: the model holds {len(nested)} backbones; one is scaled"
    inner, family = nested[0]
    if isinstance(model, keras.Sequential):
        i = model.layers.index(inner)
        pre, head = tuple(model.layers[:i]), tuple(model.layers[i + 1:])
        return family, inner, pre, head, pre[-1].output if pre else model.inputs[0]
    head = _walk_back(model.outputs[0], lambda op, node: op is inner)
    if isinstance(head, str):
        return f"arch scaling: the head after the {family} backbone {head}"
    if head[1]:
        return (f"arch scaling: the {family} backbone {inner.name} is not on the path from the "
                "model's input to its output")
    feed = _node_of(model.outputs[0], inner, head[0]).input_tensors[0]
    pre = _walk_back(feed, lambda op, node: False)
    if isinstance(pre, str):
        return f"arch scaling: the layers before the {family} backbone {pre}"
    return family, inner, pre[0], head[0], feed


def _width(family: str, inner):
    """(variant, minimalistic, alpha) of the application ``inner``, or why none fits."""
    names = {layer.name for layer in inner.layers}
    if family == "mobilenetv2":
        m = re.fullmatch(r"mobilenetv2_(\d+(?:\.\d+)?)_\d+", inner.name)
        return "", False, float(m.group(1)) if m else round(
            inner.get_layer("block_16_project").filters / 320, 2)
    if family == "mobilenetv3":
        variant = "large" if "expanded_conv_14_project" in names else "small"
        filters = tuple(inner.get_layer("expanded_conv_project" if i == 0 else
                                        f"expanded_conv_{i}_project").filters
                        for i in range(len(_V3_DEPTHS[variant])))
        alpha = next((a for a in _V3_ALPHAS if _v3_filters(variant, a) == filters), None)
        if alpha is None:
            return (f"arch scaling: MobileNetV3 {variant} blocks with {filters} filters match "
                    "no alpha")
        return variant, not any("squeeze_excite" in n for n in names), alpha
    key = (sum(1 for n in names if re.fullmatch(r"block\d+[a-z]_project_conv", n)),
           inner.get_layer("top_conv").filters)
    variant = (_EFFICIENTNET if family == "efficientnet" else _EFFICIENTNET_V2).get(key)
    if variant is None:
        return (f"arch scaling: an {family} with {key[0]} blocks and top_conv {key[1]} filters "
                "is none of keras.applications' variants")
    return variant, False, 1.0


def _family_of(model) -> str | None:
    names = {layer.name for layer in model.layers}
    for family, sig in _SIGNATURES.items():
        if sig <= names:
            return family
    return None


def _is_end(family: str):
    """The stop test for the walk back to ``family``'s last feature layer."""
    end = _END[family]
    if end is not None:
        return lambda op, node: op.name == end
    return lambda op, node: (op.name != "conv_1_bn" and len(node.input_tensors) == 1 and
                             node.input_tensors[0]._keras_history.operation.name == "conv_1_bn")


def _walk_back(tensor, stop):
    """The layers from ``tensor`` back to the first op where ``stop(op, node)`` holds (left
    out) or to an ``InputLayer``, in forward order, and whether the input was reached; or the
    reason it is not a chain of single-input layers.

    Keras 3's public ``Operation.input`` reads an op's first call only, and a nested model's
    ``.input`` is its own ``Input``: the nodes (``_keras_history``, ``_inbound_nodes``) say
    which call is on this path.
    """
    import keras

    chain = []
    while True:
        op, node_index, _ = tensor._keras_history
        if isinstance(op, keras.layers.InputLayer):
            return chain[::-1], True
        node = op._inbound_nodes[node_index]
        if stop(op, node):
            return chain[::-1], False
        if not isinstance(op, keras.layers.Layer) or len(node.input_tensors) != 1:
            return (f"is not a chain of single-input layers ({op.name}, "
                    f"{type(op).__name__}, takes {len(node.input_tensors)} inputs)")
        chain.append(op)
        tensor = node.input_tensors[0]


def _node_of(output, op, head):
    """The node calling ``op`` on the path back from ``output`` through ``head``."""
    tensor = output
    for layer in reversed(head):
        layer_node = layer._inbound_nodes[tensor._keras_history.node_index]
        tensor = layer_node.input_tensors[0]
    return op._inbound_nodes[tensor._keras_history.node_index]


def _v3_depth(v: float, divisor: int = 8) -> int:
    """keras.applications.mobilenet_v3._depth: ``v`` rounded to a multiple of 8."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _v3_filters(variant: str, alpha: float) -> tuple:
    return tuple(_v3_depth(d * alpha) for d in _V3_DEPTHS[variant])


def student_name(alpha: float, resolution: int, family: str = FAMILY, variant: str = "",
                 minimalistic: bool = False) -> str:
    """E.g. ``mobilenetv2-a0.35-r96``, ``mobilenetv3small-min-a0.5-r96``,
    ``efficientnetb0-r160``, ``efficientnetv2b1-r192``."""
    if family == "mobilenetv2":
        return f"{family}-a{alpha:g}-r{resolution}"
    if family == "mobilenetv3":
        return f"{family}{variant}{'-min' if minimalistic else ''}-a{alpha:g}-r{resolution}"
    return f"{family}{variant}-r{resolution}"


_NAME = re.compile(r"(?P<family>mobilenetv2|mobilenetv3(?P<v3>small|large)(?P<min>-min)?|"
                   r"efficientnet(?P<b>b[0-7])|efficientnetv2(?P<b2>b[0-3]))"
                   r"(?:-a(?P<alpha>\d+(?:\.\d+)?))?-r(?P<res>\d+)")


def parse_student(name: str) -> dict:
    """A student's name → its architecture: ``mobilenetv2-a0.25-r32`` → {"family", "alpha",
    "resolution"}; MobileNetV3 adds "variant" and "minimalistic", EfficientNet has "variant"
    and no alpha.

    Raises:
        InputError: not a student name.
    """
    m = _NAME.fullmatch(name)
    mobile = bool(m) and m.group("family").startswith("mobilenet")
    if not m or mobile != (m.group("alpha") is not None):
        raise InputError(f"{name!r} is not a student (expected e.g. {FAMILY}-a0.35-r96, "
                         "mobilenetv3small-a0.5-r96, mobilenetv3large-min-a0.75-r160, "
                         "efficientnetb0-r160, efficientnetv2b0-r160)")
    res = int(m.group("res"))
    if m.group("v3"):
        return {"family": "mobilenetv3", "variant": m.group("v3"),
                "minimalistic": bool(m.group("min")), "alpha": float(m.group("alpha")),
                "resolution": res}
    if m.group("b") or m.group("b2"):
        return {"family": "efficientnet" if m.group("b") else "efficientnetv2",
                "variant": m.group("b") or m.group("b2"), "resolution": res}
    return {"family": FAMILY, "alpha": float(m.group("alpha")), "resolution": res}


def candidates(fam: Family, alphas, resolution_scales) -> tuple:
    """Student names smaller than the source: a width (alpha for MobileNets, B-variant for
    EfficientNet) <= its own and a resolution <= its own (not both equal; its own width is
    tried at the lower resolutions), resolutions rounded to multiples of 8 and at least 32. A MobileNetV3 alpha that gives the source's own filter
    counts is left out (the same network)."""
    rows = (fam.resolution or fam.input_shape[:2])[0]
    if fam.family.startswith("efficientnet"):
        order = sorted(_EFFICIENTNET.values() if fam.family == "efficientnet"
                       else _EFFICIENTNET_V2.values())
        i = order.index(fam.variant)
        widths = order[max(0, i - EFFICIENTNET_STEPS_DOWN):i + 1][::-1]
        own = fam.variant
    else:
        own = fam.alpha
        widths = [a for a in sorted({*alphas, fam.alpha}, reverse=True) if a <= fam.alpha]
        if fam.family == "mobilenetv3":
            mine = _v3_filters(fam.variant, fam.alpha)
            widths = [a for a in widths if a == fam.alpha or _v3_filters(fam.variant, a) != mine]
    out = []
    for r_scale in sorted(set(resolution_scales), reverse=True):
        res = max(_MIN_RESOLUTION, int(round(rows * r_scale / 8)) * 8)
        res = min(res, rows)
        for width in widths:
            if width == own and res == rows:
                continue
            name = (student_name(1.0, res, fam.family, width)
                    if fam.family.startswith("efficientnet") else
                    student_name(width, res, fam.family, fam.variant, fam.minimalistic))
            if name not in out:
                out.append(name)
    return tuple(out)


def build_student(fam: Family, student: dict):
    """An untrained student (``weights=None``) taking the source's input.

    Args:
        fam: the source model's ``Family`` (its ``pre`` and ``head`` layers are rebuilt).
        student: the architecture (``parse_student``; a ``Recipe.student``).

    Raises:
        InputError: a resolution below 32 or a family not in ``FAMILIES``.
    """
    import keras

    family, res = student.get("family", FAMILY), int(student["resolution"])
    if family not in FAMILIES or res < _MIN_RESOLUTION:
        raise InputError(f"student {student}: expected a family among {list(FAMILIES)} and a "
                         f"resolution of at least {_MIN_RESOLUTION}")
    h, w, c = fam.input_shape
    if fam.layout == "applications" and family == FAMILY:  # the first version's layout
        alpha = float(student["alpha"])
        base = keras.applications.MobileNetV2(input_shape=(res, res, c), alpha=alpha,
                                              weights=None, classes=fam.classes,
                                              classifier_activation=fam.activation)
        if (h, w) == (res, res):
            return base
        inp = keras.Input((h, w, c), name="image")
        out = base(keras.layers.Resizing(res, res, name="student_resize")(inp))
        return keras.Model(inp, out, name=f"student_{student_name(alpha, res)}")
    rows, cols = fam.resolution
    size = (res, max(_MIN_RESOLUTION, int(round(cols * res / rows))))
    inp = keras.Input(fam.input_shape, dtype=fam.input_dtype, name=fam.input_name)
    x = inp
    for layer in fam.pre:  # the source's preprocessing: the same input gives the same values
        clone = type(layer).from_config(layer.get_config())
        x = clone(x)
        clone.set_weights(layer.get_weights())
    if size != tuple(fam.resolution):
        x = keras.layers.Resizing(*size, name="student_resize")(x)
    x = _backbone(student, (*size, fam.channels))(x)
    for layer in fam.head:  # the source's head, freshly initialised
        x = type(layer).from_config(layer.get_config())(x)
    name = student_name(float(student.get("alpha", 1.0)), res, family,
                        student.get("variant", ""), bool(student.get("minimalistic", False)))
    return keras.Model(inp, x, name=f"student_{name}")


def _backbone(student: dict, shape: tuple):
    """The student's backbone: the application without top or preprocessing, ``weights=None``."""
    import keras

    apps, family = keras.applications, student.get("family", FAMILY)
    variant = str(student.get("variant", "")).upper()
    if family == "mobilenetv2":
        return apps.MobileNetV2(input_shape=shape, alpha=float(student["alpha"]),
                                include_top=False, weights=None)
    if family == "mobilenetv3":
        build = getattr(apps, f"MobileNetV3{variant.title()}")
        return build(input_shape=shape, alpha=float(student["alpha"]),
                     minimalistic=bool(student.get("minimalistic", False)), include_top=False,
                     weights=None, include_preprocessing=False)
    if family == "efficientnetv2":
        return getattr(apps, f"EfficientNetV2{variant}")(input_shape=shape, include_top=False,
                                                        weights=None,
                                                        include_preprocessing=False)
    # EfficientNet V1 always adds Rescaling + Normalization: the student's come from ``pre``,
    # so the network is taken from its stem on.
    full = getattr(apps, f"EfficientNet{variant}")(input_shape=shape, include_top=False,
                                                   weights=None)
    return keras.Model(full.get_layer(_STEM[family]).input, full.outputs[0], name=full.name)


def train_student(model, student: StudentStep, train, path) -> Path:
    """Build the student ``student`` (a ``StudentStep`` or its document) describes and distill
    it from ``model`` on ``train``; write it to ``path`` (``.keras``).

    Raises:
        InputError: no training data, or a source that is not a scalable family.
    """
    import keras
    import tensorflow as tf

    from converters.distill import recalibrate_batchnorm
    from edgekit.train_api import distill, load_keras_model, load_training_data, save_model

    if train is None:
        raise InputError("this recipe trains a smaller student by distillation: pass the "
                         "training data (--train)")
    # Keras names unnamed layers from a per-process counter (input_layer_3,
    # global_average_pooling2d_2...) and those names reach the .keras file and the artifact's
    # tensor names: reset it, so a student built after other models has the same bytes.
    keras.backend.clear_session()
    teacher = load_keras_model(model)
    fam = recognise(teacher, model)
    student = StudentStep.of(student)
    keras.utils.set_random_seed(int(student.seed))
    tf.config.experimental.enable_op_determinism()
    net = build_student(fam, student.architecture)
    x, y = load_training_data(train, net)
    distill(net, teacher, (x, y), temperature=float(student.temperature),
            alpha=float(student.kd_alpha), epochs=int(student.epochs),
            learning_rate=float(student.learning_rate))
    # A student trained from scratch for a few epochs keeps near-initial BN moving statistics
    # (keras.applications' momentum is 0.999): estimate them from the training data.
    recalibrate_batchnorm(net, x)
    return save_model(net, path)


def estimate(model, train, students, epochs: int, batch_size: int = 32) -> dict:
    """Seconds of distillation the students will cost here: epochs × steps per epoch × a
    measured step time (per student: a few real distillation steps on the training data, the
    first, which traces the graph, not counted).

    Returns:
        {"students": {name: {"step_s", "steps_per_epoch", "seconds"}}, "seconds": total}.
    """

    from converters.distill import DistillSpec, FitSpec, fit
    from converters.train_loop import step_clock
    from edgekit.train_api import load_keras_model, load_training_data

    teacher = load_keras_model(model)
    fam = recognise(teacher, model)
    x, y = load_training_data(train, teacher)
    steps = max(1, math.ceil(len(x) / batch_size))
    probe_n = min(len(x), 4 * batch_size)
    out = {}

    for name in students:
        clock = step_clock()
        fit(build_student(fam, parse_student(name)), x[:probe_n], y[:probe_n],
            FitSpec(epochs=1, batch_size=batch_size), teacher=teacher,
            distill_spec=DistillSpec(), callbacks=[clock])
        step = clock.step_s()
        out[name] = {"step_s": step, "steps_per_epoch": steps, "seconds": epochs * steps * step}
    return {"students": out, "seconds": sum(v["seconds"] for v in out.values())}


__all__ = ["Family", "detect", "recognise", "candidates", "build_student", "train_student",
           "estimate", "parse_student", "student_name", "FAMILY", "FAMILIES",
           "EFFICIENTNET_STEPS_DOWN"]

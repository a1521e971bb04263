"""Models built to reproduce the fidelity gate's hard cases, with fixed seeded weights, and real
photographs (scikit-image's) as their data.

- ``yolo_head``: a YOLOv8-style head, one output ``[N, 4 + C, A]`` concatenating box coordinates
  (0..320) with sigmoid class scores (0..1). Naive per-tensor INT8 of the Concat gives the scores
  the boxes' scale (320 / 255 = 1.25 per step): the scores collapse while the whole output's SQNR
  stays high, as with real INT8 YOLO exports.
- ``anchor_head``: a raw anchor head as MediaPipe's BlazeFace gives, ``regressors [N, A, 16]``
  (box offsets and sizes in pixels, 6 keypoints) and ``classificators [N, A, 1]`` logits, split
  from one head tensor: naive per-tensor INT8 gives the logits the pixels' scale, so anchors near
  the 0.5 threshold flip.
- ``near_zero_map``: a map of sigmoid probabilities around 1e-6 on made-up inputs (FP16 stores
  them as subnormals with a few bits: a low SQNR that means nothing for the user).
- ``constant_head``: a model whose output does not depend on its input (an untrained head).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMG = 64


def photo_crops(n: int, seed: int = 0, size: int = IMG) -> np.ndarray:
    """``[n, 3, size, size]`` float32 crops in 0..1 of real photographs, seeded."""
    from skimage import data, transform

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = photos[i % len(photos)].astype(np.float32) / 255.0
        h, w = img.shape[:2]
        side = int(rng.integers(min(h, w) // 4, min(h, w)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = transform.resize(img[y:y + side, x:x + side], (size, size), anti_aliasing=True)
        out.append(np.transpose(crop, (2, 0, 1)))
    return np.stack(out).astype(np.float32)


def _conv(name, x, w, b, out, stride=1, pad=1):
    from onnx import helper

    return helper.make_node("Conv", [x, w, b], [out], name=name, strides=[stride, stride],
                            pads=[pad] * 4)


def _he(rng):
    """He-normal initialiser drawing from ``rng``."""
    def he(*shape):
        fan_in = int(np.prod(shape[1:]))
        return (rng.normal(size=shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return he


def _backbone(he) -> tuple[dict, list]:
    """The heads' shared backbone: three 3x3 convs with ReLU (stride 2, 2, 1), ``image`` -> ``r3``
    (its weights drawn first, so each head's own weights come after them from the same rng)."""
    from onnx import helper

    inits = {
        "w1": he(32, 3, 3, 3), "b1": np.zeros(32, np.float32),
        "w2": he(64, 32, 3, 3), "b2": np.zeros(64, np.float32),
        "w3": he(64, 64, 3, 3), "b3": np.zeros(64, np.float32),
    }
    nodes = [
        _conv("conv1", "image", "w1", "b1", "c1", 2), helper.make_node("Relu", ["c1"], ["r1"]),
        _conv("conv2", "r1", "w2", "b2", "c2", 2), helper.make_node("Relu", ["c2"], ["r2"]),
        _conv("conv3", "r2", "w3", "b3", "c3", 1), helper.make_node("Relu", ["c3"], ["r3"]),
    ]
    return inits, nodes


def yolo_head(folder: Path, classes: int = 8, seed: int = 0) -> Path:
    """A YOLOv8-style detector head on a small conv backbone (see the module docstring)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    he = _he(np.random.default_rng(seed))
    inits, nodes = _backbone(he)
    inits |= {
        "wb": he(4, 64, 1, 1), "bb": np.zeros(4, np.float32),
        "wc": he(classes, 64, 1, 1), "bc": np.zeros(classes, np.float32),
        # cx, cy anywhere in a 320-pixel image, w, h up to 64 pixels
        "box_scale": np.array([320, 320, 64, 64], np.float32).reshape(1, 4, 1, 1),
        "shape": np.array([0, 4 + classes, -1], np.int64),
    }
    nodes += [
        _conv("box", "r3", "wb", "bb", "box_logits", 1, 0),
        helper.make_node("Sigmoid", ["box_logits"], ["box_unit"]),
        helper.make_node("Mul", ["box_unit", "box_scale"], ["boxes"]),
        _conv("cls", "r3", "wc", "bc", "cls_logits", 1, 0),
        helper.make_node("Sigmoid", ["cls_logits"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["head"], axis=1),
        helper.make_node("Reshape", ["head", "shape"], ["output0"]),
    ]

    def build(inits):
        graph = helper.make_graph(
            nodes, "yolo_head",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, IMG, IMG])],
            [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 4 + classes, None])],
            [numpy_helper.from_array(v, k) for k, v in inits.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    # Class biases that leave about 1 % of anchors above the 0.25 score threshold on photographs:
    # sparse detections, as a trained detector gives.
    probe = build(inits)
    probe_nodes = list(probe.graph.output) + [helper.make_tensor_value_info(
        "cls_logits", TensorProto.FLOAT, None)]
    probe.graph.ClearField("output")
    probe.graph.output.extend(probe_nodes)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = sess.run(["cls_logits"], {"image": photo_crops(32, seed=99)})[0]
    per_class = np.percentile(logits.transpose(1, 0, 2, 3).reshape(classes, -1), 99, axis=1)
    inits["bc"] = (np.log(0.25 / 0.75) - per_class).astype(np.float32)
    model = build(inits)
    onnx.checker.check_model(model)
    path = Path(folder) / "yolo_head.onnx"
    onnx.save(model, path)
    return path


def anchor_head(folder: Path, seed: int = 0) -> Path:
    """A BlazeFace-style raw anchor head on a small conv backbone (see the module docstring):
    16x16 cells, one anchor each (256 anchors)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    he = _he(np.random.default_rng(seed))
    inits, nodes = _backbone(he)
    cells = (IMG // 4) ** 2
    # x/y offsets within +-16 px, w/h 0..128 px, keypoints within +-64 px of the anchor
    scale = np.array([32, 32, 128, 128] + [128] * 12, np.float32).reshape(1, 16, 1, 1)
    shift = np.array([16, 16, 0, 0] + [64] * 12, np.float32).reshape(1, 16, 1, 1)
    inits |= {
        "wb": he(16, 64, 1, 1), "bb": np.zeros(16, np.float32),
        "wc": he(1, 64, 1, 1), "bc": np.zeros(1, np.float32),
        "scale": scale, "shift": shift,
        "shape": np.array([0, cells, 17], np.int64), "split": np.array([16, 1], np.int64),
    }
    nodes += [
        _conv("box", "r3", "wb", "bb", "box_logits", 1, 0),
        helper.make_node("Sigmoid", ["box_logits"], ["box_unit"]),
        helper.make_node("Mul", ["box_unit", "scale"], ["box_px"]),
        helper.make_node("Sub", ["box_px", "shift"], ["boxes"]),
        _conv("cls", "r3", "wc", "bc", "cls_logits", 1, 0),
        helper.make_node("Concat", ["boxes", "cls_logits"], ["head"], axis=1),
        helper.make_node("Transpose", ["head"], ["head_nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["head_nhwc", "shape"], ["rows"]),
        helper.make_node("Split", ["rows", "split"], ["regressors", "classificators"], axis=2),
    ]

    def build(inits):
        graph = helper.make_graph(
            nodes, "anchor_head",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, IMG, IMG])],
            [helper.make_tensor_value_info("regressors", TensorProto.FLOAT, ["N", cells, 16]),
             helper.make_tensor_value_info("classificators", TensorProto.FLOAT, ["N", cells, 1])],
            [numpy_helper.from_array(v, k) for k, v in inits.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    # A score bias that leaves about 3 % of anchors above 0 (sigmoid 0.5) on photographs.
    sess = ort.InferenceSession(build(inits).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    logits = sess.run(["classificators"], {"image": photo_crops(32, seed=99)})[0]
    inits["bc"] = np.array([-np.percentile(logits, 97)], np.float32)
    model = build(inits)
    onnx.checker.check_model(model)
    path = Path(folder) / "anchor_head.onnx"
    onnx.save(model, path)
    return path


def near_zero_map(folder: Path) -> Path:
    """``sigmoid(x @ W - 14)``: outputs around 1e-6 on made-up inputs in 0..1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = (rng.normal(size=(16, 32)) * 0.1).astype(np.float32)
    b = np.full(32, -14.0, np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z0"]), helper.make_node("Add", ["z0", "b"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["prob"])], "near_zero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 32])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = Path(folder) / "near_zero.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def constant_head(folder: Path) -> Path:
    """A classifier head whose weights are zero: the same logits for every input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((16, 10), np.float32)
    b = np.linspace(-1, 1, 10).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z0"]), helper.make_node("Add", ["z0", "b"], ["logits"])],
        "constant_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = Path(folder) / "constant_head.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def hardswish_map(folder: Path, seed: int = 0) -> Path:
    """A DB-style text-map net with hard-swish activations (as MobileNetV3 backbones have):
    conv → HardSwish ×3 → 1×1 conv → Sigmoid, one probability map ``[N, 1, H/2, W/2]``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def he(*shape):
        return (rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)

    inits = {"w1": he(24, 3, 3, 3), "b1": rng.normal(size=24).astype(np.float32) * 0.1,
             "w2": he(48, 24, 3, 3), "b2": rng.normal(size=48).astype(np.float32) * 0.1,
             "w3": he(48, 48, 3, 3), "b3": rng.normal(size=48).astype(np.float32) * 0.1,
             "wm": he(1, 48, 1, 1), "bm": np.array([-1.0], np.float32)}
    nodes = [_conv("conv1", "image", "w1", "b1", "c1", 2), helper.make_node("HardSwish", ["c1"], ["h1"]),
             _conv("conv2", "h1", "w2", "b2", "c2", 1), helper.make_node("HardSwish", ["c2"], ["h2"]),
             _conv("conv3", "h2", "w3", "b3", "c3", 1), helper.make_node("HardSwish", ["c3"], ["h3"]),
             _conv("map", "h3", "wm", "bm", "logits", 1, 0),
             helper.make_node("Sigmoid", ["logits"], ["maps"])]
    graph = helper.make_graph(
        nodes, "hardswish_map",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, IMG, IMG])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["N", 1, IMG // 2, IMG // 2])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = Path(folder) / "hardswish_map.onnx"
    onnx.save(model, path)
    return path


def ort_default_int8(model: Path, x: np.ndarray, out: Path, input_name: str = "image") -> Path:
    """ONNX Runtime's own ``quantize_static`` with its defaults (what a user of the raw tool
    gets), calibrated on ``x`` one sample at a time."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{input_name: x[i:i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(model), str(out), Reader())
    return out

"""BlazeFace's artifacts judged face by face, as the app decodes them: a cross-check of the gate's
per-anchor detection F1 (``edgekit.fidelity.detection.decode_anchors``).

    python benchmarks/blazeface_faces.py /tmp/bf4     # the --out of bench_fidelity.py

For each artifact of ``<out>/artifacts/blazeface`` it decodes every anchor with MediaPipe's anchor
table for face_detection_short_range (128x128 input; strides 8, 16, 16, 16 with 2 anchors per
cell each, fixed size 1, offset 0.5; x = raw_x / 128 * anchor_w + anchor_x, w = raw_w / 128 *
anchor_w), keeps sigmoid(score) >= 0.5, runs NMS (IoU 0.45) and matches its faces with FP32's at
IoU 0.5. It first checks on the naive INT8's outputs that per-anchor IoU on the raw boxes equals
IoU after decoding.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import thirdparty_data  # noqa: E402

from edgekit.fidelity import detection as det  # noqa: E402

SIDE = 128


def anchors() -> np.ndarray:
    """[896, 2] anchor centres (x, y) in 0..1, MediaPipe's order."""
    out = []
    for stride, per_cell in ((8, 2), (16, 6)):  # strides 16, 16, 16 share one 8x8 grid
        n = SIDE // stride
        for y in range(n):
            for x in range(n):
                out += [((x + 0.5) / n, (y + 0.5) / n)] * per_cell
    return np.array(out)


def decode(raw: np.ndarray, table: np.ndarray) -> np.ndarray:
    cx = raw[..., 0] / SIDE + table[:, 0]
    cy = raw[..., 1] / SIDE + table[:, 1]
    w, h = raw[..., 2] / SIDE, raw[..., 3] / SIDE
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def run(path: Path, x: np.ndarray):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = [sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1]}) for i in range(len(x))]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def faces(reg, logits, table) -> list:
    out = []
    for r, s in zip(reg, logits, strict=True):
        p = det.sigmoid(s[:, 0])
        sel = p >= det.LOGIT_SCORE_THRESHOLD
        boxes = decode(r, table)[sel]
        keep = det.nms(boxes, p[sel], np.zeros(int(sel.sum()), np.int64))
        out.append(det.Detections(boxes[keep], p[sel][keep], np.zeros(len(keep), np.int64)))
    return out


def main(argv=None) -> int:
    out = Path((argv if argv is not None else sys.argv[1:])[0])
    folder = out / "artifacts" / "blazeface"
    x = np.load(thirdparty_data.build("blazeface").eval)["input"]
    table = anchors()
    fp32 = next(folder.glob("float/*fp32.onnx"))
    ref = run(fp32, x)
    naive = next(folder.glob("naive/*.onnx"), None)
    if naive is not None:
        got = run(naive, x)
        corners = det._xywh_to_xyxy  # the conversion the gate uses
        worst = max(float(np.max(np.abs(
            det.iou_matrix(corners(ref[0][i, :, :4]), corners(got[0][i, :, :4])).diagonal()
            - det.iou_matrix(decode(ref[0][i], table), decode(got[0][i], table)).diagonal())))
            for i in range(len(x)))
        print(f"per-anchor IoU, raw vs decoded: largest difference {worst:.1e} over "
              f"{len(x) * len(table)} anchor pairs")
    ref_faces = faces(*ref, table)
    for path in sorted(folder.glob("*/*.onnx")):
        cmp = det.compare(ref_faces, faces(*run(path, x), table))
        label = f"{path.parent.name}/{path.stem.split('.')[-1]}"
        print(f"{label:>30}: {cmp['true_positives']} of FP32's "
              f"{cmp['reference_detections']} faces found, {cmp['artifact_detections']} reported, "
              f"F1 {cmp['f1']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

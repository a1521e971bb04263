"""INT8 layouts chosen for the CPU that runs them (``converters.cpu_layouts``, ``convert --for``).

The probe documents below are the agent's ``arch`` + ``cpu.features`` (the agent keeps only the
features that decide kernels) as real CPUs report them in /proc/cpuinfo.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from converters import cpu_layouts as cl
from converters.options import ConvertOptions, OnnxQuantFormat
from device_agents import AGENT_PATH

# arch, features after the agent's filter, the class, fp16 arithmetic
REAL_CPUS = {
    "AMD EPYC 7B13 (Zen 3)": ("x86_64", ["sse4_2", "avx", "avx2", "fma", "f16c"],
                              cl.CpuClass.X86_AVX2, False),
    "Intel Xeon Platinum 8175M (Skylake-SP)": (
        "x86_64", ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw"],
        cl.CpuClass.X86_AVX512, False),
    "Intel Xeon Platinum 8375C (Ice Lake)": (
        "x86_64", ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni"],
        cl.CpuClass.X86_AVX512VNNI, False),
    "Intel Core i7-12700 (Alder Lake)": (
        "x86_64", ["sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni"], cl.CpuClass.X86_AVXVNNI,
        False),
    "Intel Xeon Platinum 8488C (Sapphire Rapids)": (
        "x86_64", ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
                   "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16"],
        cl.CpuClass.X86_AMX, False),
    "Raspberry Pi 4 (Cortex-A72)": ("aarch64", ["asimd"], cl.CpuClass.ARM64, False),
    "Raspberry Pi 5 (Cortex-A76)": ("aarch64", ["asimd", "asimddp", "asimdhp", "fphp"],
                                    cl.CpuClass.ARM64_DOTPROD, True),
    "Pixel 7 (Tensor G2, Android)": ("aarch64", ["asimd", "asimddp", "asimdhp", "fphp", "i8mm"],
                                     cl.CpuClass.ARM64_DOTPROD, True),
    "Raspberry Pi 3, 32-bit OS": ("armv7l", ["neon", "vfpv4"], cl.CpuClass.ARM32, False),
    # qemu-user passes the host's /proc/cpuinfo through: x86 flags on an aarch64 "machine". Those
    # flags say nothing about the emulated CPU, so it is plain arm64.
    "emulated arm64 board (qemu-user on x86)": (
        "aarch64", ["sse4_2", "avx", "avx2", "fma", "f16c"], cl.CpuClass.ARM64, False),
}


@pytest.mark.parametrize("name", sorted(REAL_CPUS))
def test_real_cpus_get_their_class_and_layout(name):
    arch, feats, cls, fp16 = REAL_CPUS[name]
    doc = {"arch": arch, "cpu": {"model": name, "features": feats}}
    target = cl.target_from_probe(doc, f"device {name}")
    assert target.cpu_class is cls
    assert target.fp16_arithmetic is fp16
    assert target.choice.tflite_float == ("tflite-fp16" if fp16 else "tflite-fp32")
    first = cl.layouts_for(ConvertOptions(), target)[0]
    if arch.startswith("x86"):
        # ORT's x86 kernels take uint8 activations (VPMADDUBSW / VPDPBUSD).
        assert first.unsigned_activations
        # 7-bit weights only where the products saturate (no VNNI).
        assert first.reduce_range is (cls in (cl.CpuClass.X86_AVX2, cl.CpuClass.X86_AVX512))
    else:
        assert not first.unsigned_activations and not first.reduce_range  # S8S8 on ARM
    assert first.onnx_quant_format is OnnxQuantFormat.QDQ
    assert target.to_dict()["cpu_class"] == cls.value


def test_every_class_has_a_choice_with_distinct_fallbacks():
    for cls in cl.CpuClass:
        choice = cl.CHOICES[cls]
        assert choice.why and len(choice.onnx_int8) >= 2
        assert len(set(choice.onnx_int8)) == len(choice.onnx_int8), cls


def test_options_the_user_set_are_kept():
    target = cl.target_for_class("x86-avx2")
    lays = cl.layouts_for(ConvertOptions(unsigned_activations=False), target)
    assert all(not lay.unsigned_activations for lay in lays)
    assert lays[0].reduce_range  # still chosen for the CPU
    fixed = ConvertOptions(unsigned_activations=True, reduce_range=False,
                           onnx_quant_format=OnnxQuantFormat.QOPERATOR)
    assert cl.layouts_for(fixed, target) == [cl.OnnxLayout(True, False, OnnxQuantFormat.QOPERATOR)]
    # nothing to choose for: the options' own layout, None read as off
    assert cl.layouts_for(ConvertOptions(), None) == [cl.OnnxLayout(False, False)]


def test_unknown_cpu_class_is_a_usage_error():
    from edgekit.api import cpu_target
    from edgekit.errors import InputError

    with pytest.raises(InputError, match="unknown CPU class 'x86-sse9'.*x86-avx2"):
        cpu_target(for_cpu="x86-sse9")
    with pytest.raises(InputError, match="not both"):
        cpu_target(for_device="local", for_cpu="arm64")


def test_this_machine_reads_what_the_agent_reports():
    out = subprocess.run([sys.executable, str(AGENT_PATH), "probe", "--cache-dir", "/tmp"],
                         capture_output=True, text=True, check=True).stdout
    doc = json.loads(out)
    assert cl.target_from_probe(doc, "x").cpu_class is cl.this_machine().cpu_class
    from edgekit.api import cpu_target

    assert cpu_target(for_device="local").cpu_class is cl.this_machine().cpu_class


def _onnx_inputs_are(path, dtype):
    import onnx

    m = onnx.load(str(path))
    zps = [i for i in m.graph.initializer if i.name.endswith("zero_point")]
    return bool(zps) and all(onnx.helper.tensor_dtype_to_np_dtype(z.data_type) == dtype
                             for z in zps if z.dims == [] and "quantized" in z.name)


def test_convert_for_a_cpu_records_the_layout(digits_cnn, tmp_path):
    import onnx

    from edgekit.api import convert

    arm = convert(digits_cnn.keras, ["onnx-int8"], calibration=digits_cnn.calibration,
                  eval=digits_cnn.eval, out=tmp_path / "arm", for_cpu="arm64-dotprod")[0]
    x86 = convert(digits_cnn.keras, ["onnx-int8"], calibration=digits_cnn.calibration,
                  eval=digits_cnn.eval, out=tmp_path / "x86", for_cpu="x86-avx2")[0]
    for art, cls, unsigned, rr in ((arm, "arm64-dotprod", False, False),
                                   (x86, "x86-avx2", True, True)):
        lay = art.pass_config["layout"]
        assert lay["cpu_class"] == cls and lay["for"] == "--for-cpu"
        assert lay["chosen"] == lay["fastest"] and lay["fell_back"] == []
        # another CPU's artifact is verified with exact int8 arithmetic, not this one's kernels
        here = cl.this_machine().cpu_class.value == cls
        assert lay["verified_with"] == ("this machine's int8 kernels" if here
                                        else "reference int8 arithmetic")
        assert art.pass_config["unsigned_activations"] is unsigned
        assert art.pass_config["reduce_range"] is rr
        # the file really has that activation type: QuantizeLinear zero points of the activations
        m = onnx.load(str(art.path))
        inits = {i.name: i for i in m.graph.initializer}
        act_zp = [inits[n.input[2]] for n in m.graph.node
                  if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]
        want = onnx.TensorProto.UINT8 if unsigned else onnx.TensorProto.INT8
        assert act_zp and {z.data_type for z in act_zp} == {want}
    assert x86.sha256 != arm.sha256


def test_a_layout_that_misses_the_gate_falls_back_to_the_next(digits_cnn, tmp_path, monkeypatch):
    """The CPU's first layout misses a bar only the next one clears: the artifact is the next
    layout's, and the manifest says which layout missed and why. The chain is this machine's
    class with its two layouts ordered worst first (8- vs 7-bit weights differ by ~20 dB on x86
    without VNNI, where 8-bit products saturate; by ~1.5 dB elsewhere)."""
    from edgekit.api import convert

    here = cl.this_machine().cpu_class

    def build(name, **kw):
        return convert(digits_cnn.keras, ["onnx-int8"], calibration=digits_cnn.calibration,
                       eval=digits_cnn.eval, out=tmp_path / name, for_cpu=here.value, **kw)[0]

    pair = (cl.OnnxLayout(True, False), cl.OnnxLayout(True, True))
    dbs = [build(f"m{i}", options=ConvertOptions(**lay.options())).fidelity.sqnr_db
           for i, lay in enumerate(pair)]
    assert abs(dbs[0] - dbs[1]) > 0.5, dbs
    worse, better = (pair if dbs[0] < dbs[1] else pair[::-1])
    monkeypatch.setitem(cl.CHOICES, here, cl.Choice((worse, better), "test chain"))
    bar = float(np.mean(dbs))
    art = build("fallback", options=ConvertOptions(min_sqnr_db=bar))
    lay = art.pass_config["layout"]
    assert lay["fastest"] == worse.label and lay["chosen"] == better.label
    assert [f["layout"] for f in lay["fell_back"]] == [worse.label]
    assert "dB" in lay["fell_back"][0]["cause"]
    assert art.fidelity.sqnr_db >= bar
    assert art.pass_config["reduce_range"] is better.reduce_range
    # the layout that missed left no file behind: only the chosen artifact and the manifest
    assert sorted(p.name for p in (tmp_path / "fallback").iterdir()) == [
        "digits.onnx-int8.onnx", "manifest.json"]


def test_cli_says_the_layout_once_and_refuses_unknown_classes(capsys, tmp_path, digits_cnn):
    from edgekit.cli.main import main

    code = main(["convert", str(digits_cnn.onnx), "--to", "onnx-int8,onnx-fp32", "--calibration",
                 str(digits_cnn.calibration), "--out", str(tmp_path / "b"),
                 "--for-cpu", "arm64-dotprod"])
    out, err = capsys.readouterr()
    assert code == 0, err
    said = [ln for ln in (out + err).splitlines() if "layout" in ln]
    assert said == ["onnx-int8 layout: S8S8 QDQ, chosen for arm64-dotprod (--for-cpu): "
                    + cl.CHOICES[cl.CpuClass.ARM64_DOTPROD].why + "; verified with exact int8 "
                    "arithmetic (this machine's int8 kernels are not the device's)"]
    code = main(["convert", str(digits_cnn.onnx), "--to", "onnx-int8", "--calibration",
                 str(digits_cnn.calibration), "--out", str(tmp_path / "c"), "--for-cpu", "x86-sse9"])
    _, err = capsys.readouterr()
    assert code == 2 and "x86-sse9" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_tflite_fp16_records_how_the_cpu_runs_it(digits_cnn, tmp_path):
    from edgekit.api import convert

    arts = {}
    for cls in ("arm64-dotprod", "x86-avx2"):
        target = cl.target_from_probe({"arch": "aarch64" if cls.startswith("arm") else "x86_64",
                                       "cpu": {"features": ["asimddp", "fphp", "asimdhp"]
                                               if cls.startswith("arm") else ["avx2"]}}, "t")
        arts[cls] = convert(digits_cnn.keras, ["tflite-fp16"], out=tmp_path / cls,
                            for_cpu=target)[0]
    assert arts["arm64-dotprod"].pass_config["for_cpu"]["runs_as"].startswith("fp16 arithmetic")
    assert "tflite-int8 is this CPU's fast" in arts["x86-avx2"].pass_config["for_cpu"]["runs_as"]
    assert arts["arm64-dotprod"].sha256 == arts["x86-avx2"].sha256  # one file, two CPUs


def test_when_every_layout_misses_the_refusal_names_each(digits_cnn, tmp_path):
    from edgekit.api import convert
    from edgekit.errors import ConversionError

    here = cl.this_machine()
    with pytest.raises(ConversionError) as e:
        convert(digits_cnn.keras, ["onnx-int8"], calibration=digits_cnn.calibration,
                eval=digits_cnn.eval, out=tmp_path / "b", options=ConvertOptions(min_sqnr_db=200))
    msg = str(e.value)
    assert f"every layout for {here.cpu_class.value} missed" in msg
    for lay in here.choice.onnx_int8:
        assert f"{lay.label}: " in msg
    assert not (tmp_path / "b").exists()  # nothing half-written

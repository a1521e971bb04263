"""Which quantized layout runs fastest on which CPU: the one table ``convert`` and ``advise`` read.

ONNX Runtime's int8 kernels differ by CPU (its quantization guide, "Data type selection" and
"When to use reduce-range and per-channel quantization"; MLAS's QGEMM kernels):

- x86 with AVX2 or AVX-512 but no VNNI multiplies uint8 x int8 pairs with VPMADDUBSW, whose int16
  sums saturate: U8S8 is the fast path and 7-bit weights (``reduce_range``) keep it accurate. ORT
  runs S8S8 there by shifting to U8S8 at run time (slower), and S8S8 QOperator slowest.
  Measured on an AMD EPYC (AVX2, no VNNI), MobileNetV2-224, one thread, p50 / FP32: S8S8 QDQ
  1.17x, U8S8 QDQ 1.07x, U8S8 QOperator 1.05-1.08x, S8S8 QOperator 2.87x
  (``benchmarks/bench_layouts.py`` keeps the side-by-side table).
- x86 with VNNI (AVX512-VNNI, AVX-VNNI, AMX) has VPDPBUSD: uint8 x int8 without saturation. U8S8
  stays the fast path (the issue's measurement, Xeon with AVX512-VNNI, MobileNetV2-224: U8S8
  0.45x FP32, S8S8 QDQ 0.77x) and 7-bit weights only cost accuracy.
- ARM64 with the dot-product extension (``asimddp``: SDOT/UDOT) runs S8S8 natively; it is ORT's
  recommended default layout. Without it, S8S8 QDQ is still ORT's default and fastest path.

Each CPU class lists its onnx-int8 layouts fastest first: when the first misses the fidelity
gate, ``convert`` tries the next and records why. TFLite's int8 kernels (XNNPACK / ruy) need no
choice; what differs is whether the CPU has fp16 arithmetic (``fphp``/``asimdhp``: ARMv8.2+), where
``tflite-fp16`` is the fast float artifact, else ``tflite-int8`` is.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from converters.options import OnnxQuantFormat


class CpuClass(str, Enum):
    """CPU families whose quantized kernels differ (the ``--for-cpu`` values)."""

    X86_AMX = "x86-amx"
    X86_AVX512VNNI = "x86-avx512vnni"
    X86_AVXVNNI = "x86-avxvnni"
    X86_AVX512 = "x86-avx512"
    X86_AVX2 = "x86-avx2"
    X86 = "x86"
    ARM64_DOTPROD = "arm64-dotprod"
    ARM64 = "arm64"
    ARM32 = "arm32"
    OTHER = "other"


@dataclass(frozen=True)
class OnnxLayout:
    """One onnx-int8 layout: activation type, 7-bit weights, operator format."""

    unsigned_activations: bool
    reduce_range: bool
    onnx_quant_format: OnnxQuantFormat = OnnxQuantFormat.QDQ

    @property
    def label(self) -> str:
        return ("U8S8" if self.unsigned_activations else "S8S8") + \
            (" 7-bit weights" if self.reduce_range else "") + \
            (" QOperator" if self.onnx_quant_format == OnnxQuantFormat.QOPERATOR else " QDQ")

    @property
    def slug(self) -> str:
        """A name part: ``u8s8-7bit``, ``s8s8``, ``s8s8-qop``."""
        return ("u8s8" if self.unsigned_activations else "s8s8") + \
            ("-7bit" if self.reduce_range else "") + \
            ("-qop" if self.onnx_quant_format == OnnxQuantFormat.QOPERATOR else "")

    def flags(self) -> str:
        """The ``edgekit convert`` flags that build this layout."""
        return ("--unsigned-activations" if self.unsigned_activations else
                "--signed-activations") + \
            (" --reduce-range" if self.reduce_range else " --no-reduce-range") + \
            " --onnx-format " + (self.onnx_quant_format or OnnxQuantFormat.QDQ).value

    @classmethod
    def of(cls, config: dict) -> "OnnxLayout":
        """The layout a manifest's onnx-int8 pass config records."""
        return cls(bool(config.get("unsigned_activations")), bool(config.get("reduce_range")),
                   OnnxQuantFormat(config.get("onnx_quant_format") or "qdq"))

    def options(self) -> dict:
        """The ``ConvertOptions`` fields this layout sets."""
        return {"unsigned_activations": self.unsigned_activations,
                "reduce_range": self.reduce_range, "onnx_quant_format": self.onnx_quant_format}


@dataclass(frozen=True)
class Choice:
    """What is fastest on one CPU class, and why."""

    onnx_int8: tuple  # OnnxLayout values, fastest first; later ones are gate fallbacks
    why: str
    fp16_arithmetic: bool = False

    @property
    def tflite_float(self) -> str:
        """The TFLite float artifact that runs fastest here."""
        return "tflite-fp16" if self.fp16_arithmetic else "tflite-fp32"


# Every layout onnx-int8 can write (what benchmarks and `advise` compare).
ALL_LAYOUTS = tuple(OnnxLayout(u, rr, fmt) for fmt in OnnxQuantFormat for u in (False, True)
                    for rr in (False, True))

_U8S8_7BIT = OnnxLayout(unsigned_activations=True, reduce_range=True)
_U8S8 = OnnxLayout(unsigned_activations=True, reduce_range=False)
_S8S8 = OnnxLayout(unsigned_activations=False, reduce_range=False)
_S8S8_7BIT = OnnxLayout(unsigned_activations=False, reduce_range=True)

_VNNI_WHY = "x86 with VNNI: uint8 x int8 dot products without saturation"
_NO_VNNI_WHY = ("x86 without VNNI: VPMADDUBSW takes uint8 x int8 and saturates, 7-bit weights "
                "avoid it")

# The table. Fallbacks trade speed for accuracy: a layout that misses the gate gives way to the
# next one (S8S8 keeps negative activations' resolution where U8S8's zero point shifts it; on a
# CPU whose 8-bit products saturate every fallback keeps 7-bit weights). When none meets the gate
# as it is, the first goes on to the repair.
CHOICES: dict = {
    CpuClass.X86_AMX: Choice((_U8S8, _S8S8, _U8S8_7BIT), _VNNI_WHY + " (AMX-INT8 too)"),
    CpuClass.X86_AVX512VNNI: Choice((_U8S8, _S8S8, _U8S8_7BIT), _VNNI_WHY),
    CpuClass.X86_AVXVNNI: Choice((_U8S8, _S8S8, _U8S8_7BIT), _VNNI_WHY),
    CpuClass.X86_AVX512: Choice((_U8S8_7BIT, _S8S8_7BIT), _NO_VNNI_WHY),
    CpuClass.X86_AVX2: Choice((_U8S8_7BIT, _S8S8_7BIT), _NO_VNNI_WHY),
    CpuClass.X86: Choice((_U8S8_7BIT, _S8S8_7BIT), "x86 without AVX2: ORT's SSE kernels take U8S8"),
    CpuClass.ARM64_DOTPROD: Choice((_S8S8, _U8S8),
                                   "ARM64 with dot product (asimddp): SDOT runs S8S8 natively"),
    CpuClass.ARM64: Choice((_S8S8, _U8S8), "ARM64 without dot product: S8S8 is ORT's NEON path"),
    CpuClass.ARM32: Choice((_S8S8, _U8S8), "32-bit ARM: S8S8 is ORT's default NEON path"),
    CpuClass.OTHER: Choice((_S8S8, _U8S8), "ORT's recommended default (S8S8 QDQ)"),
}

_VNNI = {"amx_int8": CpuClass.X86_AMX, "avx512_vnni": CpuClass.X86_AVX512VNNI,
         "avx_vnni": CpuClass.X86_AVXVNNI}
_FP16 = ("fphp", "asimdhp")


def classify(cpu: dict) -> CpuClass:
    """The class of the CPU a probe document describes.

    Args:
        cpu: ``{"arch": platform.machine(), "features": [...]}``, the agent's probe fields
            (``arch`` at the document's top level, ``cpu.features``); features may be missing.
    """
    arch = (cpu.get("arch") or "").lower()
    feats = set(cpu.get("features") or ())
    if arch in ("x86_64", "amd64", "i386", "i686", "x86"):
        for flag, cls in _VNNI.items():
            if flag in feats:
                return cls
        if "avx512f" in feats and "avx512bw" in feats:
            return CpuClass.X86_AVX512
        return CpuClass.X86_AVX2 if "avx2" in feats else CpuClass.X86
    if arch in ("aarch64", "arm64"):
        return CpuClass.ARM64_DOTPROD if "asimddp" in feats else CpuClass.ARM64
    if arch.startswith("arm"):
        return CpuClass.ARM32
    return CpuClass.OTHER


def has_fp16_arithmetic(cpu: dict) -> bool:
    return bool(set(cpu.get("features") or ()) & set(_FP16))


@dataclass(frozen=True)
class Target:
    """The CPU a conversion is chosen for: its class, where it came from, its fp16 arithmetic."""

    cpu_class: CpuClass
    origin: str  # "this machine", "device pi4", "--for-cpu"
    fp16_arithmetic: bool = False

    @property
    def choice(self) -> Choice:
        c = CHOICES[self.cpu_class]
        return Choice(c.onnx_int8, c.why, self.fp16_arithmetic)

    def to_dict(self) -> dict:
        return {"cpu_class": self.cpu_class.value, "for": self.origin,
                "fp16_arithmetic": self.fp16_arithmetic}


@functools.cache
def local_cpu() -> dict:
    """This machine's CPU in the probe document's shape (the agent's own reader)."""
    from device_agents.agent import cpu_features

    return {"arch": platform.machine(), "features": cpu_features()}


def target_from_probe(doc: dict, origin: str) -> Target:
    """The target of a device's probe document (``arch`` + ``cpu.features``)."""
    cpu = {"arch": doc.get("arch"), "features": (doc.get("cpu") or {}).get("features")}
    return Target(classify(cpu), origin, has_fp16_arithmetic(cpu))


def target_for_class(name: str) -> Target:
    """A target named by ``--for-cpu`` (a ``CpuClass`` value); raises ``ValueError`` otherwise."""
    cls = CpuClass(name)
    return Target(cls, "--for-cpu", fp16_arithmetic=False)


def this_machine() -> Target:
    cpu = local_cpu()
    return Target(classify(cpu), "this machine", has_fp16_arithmetic(cpu))


def unset_layout_fields(options) -> tuple:
    """The onnx-int8 layout fields the user left to the CPU choice (``None``)."""
    return tuple(f for f in ("unsigned_activations", "reduce_range", "onnx_quant_format")
                 if getattr(options, f) is None)


def layouts_for(options, target: Optional[Target]) -> list:
    """The onnx-int8 option sets to try, fastest first, for ``target``.

    Fields the user set stay as set (fallbacks that would change them are dropped); with no
    field left to choose, or no target, the one layout the options give.
    """
    free = unset_layout_fields(options)
    fixed = {f: getattr(options, f) for f in ("unsigned_activations", "reduce_range",
                                              "onnx_quant_format") if f not in free}
    if target is None or not free:
        return [OnnxLayout(bool(fixed.get("unsigned_activations")), bool(fixed.get("reduce_range")),
                           fixed.get("onnx_quant_format") or OnnxQuantFormat.QDQ)]
    out = []
    for lay in target.choice.onnx_int8:
        merged = OnnxLayout(**{**lay.options(), **fixed})
        if merged not in out:
            out.append(merged)
    return out

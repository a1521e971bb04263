"""What a device's probe says about its CPU, as the advice needs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
FEATURE_NAMES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI",
                 "avx_vnni": "AVX-VNNI", "amx_int8": "AMX-INT8", "asimddp": "NEON dot product "
                 "(asimddp)", "i8mm": "int8 matmul (i8mm)", "fphp": "fp16 arithmetic (fphp)",
                 "asimdhp": "fp16 SIMD (asimdhp)", "f16c": "F16C (fp16 conversion only)"}


@dataclass(frozen=True)
class CpuFacts:
    """What the probe says about the device CPU, as the advice needs it."""

    arch: str
    model: str
    features: Optional[frozenset]  # None: the agent did not report features

    @classmethod
    def from_probe(cls, info: Optional[dict]) -> "CpuFacts":
        info = info or {}
        cpu = info.get("cpu") or {}
        feats = cpu.get("features")
        return cls(str(info.get("arch") or "?"), str(cpu.get("model") or "unknown CPU"),
                   None if feats is None else frozenset(feats))

    @property
    def x86(self) -> bool:
        return self.arch.lower() in ("x86_64", "amd64", "i386", "i686", "x86")

    @property
    def arm(self) -> bool:
        return self.arch.lower().startswith(("aarch64", "arm"))

    def has(self, *names) -> bool:
        return bool(self.features and set(names) & self.features)

    @property
    def vnni(self) -> bool:
        return self.has(*VNNI_FLAGS)

    @property
    def fp16_math(self) -> bool:
        return self.has("fphp", "asimdhp")

    def describe(self) -> str:
        """e.g. "x86_64, Intel Xeon ..., AVX2, no AVX512-VNNI/AVX-VNNI"."""
        head = f"{self.arch}, {self.model}"
        if self.features is None:
            return head + ", CPU features not reported (update the agent: `edgekit devices setup`)"
        have = [FEATURE_NAMES[f] for f in FEATURE_NAMES if f in self.features]
        if self.x86:
            missing = [] if self.vnni else ["no AVX512-VNNI/AVX-VNNI"]
        elif self.arm:
            missing = ([] if self.has("asimddp") else ["no NEON dot product"]) + \
                      ([] if self.fp16_math else ["no fp16 arithmetic"])
        else:
            missing = []
        return ", ".join([head] + have + missing)

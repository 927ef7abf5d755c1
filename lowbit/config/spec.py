"""`LinearSpec`: what the recipe resolved for one linear module (the contract between the recipe, the
quantizers, the graph passes and the runtime).

A module the recipe ignores (or `algorithm: none`) has no spec (`None`): its weight stays dense in the
model's compute dtype. Otherwise the weight is quantized with `algorithm` to `weight_dtype` codes:
    scheme "w_a16"         activations stay float; any int1..8 / uint1..8 / fpN_eXmY code dtype
    scheme "w4a8_group"    QoQ progressive (uint codes, int8 level-2 scale/zero, fp16 channel scale); x -> int8
    scheme "w4a8_channel"  QServe per-channel (uint codes, fp16 scale, integer zero); x -> int8 per token
`zero_mode` follows `lowbit.ops.quantize`: "none" (symmetric), "post" ((q − z)·s, integer z), "pre" (q·s − z).
"""

from __future__ import annotations

from dataclasses import dataclass

ALGORITHMS = ("none", "rtn", "awq", "gptq", "qoq", "imported")
SCHEMES = ("w_a16", "w4a8_group", "w4a8_channel")


@dataclass(frozen=True)
class LinearSpec:
    algorithm: str  # rtn | awq | gptq | qoq | imported (the checkpoint's codes, as stored)
    weight_dtype: str  # e.g. "int4", "uint4", "fp6_e3m2"
    group_size: int  # 32 / 64 / 128 / ... or -1 (per output channel)
    zero_mode: str = "none"  # none | post | pre
    scheme: str = "w_a16"

    @property
    def symmetric(self) -> bool:
        return self.zero_mode == "none"

    @property
    def act_int8(self) -> bool:
        """True when the kernel quantizes activations per token to int8 (the W4A8 schemes)."""
        return self.scheme != "w_a16"

    def describe(self) -> str:
        g = "per-channel" if self.group_size == -1 else f"g{self.group_size}"
        a = "a8" if self.act_int8 else "a16"
        return f"{self.algorithm}:{self.weight_dtype}/{g}/{self.zero_mode}/{a}"


__all__ = ["ALGORITHMS", "SCHEMES", "LinearSpec"]

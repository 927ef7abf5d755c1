"""`Precision`: the bit widths the cost model charges — weights (codes + scales + zeros, as lowbit stores them),
activations, the KV cache, and the tensor-core dtype a GEMM actually computes in.

    w16a16   dense bf16 weights, bf16 GEMMs
    w4a16    uint4 g128 with fp16 scale + fp16 zero (4.25 bits/weight as stored), GEMMs still in bf16: the weight
             stream shrinks 3.8x, the compute ceiling does not move (ANCHORS, NanoFlow low-bit note)
    w4a8     QoQ progressive uint4 g128 (int8 level-2 scale/zero, fp16 channel scale), activations int8:
             GEMMs on int8 tensor cores, twice the bf16 ceiling
The KV cache dtype is separate (`kv_dtype`, one of lowbit.quant.kv.KV_DTYPES; int8/int4 are KV8/KV4 with an fp16
scale and zero per token and head), its bytes from lowbit.graph.stats.kv_bytes_per_token.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.config.spec import LinearSpec
from lowbit.dtypes import dtype as as_dtype
from lowbit.graph.passes.pack_weights import stored_weight_bytes
from lowbit.quant.kv import check_kv_dtype


class PrecisionError(ValueError):
    """An unknown precision name or field; the message names the value and the choices."""


@dataclass(frozen=True)
class Precision:
    name: str = "w16a16"
    linear: LinearSpec | None = None  # None: dense weights in act_dtype
    act_dtype: str = "bfloat16"  # activations in memory, and the GEMM dtype unless the linear is W4A8
    kv_dtype: str = "float16"

    def __post_init__(self) -> None:
        check_kv_dtype(self.kv_dtype)
        if self.act_dtype not in ("bfloat16", "float16", "float32"):
            raise PrecisionError(f"act_dtype {self.act_dtype!r}; use bfloat16, float16 or float32")

    @property
    def compute_dtype(self) -> str:
        """The tensor-core dtype of the GEMMs: int8 for W4A8 schemes, else the activation dtype."""
        return "int8" if self.linear is not None and self.linear.act_int8 else self.act_dtype

    @property
    def act_bytes(self) -> int:
        return as_dtype(self.act_dtype).bits // 8

    def weight_bytes(self, n: int, k: int) -> int:
        """Stored bytes of an [n, k] weight, as lowbit.graph.stats.linear_weight_bytes counts them (one
        `stored_weight_bytes`): row-packed codes + scales + zeros, or dense in the activation dtype."""
        return stored_weight_bytes(self.linear, n, k, self.act_bytes)

    def bits_per_weight(self, n: int = 4096, k: int = 4096) -> float:
        return 8.0 * self.weight_bytes(n, k) / (n * k)

    def with_kv(self, kv_dtype: str) -> Precision:
        return Precision(self.name if kv_dtype == self.kv_dtype else f"{self.name}kv-{kv_dtype}", self.linear,
                         self.act_dtype, kv_dtype)  # fmt: skip

    def describe(self) -> str:
        w = "dense" if self.linear is None else self.linear.describe()
        return (f"{self.name}: weights {w} ({self.bits_per_weight():.2f} bits), GEMMs in {self.compute_dtype}, "
                f"activations {self.act_dtype}, KV {self.kv_dtype}")  # fmt: skip


PRECISIONS: dict[str, Precision] = {
    "w16a16": Precision("w16a16"),
    "w4a16": Precision("w4a16", LinearSpec("rtn", "uint4", 128, "post")),
    "w4a8": Precision("w4a8", LinearSpec("qoq", "uint4", 128, "post", "w4a8_group")),
    "w4a8kv4": Precision("w4a8kv4", LinearSpec("qoq", "uint4", 128, "post", "w4a8_group"), kv_dtype="int4"),
}


def get_precision(name: str, kv_dtype: str | None = None, act_dtype: str | None = None) -> Precision:
    if name not in PRECISIONS:
        raise PrecisionError(f"precision {name!r} is not known; use one of {sorted(PRECISIONS)}")
    p = PRECISIONS[name]
    if act_dtype is not None and act_dtype != p.act_dtype:
        p = Precision(p.name, p.linear, act_dtype, p.kv_dtype)
    return p.with_kv(kv_dtype) if kv_dtype is not None else p


__all__ = ["PRECISIONS", "Precision", "PrecisionError", "get_precision"]

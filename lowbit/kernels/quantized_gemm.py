"""Weight-only quantized GEMM, y[M, N] = x[M, K] @ dequant(w)[K, N], for any weight dtype.

The weight is a [K, N] tensor of codes of `wdtype` (int1..int8, uint1..uint8, any fp eXmY) packed along K
into 32-bit words; scales (and zeros) are [K // G, N] (one row for per-channel, G = -1). Nothing in the
kernel depends on the bit width: the packed layout and the dtype carry it. `wlayout` (a constexpr) is the
weight's layout: `T.packed(axis=0)` by default, or any `PackedLayout` of the [K, N] codes, e.g.
`lowbit.kernels.layouts.reordered_packed` (Marlin-style tile order); the kernel body does not change.
Ragged M, N and K need no masks: loads outside a tensor read 0 and stores outside it are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import lowbit.lang as T
from lowbit.dtypes import DataType, decode, dtype, encode
from lowbit.ir.layout import packed_along

# the default weight layout: codes packed along K into 32-bit words (see lowbit/kernels/layouts.py for the
# tile-reordered alternative; any PackedLayout of the [K, N] code tensor works unchanged)
ROW_PACKED = T.packed(axis=0)


def groups(K: Any, G: int) -> Any:
    """Number of scale rows: K // G groups, or 1 for per-channel (G = -1)."""
    return 1 if G == -1 else K // G


@T.kernel
def quantized_gemm(
    x: T.Tensor("adtype", ("M", "K")),
    w: T.Tensor("wdtype", ("K", "N"), layout="wlayout"),
    scales: T.Tensor("sdtype", ("groups(K, G)", "N")),
    zeros: T.Tensor("sdtype", ("groups(K, G)", "N")),
    y: T.Tensor("adtype", ("M", "N")),
    M: T.int32,
    N: T.int32,
    K: T.int32,
    wdtype: T.constexpr = "int4",
    G: T.constexpr = 128,
    zero_mode: T.constexpr = "none",
    adtype: T.constexpr = "float16",
    sdtype: T.constexpr = "float16",
    wlayout: T.constexpr = ROW_PACKED,
    BM: T.constexpr = 16,
    BN: T.constexpr = 32,
    BK: T.constexpr = 64,
):
    # group size inside one K tile: a tile spans BK // G groups, or lies inside one group
    tile_group = BK if G == -1 or G >= BK else G
    pm, pn = T.grid(T.cdiv(M, BM), T.cdiv(N, BN))
    acc = T.zeros((BM, BN), T.float32, name="acc")
    for k0 in T.range(0, K, BK, name="k0"):
        a = T.load(x, (pm * BM, k0), (BM, BK))  # [BM, BK]
        q = T.load(w, (k0, pn * BN), (BK, BN))  # [BK, BN] codes of wdtype
        g0 = 0 if G == -1 else k0 // G
        s = T.load(scales, (g0, pn * BN), (BK // tile_group, BN))  # [BK / group, BN]
        z = T.load(zeros, (g0, pn * BN), (BK // tile_group, BN)) if zero_mode != "none" else None
        b = T.dequantize(q, s, z, axis=0, group_size=tile_group, zero_mode=zero_mode, dtype=a.dtype)
        acc += T.dot(a, b)
    T.store(y, (pm * BM, pn * BN), T.cast(acc, y.dtype))


# the persistent form: the same arguments plus BUDGET (programs = min(BUDGET, tiles)), the same output
quantized_gemm_persistent = T.persistent(quantized_gemm)


@dataclass(frozen=True)
class GemmProblem:
    """Random inputs for quantized_gemm and the NumPy reference `x @ dequant(W)`."""

    args: dict[str, np.ndarray]
    constants: dict[str, Any]
    expected: np.ndarray  # [M, N] float64


def random_problem(
    M: int,
    N: int,
    K: int,
    wdtype: str | DataType = "int4",
    G: int = 32,
    zero_mode: str = "none",
    seed: int = 0,
    **tiles: int,
) -> GemmProblem:
    """Random codes of `wdtype`, random scales/zeros and activations, and the expected output computed
    independently of the kernel: decode codes, dequantize in float64, matmul."""
    rng = np.random.default_rng(seed)
    wd = dtype(wdtype)
    groups = 1 if G == -1 else K // G
    codes = rng.integers(0, 1 << wd.bits, size=(K, N), dtype=np.int64).astype(wd.code_dtype)  # [K, N]
    if wd.has_nan or wd.has_inf:  # weights are finite: map NaN/inf codes to zero
        codes = encode(wd, np.nan_to_num(decode(wd, codes), nan=0.0, posinf=0.0, neginf=0.0))
    q = decode(wd, codes).astype(np.float64)  # [K, N]
    scales = (rng.uniform(0.5, 1.5, size=(groups, N)) / max(abs(wd.max), 1)).astype(np.float16)
    zeros = rng.integers(0, 1 << min(wd.bits, 4), size=(groups, N)).astype(np.float16)
    x = rng.standard_normal((M, K)).astype(np.float16)
    rows = K if G == -1 else G
    s = np.repeat(scales.astype(np.float64), rows, axis=0)
    z = np.repeat(zeros.astype(np.float64), rows, axis=0)
    w = {"none": q * s, "post": (q - z) * s, "pre": q * s - z}[zero_mode]
    # the kernel rounds dequantized weights to fp16 before the dot, as a GPU kernel would
    w = w.astype(np.float16).astype(np.float64)
    expected = x.astype(np.float64) @ w
    layout = packed_along((K, N), wd.bits, 0)
    args = {"x": x, "w": layout.pack(codes), "scales": scales, "y": np.zeros((M, N), np.float16)}
    if zero_mode != "none":
        args["zeros"] = zeros
    constants = {"wdtype": wd.name, "G": G, "zero_mode": zero_mode, **tiles}
    return GemmProblem(args, constants, expected)


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """‖out − ref‖ / ‖ref‖ (NaN if either has NaN, so NaN never passes a bound)."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    denom = float(np.linalg.norm(ref))
    return float(np.linalg.norm(out - ref)) / (denom if denom > 0 else 1.0)

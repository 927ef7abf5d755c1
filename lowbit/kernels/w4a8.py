"""W4A8 GEMMs of QoQ / QServe (ANCHORS, QoQ / QServe): int8 × int8 → int32 main loop, fp32 epilogue.

Activations are per-token INT8: xq [M, K] int8 and sx [M] fp32 (`lowbit.quant.quantize_per_token_int8`,
whose fp16 scale converts to fp32 exactly). Weights are uint{b} codes w [K, N] packed along K (layout
`wlayout`, any PackedLayout), b <= 8 (per group) or <= 7 (per channel: codes are cast to int8).

Per group (`w4a8_gemm_per_group`, QoQ progressive): level-2 integer scale s2 and zero z per group of G along
K (int8 tensors [K // G, N]: QoQ guarantees 1 <= s2 <= 16 and |z| <= 127), level-1 fp scale s1 [N]:
    w8 = (q − z)·s2                     an int8 exactly (QoQ's protective range), rebuilt in int32 then cast
    acc[m, n] += Σ_k xq[m, k]·w8[k, n]  int32
    y = fp32(acc)·sx[m]·s1[n]
Per channel (`w4a8_gemm_per_channel`): one integer zero z [N] (int32) and fp scale sw [N] per column:
    acc += Σ_k xq·q (codes as int8),  qsum += Σ_k xq       int32
    y = fp32(acc − z·qsum)·sx[m]·sw[n]
Σ x is over the *quantized* activations (lowbit.quant.gemm's default convention), applied in exact int32
arithmetic before the single float conversion, so y equals dequantize-then-matmul of (xq·sx) and the
weight up to three fp32 roundings. int32 cannot overflow while 127·K·max|w8| < 2^31 (K < 132k).
These are the GPU's (Triton) W4A8 kernels; on TVM (the CPU) `lowbit.ops.linear` runs 4-bit W4A8 weights through
`gemv_a8.quantized_gemv_a8` instead (`w4a8_runs_a8`: the same integer sums, scaled per group, no int8 weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import lowbit.lang as T
from lowbit.kernels.quantized_gemm import ROW_PACKED, groups


@T.kernel
def w4a8_gemm_per_group(
    xq: T.Tensor("int8", ("M", "K")),
    sx: T.Tensor("float32", ("M",)),
    w: T.Tensor("wdtype", ("K", "N"), layout="wlayout"),
    s2: T.Tensor("int8", ("groups(K, G)", "N")),
    z2: T.Tensor("int8", ("groups(K, G)", "N")),
    s1: T.Tensor("sdtype", ("N",)),
    y: T.Tensor("ydtype", ("M", "N")),
    M: T.int32,
    N: T.int32,
    K: T.int32,
    wdtype: T.constexpr = "uint4",
    G: T.constexpr = 128,
    ydtype: T.constexpr = "float16",
    sdtype: T.constexpr = "float16",
    wlayout: T.constexpr = ROW_PACKED,
    BM: T.constexpr = 16,
    BN: T.constexpr = 32,
    BK: T.constexpr = 128,
):
    if G < 1:  # the ops layer passes K for one group per channel (a weight's group_size -1)
        raise ValueError(f"w4a8_gemm_per_group: G={G}; pass the group size in rows (K for one group per channel)")
    pm, pn = T.grid(T.cdiv(M, BM), T.cdiv(N, BN))
    acc = T.zeros((BM, BN), T.int32, name="acc")
    step = G if BK >= G else BK  # rows sharing one (s2, z) row: a group, or a slice of one
    for k0 in T.range(0, K, BK, name="k0"):
        for j in T.static_range(BK // step):
            kk = k0 + j * step
            a = T.load(xq, (pm * BM, kk), (BM, step))  # [BM, step] int8
            q = T.load(w, (kk, pn * BN), (step, BN))  # [step, BN] uint codes
            s = T.cast(T.load(s2, (kk // G, pn * BN), (1, BN)), T.int32)  # [1, BN]
            z = T.cast(T.load(z2, (kk // G, pn * BN), (1, BN)), T.int32)  # [1, BN]
            # (q - z)·s as q·s - z·s: z·s is one [1, BN] row per group, so each code costs one multiply-add
            w8 = T.cast(T.cast(q, T.int32) * s - z * s, T.int8)  # [step, BN], in int8 range by QoQ
            acc += T.dot(a, w8, acc_dtype=T.int32)
    sa = T.reshape(T.load(sx, (pm * BM,), (BM,)), (BM, 1))  # [BM, 1]
    sw = T.cast(T.reshape(T.load(s1, (pn * BN,), (BN,)), (1, BN)), T.float32)  # [1, BN]
    T.store(y, (pm * BM, pn * BN), T.cast(T.cast(acc, T.float32) * sa * sw, y.dtype))


@T.kernel
def w4a8_gemm_per_channel(
    xq: T.Tensor("int8", ("M", "K")),
    sx: T.Tensor("float32", ("M",)),
    w: T.Tensor("wdtype", ("K", "N"), layout="wlayout"),
    zeros: T.Tensor("int32", ("N",)),
    scales: T.Tensor("sdtype", ("N",)),
    y: T.Tensor("ydtype", ("M", "N")),
    M: T.int32,
    N: T.int32,
    K: T.int32,
    wdtype: T.constexpr = "uint4",
    ydtype: T.constexpr = "float16",
    sdtype: T.constexpr = "float16",
    wlayout: T.constexpr = ROW_PACKED,
    BM: T.constexpr = 16,
    BN: T.constexpr = 32,
    BK: T.constexpr = 128,
):
    pm, pn = T.grid(T.cdiv(M, BM), T.cdiv(N, BN))
    acc = T.zeros((BM, BN), T.int32, name="acc")
    qsum = T.zeros((BM, 1), T.int32, name="qsum")
    for k0 in T.range(0, K, BK, name="k0"):
        a = T.load(xq, (pm * BM, k0), (BM, BK))  # [BM, BK] int8
        q = T.load(w, (k0, pn * BN), (BK, BN))  # [BK, BN] uint codes (< 128)
        acc += T.dot(a, T.cast(q, T.int8), acc_dtype=T.int32)
        qsum += T.sum(T.cast(a, T.int32), axis=1, keepdims=True)
    z = T.reshape(T.load(zeros, (pn * BN,), (BN,)), (1, BN))  # [1, BN] int32
    sa = T.reshape(T.load(sx, (pm * BM,), (BM,)), (BM, 1))  # [BM, 1]
    sw = T.cast(T.reshape(T.load(scales, (pn * BN,), (BN,)), (1, BN)), T.float32)  # [1, BN]
    T.store(y, (pm * BM, pn * BN), T.cast(T.cast(acc - qsum * z, T.float32) * sa * sw, y.dtype))


# persistent forms: the same arguments plus BUDGET (programs = min(BUDGET, tiles)), the same output
w4a8_gemm_per_group_persistent = T.persistent(w4a8_gemm_per_group)
w4a8_gemm_per_channel_persistent = T.persistent(w4a8_gemm_per_channel)

__all__ = [
    "groups",
    "w4a8_gemm_per_channel",
    "w4a8_gemm_per_channel_persistent",
    "w4a8_gemm_per_group",
    "w4a8_gemm_per_group_persistent",
]


@dataclass(frozen=True, eq=False)
class W4A8Problem:
    """Kernel arguments of one random W4A8 problem, the weight-side constants (`wdtype`, `G` per group,
    `ydtype`, `wlayout`, `sdtype`; the tiles are the caller's), and the quantized operands for a reference
    (`lowbit.quant.w4a8_gemm_per_group` / `_per_channel`)."""

    args: dict[str, Any]
    constants: dict[str, Any]
    xq: np.ndarray
    sx: np.ndarray
    weight: Any  # QoQWeight (per group) or GroupQuant (per channel)


def random_problem(M: int, N: int, K: int, *, per_group: bool = True, G: int = 128, seed: int = 0) -> W4A8Problem:
    """A standard normal weight [N, K] quantized to 4 bits (QoQ per group of G, or per channel) and standard normal
    activations [M, K] quantized per token, as the arguments of `w4a8_gemm_per_group` / `_per_channel` (weight
    codes packed along K, y float32 zeros)."""
    from lowbit.ir.layout import packed_along
    from lowbit.quant import quantize_per_token_int8, quantize_qoq, quantize_w4a8_per_channel

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)).astype(np.float32)
    xq, sx = quantize_per_token_int8(rng.standard_normal((M, K)).astype(np.float32))
    layout = packed_along((K, N), 4, 0)
    args: dict[str, Any] = dict(xq=xq, sx=sx.astype(np.float32), y=np.zeros((M, N), np.float32))
    constants: dict[str, Any] = dict(wdtype="uint4", ydtype="float32", wlayout=layout)
    weight: Any
    if per_group:
        weight = quantize_qoq(w, bits=4, group_size=G)
        args.update(w=layout.pack(weight.codes.T), s2=weight.s2.T.astype(np.int8), z2=weight.zeros.T.astype(np.int8))
        args["s1"] = weight.s1
        constants.update(G=G, sdtype=str(weight.s1.dtype))
    else:
        weight = quantize_w4a8_per_channel(w, bits=4)
        args.update(w=layout.pack(weight.codes.T.astype(np.uint8)), zeros=weight.zeros[:, 0].astype(np.int32))
        args["scales"] = weight.scales[:, 0]
        constants["sdtype"] = str(weight.scales.dtype)
    return W4A8Problem(args, constants, xq, sx, weight)

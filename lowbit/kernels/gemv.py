"""Weight-only quantized GEMV for small M (decode, M <= 16): y[M, N] = x[M, K] @ dequant(w)[K, N]. On TVM
with AVX-512 it also serves 4-bit weights at every M (`lowbit.ops.linear.gemv_serves`): its dot then has a
GEMM form (lowbit/codegen/tvm/README.md, "GEMM forms of the table-decoded dot").

Same arguments as `quantized_gemm` (codes [K, N] of `wdtype` in layout `wlayout`, scales/zeros
[K // G, N]), but the dequantization is regrouped algebraically so that the inner loop never scales a
weight. Within one group g of G rows along K, with p = Σ_k x[m, k]·q[k, n] on the raw decoded codes and
asum = Σ_k x[m, k]:

    zero_mode none:  Σ_k x·(q·s)      = p·s
    zero_mode post:  Σ_k x·(q − z)·s  = p·s − asum·(z·s)
    zero_mode pre:   Σ_k x·(q·s − z)  = p·s − asum·z

so a group costs one dot on codes cast to the activation dtype plus an O(BM·BN) epilogue; `acc += p·s` is
kept whole, the form a backend fuses into its dot (the TVM GEMM forms: uint4 g128 post zeros, 4096², M = 64,
hot: 2.26 -> 1.83 ms bf16 x, 5.08 -> 4.23 ms fp32 x against `(p − asum·z)·s` in one update). The cast is exact
for every int / uint code of <= 8 bits and every float code format in bf16 and fp32, and in fp16 for all
but the wide-exponent formats (fp6_e5m0, fp7_e5m1, fp7_e6m0, fp8_e6m1, fp8_e7m0: values past 65504 or
below fp16's subnormals); for those, with fp16 activations, the dot runs in fp32 (`dot_dtype`).
Per channel (G = -1) without zeros, p accumulates over all of K and the scales apply once at the end. With
zeros each K tile takes the place of a group (the one scale and zero row): p and asum·z cancel where most
codes sit at the zero, both ~50x y for int1 per channel (K = 4096, Gaussian weights), so over all of K their
fp32 sums' errors came out at 1.0e-4 of y (fp32 x, M = 1); per K tile, 3.2e-6.
Accumulation is fp32.

Numerics differ from `quantized_gemm`, which rounds each dequantized weight to the activation dtype before
its dot: here nothing is rounded before the fp32 accumulator, so the result is the fp32-accumulated
x @ dequant(W) (in float64 terms, exact products, fp32 partial sums), then one rounding to y's dtype. (The TVM
backend's table decode of 1-3-bit integer codes on AVX-512 adds the products of the codes sharing one 4-bit
field of a word in a table entry first, rounded to fp32 once: `lowbit/codegen/tvm/README.md`, "Table decode".)

SWAP = 1 computes yᵀ = dequant(W)ᵀ·xᵀ: the same sums with the decoded codes [BN, K step] as the dot's left
operand and xᵀ [K step, BM] as its right, the accumulator [BN, BM] stored transposed. A GPU's tensor-core dot
takes its wide operand on the left (sm_90 wgmma: 64 rows a warpgroup), so a decode GEMV of 1-16 rows no longer
pads x to the MMA's rows: on sm_90 (Triton, int4 g128, K = 8192, BM 16, BK 256, 4 warps, with `codes_last`)
the K loop is warpgroup MMAs and 5.02 SASS instructions a code at BN 64 (4.47 at BN 128) against 9.20 for the
default GEMV (BN 32, mma.sync; static counts, `nvdisasm`; not yet timed on a GPU: `benchmarks/gpu/sweep.py
--grid swap`). Numerics as above (exact codes, fp32 sums). Only where the dot is fp16 / bf16: an fp32 dot (fp32
x, or codes wider than fp16) keeps the plain orientation (the swapped fp32 dot's sm_90 compile hit an
assertion in Triton 3.9's LLVM SLP vectorizer).

Tiles: BK is a multiple of G (the body handles the BK // G groups of a tile one by one, unrolled at trace
time) or divides G (several K steps share one group's scale row). Split-K: the compile option `split_k`
(`lowbit.ir.passes.split_k`) splits the K loop over more programs and sums their fp32 partials afterwards.
"""

from __future__ import annotations

import lowbit.lang as T
from lowbit.dtypes import holds_exactly
from lowbit.kernels.quantized_gemm import ROW_PACKED, groups


def dot_dtype(wdtype: str, adtype: str) -> str:
    """The dtype the GEMV's dot multiplies codes in: the activation dtype when it holds every code of
    `wdtype` exactly, else float32 (an fp16 x with fp7_e5m1 codes, whose 98304 is past fp16's range)."""
    return adtype if holds_exactly(adtype, wdtype) else "float32"


@T.kernel
def quantized_gemv(
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
    BK: T.constexpr = 128,
    SWAP: T.constexpr = 0,
):
    if SWAP and dot_dtype(wdtype, adtype) != "float32":
        _swapped(x, w, scales, zeros, y, M, N, K, wdtype, G, zero_mode, adtype, BM, BN, BK)
        return
    pm, pn = T.grid(T.cdiv(M, BM), T.cdiv(N, BN))
    acc = T.zeros((BM, BN), T.float32, name="acc")
    widen = dot_dtype(wdtype, adtype) != adtype  # trace time: codes past the activation dtype's range
    if G == -1 and zero_mode == "none":
        # per channel, no zero: p over all of K, the scales once in the epilogue
        for k0 in T.range(0, K, BK, name="k0"):
            a = T.load(x, (pm * BM, k0), (BM, BK))  # [BM, BK]
            a = T.cast(a, T.float32) if widen else a
            q = T.load(w, (k0, pn * BN), (BK, BN))  # [BK, BN] codes
            acc += T.dot(a, T.cast(q, a.dtype))  # p on raw codes
        s = T.cast(T.load(scales, (0, pn * BN), (1, BN)), T.float32)  # [1, BN]
        T.store(y, (pm * BM, pn * BN), T.cast(acc * s, y.dtype))
    else:
        # groups of G rows; per channel with zeros, each K tile a group of the one scale and zero row (p and
        # asum·z cancel: the module docstring)
        step = BK if G == -1 or BK < G else G  # rows per dot: one group, a slice of one, or a K tile
        for k0 in T.range(0, K, BK, name="k0"):
            for j in T.static_range(BK // step):
                kk = k0 + j * step
                row = 0 if G == -1 else kk // G
                a, q = _step_tiles(x, w, pm, pn, kk, BM, BN, step, widen)  # [BM, step], [step, BN] codes
                # the scales before the dot: a backend may fuse `acc += dot · s` (the TVM GEMM forms do)
                s = T.cast(T.load(scales, (row, pn * BN), (1, BN)), T.float32)  # [1, BN]
                p = T.dot(a, T.cast(q, a.dtype))  # [BM, BN] fp32
                acc += p * s
                if zero_mode != "none":
                    # the zero's term as a second update, so that `acc += p · s` stays the one form a backend
                    # fuses into its dot: post −asum·(z·s) (z·s exact for an integer z of <= 8 bits and an fp16
                    # scale), pre −asum·z
                    z = T.cast(T.load(zeros, (row, pn * BN), (1, BN)), T.float32)  # [1, BN]
                    asum = T.sum(T.cast(a, T.float32), axis=1, keepdims=True)  # [BM, 1]
                    acc += asum * (-(z * s) if zero_mode == "post" else -z)
        T.store(y, (pm * BM, pn * BN), T.cast(acc, y.dtype))


def _step_tiles(x, w, pm, pn, kk, BM, BN, step, widen):  # type: ignore[no-untyped-def]
    """Traced: one K step's activations [BM, step] (widened to fp32 where the dot runs in it) and codes [step, BN]."""
    a = T.load(x, (pm * BM, kk), (BM, step))
    return (T.cast(a, T.float32) if widen else a), T.load(w, (kk, pn * BN), (step, BN))


def _swapped(x, w, scales, zeros, y, M, N, K, wdtype, G, zero_mode, adtype, BM, BN, BK):  # type: ignore[no-untyped-def]
    """Traced: `quantized_gemv` with SWAP = 1 (the module docstring): every tile transposed, [BN, ·] on the left.
    Per channel without zeros, the scales once after the loop; otherwise per group (or per K tile with
    per-channel zeros) `acc += p·s` and the zero's term, as the unswapped form."""
    pm, pn = T.grid(T.cdiv(M, BM), T.cdiv(N, BN))
    acc = T.zeros((BN, BM), T.float32, name="acc")
    widen = dot_dtype(wdtype, adtype) != adtype
    per_channel = G == -1 and zero_mode == "none"
    step = BK if G == -1 or BK < G else G
    for k0 in T.range(0, K, BK, name="k0"):
        for j in T.static_range(BK // step):
            kk = k0 + j * step
            row = 0 if G == -1 else kk // G
            a, q = _step_tiles(x, w, pm, pn, kk, BM, BN, step, widen)  # [BM, step], [step, BN] codes
            p = T.dot(T.cast(T.transpose(q), a.dtype), T.transpose(a))  # [BN, BM] fp32
            if per_channel:
                acc += p
                continue
            s = T.transpose(T.cast(T.load(scales, (row, pn * BN), (1, BN)), T.float32))  # [BN, 1]
            acc += p * s
            if zero_mode != "none":
                z = T.transpose(T.cast(T.load(zeros, (row, pn * BN), (1, BN)), T.float32))  # [BN, 1]
                asum = T.sum(T.cast(a, T.float32), axis=1, keepdims=True)  # [BM, 1]
                acc += T.transpose(asum) * (-(z * s) if zero_mode == "post" else -z)  # [BN, BM]
    if per_channel:
        acc = acc * T.transpose(T.cast(T.load(scales, (0, pn * BN), (1, BN)), T.float32))
    T.store(y, (pm * BM, pn * BN), T.transpose(T.cast(acc, y.dtype)))


__all__ = ["dot_dtype", "groups", "quantized_gemv"]

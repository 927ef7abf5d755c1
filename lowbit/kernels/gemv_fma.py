"""`quantized_gemv_fma`: the weight-only GEMV for the smallest M (decode at batch 1-4) without a matrix dot.

y[M, N] = x[M, K] @ dequant(w)[K, N], same arguments as `quantized_gemv`. Each program keeps, per row of its
BM rows, an fp32 register tile acc[BN, BK] and adds x[k]·ŵ[k, n] to it elementwise for every K step; the
sum over k happens once, after the loop. So the main loop has no reduction and no layout change of the codes:
on a GPU it is CUDA-core work in each thread's own registers (no tensor-core operand staging through shared
memory, which `quantized_gemv`'s dot needs even at M = 1, where 15 of its 16 MMA rows are padding), and the
per-code cost is the decode, one multiply by the scale and one FMA per row.

Decode: an integer code q of b <= 16 bits becomes fp32 without a conversion instruction (a GPU converts ints
at a quarter of the FMA rate): u = q + 2^(b-1) (q for unsigned) is OR-ed into the mantissa of 2^23, and
2^23 + 2^(b-1) is subtracted: exact. With a post-scale zero the subtracted constant takes the zero too,
ŵ = (v − (2^23 + off + z))·s. Float codes are decoded by `T.cast` (the backend's bit-manipulation rebuild).
Zero modes: none ŵ = q·s, post (q − z)·s, pre q·s − z. Per channel (G = -1) the scale (and a post zero)
are applied once after the loop.

Numerics: every ŵ = q·s is exact in fp32 (<= 16-bit codes times fp16 / fp32 scales round once for fp32
scales), products and sums are fp32 (one rounding per FMA), then one rounding to y's dtype: the same model as
`quantized_gemv` (fp32-accumulated x @ dequant(W)), in a different summation order.

Tiles: BK a multiple of G or a divisor of it (one scale row per K step); registers per thread are
BM·BN·BK / threads fp32 accumulators, so BM stays small (1, 2 or 4) and a GPU config keeps BN·BK near 8K.
On the Triton backend the kernel wants option `codes_last` (the packed codes split in each thread, so the
[BK, BN] codes tile transposes to the accumulator's [BN, BK] for free: sm_90 SASS of the loop is shifts, LOP3,
FADD, FMUL, FFMA, and no shared memory for the codes); `lowbit.kernels.spaces` sets it.
"""

from __future__ import annotations

import lowbit.lang as T
from lowbit.dtypes import dtype as as_dtype
from lowbit.kernels.quantized_gemm import ROW_PACKED, groups  # noqa: F401  (groups: named in a shape entry)

MAGIC = 0x4B000000  # the bits of 2^23: OR-ing u < 2^23 into its mantissa makes the float 2^23 + u
MAGIC_BITS = 16  # integer codes up to this width decode by the magic (u < 2^16: far inside the mantissa)


def magic_offset(wdtype: str) -> int | None:
    """The offset u = q + offset that makes an integer code unsigned for the magic decode (2^(b-1) for
    signed, 0 for unsigned); None for float codes and integers wider than MAGIC_BITS."""
    dt = as_dtype(wdtype)
    if dt.is_float or dt.bits > MAGIC_BITS:
        return None
    return 1 << (dt.bits - 1) if dt.is_signed else 0


def _unsigned(codes: T.TileValue, wdtype: str) -> T.TileValue:
    """Integer codes as int32 u = q + 2^(b-1) (signed: the code's bits with the top bit flipped, so a
    backend extracts the field and xors, with no sign extension) or u = q (unsigned)."""
    dt = as_dtype(wdtype)
    if not dt.is_signed:
        return T.cast(codes, T.int32)
    return T.cast(T.view(codes, f"uint{dt.bits}"), T.int32) ^ (1 << (dt.bits - 1))


def _value(v: T.TileValue, base: float) -> T.TileValue:
    """The codes' values from their decode: v − (2^23 + offset) after the magic, v itself after a cast
    (base 0)."""
    return v - base if base else v


@T.kernel
def quantized_gemv_fma(
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
    BM: T.constexpr = 1,
    BN: T.constexpr = 64,
    BK: T.constexpr = 128,
):
    pm, pn = T.grid(T.cdiv(M, BM), T.cdiv(N, BN))
    offset = magic_offset(wdtype)  # trace time: None = decode by cast
    base = 0.0 if offset is None else float(2**23 + offset)
    per_channel = G == -1
    step = BK if per_channel or BK <= G else G  # K per sub-step: one scale row each
    accs = [T.zeros((BN, step), T.float32, name=f"acc{r}") for r in range(BM)]
    # per channel with a zero: Σx per row, summed elementwise in the loop (from the x rows it loads anyway)
    # and reduced once after it
    zsum = per_channel and zero_mode != "none"
    xsums = [T.zeros((1, step), T.float32, name=f"xsum{r}") for r in range(BM)] if zsum else []
    for k0 in T.range(0, K, BK, name="k0"):
        for j in T.static_range(BK // step):
            kk = k0 + j * step
            # x's rows first: Triton then converts these [1, step] rows to the codes' layout, not the codes
            xs = [T.cast(T.load(x, (pm * BM + r, kk), (1, step)), T.float32) for r in range(BM)]
            qt = T.transpose(T.load(w, (kk, pn * BN), (step, BN)))  # [BN, step]: the accumulator's orientation
            if offset is None:
                v = T.cast(qt, T.float32)  # float codes: the backend's decode
            else:
                v = T.view(_unsigned(qt, wdtype) | MAGIC, T.float32)  # 2^23 + u, exact
            if per_channel:
                wq = _value(v, base)  # raw q; s and z after the loop
            else:
                g = kk // G
                s = T.transpose(T.cast(T.load(scales, (g, pn * BN), (1, BN)), T.float32))  # [BN, 1]
                if zero_mode == "none":
                    wq = _value(v, base) * s
                else:
                    z = T.transpose(T.cast(T.load(zeros, (g, pn * BN), (1, BN)), T.float32))  # [BN, 1]
                    if zero_mode == "post":
                        wq = (v - (z + base)) * s  # (q - z)·s, one subtraction per code
                    else:
                        wq = _value(v, base) * s - z  # q·s - z
            for r in T.static_range(BM):
                accs[r] += xs[r] * wq
                if zsum:
                    xsums[r] += xs[r]
    for r in T.static_range(BM):
        p = T.sum(accs[r], axis=1, keepdims=True)  # [BN, 1]
        if per_channel:
            s = T.transpose(T.cast(T.load(scales, (0, pn * BN), (1, BN)), T.float32))  # [BN, 1]
            if zero_mode == "none":
                out = p * s
            else:
                zc = T.transpose(T.cast(T.load(zeros, (0, pn * BN), (1, BN)), T.float32))  # [BN, 1]
                asum = T.sum(xsums[r], axis=1, keepdims=True)  # [1, 1]
                # p on raw q: post (p - z·Σx)·s, pre p·s - z·Σx
                out = (p - zc * asum) * s if zero_mode == "post" else p * s - zc * asum
        else:
            out = p
        T.store(y, (pm * BM + r, pn * BN), T.transpose(T.cast(out, y.dtype)))


__all__ = ["MAGIC", "magic_offset", "quantized_gemv_fma"]

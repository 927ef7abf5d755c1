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

FOLD = R > 0 (integer codes; float codes keep the form above): the decode becomes v = 1 + u / 2^b (u << (23 − b)
OR-ed into 1.0's bits: exact), so u − offset = 2^b·v − c with c = 2^b + offset, and per group
    Σ_k x_k·(u_k − offset − z)·s = s·2^b·Σ_k x_k·v_k − (c + z)·s·Σ_k x_k        (post; none: z = 0; pre: c·s + z)
The accumulator holds [BN, K step / R]: each slot takes R consecutive k of a column summed in the thread that
holds them (the product, R − 1 FMAs, one FMA by the scale), the group's correction is a [1, BN] row per step
(x's sum over the step, times c·s, (c + z)·s or c·s + z), and y = 2^b·Σ acc − Σ corrections. Per code that
leaves a shift, a LOP3 and about 1.5 FMAs (no FADD of the magic, no FMUL by the scale); v near 1.5 makes the
subtraction cancel a few bits (relative error ~3e-7 in fp32 against ~5e-8). sm_90, int4 g128, K = 8192,
`gpu_default` tiles (M = 1: BN 64, BK 256, 4 warps): 5.07 SASS instructions a code in the K loop against 6.29,
80 registers against 168 (static counts: `nvdisasm`, `ptxas -v`; BN 128 with 8 warps 5.62 against 6.56). It is
the decode of `benchmarks/gpu/gemv_forms.py`'s hand-written FORM 2, which took 21.9 us at 8192² M = 1 on the
H200 against 26.6 for this kernel's FOLD 0 (session 48); the DSL's folded form itself is not yet timed on a
GPU, so the default keeps FOLD 0 (`benchmarks/gpu/sweep.py --grid fold` times both). One row
only (`spaces`): with BM rows the unfolded form decodes and scales a code once for all rows, the folded one
repeats its sums per row (M = 4: twice the instructions a code).

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
    FOLD: T.constexpr = 0,
):
    if FOLD and magic_offset(wdtype) is not None:
        _folded(x, w, scales, zeros, y, M, N, K, wdtype, G, zero_mode, BM, BN, BK, FOLD)
        return
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


ONE = 0x3F800000  # the bits of 1.0: OR-ing u << (23 - b) into its mantissa makes the float 1 + u / 2^b


def _folded(x, w, scales, zeros, y, M, N, K, wdtype, G, zero_mode, BM, BN, BK, R):  # type: ignore[no-untyped-def]
    """Traced: the FOLD = R form of `quantized_gemv_fma` for integer codes (FOLD in the module docstring)."""
    pm, pn = T.grid(T.cdiv(M, BM), T.cdiv(N, BN))
    bits = as_dtype(wdtype).bits
    c = float(2**bits + magic_offset(wdtype))  # u − offset = 2^b·v − c for v = 1 + u / 2^b
    per_channel = G == -1
    step = BK if per_channel or BK <= G else G
    if R < 1 or step % R:
        raise ValueError(f"quantized_gemv_fma: FOLD={R} must divide the K step {step} (BK, or G when BK > G)")
    accs = [T.zeros((BN, step // R), T.float32, name=f"acc{r}") for r in range(BM)]
    # Σ_g (c·s, (c + z)·s or c·s + z)·Σx per column: every code's offset, zero and the magic's 1, once a step.
    # A row [1, BN], not a column: on Triton a [BN, 1] tile is held whole by every thread (64 multiply-adds a
    # thread a step at BN = 64), a row is spread over the threads
    corrs = [T.zeros((1, BN), T.float32, name=f"corr{r}") for r in range(BM)]
    xtots = [T.zeros((1, 1), T.float32, name=f"xtot{r}") for r in range(BM)] if per_channel else []
    for k0 in T.range(0, K, BK, name="k0"):
        for j in T.static_range(BK // step):
            kk = k0 + j * step
            xs = [T.cast(T.load(x, (pm * BM + r, kk), (1, step)), T.float32) for r in range(BM)]
            qt = T.transpose(T.load(w, (kk, pn * BN), (step, BN)))  # [BN, step]
            v = T.view((_unsigned(qt, wdtype) << (23 - bits)) | ONE, T.float32)  # 1 + u / 2^b, exact
            if not per_channel:
                g = kk // G
                s_row = T.cast(T.load(scales, (g, pn * BN), (1, BN)), T.float32)  # [1, BN]
                s = T.transpose(s_row)  # [BN, 1]
                if zero_mode == "none":
                    weight = s_row * c
                else:
                    z_row = T.cast(T.load(zeros, (g, pn * BN), (1, BN)), T.float32)  # [1, BN]
                    weight = (z_row + c) * s_row if zero_mode == "post" else s_row * c + z_row
            for r in T.static_range(BM):
                # R consecutive k of a column summed in the thread that holds them (codes_last: a word's codes)
                part = T.sum(T.reshape(xs[r] * v, (BN, step // R, R)), axis=2)  # [BN, step // R]
                xsum = T.sum(xs[r], axis=1, keepdims=True)  # [1, 1]
                if per_channel:
                    accs[r] += part
                    xtots[r] += xsum
                else:
                    accs[r] += part * s
                    corrs[r] += weight * xsum
    for r in T.static_range(BM):
        a = T.sum(accs[r], axis=1, keepdims=True) * float(2**bits)  # [BN, 1]
        if per_channel:
            s = T.transpose(T.cast(T.load(scales, (0, pn * BN), (1, BN)), T.float32))  # [BN, 1]
            if zero_mode == "none":
                out = (a - xtots[r] * c) * s
            else:
                zc = T.transpose(T.cast(T.load(zeros, (0, pn * BN), (1, BN)), T.float32))  # [BN, 1]
                out = (a - xtots[r] * (zc + c)) * s if zero_mode == "post" else (a - xtots[r] * c) * s - zc * xtots[r]
        else:
            out = a - T.transpose(corrs[r])
        T.store(y, (pm * BM + r, pn * BN), T.transpose(T.cast(out, y.dtype)))


__all__ = ["MAGIC", "ONE", "magic_offset", "quantized_gemv_fma"]

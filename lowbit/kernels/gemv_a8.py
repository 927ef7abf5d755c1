"""4-bit weight GEMV with dynamic int8 activations (the CPU decode path): y[M, N] = x[M, K] @ Ŵ[K, N].

Two kernels, run back to back by `lowbit.ops.linear.quantized_linear` when the graph selected this path:

`quantize_groups_int8` — x [M, K] float -> per row and per group of G along K (the weight's groups):
    amax = max |x|,  xs = amax / 127,  q = floor(x · (127 / amax) + 1/2)  in [-127, 127]  (q = 0 when amax = 0)
    xq   = the codes, group-major [K // G, MP, G]: group g of row m at xq[g, m], as the G/2 codes of the even k,
           then the G/2 codes of the odd k
    xsum = Σ q over the group (int32)
Rows M..MP-1 of the outputs (padding up to the GEMV's row tile) are written as zeros. Group-major, the GEMV's
row block reads one contiguous run of BM·G bytes per group; row-major [MP, K] with K = 4096 put the BM rows'
codes 4096 bytes apart, in one L1 set (12 ways for 16 rows): the M = 16 GEMV took 1.1-1.4x the time at K = 4096
that it took at K = 4224 (more work) in alternating runs on the AVX-512 VM.
A W4A8 weight's activations take one of two other first kernels, with the same outputs' layout: float x
`quantize_tokens_int8` (per token, one fp16 scale a row, bit for bit as `lowbit.quant.quantize_per_token_int8`),
int8 codes already quantized per token `regroup_int8`. `quantize_rows_int8` is the same per-token quantizer
with row-major outputs, the W4A8 GEMMs' operands where Triton launches them.

`quantized_gemv_a8` — the codes of a 4-bit weight in the column-tiled layout (`lowbit.kernels.layouts.
column_tiled(BN)`: int32 words [⌈N / BN⌉, K // 8, BN], code k % 8 of column n at bits 4·(k % 8) of word
[n // BN, k // 8, n % BN], so a block of BN columns reads one contiguous run), read as unsigned nibbles u
and, for signed int4, offset to u = q + 8 by one xor of the word with 0x88888888. The scales and zeros are
column-tiled the same way (`tile_group_rows`: [⌈N / BN⌉, K // G, BN], the BN values of group g of a block
contiguous), so a block's scale rows are one 1/32-sized run behind its words instead of one cache line N·2
bytes apart per group: the strided rows were a demand miss per group that the out-of-order window (shorter
than a group's ~600 instructions) could not hide (measured on the 1.1B model's shapes streamed from DRAM, 2
threads, alternating: 0.77–0.96x the time in 8 of 9 shape-runs, 1.05x in one). Per group g, column n:

    p    = Σ_k xq[k] · q[k, n]  = Σ xq·u − 8·xsum (int4) or Σ xq·u (uint4)     exact int32 (|p| < 2^24)
    zero_mode none:  y += fp32(p) · xs · s[g, n]
    zero_mode post:  y += (fp32(p) − fp32(xsum)·z[g, n]) · xs · s[g, n]       (ŵ = (q − z)·s)
    zero_mode pre:   y += (fp32(p)·s[g, n] − fp32(xsum)·z[g, n]) · xs          (ŵ = q·s − z)

The dot runs on bytes: `words & 0x0F0F0F0F` holds the codes of k = 8t + {0, 2, 4, 6} as the 4 bytes of word
t, `(words >> 4) & 0x0F0F0F0F` those of k = 8t + {1, 3, 5, 7}; viewed as bytes along K they are the rows of
two [G/2, BN] int8 tiles whose values are 0..15, dotted with the even / odd activation codes. That is the
shape of x86's u8·i8 multiply-adds: the TVM backend lowers such a dot to AVX-512 VNNI's vpdpbusd (four
products per i32 lane into the accumulator) where the CPU has it, else to AVX2's vpmaddubsw when the value
ranges prove every 16-bit partial sum exact (`lowbit.codegen.tvm`).

`signed_dot=True` (int4 without zeros; for AMX's signed x signed `tdpbssd`, which the TVM backend takes for
tiles of whole 16-row tiles): the bytes are `(words << 4) & 0xF0F0F0F0` and `words & 0xF0F0F0F0`, i.e. 16·q
as int8 (each two's complement nibble in its byte's top half; a biased word is xor-ed back first), so
p = 16·Σ xq·q exactly (|16·q| <= 128, int32 sums) and y += fp32(p)·xs·(s/16): no per-output xsum term, the
same fp32 values as the unsigned form (1/16 is exact).

`TILES` column tiles per program (`lowbit.ops.linear.A8_DECODE_TILES` for decode): a program's TILES blocks of
BN columns are TILES contiguous runs read side by side, so each thread streams TILES runs at once (a single
run per thread: ~0.93x the time at two, weights streamed from DRAM).

`biased=True` (int4 only): the words already hold the offset-binary nibbles u = q + 8 (`lowbit.ops.weight.
offset_binary` stores an int4 weight so, as the exactly equal uint4 weight with zero point 8), so the xor is
skipped: one vector instruction fewer per 8 weight words, which the instruction-bound M = 1 GEMV feels.

Numerics against the float activations: y differs from the W4A16 GEMV (`quantized_gemv`) only by the
rounding of x to xq·xs (a relative error of order 1/(127·√3) of a group's largest |x| per element);
against its own inputs (xq, xs, xsum, the weight) it is exact integer math and one fp32 multiply-add per
group, so an fp64 oracle of the same formula agrees to ~1e-6 relative.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import lowbit.lang as T
from lowbit.kernels.layouts import aligned
from lowbit.lang import cdiv  # noqa: F401  (used in tensor shape strings)

OFFSET_BINARY = -0x77777778  # 0x88888888 as int32: xor turns each two's complement nibble q into q + 8
LOW_NIBBLES = 0x0F0F0F0F
HIGH_NIBBLES = -0x0F0F0F10  # 0xF0F0F0F0 as int32
A8_GROUPS = (32, 64, 128, 256)  # group sizes the kernels take (G/2 codes per half: whole words and quads)
A8_DTYPES = ("int4", "uint4")


FLOAT32_MAX = 3.4028234663852886e38


def _even_odd(t: Any, BM: int, G: int) -> Any:
    """Traced: a row block's group [BM, G] in the order the GEMV reads it (even k, then odd k)."""
    return T.reshape(T.transpose(T.reshape(t, (BM, G // 2, 2)), (0, 2, 1)), (BM, G))


def _ordered_group(x: Any, pm: Any, k0: Any, BM: int, G: int, order: Any = _even_odd) -> Any:
    """Traced: the float group x[pm·BM.., k0..k0+G] [BM, G] as float32 in its GEMV's order (`order(t, BM, G)`:
    `_even_odd` here, x's own (`_as_is`) in `gemv_x16`), assigned to a tile of its own, so a quantizer's every later
    tile and store runs in order and the reorder's gather runs once (reordered at the store, each store's element
    recomputed its code from gathered x: the x16 quantizer took 7.4 against 5.5 us at K = 4096 this way). Rows
    >= M read 0."""
    v = T.zeros((BM, G), T.float32)
    T.assign(v, order(T.cast(T.load(x, (pm * BM, k0), (BM, G)), T.float32), BM, G))
    return v


def _store_group(
    xq: Any, xs: Any, xsum: Any, q: Any, scale: Any, k0: Any, pm: Any, BM: int, G: int, ordered: bool = False
) -> None:
    """Traced into the first kernels: group k0 // G of the row block's codes q [BM, G] stored group-major as
    the GEMV reads them (even k, then odd k; `ordered`: q is in that order already), its scale [BM, 1] and its
    code sum."""
    even_odd = q if ordered else _even_odd(q, BM, G)
    T.store(xq, (k0 // G, pm * BM, 0), T.reshape(even_odd, (1, BM, G)))
    T.store(xs, (pm * BM, k0 // G), scale)
    T.store(xsum, (pm * BM, k0 // G), T.sum(T.cast(q, T.int32), axis=1, keepdims=True))


def _extremes(v: Any) -> tuple[Any, Any]:
    """Traced: (max |v|, 1 where the row holds a NaN or an inf else 0) over the last axis of v [BM, G], both
    [BM, 1]; a backend's max may drop NaN, so non-finite values are flagged on their own."""
    flags = T.where(T.abs(v) <= FLOAT32_MAX, 0.0, 1.0)
    return T.max(T.abs(v), axis=1, keepdims=True), T.max(flags, axis=1, keepdims=True)


@T.kernel
def quantize_groups_int8(
    x: T.Tensor("adtype", ("M", "K")),
    xq: T.Tensor("int8", ("K // G", "MP", "G")),
    xs: T.Tensor("float32", ("MP", "K // G")),
    xsum: T.Tensor("int32", ("MP", "K // G")),
    M: T.int32,
    MP: T.int32,
    K: T.int32,
    G: T.constexpr = 128,
    adtype: T.constexpr = "float32",
    BM: T.constexpr = 1,
):
    (pm,) = T.grid(T.cdiv(MP, BM))
    for k0 in T.range(0, K, G, name="k0"):
        v = _ordered_group(x, pm, k0, BM, G)  # [BM, G], even k then odd k
        # a group holding a NaN or an inf gets a NaN scale, so the row's output is NaN, as F.linear's would be
        # non-finite, not a finite value from the other codes
        amax, bad = _extremes(v)  # [BM, 1]
        inv = T.where(amax > 0.0, 127.0 / amax, 0.0)
        q = T.cast(T.floor(T.where(bad > 0.0, 0.0, v * inv) + 0.5), T.int8)  # [BM, G] in [-127, 127]
        _store_group(xq, xs, xsum, q, T.where(bad > 0.0, float("nan"), amax / 127.0), k0, pm, BM, G, ordered=True)


@T.kernel
def regroup_int8(
    codes: T.Tensor("int8", ("M", "K")),
    scale: T.Tensor("float32", ("M",)),
    xq: T.Tensor("int8", ("K // G", "MP", "G")),
    xs: T.Tensor("float32", ("MP", "K // G")),
    xsum: T.Tensor("int32", ("MP", "K // G")),
    M: T.int32,
    MP: T.int32,
    K: T.int32,
    G: T.constexpr = 128,
    BM: T.constexpr = 1,
):
    """Activations already quantized per token (W4A8: codes [M, K] int8, one scale [M] a row) laid out as
    `quantize_groups_int8` writes them for `quantized_gemv_a8`: the codes group-major, even k then odd k per
    group, each group's scale the row's, the group's code sum. Rows M..MP-1 come out zero."""
    (pm,) = T.grid(T.cdiv(MP, BM))
    s = T.reshape(T.load(scale, (pm * BM,), (BM,)), (BM, 1))  # [BM, 1]; rows >= M read 0
    for k0 in T.range(0, K, G, name="k0"):
        _store_group(xq, xs, xsum, T.load(codes, (pm * BM, k0), (BM, G)), s, k0, pm, BM, G)


FLOAT16_MAX = 65504.0
FLOAT16_TINY = 2.0**-24  # float16's smallest subnormal


def _token_scale(amax: Any, bad: Any, real: Any = None) -> tuple[Any, Any]:
    """Traced into the per-token quantizers: from a row's amax and non-finite flag [BM, 1], (sa, stored): the
    float16 scale fp16(amax / 127) with `storage_scale`'s guards (0 -> 1, underflow -> the smallest subnormal,
    overflow -> 65504) as float32, and what is stored for the row (NaN for a non-finite row, 0 where `real`,
    when given, is false: padding rows).

    Exactness: amax / 127 rounded to float32 and then to float16 is the float16 rounding of the exact quotient
    (a double rounding could differ only if the float32 result were a float16 midpoint m while the quotient is
    not; m·127 has at most 19 significant bits, so amax would equal it: the quotient is m)."""
    half = T.cast(T.cast(T.minimum(amax / 127.0, FLOAT16_MAX), T.float16), T.float32)
    sa = T.where(amax == 0.0, 1.0, T.where(half == 0.0, FLOAT16_TINY, half))
    return sa, T.where(bad > 0.0, float("nan"), sa if real is None else T.where(real, sa, 0.0))


def _token_codes(v: Any, bad: Any, sa: Any) -> Any:
    """Traced into the per-token quantizers: q = clip(rint(v / sa), -127, 127) as int8 (0 on a non-finite row).
    rint is floor(t + 1/2), less 1 where t sat exactly halfway and the floor is odd (ties to even); t + 1/2 and
    r − t are exact for |t| < 2^22, and past that (an overflowed scale) the codes saturate either way."""
    t = T.where(bad > 0.0, 0.0, v) / sa
    r = T.floor(t + 0.5)
    odd = r - 2.0 * T.floor(r * 0.5)
    r = T.where(r - t == 0.5, r - odd, r)  # a tie rounds to the even neighbour
    return T.cast(T.minimum(T.maximum(r, -127.0), 127.0), T.int8)


def _row_extremes(x: Any, row0: Any, K: Any, BM: int, BK: int) -> tuple[Any, Any]:
    """Traced: `_extremes` [BM, 1] over all of K of rows row0.. of x, BK columns a step."""
    amax = T.zeros((BM, 1), T.float32, name="amax")
    bad = T.zeros((BM, 1), T.float32, name="bad")
    for k0 in T.range(0, K, BK, name="k0"):
        step_amax, step_bad = _extremes(T.cast(T.load(x, (row0, k0), (BM, BK)), T.float32))  # past M, K: 0
        T.assign(amax, T.maximum(amax, step_amax))
        T.assign(bad, T.maximum(bad, step_bad))
    return amax, bad


@T.kernel
def quantize_tokens_int8(
    x: T.Tensor("adtype", ("M", "K")),
    xq: T.Tensor("int8", ("K // G", "MP", "G")),
    xs: T.Tensor("float32", ("MP", "K // G")),
    xsum: T.Tensor("int32", ("MP", "K // G")),
    M: T.int32,
    MP: T.int32,
    K: T.int32,
    G: T.constexpr = 128,
    adtype: T.constexpr = "float32",
    BM: T.constexpr = 1,
):
    """W4A8's per-token quantization of float activations (`lowbit.quant.quantize_per_token_int8`, bit for
    bit: `_token_scale`, `_token_codes`) laid out as `regroup_int8` lays out its codes: per row, amax = max
    |x| over all of K, the float16 scale sa, codes q = clip(rint(x / sa), -127, 127), every group's scale sa
    and code sum. A row holding a NaN or an inf gets codes 0 and a NaN scale (its output row is NaN, as
    F.linear's); padding rows M..MP-1 come out zero."""
    (pm,) = T.grid(T.cdiv(MP, BM))
    amax, bad = _row_extremes(x, pm * BM, K, BM, G)
    real = T.reshape(pm * BM + T.arange(0, BM), (BM, 1)) < M
    sa, scale = _token_scale(amax, bad, real)
    for k0 in T.range(0, K, G, name="k0"):
        q = _token_codes(_ordered_group(x, pm, k0, BM, G), bad, sa)
        _store_group(xq, xs, xsum, q, scale, k0, pm, BM, G, ordered=True)


@T.kernel
def quantize_rows_int8(
    x: T.Tensor("adtype", ("M", "K")),
    qa: T.Tensor("int8", ("M", "K")),
    sa: T.Tensor("float32", ("M",)),
    M: T.int32,
    K: T.int32,
    adtype: T.constexpr = "float32",
    BM: T.constexpr = 1,
    BK: T.constexpr = 128,
):
    """`lowbit.quant.quantize_per_token_int8` bit for bit, row-major, as the W4A8 GEMMs read it: qa [M, K]
    int8, sa [M] the float16 scales as float32 (a non-finite row: codes 0 and a NaN scale). One pass for the
    row extremes, one for the codes: on a GPU the one fused kernel in place of torch's chain of a dozen
    elementwise launches over x (`ops.linear.quantize_per_token_int8_torch`). Any K (ragged BK steps read 0)."""
    (pm,) = T.grid(T.cdiv(M, BM))
    amax, bad = _row_extremes(x, pm * BM, K, BM, BK)
    s, scale = _token_scale(amax, bad)
    for k0 in T.range(0, K, BK, name="k0"):
        T.store(qa, (pm * BM, k0), _token_codes(T.cast(T.load(x, (pm * BM, k0), (BM, BK)), T.float32), bad, s))
    T.store(sa, (pm * BM,), T.reshape(scale, (BM,)))


def tile_group_rows(a: np.ndarray, bn: int) -> np.ndarray:
    """Per-group rows [K // G, N] (scales or zeros) as the a8 GEMV reads them: [⌈N / bn⌉, K // G, bn], block
    j holding columns j·bn .. j·bn + bn − 1 (padding columns 0), contiguous."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"tile_group_rows: expected [K // G, N] per-group rows, got shape {a.shape}")
    rows, n = a.shape
    nb = -(-n // bn)
    padded = a if nb * bn == n else np.concatenate([a, np.zeros((rows, nb * bn - n), a.dtype)], axis=1)
    return aligned(padded.reshape(rows, nb, bn).transpose(1, 0, 2))


@T.kernel
def quantized_gemv_a8(
    xq: T.Tensor("int8", ("K // G", "MP", "G")),
    xs: T.Tensor("float32", ("MP", "K // G")),
    xsum: T.Tensor("int32", ("MP", "K // G")),
    w: T.Tensor("int32", ("cdiv(N, BN)", "K // 8", "BN")),
    scales: T.Tensor("sdtype", ("cdiv(N, BN)", "K // G", "BN")),
    zeros: T.Tensor("sdtype", ("cdiv(N, BN)", "K // G", "BN")),
    y: T.Tensor("ydtype", ("M", "N")),
    M: T.int32,
    MP: T.int32,
    N: T.int32,
    K: T.int32,
    wdtype: T.constexpr = "int4",
    zero_mode: T.constexpr = "none",
    G: T.constexpr = 128,
    ydtype: T.constexpr = "float32",
    sdtype: T.constexpr = "float16",
    BM: T.constexpr = 1,
    BN: T.constexpr = 32,
    biased: T.constexpr = False,
    signed_dot: T.constexpr = False,
    TILES: T.constexpr = 1,
):
    pm, pb = T.grid(T.cdiv(M, BM), T.cdiv(N, BN * TILES))
    H = G // 2
    accs = [T.zeros((BM, BN), T.float32, name=f"acc{t}") for t in range(TILES)]
    for k0 in T.range(0, K, G, name="k0"):
        for t in range(TILES):  # trace-time loop: TILES column tiles per program, each its own stream
            pn = pb * TILES + t
            acc = accs[t]
            words = T.reshape(T.load(w, (pn, k0 // 8, 0), (1, G // 8, BN)), (G // 8, BN))  # [G/8, BN] int32
            if signed_dot:  # int4, no zeros: bytes 16·q (each nibble in its byte's top half), a signed x signed dot
                if biased:
                    words = words ^ OFFSET_BINARY  # back to two's complement nibbles
                lo = T.view(T.transpose((words << 4) & HIGH_NIBBLES), T.int8).T  # [H, BN]: 16·q, k = 8t + 2r
                hi = T.view(T.transpose(words & HIGH_NIBBLES), T.int8).T  # k = 8t + 2r + 1
            else:
                if wdtype == "int4" and not biased:
                    words = words ^ OFFSET_BINARY  # nibbles u = q + 8 in 0..15
                lo = T.cast(T.view(T.transpose(words & LOW_NIBBLES), T.uint8).T, T.int8)  # [H, BN]: k = 8t + 2r
                hi = T.cast(T.view(T.transpose((words >> 4) & LOW_NIBBLES), T.uint8).T, T.int8)  # k = 8t + 2r + 1
            xe = T.reshape(T.load(xq, (k0 // G, pm * BM, 0), (1, BM, H)), (BM, H))  # the even k's codes
            xo = T.reshape(T.load(xq, (k0 // G, pm * BM, H), (1, BM, H)), (BM, H))  # the odd k's
            p = T.dot(xe, lo, acc_dtype=T.int32)  # no accumulator: AMX starts from zeroed tiles, nothing filled
            p += T.dot(xo, hi, acc_dtype=T.int32)
            sx = T.load(xs, (pm * BM, k0 // G), (BM, 1))  # [BM, 1]
            s = T.reshape(T.cast(T.load(scales, (pn, k0 // G, 0), (1, 1, BN)), T.float32), (1, BN))
            if signed_dot:
                acc += T.cast(p, T.float32) * sx * (s * 0.0625)  # p = 16·Σ xq·q; 1/16 is exact
            else:
                asum = T.load(xsum, (pm * BM, k0 // G), (BM, 1))  # [BM, 1] int32
                if wdtype == "int4":
                    p = p - asum * 8  # Σ xq·q, exact
                z = None if zero_mode == "none" else T.load(zeros, (pn, k0 // G, 0), (1, 1, BN))
                acc += group_term(p, asum, sx, s, z, zero_mode)
    for t in range(TILES):
        T.store(y, (pm * BM, (pb * TILES + t) * BN), T.cast(accs[t], y.dtype))


def group_term(total: Any, asum: Any, sx: Any, s: Any, z: Any, zero_mode: str) -> Any:
    """One weight group's fp32 contribution to a [BM, BN] accumulator from its exact integer sum `total` = Σ xq·q
    ([BM, BN] int32), for the int8-activation GEMVs (this module's and `gemv_x16`'s): total·sx·s without zeros,
    (total − Σxq·z)·sx·s with post zeros, (total·s − Σxq·z)·sx with pre zeros. asum = Σ xq per row ([BM, 1]
    int32), sx the rows' scales [BM, 1], s the columns' [1, BN] fp32, z the group's zeros as loaded ([1, 1, BN];
    None without)."""
    if zero_mode == "none":
        return T.cast(total, T.float32) * sx * s
    zsum = T.cast(asum, T.float32) * T.reshape(T.cast(z, T.float32), (1, z.shape[-1]))
    if zero_mode == "post":
        return (T.cast(total, T.float32) - zsum) * sx * s
    return (T.cast(total, T.float32) * s - zsum) * sx


__all__ = [
    "A8_DTYPES",
    "A8_GROUPS",
    "quantize_groups_int8",
    "quantize_rows_int8",
    "quantize_tokens_int8",
    "quantized_gemv_a8",
    "regroup_int8",
    "tile_group_rows",
]

"""W{1,2,3,4}A16 GEMV whose 16-bit activations run on int8 multiply-adds (the CPU decode path of narrow codes).

With bfloat16 / float16 x the M = 1 GEMV of 2- and 3-bit codes is compute-bound on the table decode (fp32 FMAs:
one product each); an int8 dot (x86's `vpdpbusd`: 64 u8·i8 products an instruction) needs only the codes as
bytes, which shifts and masks give. x is carried exactly enough in two int8 planes:

`quantize_groups_x16` — per row and group of G along K (the weight's groups):
    xs   = 2^(e − 13) where 2^e <= max |x| < 2^(e+1)    (a power of two: x / xs is exact)
    r    = rint(x / xs)                                  |r| < 2^14
    hi   = floor((r + 128) / 256),  lo = r − 256·hi      hi in [-64, 64], lo in [-128, 127]: r = 256·hi + lo
    xq   = hi and lo, group-major [K // G, MP, 2, 8, G // 8]: x's own order (plane p holds k = (G/8)·p ..)
    xsum = Σ r (int32; with three planes, see below)
A bfloat16 x is held exactly when the group's values lie within 2^6 of its largest (float16: 2^3); every
element is within 2^-15·2^(e+1) of x otherwise, far below the output's rounding (2^-9 of y for bfloat16).
float32 x (PARTS = 3) takes three planes: xs = 2^(e − 21), |r| < 2^22, r = 65536·hi + 256·mid + lo (hi in
[-64, 64]), every element within 2^-23·2^(e+1) of x (fp32's own rounding of the group's largest is 2^-24·2^(e+1)),
and two sums: xsum[0] = Σ hi, xsum[1] = Σ (256·mid + lo) (65536·Σ hi·q would not fit an int32 beside the rest:
the GEMV forms both parts exactly in int32 and adds them in fp32).
A group of largest |x| below 2^-60 is scaled by 2^60 first, so xs stays a nonzero float down to bfloat16's
smallest subnormal. A group holding a NaN or an inf gets a NaN scale: its row's output is NaN.

`quantized_gemv_x16` — codes u in [0, 2^b) (signed ints offset binary, u = q + 2^(b−1)) in the *plane* layout
(`plane_words`): per BN-column tile and group, `BITS` int32 word rows [G // 32, BN]; 8 planes, plane p holding
the G / 8 codes k = (G/8)·p + 4t + j of the group (t < G / 32, j < 4) as the bytes j of a column's word in row t,
each plane one or two masked shifts of the words (`plane_terms`). A plane's codes are consecutive in k, so x's
planes are x's own order: the quantizer gathers nothing (session 51: the plane order k = 32t + 4p + j had it
gather x per group, 5.7 against 3.9-4.5 us at K = 4096, 17.4 against 10.3-12.6 at K = 16384, M = 1, bf16 x):
    b | 8:  plane p = (word[p // (8/b)] >> b·(p % (8/b))) & mask_b per byte
    b = 3:  three words per row t; planes 0, 1 / 3, 4 / 6, 7 are bits 0-2 / 3-5 of the bytes of words 0 /
            1 / 2; planes 2 and 5 take their low two bits from bits 6-7 of words 0 and 1 and their top bit
            from bit 6 / 7 of word 2
so every byte of a plane is one code in [0, 2^b) and four consecutive k of a column are one i32 lane, the
shape of the u8·i8 dot. 2- and 4-bit codes may also come as the column-tiled words the CPU float kernels read
(`column_tiled`, 4-bit ones in bf16 pair order: `ORDERS`): the same word rows [G // 32, BN] per bit, the same
planes of their bytes, only the k each byte holds differs, so the quantizer writes x's planes in that order
(`x_order`, its ORDER) and the GEMV is unchanged; FLIP xors two's complement codes to offset binary first.
Per group g and column n:

    p    = Σ_planes dot([hi; lo] rows, plane bytes)         exact int32 sums per plane row
    P    = 256·p_hi + p_lo = Σ_k r·u                        exact int32 (|P| < 2^31 for G <= 256)
    Q    = P − OFFSET·xsum = Σ_k r·q                        (OFFSET = 2^(b−1) for signed ints, else 0)
    zero_mode none:  y += fp32(Q) · xs · s
    zero_mode post:  y += (fp32(Q) − fp32(xsum)·z) · xs · s
    zero_mode pre:   y += (fp32(Q)·s − fp32(xsum)·z) · xs

The TVM backend lowers each plane's dot to `vpdpbusd` (both rows share the plane's bytes) where the CPU has
AVX-512 VNNI (`lowbit/codegen/tvm/README.md`). Numerics: exact integer sums, one fp32 multiply-add per group
(as the a8 GEMV), against x as carried above; the result is the W4A16 GEMV's to ~2^-15 of a group's
largest |x| per element.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import lowbit.lang as T
from lowbit.kernels.gemv_a8 import _extremes, _ordered_group, group_term
from lowbit.kernels.layouts import aligned
from lowbit.lang import cdiv  # noqa: F401  (used in tensor shape strings)

X16_BITS = (1, 2, 3, 4)  # code widths with a plane layout
X16_ADTYPES = ("bfloat16", "float16", "float32")  # 16-bit floats in two int8 planes, float32 in three (PARTS)
X16_GROUPS = (32, 64, 128, 256)  # whole 32-code blocks, |P| < 2^31
PLANES = 8  # planes per 32-code block: 4 codes of a column each (one i32 lane of bytes)
EXPONENT_BITS = 0x7F800000  # float32's exponent field: amax & this = the power of two at or below amax
TINY = 2.0**-60  # groups of smaller largest |x| are scaled by 2^60 first (xs stays a normal-range product)


def plane_terms(bits: int) -> tuple[tuple[tuple[int, int, int], ...], ...]:
    """Per plane p (the same in every word row t of a group): the (word, shift, per-byte mask) terms whose masked
    shifts OR into the plane's bytes (byte j of word row t = code (G/8)·p + 4t + j of a column)."""
    if bits not in X16_BITS:
        raise ValueError(f"plane layout: {bits}-bit codes have none; use one of {X16_BITS}")
    if 8 % bits == 0:
        per = 8 // bits
        return tuple(((p // per, bits * (p % per), (1 << bits) - 1),) for p in range(PLANES))
    return (  # 3 bits: see the module docstring
        ((0, 0, 7),), ((0, 3, 7),), ((0, 6, 3), (2, 4, 4)),
        ((1, 0, 7),), ((1, 3, 7),), ((1, 6, 3), (2, 5, 4)),
        ((2, 0, 7),), ((2, 3, 7),),
    )  # fmt: skip


def plane_words(codes: np.ndarray, bits: int, group: int, bn: int) -> np.ndarray:
    """Unsigned codes [K, N] (each in [0, 2^bits)) in the plane layout: int32 [⌈N / bn⌉, K // group, bits,
    group // 32, bn] (padding columns hold code 0)."""
    codes = np.asarray(codes, np.int64)
    k, n = codes.shape
    if group % 32 or k % group:
        raise ValueError(f"plane layout: group {group} must be a multiple of 32 dividing K = {k}")
    nb = -(-n // bn)
    c = np.zeros((k, nb * bn), np.int64)
    c[:, :n] = codes
    # [K, N] -> [nb, groups, blocks, planes, 4 (byte j), bn]
    c = c.reshape(k // group, PLANES, group // 32, 4, nb, bn).transpose(4, 0, 2, 1, 3, 5)  # k = (G/8)·p + 4t + j
    words = np.zeros((nb, k // group, bits, group // 32, bn), np.int64)
    for p, terms in enumerate(plane_terms(bits)):
        for word, shift, mask in terms:
            for j in range(4):
                words[:, :, word] |= (c[:, :, :, p, j] & mask) << (shift + 8 * j)
    return aligned(words.astype(np.uint32).view(np.int32))


def _plane(words: list[Any], terms: tuple[tuple[int, int, int], ...]) -> Any:
    """Traced: one plane's bytes [G // 8, BN] int8 (values 0..2^b − 1) from the block's word rows [G // 32, BN]."""
    v = None
    for word, shift, mask in terms:
        t = (words[word] >> shift if shift else words[word]) & (mask * 0x01010101)
        v = t if v is None else v | t
    return T.cast(T.view(T.transpose(v), T.uint8).T, T.int8)


def _as_is(t: Any, BM: int, G: int) -> Any:
    """Traced: a row block's group [BM, G] as it is: the planes' order is x's own (plane p holds the G / 8
    consecutive k from (G / 8)·p), so the quantizer gathers nothing."""
    return t


ORDERS = ("planes", "words", "pairs")  # the weight words the GEMV reads: `plane_words`, `column_tiled`, its pairs


def x_order(order: str, bits: int) -> Any:
    """The quantizer's reorder of a group [BM, G] of x for weights whose words are in `order` (`ORDERS`):
    xq's element (plane p, 4t + j) must be the x of the code the GEMV finds in byte j of word row t at plane p
    (bits b·s of the byte of word row w·G/32 + t, p = (8/b)·w + s, `plane_terms`).
        planes: x's own order (`plane_words`);
        words:  column-tiled words (`column_tiled`: 32/b consecutive k a word, code i at bit b·i), so
                k = (G/b)·w + (32/b)·t + (8/b)·j + s: x as [w, t, j, s] read as [w, s, t, j];
        pairs:  4-bit words in bf16 pair order (k = 8r + 2s' + h at bit 16h + 4s'): with j = 2·j2 + j1,
                k = (G/4)·w + 8t + 4·j1 + 2s + j2: x as [w, t, j1, s, j2] read as [w, s, t, j2, j1].
    The GEMV reads the column-tiled copy the bf16 / fp32 kernels read (one copy of the weight serves both);
    the gather costs the quantizer ~1.5 us at K = 4096 (session 51)."""
    if order not in ORDERS or (order != "planes" and 8 % bits) or (order == "pairs" and bits != 4):
        raise ValueError(f"x16 order {order!r} with {bits}-bit codes: use 'planes', or 'words' / 'pairs' (4 bits)"
                         " for 2- or 4-bit codes")  # fmt: skip
    if order == "planes":
        return _as_is
    per = 8 // bits

    def reorder(t: Any, BM: int, G: int) -> Any:
        if order == "words":
            split, axes = (BM, bits, G // 32, 4, per), (0, 1, 4, 2, 3)
        else:
            split, axes = (BM, 4, G // 32, 2, 2, 2), (0, 1, 4, 2, 5, 3)
        return T.reshape(T.transpose(T.reshape(t, split), axes), (BM, G))

    return reorder


def flip_mask(bits: int) -> int:
    """The int32 whose xor turns each b-bit two's complement code of a word into its offset binary u = q + 2^(b-1)
    (the top bit of every field: 0x88888888 for 4 bits), as a signed int32 value."""
    word = sum(1 << (bits * i + bits - 1) for i in range(32 // bits))
    return word - (1 << 32) if word >= 1 << 31 else word


@T.kernel
def quantize_groups_x16(
    x: T.Tensor("adtype", ("M", "K")),
    xq: T.Tensor("int8", ("K // G", "MP", "PARTS", 8, "G // 8")),
    xs: T.Tensor("float32", ("MP", "K // G")),
    xsum: T.Tensor("int32", ("PARTS - 1", "MP", "K // G")),
    M: T.int32,
    MP: T.int32,
    K: T.int32,
    G: T.constexpr = 128,
    adtype: T.constexpr = "bfloat16",
    BM: T.constexpr = 1,
    PARTS: T.constexpr = 2,
    ORDER: T.constexpr = "planes",
    BITS: T.constexpr = 4,
):
    (pm,) = T.grid(T.cdiv(MP, BM))
    order = x_order(ORDER, BITS)
    bits = 8 * PARTS - 2  # |r| < 2^bits: 14 in two planes (hi in [-64, 64]), 22 in three
    for k0 in T.range(0, K, G, name="k0"):
        v = _ordered_group(x, pm, k0, BM, G, order)  # [BM, G] in the GEMV's order; rows >= M read 0
        amax, bad = _extremes(v)  # [BM, 1]: max |v|, and 1 where the group holds a NaN or an inf
        tiny = amax < TINY
        lift = T.where(tiny, 2.0**60, 1.0)  # exact
        pow2 = T.view(T.view(amax * lift, T.int32) & EXPONENT_BITS, T.float32)  # 2^e (0 when amax = 0)
        top = float(2 ** (bits - 1))
        inv = T.where(pow2 > 0.0, top / T.where(pow2 > 0.0, pow2, 1.0), 0.0) * lift  # 1 / xs, a power of two
        r = T.floor(T.where(bad > 0.0, 0.0, v) * inv + 0.5)  # |r| < 2^bits, exact
        parts = _split_bytes(r, PARTS)  # most significant first: r = Σ 256^(PARTS-1-i)·parts[i]
        scale = T.where(pow2 > 0.0, pow2 * (1.0 / top) * T.where(tiny, 2.0**-60, 1.0), 1.0)
        for plane, part in enumerate(parts):
            T.store(xq, (k0 // G, pm * BM, plane, 0, 0), T.reshape(T.cast(part, T.int8), (1, BM, 1, 8, G // 8)))
        T.store(xs, (pm * BM, k0 // G), T.where(bad > 0.0, float("nan"), scale))
        if PARTS == 2:
            sums = [r]
        else:  # the top plane's sum apart: 65536·Σ hi does not fit an int32 next to the rest
            sums = [parts[0], r - parts[0] * 65536.0]
        for i, part in enumerate(sums):
            total = T.sum(T.cast(part, T.int32), axis=1, keepdims=True)  # [BM, 1]
            T.store(xsum, (i, pm * BM, k0 // G), T.reshape(total, (1, BM, 1)))


def _split_bytes(r: Any, parts: int) -> list[Any]:
    """Traced: integers r (fp32, exact) as `parts` signed bytes, most significant first: the low ones in
    [-128, 127], the top one what is left (|r| < 2^(8·parts − 2): within [-64, 64])."""
    out = []
    for _ in range(parts - 1):
        up = T.floor((r + 128.0) * 0.00390625)
        out.append(r - up * 256.0)
        r = up
    return [r, *reversed(out)]


@T.kernel
def quantized_gemv_x16(
    xq: T.Tensor("int8", ("K // G", "MP", "PARTS", 8, "G // 8")),
    xs: T.Tensor("float32", ("MP", "K // G")),
    xsum: T.Tensor("int32", ("PARTS - 1", "MP", "K // G")),
    w: T.Tensor("int32", ("cdiv(N, BN)", "K // G", "BITS", "G // 32", "BN")),
    scales: T.Tensor("sdtype", ("cdiv(N, BN)", "K // G", "BN")),
    zeros: T.Tensor("sdtype", ("cdiv(N, BN)", "K // G", "BN")),
    y: T.Tensor("ydtype", ("M", "N")),
    M: T.int32,
    MP: T.int32,
    N: T.int32,
    K: T.int32,
    BITS: T.constexpr = 3,
    OFFSET: T.constexpr = 4,
    zero_mode: T.constexpr = "none",
    G: T.constexpr = 128,
    ydtype: T.constexpr = "bfloat16",
    sdtype: T.constexpr = "float16",
    BM: T.constexpr = 1,
    BN: T.constexpr = 16,
    TILES: T.constexpr = 1,
    PARTS: T.constexpr = 2,
    FLIP: T.constexpr = 0,
):
    # row tiles innermost: a column tile's row tiles run back to back on one thread, its words still in L1 / L2
    # (session 56, BM = 4, bf16 x, a ring of weights, in one process: 0.97-0.98x the time of row tiles outermost
    # at 4096² M = 8-32, int4; 0.93-0.96x at 11008x4096 M = 8 / 16, int2 fp16 x)
    pb, pm = T.grid(T.cdiv(N, BN * TILES), T.cdiv(M, BM))
    terms = plane_terms(BITS)
    lanes = T.arange(0, PARTS)
    low = T.reshape(T.where(lanes == PARTS - 2, 256, T.where(lanes == PARTS - 1, 1, 0)), (1, PARTS, 1))
    accs = [T.zeros((BM, BN), T.float32, name=f"acc{t}") for t in range(TILES)]
    for k0 in T.range(0, K, G, name="k0"):
        g = k0 // G
        for t in range(TILES):  # trace-time loop: TILES column tiles per program, each its own stream
            pn = pb * TILES + t
            acc = accs[t]
            words = [T.reshape(T.load(w, (pn, g, i, 0, 0), (1, 1, 1, G // 32, BN)), (G // 32, BN)) for i in range(BITS)]
            if FLIP:  # two's complement codes read as offset binary u = q + 2^(b-1): one xor a word
                words = [v ^ flip_mask(BITS) for v in words]
            # every plane's operands first, then the eight dots back to back: a chain the backend runs with its
            # sums kept in registers (the TVM backend's `_vnni_chain`)
            xs_planes = [
                T.reshape(T.load(xq, (g, pm * BM, 0, plane, 0), (1, BM, PARTS, 1, G // 8)), (PARTS * BM, G // 8))
                for plane in range(PLANES)
            ]
            bytes_planes = [_plane(words, terms[plane]) for plane in range(PLANES)]
            p = T.dot(xs_planes[0], bytes_planes[0], acc_dtype=T.int32)  # [PARTS·BM, BN]
            for plane in range(1, PLANES):
                p += T.dot(xs_planes[plane], bytes_planes[plane], acc_dtype=T.int32)
            sx = T.load(xs, (pm * BM, g), (BM, 1))
            asum = T.reshape(T.load(xsum, (PARTS - 2, pm * BM, g), (1, BM, 1)), (BM, 1))  # Σ of the low planes
            parts = T.reshape(p, (BM, PARTS, BN))
            big = T.sum(parts * low, axis=1)  # [BM, BN]: Σ (256·mid + lo)·u, exact
            if OFFSET:
                big = big - asum * OFFSET  # Σ (256·mid + lo)·q, exact
            if PARTS == 3:  # 65536·Σ hi·q does not fit an int32 beside it: the two sums meet in fp32
                hsum = T.reshape(T.load(xsum, (0, pm * BM, g), (1, BM, 1)), (BM, 1))
                top = T.sum(parts * T.reshape(T.where(lanes == 0, 1, 0), (1, PARTS, 1)), axis=1)  # Σ hi·u
                if OFFSET:
                    top = top - hsum * OFFSET
                big = T.cast(top, T.float32) * 65536.0 + T.cast(big, T.float32)
                asum = T.cast(hsum, T.float32) * 65536.0 + T.cast(asum, T.float32)  # Σ r
            s = T.reshape(T.cast(T.load(scales, (pn, g, 0), (1, 1, BN)), T.float32), (1, BN))
            z = None if zero_mode == "none" else T.load(zeros, (pn, g, 0), (1, 1, BN))
            acc += group_term(big, asum, sx, s, z, zero_mode)
    for t in range(TILES):
        T.store(y, (pm * BM, (pb * TILES + t) * BN), T.cast(accs[t], y.dtype))


__all__ = [
    "ORDERS",
    "X16_ADTYPES",
    "X16_BITS",
    "X16_GROUPS",
    "flip_mask",
    "plane_terms",
    "plane_words",
    "quantize_groups_x16",
    "quantized_gemv_x16",
    "x_order",
]

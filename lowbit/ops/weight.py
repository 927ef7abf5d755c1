"""`QuantizedWeight` and `quantize`: a linear layer's weight in the form the kernel library consumes.

A weight W[N, K] (torch `Linear.weight` convention: out_features × in_features) becomes codes [K, N] of a
low-bit dtype packed by a `PackedLayout`, plus per-group parameters [K // G, N] (one row per channel when
G = -1). Schemes:

  "w_a16"         any int1..int8 / uint1..uint8 / fp eXmY code dtype, group size 32/64/128/... or -1;
                  symmetric ŵ = q·s, or asymmetric with a post-scale integer zero ŵ = (q − z)·s (AWQ) or a
                  pre-scale float zero ŵ = q·s − z; float formats are symmetric. Activations stay float.
  "w4a8_group"    QoQ progressive (lowbit.quant.qoq): uint{b} codes, int8 level-2 scales s2 and zeros z per
                  group, fp16 level-1 channel scale s1: ŵ = s1[n]·(q − z)·s2. Activations go per-token int8.
  "w4a8_channel"  QServe per-channel: uint{b} codes, fp16 scale and integer zero per channel:
                  ŵ = (q − z)·s. Activations go per-token int8.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from lowbit.dtypes import DataType, decode, encode
from lowbit.dtypes import dtype as as_dtype
from lowbit.ir.layout import PackedLayout
from lowbit.kernels.layouts import aligned, weight_layout
from lowbit.quant import (
    IntGrid,
    ZeroConvention,
    format_scale,
    quantize_groupwise,
    quantize_qoq,
    quantize_w4a8_per_channel,
    resolve_group_size,
)

SCHEMES = ("w_a16", "w4a8_group", "w4a8_channel")
ZERO_MODES = ("none", "post", "pre")
SCALE_DTYPES = ("float16", "float32")


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A quantized linear weight (see the module docstring for the schemes).

    shape = (N, K); `words` = `layout.pack(codes)` of the [K, N] code bit patterns; scales/zeros [groups, N]
    (w_a16: scale_dtype; w4a8_group: int8 s2 and z; w4a8_channel: fp16 scale, int32 zero);
    channel_scales [N] fp16: the level-1 scale s1 of w4a8_group, else None.
    """

    dtype: DataType
    group_size: int
    zero_mode: str
    shape: tuple[int, int]
    layout: PackedLayout
    words: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray | None
    scheme: str = "w_a16"
    channel_scales: np.ndarray | None = None

    def __post_init__(self) -> None:
        # the kernels' vector loads start on cache lines: NumPy's arrays are only 16-byte aligned (`aligned`)
        for name in ("words", "scales", "zeros", "channel_scales"):
            a = getattr(self, name)
            if isinstance(a, np.ndarray):
                object.__setattr__(self, name, aligned(a))

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def groups(self) -> int:
        return 1 if self.group_size == -1 else self.in_features // self.group_size

    def codes(self) -> np.ndarray:
        """The [K, N] code bit patterns, unpacked from `words`."""
        return self.layout.unpack(self.words)

    def dequantize(self) -> np.ndarray:
        """Ŵ[N, K] float32, computed in float64 by NumPy from the stored codes and parameters (no kernel)."""
        return np.ascontiguousarray(self._dequantized(self.codes()).T).astype(np.float32)  # [N, K]

    def _dequantized(self, codes: np.ndarray, cols: slice = slice(None)) -> np.ndarray:
        """Ŵᵀ[K, columns] float64 of the [K, N] `codes` restricted to `cols`."""
        k = self.in_features
        rows = k if self.group_size == -1 else self.group_size
        q = decode(self.dtype, codes[:, cols]).astype(np.float64)  # q: [K, n]
        s = np.repeat(self.scales[:, cols].astype(np.float64), rows, axis=0)  # s: [K, n]
        z = 0.0 if self.zeros is None else np.repeat(self.zeros[:, cols].astype(np.float64), rows, axis=0)
        w = q * s - z if self.zero_mode == "pre" else (q - z) * s
        if self.channel_scales is not None:
            w = w * self.channel_scales[cols].astype(np.float64)[None, :]
        return w

    @cached_property
    def fits_float16(self) -> bool:
        """Whether Ŵ survives rounding to float16, what `quantized_gemm` does to a dequantized tile before its
        dot with float16 activations: no |ŵ| past 65504 (it would be inf), and per output channel the rounding
        error's L1 norm at most 2^-10 of the channel's (float16's normal range rounds within 2^-11 of each
        value; channels of weights below ~6e-5 lose their bits to float16's subnormals). `quantized_linear`
        runs a weight that fails on the GEMV, which rounds nothing before its fp32 accumulator. Decided from
        the parameters alone when every value a group can take is 0 or in float16's normal range (`_value_range`:
        no rounding past 2^-11 anywhere); else one pass over the codes, in column chunks. Computed once."""
        big = float(np.finfo(np.float16).max)
        hi, lo = self._value_range()
        if hi.max(initial=0.0) > big or not np.isfinite(hi).all():
            return False
        if lo.min(initial=np.inf) >= 2.0**-14:
            return True
        codes = self.codes()
        k, n = codes.shape
        step = max(1, (1 << 22) // max(k, 1))
        for c0 in range(0, n, step):
            w = self._dequantized(codes, slice(c0, c0 + step)).astype(np.float32)
            err = np.abs(w.astype(np.float16).astype(np.float32) - w).sum(axis=0, dtype=np.float64)
            if (err > np.abs(w).sum(axis=0, dtype=np.float64) * 2.0**-10).any():
                return False
        return True

    def _value_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per group and column [groups, N]: the largest |ŵ| any code can give, and the smallest nonzero one
        (float64, from the parameters and the dtype's finite values; w_a16 only, else (inf, 0): unknown). Integer
        codes are a run of integers q, and ŵ = (q − c)·s with c = z (post) or z / s (pre), so the extremes sit at
        the grid's ends and the smallest nonzero |ŵ| at the q next to c."""
        if self.scheme != "w_a16" or self.channel_scales is not None:
            return np.full(1, np.inf), np.zeros(1)
        s = self.scales.astype(np.float64)
        z = np.zeros_like(s) if self.zeros is None else self.zeros.astype(np.float64)
        if self.dtype.is_float:
            v = np.abs(decode(self.dtype, np.arange(1 << self.dtype.bits)).astype(np.float64))
            v = v[np.isfinite(v)]
            return np.abs(s) * v.max(initial=0.0), np.abs(s) * v[v > 0].min(initial=np.inf)
        grid = IntGrid.of(self.dtype)
        c = z / np.where(s == 0, 1.0, s) if self.zero_mode == "pre" else z
        q = np.clip(np.floor(c)[..., None] + np.arange(-1, 3), grid.qmin, grid.qmax)  # the codes nearest c
        ends = np.array([grid.qmin, grid.qmax], np.float64)

        def value(q: np.ndarray) -> np.ndarray:  # exactly as `_dequantized` computes it
            sq, zq = s[..., None], z[..., None]
            return np.abs(q * sq - zq if self.zero_mode == "pre" else (q - zq) * sq)

        near = value(q)
        return value(ends).max(axis=-1), np.where(near > 0, near, np.inf).min(axis=-1)

    def __repr__(self) -> str:
        g = "per-channel" if self.group_size == -1 else f"g{self.group_size}"
        return (
            f"QuantizedWeight({self.scheme}, {self.dtype.name} {g} zero={self.zero_mode}, "
            f"shape={self.shape}, layout={self.layout})"
        )


def _weight_array(w: Any) -> np.ndarray:
    if hasattr(w, "detach"):  # a torch tensor (no torch import needed)
        w = w.detach().float().cpu().numpy()
    try:
        arr = np.asarray(w, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"w of type {type(w).__name__} is not an array; pass a [N, K] numpy array or tensor") from e
    if arr.ndim != 2:
        raise ValueError(f"w has shape {arr.shape}; pass a 2-D weight [out_features, in_features] (N, K)")
    if arr.size == 0:
        raise ValueError(f"w has shape {arr.shape}; a weight needs at least one output and one input feature")
    if not np.isfinite(arr).all():
        raise ValueError("w has NaN or inf entries; quantize finite weights")
    return arr


def _code_dtype(name: Any, scheme: str) -> DataType:
    if name is None:
        name = "int4" if scheme == "w_a16" else "uint4"
    try:
        dt = as_dtype(name)
    except (ValueError, TypeError) as e:
        raise ValueError(f"dtype {name!r}: {e}") from None
    if dt.bits > 8 or not (dt.is_integer or dt.is_float) or dt.is_bool:
        raise ValueError(
            f"dtype {dt.name} has {dt.bits} bits; quantized weights use 1..8-bit codes: int1..int8, "
            f"uint1..uint8 or fpN_eXmY (e.g. fp4_e2m1)"
        )
    if scheme != "w_a16" and not (dt.is_integer and not dt.is_signed):
        raise ValueError(f"dtype {dt.name} with scheme {scheme!r}: W4A8 weights are unsigned codes; use uint4")
    if scheme == "w4a8_channel" and dt.bits > 7:
        raise ValueError(f"dtype {dt.name} with scheme 'w4a8_channel': codes are cast to int8; use uint1..uint7")
    return dt


def quantize(
    w: Any,
    dtype: str | DataType | None = None,
    group_size: int = 128,
    *,
    symmetric: bool | None = None,
    zero_mode: str | None = None,
    scheme: str = "w_a16",
    scale_dtype: str = "float16",
    layout: str | PackedLayout = "row",
    tile: tuple[int, int] | None = None,
) -> QuantizedWeight:
    """Quantize a linear weight w[N, K] (numpy array or torch tensor) round-to-nearest per group along K.

    dtype: code dtype (default int4; uint4 for the W4A8 schemes). group_size: a divisor of K or -1.
    symmetric: default True for signed ints of >= 2 bits and float formats (which must be symmetric), False
    for unsigned ints. zero_mode for asymmetric weights: "post" (default, integer zero) or "pre" (float zero).
    scheme: "w_a16" | "w4a8_group" | "w4a8_channel". scale_dtype: "float16" | "float32" (w_a16).
    layout: "row" (packed along K), "reordered" (`lowbit.kernels.layouts.reordered_packed` with `tile`; None:
    (128, 32) with BK rounded up to whole 16-byte fragments, `default_tile(bits)`) or a
    PackedLayout of the [K, N] codes. Everything is validated before any quantization work; errors are
    ValueErrors naming the argument, its value and a fix.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme {scheme!r} is not known; use one of {list(SCHEMES)}")
    arr = _weight_array(w)
    n, k = arr.shape
    dt = _code_dtype(dtype, scheme)
    if scheme == "w4a8_channel" and group_size not in (-1, k):
        group_size = -1  # per channel by definition; the argument's default (128) is ignored
    if not isinstance(group_size, (int, np.integer)) or isinstance(group_size, bool):
        raise ValueError(f"group_size {group_size!r} is not an int; use 32, 64, 128 or -1 (per channel)")
    try:
        g = resolve_group_size(int(group_size), k, axis_name="in_features K")
    except ValueError as e:
        raise ValueError(f"group_size: {e}") from None
    group_size = -1 if g == k else g
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype {scale_dtype!r} is not supported; use one of {list(SCALE_DTYPES)}")
    mode = _zero_mode(dt, scheme, symmetric, zero_mode)
    if tile is not None and not (isinstance(layout, str) and layout == "reordered"):
        raise ValueError(
            f"tile {tile} sets the 'reordered' layout's tile; layout {layout!r} takes none: drop tile or pass "
            "layout='reordered'"
        )
    lay = weight_layout(layout, (k, n), dt.bits, tile)  # validates the layout before the heavy work
    if scheme == "w_a16":
        _check_parameter_range(arr, dt, g, mode, np.dtype(scale_dtype))
    else:
        _check_w4a8_range(arr, dt, scheme)

    scales: np.ndarray
    zeros: np.ndarray | None = None
    channel_scales = None
    if scheme == "w4a8_group":
        qw = quantize_qoq(arr, bits=dt.bits, group_size=g)
        codes = qw.codes.T  # [K, N]
        scales, zeros, channel_scales = qw.s2.T.astype(np.int8), qw.zeros.T.astype(np.int8), qw.s1
    elif scheme == "w4a8_channel":
        gq = quantize_w4a8_per_channel(arr, bits=dt.bits)
        assert gq.zeros is not None  # asymmetric by construction
        codes = gq.codes.T
        scales, zeros = gq.scales.T.astype(np.float16), gq.zeros.T.astype(np.int32)  # [1, N]
    elif dt.is_float:
        codes, scales = _quantize_float(arr, dt, g, np.dtype(scale_dtype))
    else:
        gq = quantize_groupwise(
            arr,
            bits=dt,
            group_size=g,
            symmetric=mode == "none",
            zero_convention=ZeroConvention.PRE_SCALE if mode == "pre" else ZeroConvention.POST_SCALE,
            scale_dtype=np.dtype(scale_dtype),
        )
        codes = encode(dt, gq.codes.T)  # values -> bit patterns, [K, N]
        scales = gq.scales.T.astype(scale_dtype)
        zeros = None if gq.zeros is None else gq.zeros.T.astype(scale_dtype)  # post zeros are small ints: exact
    words = lay.pack(np.ascontiguousarray(codes))
    return QuantizedWeight(
        dt,
        group_size,
        mode,
        (n, k),
        lay,
        words,
        np.ascontiguousarray(scales),
        None if zeros is None else np.ascontiguousarray(zeros),
        scheme,
        channel_scales,
    )


def retile_columns(qw: QuantizedWeight, bn: int = 32, *, pairs: bool = False) -> QuantizedWeight:
    """The same weight in `lowbit.kernels.layouts.column_tiled(bn, pairs=pairs)` (the CPU decode GEMV's layout):
    a word permutation of the row layout (same codes, scales and zeros), then with `pairs` each word's codes
    in pair order (even k in the low half); a weight already tiled so is returned as is. Other layouts are
    unpacked and packed again (slow, exact)."""
    from lowbit.kernels.layouts import column_tiled, row_packed

    n, k = qw.shape
    bits = qw.dtype.bits
    tiled = column_tiled((k, n), bits, bn, pairs=pairs)
    if qw.layout == tiled:
        return qw
    if pairs and qw.layout == row_packed((k, n), bits):
        plain = retile_columns(qw, bn)
        words = _pair_order(plain.words, bits)
    elif qw.layout == row_packed((k, n), bits):  # a word permutation at every width (⌊32/bits⌋ codes a word)
        rows = qw.words.reshape(-1, n)  # [⌈K / per_word⌉, N]
        nt = -(-n // bn)
        if nt * bn != n:
            rows = np.concatenate([rows, np.zeros((rows.shape[0], nt * bn - n), rows.dtype)], axis=1)
        words = np.ascontiguousarray(rows.reshape(rows.shape[0], nt, bn).transpose(1, 0, 2)).reshape(tiled.word_shape)
    else:
        words = tiled.pack(qw.codes())
    return QuantizedWeight(
        qw.dtype, qw.group_size, qw.zero_mode, qw.shape, tiled, words, qw.scales, qw.zeros, qw.scheme,
        qw.channel_scales,
    )  # fmt: skip


def pad_columns(qw: QuantizedWeight, n_pad: int) -> QuantizedWeight:
    """The weight with `n_pad` >= N output columns in the row layout: columns N.. have code 0, scale 0 and zero 0,
    so they compute 0 in every zero mode and dtype (code 0 decodes to a finite value), and columns < N are
    `qw`'s. Row-layout words are padded as words; any other layout is unpacked and packed again. The CPU
    launchers run a ragged N on it (`ops.linear.PaddedLaunch`)."""
    from lowbit.kernels.layouts import row_packed

    n, k = qw.shape
    if n_pad < n:
        raise ValueError(f"pad_columns: n_pad={n_pad} is below the weight's N={n}; pass n_pad >= {n}")
    if n_pad == n:
        return qw
    layout = row_packed((k, n_pad), qw.dtype.bits)
    if qw.layout == row_packed((k, n), qw.dtype.bits):
        rows = qw.words.reshape(-1, n)  # [⌈K / per_word⌉, N]: a word holds codes of one column
        words = np.zeros((rows.shape[0], n_pad), rows.dtype)
        words[:, :n] = rows
        words = words.reshape(layout.word_shape)
    else:
        codes = np.zeros((k, n_pad), np.uint32)
        codes[:, :n] = qw.codes()
        words = layout.pack(codes)

    def wide(a: np.ndarray) -> np.ndarray:
        out = np.zeros((*a.shape[:-1], n_pad), a.dtype)
        out[..., :n] = a
        return out

    zeros = None if qw.zeros is None else wide(qw.zeros)
    channel = None if qw.channel_scales is None else wide(qw.channel_scales)
    return QuantizedWeight(
        qw.dtype, qw.group_size, qw.zero_mode, (n_pad, k), layout, words, wide(qw.scales), zeros, qw.scheme, channel,
    )  # fmt: skip


def _pair_order(words: np.ndarray, bits: int) -> np.ndarray:
    """Words of per = ⌊32/bits⌋ codes (slot p = k mod per) with slot p = 2s + h moved to h·per/2 + s.
    Written here instead of `column_tiled(pairs=True).pack(codes)` because it is a shuffle within each word:
    11008x4096 int4 in 0.04 s against 11.4 s through the layout's pack (the tests check both agree)."""
    per = 32 // bits
    w = words.view(np.uint32)
    mask = np.uint32((1 << bits) - 1)
    out = np.zeros_like(w)
    for p in range(per):
        q = (p % 2) * (per // 2) + p // 2
        out |= ((w >> np.uint32(p * bits)) & mask) << np.uint32(q * bits)
    return out.view(words.dtype)


def offset_binary(qw: QuantizedWeight) -> QuantizedWeight:
    """An int4 w_a16 weight without zero point (ŵ = q·s) as the equal uint4 weight u = q + 8 with zero point 8
    (ŵ = (u − 8)·s, exactly the same values): every word xor 0x88888888, in any layout of whole 8-nibble
    words. What the a8 decode GEMV reads without its per-word xor (`lowbit.kernels.gemv_a8`, biased=True).
    Other weights are returned as they are."""
    if qw.dtype.name != "int4" or qw.zero_mode != "none" or qw.scheme != "w_a16":
        return qw
    if qw.layout.word_bits != 32 or qw.layout.per_word != 8:
        return qw
    words = qw.words ^ np.array(0x88888888, dtype=np.uint32).astype(qw.words.dtype)
    zeros = np.full(qw.scales.shape, 8, dtype=qw.scales.dtype)
    return QuantizedWeight(
        as_dtype("uint4"), qw.group_size, "post", qw.shape, qw.layout, words, qw.scales, zeros, qw.scheme,
        qw.channel_scales,
    )  # fmt: skip


def constant_offset(qw: QuantizedWeight) -> int:
    """2^(b-1) where `qw` is an offset-binary weight: unsigned b-bit codes whose post zero points are all 2^(b-1)
    (what `offset_binary` and `lowbit.ops.x16.x16_weight` make of a signed weight; kernels run it as the signed
    codes' constant offset and read no zeros); else 0. Kept on the weight."""
    if qw.dtype.is_signed or qw.zero_mode != "post" or qw.zeros is None:
        return 0
    flag = qw.__dict__.get("_constant_offset")
    if flag is None:
        half = 1 << (qw.dtype.bits - 1)
        flag = qw.__dict__["_constant_offset"] = half if bool(np.all(qw.zeros == half)) else 0
    return int(flag)


def is_offset_binary(qw: QuantizedWeight) -> bool:
    """Whether `qw` is a uint4 weight whose zero points are all 8 (what `offset_binary` makes)."""
    return qw.dtype.name == "uint4" and constant_offset(qw) == 8


def pack_quantized(
    values: Any,
    scales: Any,
    zeros: Any = None,
    *,
    dtype: str | DataType,
    group_size: int,
    zero_mode: str | None = None,
    scheme: str = "w_a16",
    channel_scales: Any = None,
    scale_dtype: str = "float16",
    layout: str | PackedLayout = "row",
    tile: tuple[int, int] | None = None,
) -> QuantizedWeight:
    """Build a `QuantizedWeight` from codes and parameters an algorithm already decided (GPTQ, AWQ, imports).

    Everything is given in the orientation of the weight W[N, K] it stands for (not the stored [K, N]):
      values         [N, K] code *values* on `dtype`'s grid: integers in [min, max] for intN/uintN (e.g.
                     −8..7 for int4), exactly representable values for fpN_eXmY
      scales, zeros  [N, groups] (groups = K // group_size, 1 for group_size -1); zeros None iff zero_mode
                     is "none". w_a16: stored in `scale_dtype`; w4a8_group: int8 s2 and z; w4a8_channel:
                     fp16 scale and int32 zero (one group)
      channel_scales [N] fp16 level-1 scale s1 (w4a8_group only)
    zero_mode: "none" | "post" | "pre"; default "post" when zeros are given, else "none".
    Ŵ = dequantize() follows the module docstring: (q − z)·s ("post"), q·s − z ("pre"), q·s ("none"), times
    s1 for w4a8_group. Parameters must be exactly representable in their stored dtype (round them first, e.g.
    with `lowbit.quant.storage_scale`), so that dequantize() reproduces what the caller computed; nothing is
    rounded here. Raises ValueError naming the argument, the offending value and a fix.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme {scheme!r} is not known; use one of {list(SCHEMES)}")
    dt = _code_dtype(dtype, scheme)
    v = np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"values has shape {v.shape}; pass code values of shape [N, K] (the weight's orientation)")
    n, k = v.shape
    if not isinstance(group_size, (int, np.integer)) or isinstance(group_size, bool):
        raise ValueError(f"group_size {group_size!r} is not an int; use 32, 64, 128 or -1 (per channel)")
    try:
        g = resolve_group_size(int(group_size), k, axis_name="in_features K")
    except ValueError as e:
        raise ValueError(f"group_size: {e}") from None
    if scheme == "w4a8_channel" and g != k:
        raise ValueError(f"group_size {group_size} with scheme 'w4a8_channel': it is per channel; use -1")
    groups = k // g
    if zero_mode is None:
        zero_mode = "none" if zeros is None else "post"
    mode = _zero_mode(dt, scheme, None, zero_mode)
    lay = weight_layout(layout, (k, n), dt.bits, tile)
    codes = _values_to_codes(dt, v)  # [K, N]

    sdt: np.dtype[Any]
    zdt: np.dtype[Any]
    if scheme == "w4a8_group":
        sdt, zdt = np.dtype(np.int8), np.dtype(np.int8)
    elif scheme == "w4a8_channel":
        sdt, zdt = np.dtype(np.float16), np.dtype(np.int32)
    elif scale_dtype in SCALE_DTYPES:
        sdt = zdt = np.dtype(scale_dtype)
    else:
        raise ValueError(f"scale_dtype {scale_dtype!r} is not supported; use one of {list(SCALE_DTYPES)}")
    s = _exact_param(scales, "scales", (n, groups), sdt)
    if not np.all(s.astype(np.float64) > 0):
        raise ValueError(f"scales has non-positive entries (min {s.min()}); scales must be > 0 (see storage_scale)")
    z: np.ndarray | None = None
    if mode == "none":
        if zeros is not None:
            raise ValueError(f"zeros given for zero_mode 'none' (dtype {dt.name}); drop zeros or use zero_mode='post'")
    else:
        if zeros is None:
            raise ValueError(f"zero_mode {mode!r} needs zeros [N, groups] = [{n}, {groups}]; pass zeros")
        z = _exact_param(zeros, "zeros", (n, groups), zdt)
        if mode == "post" and not np.array_equal(z, np.rint(z.astype(np.float64))):
            raise ValueError("zeros are not integers, but zero_mode 'post' keeps them in code space; use 'pre'")
    cs = None
    if scheme == "w4a8_group":
        if channel_scales is None:
            raise ValueError(f"scheme 'w4a8_group' needs channel_scales [N] = [{n}] (QoQ level-1 s1, fp16)")
        cs = _exact_param(np.asarray(channel_scales).reshape(-1, 1), "channel_scales", (n, 1), np.dtype(np.float16))
        cs = cs.reshape(n)
        assert z is not None  # w4a8 is asymmetric
        w8 = (v - np.repeat(z.astype(np.float64), g, axis=1)) * np.repeat(s.astype(np.float64), g, axis=1)
        if w8.min() < -128 or w8.max() > 127:
            raise ValueError(
                f"w4a8_group: (q − z)·s2 spans [{w8.min():.0f}, {w8.max():.0f}], outside int8 [−128, 127]; "
                f"the W4A8 kernel rebuilds int8 weights, so choose s2/z that keep every code in range"
            )
    elif channel_scales is not None:
        raise ValueError(f"channel_scales is only used by scheme 'w4a8_group', not {scheme!r}; drop it")
    return QuantizedWeight(
        dt,
        -1 if g == k else g,
        mode,
        (n, k),
        lay,
        lay.pack(codes),
        np.ascontiguousarray(s.T),
        None if z is None else np.ascontiguousarray(z.T),
        scheme,
        cs,
    )


def _values_to_codes(dt: DataType, v: np.ndarray) -> np.ndarray:
    # v: [N, K] code values -> [K, N] bit patterns, refusing anything not exactly on the grid
    if not np.all(np.isfinite(v)):
        raise ValueError("values has NaN or inf entries; pass code values on the dtype's grid")
    if dt.is_integer:
        lo, hi = float(dt.min), float(dt.max)
        bad = (v != np.rint(v)) | (v < lo) | (v > hi)
        if bad.any():
            raise ValueError(
                f"values[{', '.join(map(str, np.argwhere(bad)[0]))}] = {v[bad][0]} is not an integer code of "
                f"{dt.name} (range [{dt.min}, {dt.max}]); round and clip to the grid first"
            )
    codes = encode(dt, np.ascontiguousarray(v.T))
    if dt.is_float:
        back = decode(dt, codes).astype(np.float64)
        if not np.array_equal(back, v.T):
            i = np.argwhere(back != v.T)[0]
            raise ValueError(f"values[{i[1]}, {i[0]}] = {v.T[tuple(i)]} is not a {dt.name} value; encode/round first")
    return codes


def _exact_param(a: Any, name: str, shape: tuple[int, int], dt: np.dtype) -> np.ndarray:
    a = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}; expected [N, groups] = {list(shape)} (weight orientation)")
    a64 = a.astype(np.float64)
    if not np.all(np.isfinite(a64)):
        raise ValueError(f"{name} has NaN or inf entries")
    with np.errstate(over="ignore", invalid="ignore"):
        stored = a64.astype(dt)
    if not np.array_equal(stored.astype(np.float64), a64):
        i = tuple(np.argwhere(stored.astype(np.float64) != a64)[0])
        raise ValueError(
            f"{name}{list(i)} = {a64[i]!r} is not exactly representable as {dt}; round it to {dt} first "
            f"(dequantize() must reproduce the caller's values)"
        )
    return stored


def _zero_mode(dt: DataType, scheme: str, symmetric: bool | None, zero_mode: str | None) -> str:
    if zero_mode is not None and zero_mode not in ZERO_MODES:
        raise ValueError(f"zero_mode {zero_mode!r} is not known; use one of {list(ZERO_MODES)}")
    if scheme != "w_a16":
        if symmetric or zero_mode not in (None, "post"):
            raise ValueError(f"scheme {scheme!r} is asymmetric with an integer zero; drop symmetric/zero_mode")
        return "post"
    if dt.is_float:
        if symmetric is False or zero_mode not in (None, "none"):
            raise ValueError(f"dtype {dt.name} is a float format, quantized symmetrically; drop symmetric/zero_mode")
        return "none"
    if symmetric is None:
        symmetric = zero_mode == "none" or (zero_mode is None and dt.is_signed and dt.bits >= 2)
    if symmetric:
        if not dt.is_signed or dt.bits < 2:
            raise ValueError(
                f"symmetric=True with dtype {dt.name}: a symmetric grid needs a signed dtype of >= 2 bits; "
                f"use symmetric=False or a dtype like int4"
            )
        if zero_mode not in (None, "none"):
            raise ValueError(f"symmetric=True has no zero point, but zero_mode={zero_mode!r}; drop one of them")
        return "none"
    if zero_mode == "none":
        raise ValueError("symmetric=False needs a zero point; use zero_mode='post' or 'pre'")
    return zero_mode or "post"


def _check_parameter_range(w: np.ndarray, dt: DataType, g: int, mode: str, sdt: np.dtype) -> None:
    """Refuse a weight whose group scales (or "pre" float zeros) `sdt` cannot hold: `storage_scale` would
    saturate them at the dtype's largest value, and the weight would come back as something else, with no sign.
    (Tiny scales are kept: `storage_scale` floors them at the smallest subnormal, and `dequantize` and every
    kernel agree on what that gives.) The parameters are those `quantize` computes (min-max per group), in
    float64; one pass over w."""
    big = float(np.finfo(sdt).max)
    n, k = w.shape
    wg = w.reshape(n, k // g, g)
    hi, lo = wg.max(axis=-1).astype(np.float64), wg.min(axis=-1).astype(np.float64)
    if dt.is_float:
        scale, what = np.maximum(hi, -lo) / float(dt.max), "scale"
    elif mode == "none":
        scale, what = np.maximum(hi, -lo) / IntGrid.of(dt).qmax, "scale"
    else:
        grid = IntGrid.of(dt)
        scale, what = (hi - lo) / grid.steps, "scale"
        if mode == "pre":  # z' = qmin·s − min(w): a group far from 0 needs a big float zero
            zero = np.abs(grid.qmin * scale - lo)
            if zero.max() > big:
                scale, what = zero, "float zero point"
    if scale.max() > big:
        r, j = np.unravel_index(int(np.argmax(scale)), scale.shape)
        raise ValueError(
            f"w: row {r}, group {j} (|w| up to {max(abs(hi[r, j]), abs(lo[r, j])):.3g}) needs a {what} of "
            f"{scale[r, j]:.3g}, beyond scale_dtype {sdt.name}'s largest value {big:.6g}; pass "
            f"scale_dtype='float32'" + (" or zero_mode='post'" if what != "scale" else "")
        )


def _check_w4a8_range(w: np.ndarray, dt: DataType, scheme: str) -> None:
    """`_check_parameter_range` for the W4A8 schemes, whose per-channel scale is float16 by format: QoQ's
    level-1 s1 = max|w| / 127 (w4a8_group), QServe's (max − min) / (2^b − 1) (w4a8_channel)."""
    big = float(np.finfo(np.float16).max)
    hi, lo = w.max(axis=1).astype(np.float64), w.min(axis=1).astype(np.float64)
    if scheme == "w4a8_group":
        scale = np.maximum(hi, -lo) / 127
    else:
        scale = (hi - lo) / IntGrid.of(dt).steps
    if scale.max() > big:
        r = int(np.argmax(scale))
        raise ValueError(
            f"w: row {r} (|w| up to {max(abs(hi[r]), abs(lo[r])):.3g}) needs a per-channel scale of {scale[r]:.3g}, "
            f"beyond float16's {big:.6g}, which scheme {scheme!r} stores it in; rescale the weight (e.g. fold a "
            "factor into the next layer) or use scheme='w_a16' with scale_dtype='float32'"
        )


def _quantize_float(w: np.ndarray, dt: DataType, g: int, sdt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    # symmetric per group: s = amax / max(dtype), codes = encode(w / s) (RNE, saturating)
    n, k = w.shape
    wg = w.reshape(n, k // g, g)  # [N, K // G, G]
    scales = format_scale(np.abs(wg).max(axis=-1), float(dt.max), sdt)  # [N, K // G]
    big = float(dt.max)  # saturate: an IEEE format would encode past its largest value as inf
    codes = encode(dt, np.clip((wg / scales.astype(np.float32)[..., None]).reshape(n, k), -big, big))  # [N, K]
    return codes.T, scales.T


__all__ = ["SCHEMES", "ZERO_MODES", "QuantizedWeight", "pack_quantized", "quantize", "retile_columns"]

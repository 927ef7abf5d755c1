"""lowbit.ops.quantize: validation up front, stored parameters reproduce `dequantize`, error bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.dtypes import decode, dtype
from lowbit.kernels.layouts import reordered_packed
from lowbit.ops import QuantizedWeight, quantize, quantized_linear

INT_DTYPES = [f"{s}int{b}" for s in ("", "u") for b in range(1, 9)]
FLOAT_DTYPES = ["fp3_e1m1", "fp4_e2m1", "fp5_e2m2", "fp6_e2m3", "fp6_e3m2", "fp8_e4m3", "fp8_e5m2"]


def weight(n=24, k=128, seed=0):
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)


def expand(p, qw):
    return np.repeat(p.astype(np.float64), qw.in_features if qw.group_size == -1 else qw.group_size, axis=0).T


@pytest.mark.parametrize("name", INT_DTYPES)
@pytest.mark.parametrize("group_size", [32, -1])
@pytest.mark.parametrize("offset", [0.0, 5.0, -40.0])  # groups that straddle 0, and one-sided ones
def test_int_round_to_nearest_bound(name, group_size, offset):
    w = weight() + np.float32(offset)
    qw = quantize(w, name, group_size)
    dt = dtype(name)
    assert qw.zero_mode == ("none" if dt.is_signed and dt.bits >= 2 else "post")
    assert qw.scales.shape == (qw.groups, 24) and qw.words.dtype == np.uint32
    # symmetric: within half a step; post zero: the rounded integer zero shifts the grid by up to half a
    # step more, so the group's min or max may sit a full step from its code
    steps = 0.5 if qw.zero_mode == "none" else 1.0
    err = np.abs(qw.dequantize().astype(np.float64) - w)
    assert np.all(err <= steps * expand(qw.scales, qw) * (1 + 2.0**-10) + 1e-6)


@pytest.mark.parametrize("name", FLOAT_DTYPES)
def test_float_formats_symmetric_bound(name):
    w = weight(seed=1)
    qw = quantize(w, name, 64)
    dt = dtype(name)
    assert qw.zero_mode == "none" and qw.zeros is None
    # |w| <= s·max; spacing <= s·max·2^-m; fp16 scale rounding may saturate by 2^-11 of s·max
    bound = expand(qw.scales, qw) * float(dt.max) * (2.0 ** -(dt.mantissa_bits + 1) + 2.0**-10)
    assert np.all(np.abs(qw.dequantize() - w) <= bound + 1e-6)


@pytest.mark.parametrize("name", FLOAT_DTYPES)
@pytest.mark.parametrize("magnitude", [1e-3, 3e-5])
def test_float_formats_with_subnormal_float16_scales_stay_finite_and_bounded(name, magnitude):
    """Small weights give float16 scales in its subnormals (rounded, or floored at 6e-8), which can sit below
    the raw amax / max: the scale steps up until the group's extreme is representable, and codes saturate,
    so no IEEE format encodes inf (fp8_e5m2 at |w| = 0.0048 dequantized to inf before). The bound is the
    same as above, against the stored scale."""
    w = weight(seed=3) * np.float32(magnitude)
    qw = quantize(w, name, 64)
    dt = dtype(name)
    wh = qw.dequantize()
    assert np.isfinite(wh).all()
    bound = expand(qw.scales, qw).astype(np.float64) * float(dt.max) * 2.0 ** -(dt.mantissa_bits + 1)
    assert np.all(np.abs(wh.astype(np.float64) - w) <= bound * (1 + 1e-6) + 1e-12)


def test_pre_zero_and_float32_scales():
    w = weight(seed=2)
    qw = quantize(w, "uint4", 32, zero_mode="pre", scale_dtype="float32")
    assert qw.zero_mode == "pre" and qw.zeros is not None and qw.zeros.dtype == np.float32
    q = decode(qw.dtype, qw.codes()).astype(np.float64)
    manual = (q * expand(qw.scales, qw).T - expand(qw.zeros, qw).T).T
    assert np.allclose(qw.dequantize(), manual, rtol=1e-6, atol=1e-6)
    assert np.abs(qw.dequantize() - w).max() <= 0.5 * qw.scales.max() * 1.01 + 1e-6


def test_w4a8_schemes():
    w = weight(32, 256, 3)
    g = quantize(w, scheme="w4a8_group", group_size=64)
    assert g.dtype.name == "uint4" and g.scales.dtype == np.int8 and g.zeros.dtype == np.int8
    assert g.channel_scales.shape == (32,) and g.scales.shape == (4, 32)
    w8 = (decode(g.dtype, g.codes()).astype(np.int32) - expand(g.zeros, g).T) * expand(g.scales, g).T
    assert w8.min() >= -128 and w8.max() <= 127  # QoQ's int8 guarantee, seen through the stored fields
    c = quantize(w, scheme="w4a8_channel")
    assert c.group_size == -1 and c.scales.shape == (1, 32) and c.zeros.dtype == np.int32
    for qw in (g, c):
        assert np.linalg.norm(qw.dequantize() - w) / np.linalg.norm(w) < 0.15


def test_torch_input_and_reordered_layout_same_codes():
    w = weight(32, 128, 4)
    row = quantize(torch.from_numpy(w), "int4", 32)
    re = quantize(w, "int4", 32, layout="reordered", tile=(64, 32))
    assert re.layout == reordered_packed((128, 32), 4, (64, 32))
    assert np.array_equal(row.codes(), re.codes()) and np.array_equal(row.dequantize(), re.dequantize())
    explicit = quantize(w, "int4", 32, layout=re.layout)
    assert np.array_equal(explicit.words, re.words)
    assert isinstance(row, QuantizedWeight) and "int4 g32" in repr(row)


@pytest.mark.parametrize("name,bk", [("int3", 160), ("uint5", 144), ("fp6_e3m2", 140), ("int7", 128), ("int2", 128)])
def test_reordered_default_tile_takes_whole_fragments_at_any_width(name, bk):
    """layout="reordered" without a tile works at every width: BK is 128 rounded up to whole 16-byte fragments
    (40 3-bit codes, 24 5-bit, 20 6-bit), the codes are the row layout's, and the compiler names it back."""
    from lowbit.compiler.params import layout_name

    w = weight(24, 320, 5)
    row = quantize(w, name, 64)
    re = quantize(w, name, 64, layout="reordered")
    assert re.layout == reordered_packed((320, 24), row.dtype.bits, (bk, 32))
    assert np.array_equal(row.codes(), re.codes())
    assert layout_name(re) == ("reordered", (bk, 32))
    x = np.random.default_rng(0).standard_normal((2, 320)).astype(np.float32)
    ref = x.astype(np.float64) @ re.dequantize().astype(np.float64).T
    y = quantized_linear(x, re, backend="reference")
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 2e-5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(dtype="int9"), r"dtype 'int9'.*signed widths are 1\.\.8"),
        (dict(dtype="float16"), "dtype float16 has 16 bits.*1..8-bit codes"),
        (dict(dtype="bogus"), "dtype 'bogus'"),
        (dict(group_size=48), r"group_size: group_size 48 does not divide in_features K=128; use .*or -1"),
        (dict(group_size=0), "group_size 0 is not a positive integer"),
        (dict(group_size=32.0), "group_size 32.0 is not an int"),
        (dict(scheme="w8a8"), "scheme 'w8a8' is not known"),
        (dict(scheme="w4a8_group", dtype="int4"), "W4A8 weights are unsigned codes; use uint4"),
        (dict(scheme="w4a8_channel", dtype="uint8"), "use uint1..uint7"),
        (dict(dtype="fp4_e2m1", symmetric=False), "float format, quantized symmetrically"),
        (dict(dtype="uint4", symmetric=True), "symmetric grid needs a signed dtype"),
        (dict(dtype="int1", symmetric=True), "symmetric grid needs a signed dtype of >= 2 bits"),
        (dict(zero_mode="mid"), "zero_mode 'mid' is not known"),
        (dict(dtype="int4", symmetric=False, zero_mode="none"), "symmetric=False needs a zero point"),
        (dict(scale_dtype="int8"), "scale_dtype 'int8' is not supported"),
        (dict(layout="tiles"), "layout 'tiles' is not known"),
        (dict(layout="reordered", tile=(48, 32)), "BK=48 must be a positive multiple of 32"),
        (dict(layout="row", tile=(7, 3)), r"tile \(7, 3\) sets the 'reordered' layout's tile; layout 'row' takes none"),
    ],
)
def test_validation_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize(weight(8, 128), **kwargs)


def test_weight_errors():
    with pytest.raises(ValueError, match=r"w has shape \(128,\); pass a 2-D weight"):
        quantize(np.zeros(128, np.float32))
    bad = weight(8, 128)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="w has NaN or inf"):
        quantize(bad)


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["int1", "uint2", "int3", "int4", "uint5", "int6", "int7", "int8", "fp6_e3m2", "fp4_e2m1"]),
    n=st.integers(1, 80),
    k=st.integers(1, 90),
    bn=st.sampled_from([8, 32, 64]),
)
def test_retile_columns_keeps_every_code_at_every_width(name, n, k, bn):
    """The column-tiled copy (the CPU kernels' layout, a word permutation of the row layout) holds the same
    codes, scales and zeros, for widths with unused word bits and K or N not a multiple of a word or a block."""
    from lowbit.kernels.layouts import column_tiled
    from lowbit.ops.weight import retile_columns

    w = np.random.default_rng(n * 100 + k).standard_normal((n, k)).astype(np.float32)
    qw = quantize(w, name, -1)
    tiled = retile_columns(qw, bn)
    assert tiled.layout == column_tiled((k, n), qw.dtype.bits, bn)
    assert np.array_equal(tiled.codes(), qw.codes())
    assert tiled.scales is qw.scales and tiled.zeros is qw.zeros
    assert np.array_equal(tiled.dequantize(), qw.dequantize())


@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(["int1", "uint2", "int3", "int4", "uint5", "int8", "fp6_e3m2", "fp4_e2m1"]),
    n=st.integers(1, 80),
    extra=st.integers(0, 40),
    zero=st.sampled_from(["symmetric", "post", "pre"]),
    tiled=st.booleans(),
)
def test_pad_columns_adds_columns_that_dequantize_to_zero(name, n, extra, zero, tiled):
    """`pad_columns` keeps every column of the weight and adds columns whose dequantized values are exactly 0
    (code 0, scale 0, zero 0), from the row layout (words padded) or any other (unpacked and packed again)."""
    from lowbit.ops.weight import pad_columns, retile_columns

    w = np.random.default_rng(n * 100 + extra).standard_normal((n, 64)).astype(np.float32)
    is_float = name.startswith("fp")
    kwargs = {} if zero == "symmetric" or is_float else {"symmetric": False, "zero_mode": zero}
    qw = quantize(w, name, 32, **kwargs)
    src = retile_columns(qw, 32) if tiled else qw
    padded = pad_columns(src, n + extra)
    assert padded.shape == (n + extra, 64) and padded.group_size == 32 and padded.zero_mode == qw.zero_mode
    got = padded.dequantize()
    assert np.array_equal(got[:n], qw.dequantize()) and not np.any(got[n:])
    assert np.array_equal(padded.codes()[:, :n], qw.codes())
    assert pad_columns(qw, n) is qw
    with pytest.raises(ValueError, match="n_pad"):
        pad_columns(qw, n - 1)


@pytest.mark.parametrize(
    "kwargs,magnitude,what",
    [
        (dict(dtype="int4"), 1e6, "scale"),
        (dict(dtype="fp4_e2m1"), 1e6, "scale"),
        (dict(dtype="uint4", symmetric=False), 1e6, "scale"),
        # "pre": the float zero z' = qmin·s − min(w) overflows float16 long before the scale does
        (dict(dtype="uint4", symmetric=False, zero_mode="pre"), 1e5, "float zero point"),
    ],
)
def test_parameters_past_float16_are_refused_not_saturated(kwargs, magnitude, what):
    """A group whose scale (or "pre" zero) float16 cannot hold was saturated (or stored as inf) in silence; it
    is refused, naming the group, the value and the fix, and float32 scales take the same weight."""
    w = weight(8, 128) * np.float32(magnitude)
    with pytest.raises(
        ValueError, match=rf"w: row \d+, group \d+ .* needs a {what} of .* 65504; pass scale_dtype='float32'"
    ):
        quantize(w, group_size=32, **kwargs)
    qw = quantize(w, group_size=32, scale_dtype="float32", **kwargs)
    d = qw.dequantize().astype(np.float64)
    assert np.isfinite(d).all() and np.linalg.norm(d - w) / np.linalg.norm(w) < 0.2


def test_pre_zero_codes_are_round_to_nearest_for_the_stored_float16_zero():
    """Codes are taken with the zero as stored (float16), so a group far from 0 stays within half a step."""
    w = (100 + np.random.default_rng(0).random((4, 64))).astype(np.float32)
    qw = quantize(w, "uint4", group_size=32, symmetric=False, zero_mode="pre")
    s = np.repeat(qw.scales.astype(np.float64), 32, axis=0).T
    err = np.abs(qw.dequantize().astype(np.float64) - w)
    assert (err <= s / 2 * (1 + 1e-3)).all(), (err / (s / 2)).max()


@pytest.mark.parametrize("scheme,magnitude", [("w4a8_group", 1e7), ("w4a8_channel", 1e6)])
def test_w4a8_per_channel_scale_past_float16_is_refused(scheme, magnitude):
    """The W4A8 formats store their per-channel scale in float16: a channel that needs more is refused."""
    with pytest.raises(ValueError, match=rf"w: row \d+ .* needs a per-channel scale of .* which scheme '{scheme}'"):
        quantize(weight(8, 128) * np.float32(magnitude), scheme=scheme)


@pytest.mark.parametrize("shape", [(4, 0), (0, 128)])
def test_an_empty_weight_is_refused(shape):
    with pytest.raises(ValueError, match=r"w has shape .*; a weight needs at least one output and one input feature"):
        quantize(np.zeros(shape, np.float32))


def test_bias_as_a_list_is_taken():
    qw = quantize(weight(4, 128), "int4", 32)
    x = np.ones((2, 128), np.float32)
    y = quantized_linear(x, qw, backend="reference", bias=[1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(y, quantized_linear(x, qw, backend="reference") + np.arange(1, 5), rtol=1e-6)
    with pytest.raises(ValueError, match="bias of type list is not numeric"):
        quantized_linear(x, qw, backend="reference", bias=["a", "b", "c", "d"])


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["int8", "int4", "uint4", "int2", "fp8_e4m3", "fp4_e2m1", "fp6_e3m2", "fp8_e5m2"]),
    zero=st.sampled_from(["none", "post", "pre"]),
    exponent=st.integers(-9, 5),
    seed=st.integers(0, 2**16),
)
def test_fits_float16_agrees_with_rounding_the_dequantized_weight(name, zero, exponent, seed):
    """`fits_float16` (decided from the parameters when it can) equals the oracle: round Ŵ to float16 and
    check no value overflows and each channel's L1 rounding error is within 2^-10 of its L1 norm."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((6, 128)) * 10.0**exponent).astype(np.float32)
    kw = dict(symmetric=False, zero_mode=zero) if zero != "none" and not name.startswith("fp") else {}
    qw = quantize(w, name, 32, scale_dtype="float32", **kw)
    wh = qw.dequantize().astype(np.float64)
    with np.errstate(over="ignore"):
        r = wh.astype(np.float16).astype(np.float64)
    want = bool(np.isfinite(r).all() and (np.abs(r - wh).sum(axis=1) <= np.abs(wh).sum(axis=1) * 2.0**-10).all())
    assert qw.fits_float16 == want


@pytest.mark.parametrize("scheme", ["w_a16", "w4a8_group"])
def test_arrays_the_kernels_read_start_on_cache_lines(scheme):
    """Every array a kernel streams starts on a 64-byte line (`QuantizedWeight.__post_init__`), as do the
    column-tiled copies and the x16 / a8 tiles made from it: NumPy's own allocations are 16-byte aligned."""
    from lowbit.kernels.gemv_a8 import tile_group_rows
    from lowbit.kernels.gemv_x16 import plane_words
    from lowbit.kernels.layouts import VECTOR_ALIGN
    from lowbit.ops.weight import retile_columns

    w = np.random.default_rng(3).standard_normal((96, 256)).astype(np.float32)
    qw = quantize(w, "uint4" if scheme != "w_a16" else "int4", 128, scheme=scheme)
    arrays = [qw.words, qw.scales, qw.zeros, qw.channel_scales, retile_columns(qw, 32).words]
    arrays += [tile_group_rows(qw.scales, 32), plane_words(qw.codes().astype(np.int64) & 15, 4, 128, 32)]
    for a in arrays:
        if a is not None:
            assert a.ctypes.data % VECTOR_ALIGN == 0
    # a weight built from words 16 bytes past a line gets an aligned copy with the same values
    raw = np.empty(qw.words.nbytes + 2 * VECTOR_ALIGN, np.uint8)
    start = -raw.ctypes.data % VECTOR_ALIGN + 16
    words = raw[start : start + qw.words.nbytes].view(qw.words.dtype).reshape(qw.words.shape)
    words[...] = qw.words
    assert words.ctypes.data % VECTOR_ALIGN == 16
    from dataclasses import replace

    moved = replace(qw, words=words)
    assert moved.words.ctypes.data % VECTOR_ALIGN == 0
    np.testing.assert_array_equal(moved.dequantize(), qw.dequantize())

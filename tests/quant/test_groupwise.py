"""Group-wise min-max (RTN / AWQ) quantization: grid, error and guard properties, and an AWQ oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbit.quant.affine import ZeroConvention, dequantize, quantize
from lowbit.quant.groupwise import GroupQuant, quantize_groupwise

from .numerics import EPS32, KINDS, bit_widths, sample

POST, PRE = ZeroConvention.POST_SCALE, ZeroConvention.PRE_SCALE
FP16_ULP = 2.0**-11  # relative rounding of a float16 scale


def _grid_ends(gq: GroupQuant) -> tuple[np.ndarray, np.ndarray]:
    # the values of qmin and qmax in every group, expanded: [N, K]
    conv = gq.zero_convention or POST
    ends = [np.full(gq.codes.shape, c) for c in (gq.grid.qmin, gq.grid.qmax)]
    lo, hi = (dequantize(e, gq.scales, gq.zeros, convention=conv, group_size=gq.group_size) for e in ends)
    return lo, hi


@st.composite
def configs(draw: st.DrawFn) -> dict:
    symmetric = draw(st.booleans())
    bits = draw(st.integers(2, 8) if symmetric else bit_widths)
    return dict(
        bits=bits,
        symmetric=symmetric,
        signed=True if symmetric else draw(st.booleans()),
        zero_convention=draw(st.sampled_from([POST, PRE])),
        integer_scales=draw(st.booleans()),
        scale_dtype=draw(st.sampled_from([np.float32, np.float16])),
    )


@given(
    cfg=configs(),
    n=st.integers(1, 4),
    groups=st.integers(1, 3),
    g=st.sampled_from([1, 4, 32, 128]),
    per_channel=st.booleans(),
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**32 - 1),
)
def test_groupwise_properties(cfg: dict, n: int, groups: int, g: int, per_channel: bool, kind: str, seed: int) -> None:
    w = sample(np.random.default_rng(seed), (n, groups * g), kind)  # w: [N, K]
    gq = quantize_groupwise(w, group_size=-1 if per_channel else g, **cfg)
    grid = gq.grid
    s = np.repeat(gq.scales.astype(np.float32), gq.group_size, axis=-1)  # s: [N, K]
    # codes on the grid, parameters finite and of the requested kind
    assert gq.codes.dtype == grid.code_dtype and gq.codes.shape == w.shape
    assert grid.qmin <= gq.codes.min() and gq.codes.max() <= grid.qmax
    assert gq.scales.dtype == cfg["scale_dtype"] and gq.scales.shape == (n, w.shape[1] // gq.group_size)
    assert np.all(np.isfinite(gq.scales)) and np.all(gq.scales > 0)
    if cfg["integer_scales"]:
        assert np.all(gq.scales == np.rint(gq.scales)) and np.all(gq.scales >= 1)
    xhat = gq.dequantize()
    assert xhat.dtype == np.float32 and np.all(np.isfinite(xhat))
    # the stored (codes, scales, zeros) are self-consistent and idempotent on the grid
    conv = gq.zero_convention or POST
    again = quantize(
        xhat, gq.scales, gq.zeros, bits=grid.bits, signed=grid.signed, convention=conv, group_size=gq.group_size
    )
    # skip when (x + z')/s cancels: a float zero far larger than the scale (PRE_SCALE, offset groups)
    big_offset = conv == PRE and np.abs(gq.zeros).max() > 2**20 * gq.scales.astype(np.float64).min()
    if not big_offset:
        assert np.array_equal(again, gq.codes)
    # error: within half a step (+ float slack) for every value inside the group's grid range
    lo, hi = _grid_ends(gq)
    err = np.abs(xhat - w)
    slack = s * FP16_ULP * grid.steps + 8 * EPS32 * (np.abs(w) + np.abs(xhat) + np.abs(lo) + np.abs(hi))
    inside = (w >= lo) & (w <= hi)
    assert np.all(err[inside] <= s[inside] / 2 + slack[inside])
    # float min-max scales cover the whole group, one-sided groups too (the post-scale range holds 0)
    unsaturated = s < np.finfo(cfg["scale_dtype"]).max  # a saturated scale (huge fp16 range) clips
    if not cfg["integer_scales"] and not cfg["symmetric"]:
        covered = unsaturated
        if conv == PRE and cfg["scale_dtype"] == np.float16:  # z' rounded to fp16 moves the grid's ends
            slack = slack + np.repeat(np.abs(gq.zeros).astype(np.float32) * FP16_ULP, gq.group_size, axis=-1)
        assert np.all(err[covered] <= s[covered] / 2 + slack[covered])
    if cfg["symmetric"] and not cfg["integer_scales"]:  # amax maps to ±qmax: nothing is clipped
        assert np.all(err[unsaturated] <= s[unsaturated] / 2 + slack[unsaturated])


def _awq_pseudo_quantize(w: np.ndarray, group_size: int, bits: int = 4) -> tuple[np.ndarray, np.ndarray]:
    # Transcription of AWQ's pseudo_quantize_tensor (zero_point=True) in float32 NumPy.
    wg = w.reshape(-1, group_size)
    max_int, min_int = 2**bits - 1, 0
    max_val, min_val = wg.max(axis=1, keepdims=True), wg.min(axis=1, keepdims=True)
    scales = np.clip(max_val - min_val, 1e-5, None) / np.float32(max_int)
    zeros = np.clip(-np.rint(min_val / scales), min_int, max_int)
    q = np.clip(np.rint(wg / scales) + zeros, min_int, max_int)
    return ((q - zeros) * scales).reshape(w.shape), (wg / scales).reshape(w.shape)


@given(seed=st.integers(0, 2**32 - 1), bits=st.sampled_from([2, 3, 4, 8]), kind=st.sampled_from(["normal", "outliers"]))
def test_matches_awq_pseudo_quantization(seed: int, bits: int, kind: str) -> None:
    """On groups that straddle 0 (these, of 128 values each), the post-scale rule is AWQ's formula."""
    w = sample(np.random.default_rng(seed), (8, 256), kind)
    ours = quantize_groupwise(w, bits=bits, group_size=128).dequantize()
    awq, ratio = _awq_pseudo_quantize(w, 128, bits)
    # scales may differ in the last float32 bit (we divide in float64), so codes may flip only at a tie
    near_tie = np.abs(np.abs(ratio - np.floor(ratio)) - 0.5) < 1e-4
    same = np.isclose(ours, awq, rtol=1e-6, atol=0)
    assert np.all(same | near_tie)
    assert same.mean() > 0.99


@pytest.mark.parametrize("kind", ["zeros", "constant"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("scale_dtype", [np.float16, np.float32])
def test_constant_and_zero_weights_give_no_nan(kind: str, symmetric: bool, scale_dtype: type) -> None:
    w = sample(np.random.default_rng(1), (3, 64), kind)
    gq = quantize_groupwise(w, bits=4, group_size=32, symmetric=symmetric, scale_dtype=scale_dtype)
    xhat = gq.dequantize()
    assert np.all(np.isfinite(xhat))
    if kind == "zeros":
        assert np.array_equal(xhat, w)
    if symmetric:  # a constant group is ±amax: exact on the symmetric grid (amax = qmax·s)
        assert np.allclose(xhat, w, rtol=1e-3, atol=0)


@pytest.mark.parametrize("bits,signed", [(1, False), (2, False), (4, False), (4, True), (8, False)])
def test_post_scale_keeps_one_sided_groups(bits: int, signed: bool) -> None:
    """AWQ's clipped zero turned a group of 0.70 and 0.75 into 0.05 and a constant 0.7 into 1e-5; with 0 in
    the range every value is within half a step."""
    w = np.array([[0.75] * 16 + [0.7] * 16, [0.7] * 32, [-3.0] * 31 + [-2.5]], np.float32)
    gq = quantize_groupwise(w, bits=bits, signed=signed, group_size=32)
    s = np.repeat(gq.scales.astype(np.float32), 32, axis=-1)
    assert np.all(np.abs(gq.dequantize() - w) <= s / 2 * (1 + 1e-6))


def test_pre_scale_reconstructs_a_constant_group_exactly() -> None:
    w = np.full((2, 32), 3.25, dtype=np.float32)
    gq = quantize_groupwise(w, bits=4, group_size=32, zero_convention=PRE)
    assert np.array_equal(gq.dequantize(), w)


def test_symmetric_needs_a_signed_grid_with_room() -> None:
    w = np.ones((2, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=r"symmetric quantization needs a signed grid.*bits=4 signed=False"):
        quantize_groupwise(w, bits=4, symmetric=True, signed=False)
    with pytest.raises(ValueError, match="bits=1 signed=True"):
        quantize_groupwise(w, bits=1, symmetric=True)


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="group_size 96 does not divide K=4000"):
        quantize_groupwise(np.zeros((2, 4000)), bits=4, group_size=96)
    with pytest.raises(ValueError, match="w has 1 non-finite value"):
        quantize_groupwise(np.array([[0.0, np.nan]]), bits=4)
    with pytest.raises(ValueError, match="w is a scalar"):
        quantize_groupwise(np.float32(1.0), bits=4)


def test_dtype_like_bits() -> None:
    class Int3:
        bits, is_signed = 3, True

    gq = quantize_groupwise(np.linspace(-1, 1, 16).reshape(2, 8), bits=Int3(), symmetric=True)
    assert (gq.bits, gq.signed) == (3, True) and gq.codes.min() >= -4 and gq.codes.max() <= 3

"""Affine quantize/dequantize laws for both zero conventions on every 1..8-bit grid."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbit.quant.affine import (
    ZeroConvention,
    dequantize,
    expand_groups,
    quantize,
    resolve_group_size,
)
from lowbit.quant.grid import IntGrid

from .numerics import EPS32, bit_widths, signedness

POST, PRE = ZeroConvention.POST_SCALE, ZeroConvention.PRE_SCALE


def _params(rng: np.random.Generator, grid: IntGrid, convention: ZeroConvention, shape: tuple[int, ...]):
    # scales: [*shape] positive; zeros: integers in the grid (post) or offsets of up to a few grids (pre)
    scale = np.exp(rng.uniform(np.log(1e-4), np.log(1e4), shape)).astype(np.float32)
    if convention == POST:
        zero = rng.integers(grid.qmin, grid.qmax + 1, shape).astype(np.int32)
    else:
        zero = (rng.uniform(-4, 4, shape) * grid.steps * scale).astype(np.float32)
    return scale, zero


@given(bits=bit_widths, signed=signedness, conv=st.sampled_from([POST, PRE]), seed=st.integers(0, 2**32 - 1))
def test_quantize_is_idempotent_on_the_grid(bits: int, signed: bool, conv: ZeroConvention, seed: int) -> None:
    # law: quantize(dequantize(q)) == q for every code q and any (scale, zero)
    rng = np.random.default_rng(seed)
    grid = IntGrid(bits, signed)
    q = np.broadcast_to(grid.codes(), (7, grid.steps + 1))  # q: [7, 2^b], every code in every row
    scale, zero = _params(rng, grid, conv, (7, 1))
    xhat = dequantize(q, scale, zero, convention=conv)
    assert np.array_equal(quantize(xhat, scale, zero, bits=bits, signed=signed, convention=conv), q)
    # symmetric (no zero) as well
    xhat = dequantize(q, scale)
    assert np.array_equal(quantize(xhat, scale, bits=bits, signed=signed), q)


@given(bits=bit_widths, signed=signedness, conv=st.sampled_from([POST, PRE]), seed=st.integers(0, 2**32 - 1))
def test_reconstruction_error_within_half_a_step(bits: int, signed: bool, conv: ZeroConvention, seed: int) -> None:
    # law: for x inside the grid's range, |x̂ − x| ≤ s/2 (+ float32 rounding slack)
    rng = np.random.default_rng(seed)
    grid = IntGrid(bits, signed)
    scale, zero = _params(rng, grid, conv, (5, 1))
    lo = dequantize(np.full((5, 1), grid.qmin), scale, zero, convention=conv)
    hi = dequantize(np.full((5, 1), grid.qmax), scale, zero, convention=conv)
    x = rng.uniform(lo, hi, (5, 64)).astype(np.float32)  # x: [5, 64]
    q = quantize(x, scale, zero, bits=bits, signed=signed, convention=conv)
    xhat = dequantize(q, scale, zero, convention=conv)
    slack = 4 * EPS32 * (np.abs(x) + np.abs(xhat) + (np.abs(zero) if conv == PRE else 0))
    assert np.all(np.abs(xhat - x) <= scale / 2 + slack)


@given(bits=bit_widths, signed=signedness, conv=st.sampled_from([POST, PRE]), seed=st.integers(0, 2**32 - 1))
def test_codes_stay_on_the_grid_for_any_input(bits: int, signed: bool, conv: ZeroConvention, seed: int) -> None:
    rng = np.random.default_rng(seed)
    grid = IntGrid(bits, signed)
    scale, zero = _params(rng, grid, conv, (4, 1))
    x = (rng.standard_normal((4, 32)) * 10.0 ** rng.uniform(-30, 30, (4, 1))).astype(np.float32)
    x[0, :3] = [np.finfo(np.float32).max, -np.finfo(np.float32).max, 0.0]
    q = quantize(x, scale, zero, bits=bits, signed=signed, convention=conv)
    assert q.dtype == grid.code_dtype
    assert q.min() >= grid.qmin and q.max() <= grid.qmax
    assert np.all(np.isfinite(dequantize(q, scale, zero, convention=conv)))


@given(seed=st.integers(0, 2**32 - 1), groups=st.integers(1, 4), g=st.sampled_from([1, 8, 32]))
def test_group_parameters_broadcast_along_the_group_axis(seed: int, groups: int, g: int) -> None:
    # law: per-group params with group_size=G == the same params expanded to [N, K] by hand
    rng = np.random.default_rng(seed)
    grid = IntGrid(4, False)
    x = rng.standard_normal((3, groups * g)).astype(np.float32)  # x: [N, K]
    scale, zero = _params(rng, grid, POST, (3, groups))  # scale, zero: [N, K // G]
    q = quantize(x, scale, zero, bits=4, signed=False, group_size=g)
    full_s, full_z = expand_groups(scale, g), expand_groups(zero, g)
    assert full_s.shape == x.shape
    assert np.array_equal(q, quantize(x, full_s, full_z, bits=4, signed=False))
    assert np.array_equal(dequantize(q, scale, zero, group_size=g), dequantize(q, full_s, full_z))
    # the same along axis 0 (groups over rows)
    qt = quantize(x.T, scale.T, zero.T, bits=4, signed=False, group_size=g, axis=0)
    assert np.array_equal(qt, q.T)


def test_rounding_is_half_to_even() -> None:
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5], dtype=np.float32)
    assert quantize(x, 1.0, bits=8, signed=True).tolist() == [-2, -2, 0, 0, 2, 2]
    assert quantize(x, 1.0, 3.0, bits=8, signed=False).tolist() == [1, 1, 3, 3, 5, 5]
    assert quantize(x, 1.0, 3.0, bits=8, signed=False, convention=PRE).tolist() == [0, 2, 2, 4, 4, 6]


def test_conventions_agree_when_the_float_zero_is_the_scaled_integer_zero() -> None:
    # (q − z)·s == q·s − z' with z' = z·s
    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, (4, 16))
    s = np.float32(0.125)
    z = rng.integers(0, 16, (4, 1))
    assert np.array_equal(dequantize(q, s, z), dequantize(q, s, (z * s).astype(np.float32), convention=PRE))


def test_group_size_error_names_the_fix() -> None:
    msg = "group_size 96 does not divide K=4000; use one of 32, 80, 160, or -1 for per-channel"
    with pytest.raises(ValueError, match=msg):
        resolve_group_size(96, 4000)
    assert resolve_group_size(-1, 4000) == resolve_group_size(4000, 4000) == 4000
    with pytest.raises(ValueError, match="group_size 0 is not a positive integer"):
        resolve_group_size(0, 64)


def test_post_scale_rejects_a_fractional_zero() -> None:
    with pytest.raises(ValueError, match=r"zero 2.5 is not an integer.*ZeroConvention.PRE_SCALE"):
        quantize(np.zeros(4), 1.0, 2.5, bits=4, signed=False)


def test_non_positive_scale_is_rejected() -> None:
    with pytest.raises(ValueError, match="scale has non-positive or NaN entries"):
        quantize(np.zeros(4), np.array([1.0, 0.0, 1.0, 1.0]), bits=4, signed=True)

"""KV cache quantization: per token, per head, asymmetric uint{b} with the zero-range guard."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbit.quant.kv import dequantize_kv, quantize_kv

from .numerics import EPS32, KINDS, sample

FP16_MAX = float(np.finfo(np.float16).max)


@given(
    bits=st.integers(1, 8),
    t=st.integers(1, 4),
    h=st.integers(1, 3),
    d=st.sampled_from([1, 8, 64]),
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**32 - 1),
)
def test_kv_properties(bits: int, t: int, h: int, d: int, kind: str, seed: int) -> None:
    x = sample(np.random.default_rng(seed), (t, h, d), kind)  # x: [T, H, D]
    kv = quantize_kv(x, bits=bits)
    steps = 2**bits - 1
    assert kv.codes.dtype == np.uint8 and kv.codes.shape == x.shape and kv.codes.max() <= steps
    assert kv.scales.dtype == np.float16 and kv.scales.shape == (t, h)
    assert kv.zeros.dtype == np.float32 and kv.zeros.shape == (t, h)
    assert np.all(np.isfinite(kv.scales)) and np.all(kv.scales > 0) and np.all(np.isfinite(kv.zeros))
    xhat = kv.dequantize()
    assert np.all(np.isfinite(xhat))
    s = kv.scales.astype(np.float32)[..., None]
    z = kv.zeros[..., None]
    # within half a step: fp16 rounding of the scale can leave max up to steps·s·2^-11 past the top code;
    # (q − zero)·s carries float32 rounding of |zero| (rows away from 0) and of x
    rng_ = x.max(-1, keepdims=True) - x.min(-1, keepdims=True)
    flat = np.broadcast_to(kv.scales[..., None] == 1, x.shape) & (rng_ < 2.0**-10)
    slack = steps * s * 2.0**-11 + 4 * EPS32 * (np.abs(x) + np.abs(xhat) + np.abs(z) * s)
    unsaturated = np.broadcast_to(s < FP16_MAX, x.shape)
    ok = np.abs(xhat - x) <= s / 2 + slack
    assert np.all(ok[unsaturated & ~flat])
    # guard rows (scale 1, zero −min): exact for constant rows, within the (tiny) range otherwise
    assert np.all(np.abs(xhat - x)[flat] <= np.broadcast_to(rng_, x.shape)[flat])
    # idempotent on the grid where |zero| is moderate (float32 keeps (q − zero) to well under half a code)
    moderate = np.broadcast_to(np.abs(z) < 2**16, x.shape)
    again = np.clip(np.rint(xhat / s + z), 0, steps)
    assert np.array_equal(again[moderate], kv.codes[moderate])
    # the row minimum maps to code 0 (zero = −min / stored scale)
    assert np.all(kv.codes.min(-1) == 0)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("value", [0.0, 3.7, -1e-3, 1234.5])
def test_zero_range_guard_reconstructs_constant_rows_exactly(bits: int, value: float) -> None:
    x = np.full((2, 3, 16), value, dtype=np.float32)
    x[1, 2] = np.linspace(-1, 1, 16)  # one ordinary row next to the constant ones
    kv = quantize_kv(x, bits=bits)
    xhat = kv.dequantize()
    assert np.all(np.isfinite(xhat))
    mask = np.ones((2, 3), bool)
    mask[1, 2] = False
    assert np.array_equal(xhat[mask], x[mask])  # QServe would give NaN here
    assert np.all(kv.scales[mask] == 1) and not kv.codes[mask].any()


def test_kv8_is_finer_than_kv4() -> None:
    x = np.random.default_rng(0).standard_normal((8, 4, 128)).astype(np.float32)
    e4 = np.abs(quantize_kv(x, bits=4).dequantize() - x).max()
    e8 = np.abs(quantize_kv(x, bits=8).dequantize() - x).max()
    assert e8 < e4 / 10


def test_dequantize_kv_formula() -> None:
    codes = np.array([[0, 5, 15]], np.uint8)
    out = dequantize_kv(codes, np.array([0.5], np.float16), np.array([2.5], np.float32))
    assert out.tolist() == [[-1.25, 1.25, 6.25]]


def test_kv_errors() -> None:
    with pytest.raises(ValueError, match="bits 9"):
        quantize_kv(np.zeros((1, 4)), bits=9)
    with pytest.raises(ValueError, match="x has 1 non-finite value"):
        quantize_kv(np.array([[0.0, np.nan]]))

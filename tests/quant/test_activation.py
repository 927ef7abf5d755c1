"""Per-token symmetric INT8 activation quantization."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbit.quant.activation import dequantize_per_token, quantize_per_token_int8

from .numerics import EPS32, tensors

FP16_TINY = float(np.finfo(np.float16).smallest_subnormal)


@given(x=st.integers(1, 3).flatmap(lambda m: tensors((m, 2, 48))))
def test_per_token_int8_properties(x: np.ndarray) -> None:
    qa, sa = quantize_per_token_int8(x)  # qa: [M, 2, K], sa: [M, 2]
    assert qa.dtype == np.int8 and qa.shape == x.shape
    assert sa.dtype == np.float16 and sa.shape == x.shape[:-1]
    assert np.abs(qa.astype(np.int32)).max() <= 127
    assert np.all(np.isfinite(sa)) and np.all(sa > 0)
    s = sa.astype(np.float32)[..., None]
    xhat = dequantize_per_token(qa, sa)
    assert np.all(np.isfinite(xhat))
    # every value is inside ±127·sa up to fp16's rounding of the scale (relative 2^-11, or absolute
    # 2^-25 for a subnormal scale), so the error is half a step
    slack = 127 * np.maximum(s * 2.0**-11, 2.0**-25) + 4 * EPS32 * np.abs(x)
    assert np.all(np.abs(xhat - x) <= s / 2 + slack)
    # idempotent on the grid
    assert np.array_equal(np.clip(np.rint(xhat / s), -127, 127).astype(np.int8), qa)
    # the ANCHORS form rint(x·127/amax) (unrounded scale) differs by at most one code where sa is a
    # normal fp16 (a subnormal or guarded scale is far from amax/127)
    amax = np.abs(x).max(axis=-1, keepdims=True).astype(np.float64)
    anchor = np.clip(np.rint(np.divide(x * 127.0, amax, out=np.zeros(x.shape), where=amax > 0)), -127, 127)
    normal = np.broadcast_to(s >= np.finfo(np.float16).smallest_normal, x.shape)
    assert np.all(np.abs(anchor - qa)[normal] <= 1)


def test_amax_zero_guard() -> None:
    x = np.zeros((3, 16), dtype=np.float32)
    x[1] = np.linspace(-1, 1, 16)
    qa, sa = quantize_per_token_int8(x)
    assert sa[0] == sa[2] == 1 and not qa[0].any() and not qa[2].any()
    assert np.array_equal(dequantize_per_token(qa, sa)[[0, 2]], x[[0, 2]])


def test_scale_underflow_and_overflow_stay_finite() -> None:
    x = np.array([[1e-9, -2e-9, 0.0], [3e9, -1e9, 1.0]], dtype=np.float32)
    qa, sa = quantize_per_token_int8(x)
    assert sa[0] == np.float16(FP16_TINY) and sa[1] == np.finfo(np.float16).max
    assert np.all(np.isfinite(dequantize_per_token(qa, sa)))
    assert qa[1, 0] == 127  # saturated


def test_rejects_nan() -> None:
    with pytest.raises(ValueError, match="x has 1 non-finite value"):
        quantize_per_token_int8(np.array([[1.0, np.inf]]))

"""RMSNorm against a per-row loop, and its laws (scale invariance, unit RMS, fused == unfused)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.reference.norm import add_rms_norm, rms_norm


def loop_rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Oracle: one row at a time with an exactly rounded sum of squares."""
    out = np.zeros(x.shape)
    for r, row in enumerate(x.reshape(-1, x.shape[-1])):
        inv = 1 / math.sqrt(math.fsum(float(v) ** 2 for v in row) / row.size + eps)
        out.reshape(-1, x.shape[-1])[r] = [float(v) * inv * float(w) for v, w in zip(row, weight)]
    return out


@settings(max_examples=20)
@given(
    shape=st.sampled_from([(1, 4), (3, 16), (2, 3, 8)]),
    eps=st.sampled_from([0.0, 1e-6, 1e-5]),
    magnitude=st.sampled_from([1e-3, 1.0, 1e3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_rms_norm_matches_loop(shape: tuple[int, ...], eps: float, magnitude: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * magnitude  # x: [..., D]
    weight = rng.standard_normal(shape[-1])  # [D]
    out = rms_norm(x, weight, eps)
    assert out.dtype == np.float64 and out.shape == x.shape
    assert np.allclose(out, loop_rms_norm(x, weight, eps), rtol=1e-13, atol=0)


def test_rms_norm_laws() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 32))
    ones = np.ones(32)
    unit = rms_norm(x, ones, eps=0.0)
    assert np.allclose(np.sqrt(np.mean(unit**2, axis=-1)), 1.0, rtol=1e-14, atol=0)  # unit RMS
    assert np.allclose(rms_norm(x * 37.5, ones, eps=0.0), unit, rtol=1e-14, atol=0)  # scale invariant
    assert np.array_equal(rms_norm(np.zeros((1, 8)), np.ones(8), 1e-6), np.zeros((1, 8)))  # eps guards 0/0
    weight = rng.standard_normal(32)
    assert np.allclose(rms_norm(x, weight, 1e-6), rms_norm(x, ones, 1e-6) * weight, rtol=1e-15, atol=0)


def test_add_rms_norm_is_add_then_norm() -> None:
    rng = np.random.default_rng(1)
    x, residual, weight = rng.standard_normal((3, 16)), rng.standard_normal((3, 16)), rng.standard_normal(16)
    normed, new_residual = add_rms_norm(x, residual, weight, 1e-5)
    assert np.array_equal(new_residual, x + residual)
    assert np.array_equal(normed, rms_norm(x + residual, weight, 1e-5))


def test_norm_errors() -> None:
    with pytest.raises(ValueError, match=r"weight has shape \(4,\); expected \[D\] = \[8\]"):
        rms_norm(np.zeros((2, 8)), np.ones(4))
    with pytest.raises(ValueError, match="eps -1 must be >= 0"):
        rms_norm(np.zeros((2, 8)), np.ones(8), eps=-1)
    with pytest.raises(ValueError, match="must have the same shape"):
        add_rms_norm(np.zeros((2, 8)), np.zeros((3, 8)), np.ones(8))

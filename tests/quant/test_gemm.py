"""W4A8 GEMM references against dequantize-then-matmul (float64), within the bounds stated in gemm.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbit.quant.activation import dequantize_per_token, quantize_per_token_int8
from lowbit.quant.gemm import w4a8_gemm_per_channel, w4a8_gemm_per_group
from lowbit.quant.groupwise import quantize_groupwise
from lowbit.quant.qoq import quantize_qoq, quantize_w4a8_per_channel

from .numerics import EPS32, rel_err, sample

ACT_KINDS = ("normal", "outliers", "offset", "zeros", "huge")
W_KINDS = ("normal", "outliers", "uniform", "constant")

shapes = st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 3))  # M, N, K // 64


@given(shape=shapes, xk=st.sampled_from(ACT_KINDS), wk=st.sampled_from(W_KINDS), seed=st.integers(0, 2**32 - 1))
def test_per_group_gemm_equals_dequantize_then_matmul(shape: tuple, xk: str, wk: str, seed: int) -> None:
    m, n, kb = shape
    rng = np.random.default_rng(seed)
    x, w = sample(rng, (m, 64 * kb), xk), sample(rng, (n, 64 * kb), wk)
    qa, sa = quantize_per_token_int8(x)
    qw = quantize_qoq(w, group_size=64)
    y = w4a8_gemm_per_group(qa, sa, qw)  # y: [M, N]
    ref = dequantize_per_token(qa, sa).astype(np.float64) @ qw.dequantize().astype(np.float64).T
    assert y.dtype == np.float32 and np.all(np.isfinite(y))
    assert np.all(np.abs(y - ref) <= 3 * EPS32 * np.abs(ref) * (1 + 1e-6))  # stated: 3ε·|ref| elementwise
    assert rel_err(y, ref) <= 1e-6 or not ref.any()


@given(shape=shapes, xk=st.sampled_from(ACT_KINDS), wk=st.sampled_from(W_KINDS), seed=st.integers(0, 2**32 - 1))
def test_per_channel_gemm_equals_dequantize_then_matmul(shape: tuple, xk: str, wk: str, seed: int) -> None:
    m, n, kb = shape
    k = 64 * kb
    rng = np.random.default_rng(seed)
    x, w = sample(rng, (m, k), xk), sample(rng, (n, k), wk)
    qa, sa = quantize_per_token_int8(x)
    gq = quantize_w4a8_per_channel(w)
    xhat = dequantize_per_token(qa, sa).astype(np.float64)
    ref = xhat @ gq.dequantize().astype(np.float64).T
    # the two epilogue terms A = psum·s_w·sa and B = (z·s_w)·Σx, in float64
    s_w = gq.scales[:, 0].astype(np.float64)
    zs = gq.zeros[:, 0] * s_w
    a_term = np.abs((qa.astype(np.float64) @ gq.codes.astype(np.float64).T) * s_w * sa.astype(np.float64)[:, None])
    # default: Σ over the quantized activations -> float32 rounding only (stated: 5ε·(|A| + |B|))
    y = w4a8_gemm_per_channel(qa, sa, gq)
    b_term = np.abs(zs[None, :] * xhat.sum(1)[:, None])
    assert np.all(np.isfinite(y))
    assert np.all(np.abs(y - ref) <= 5 * EPS32 * (a_term + b_term))
    # QServe's Σ over the unquantized activations: off by (z·s_w)·Σ(x − x̂) ≤ (z·s_w)·K·sa/2
    xsum = x.astype(np.float64).sum(1)
    y_q = w4a8_gemm_per_channel(qa, sa, gq, act_sum=xsum.astype(np.float32))
    b_term = np.abs(zs[None, :] * xsum[:, None])
    drift = zs[None, :] * k * sa.astype(np.float64)[:, None] / 2
    float_slack = 5 * EPS32 * (a_term + b_term) + zs[None, :] * EPS32 * np.abs(xsum)[:, None]
    assert np.all(np.abs(y_q - ref) <= drift + float_slack)


def test_gemm_recovers_the_float_product_for_well_scaled_data() -> None:
    # sanity against the unquantized product: W4A8 on Gaussian data lands within a few percent
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((16, 512)).astype(np.float32), rng.standard_normal((32, 512)).astype(np.float32)
    qa, sa = quantize_per_token_int8(x)
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    assert rel_err(w4a8_gemm_per_group(qa, sa, quantize_qoq(w)), exact) < 0.15
    assert rel_err(w4a8_gemm_per_channel(qa, sa, quantize_w4a8_per_channel(w)), exact) < 0.25


def test_gemm_shape_and_format_errors() -> None:
    w = np.random.default_rng(0).standard_normal((4, 128)).astype(np.float32)
    qa, sa = quantize_per_token_int8(np.ones((2, 64), np.float32))
    with pytest.raises(ValueError, match=r"qa has shape \(2, 64\) and the weight \(4, 128\)"):
        w4a8_gemm_per_group(qa, sa, quantize_qoq(w))
    qa, sa = quantize_per_token_int8(np.ones((2, 128), np.float32))
    with pytest.raises(ValueError, match="needs one group per row with an integer zero"):
        w4a8_gemm_per_channel(qa, sa, quantize_groupwise(w, bits=4, group_size=64))

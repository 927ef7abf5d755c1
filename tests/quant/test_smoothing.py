"""Smoothing: the SmoothQuant/QoQ scale formula, exact folding into norms, linears and GQA attention."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.quant.activation import dequantize_per_token, quantize_per_token_int8
from lowbit.quant.smoothing import (
    apply_smoothing,
    fold_scales_into_linear_rows,
    fold_scales_into_norm,
    scale_input_columns,
    smooth_scales,
    tie_gqa_scales,
    weight_absmax,
)
from lowbit.reference.attention import sequence_attention
from lowbit.reference.norm import rms_norm

from .numerics import rel_err


def _outlier_x(rng: np.random.Generator, t: int, k: int) -> np.ndarray:
    x = rng.standard_normal((t, k))
    x[:, rng.choice(k, 3, replace=False)] *= rng.uniform(20, 50, 3)
    return x


def test_smooth_scales_formula() -> None:
    xa = np.array([4.0, 1.0, 0.0, 9.0, 2.0])
    wa = np.array([1.0, 4.0, 3.0, 0.0, 1e-30])
    s = smooth_scales(xa, wa, alpha=0.5)
    np.testing.assert_allclose(s[:2], [4.0**0.5 / 1.0**0.5, 1.0 / 2.0])
    assert s[2] == 1.0 and s[3] == 1.0  # a dead channel in x or W is left alone
    assert s[4] == pytest.approx(2**0.5 / 1e-15)
    np.testing.assert_allclose(smooth_scales(xa[:2], wa[:2], alpha=1.0), xa[:2])
    np.testing.assert_allclose(smooth_scales(xa[:2], wa[:2], alpha=0.0), 1 / wa[:2])
    assert smooth_scales(np.array([1e-20]), np.array([1e20]), 0.5)[0] == 1e-5  # SmoothQuant's clamp


def test_weight_absmax_over_linears() -> None:
    w1 = np.array([[1.0, -5.0], [2.0, 0.5]])
    w2 = np.array([[-3.0, 1.0]])
    np.testing.assert_array_equal(weight_absmax([w1, w2]), [3.0, 5.0])


@settings(max_examples=15)
@given(st.integers(0, 2**16), st.floats(0.1, 0.9), st.booleans())
def test_smoothing_into_norm_and_linear_is_exact(seed: int, alpha: float, bias: bool) -> None:
    rng = np.random.default_rng(seed)
    k = 16
    x = _outlier_x(rng, 12, k)
    consumers = [rng.standard_normal((n, k)) for n in (8, 5)]
    s = smooth_scales(np.abs(x).max(0), weight_absmax(consumers), alpha)
    # producer = RMSNorm(g)
    h, g = rng.standard_normal((12, k)) * 3, rng.uniform(0.5, 2, k)
    r = apply_smoothing(s, consumers, norm_w=g)
    assert r.prev_w is None and r.norm_w is not None
    for w, ws in zip(consumers, r.consumers, strict=True):
        assert rel_err(rms_norm(h, r.norm_w) @ ws.T, rms_norm(h, g) @ w.T) < 1e-13
    # producer = a linear (z W_prevᵀ + b)
    z, w_prev = rng.standard_normal((12, 6)), rng.standard_normal((k, 6))
    b = rng.standard_normal(k) if bias else None
    r = apply_smoothing(s, consumers, prev_w=w_prev, prev_bias=b)
    assert r.norm_w is None and (r.prev_bias is None) == (b is None)
    xin = z @ w_prev.T + (0 if b is None else b)
    xs = z @ r.prev_w.T + (0 if r.prev_bias is None else r.prev_bias)
    assert rel_err(xs, xin / s) < 1e-13
    for w, ws in zip(consumers, r.consumers, strict=True):
        assert rel_err(xs @ ws.T, xin @ w.T) < 1e-13
    spread = lambda a: np.abs(a).max(0).max() / np.abs(a).max(0).min()  # noqa: E731
    assert spread(x / smooth_scales(np.abs(x).max(0), weight_absmax(consumers), 0.5)) < spread(x) / 3


def test_smoothing_helps_per_token_int8_activations() -> None:
    # SmoothQuant's point: per-token int8 on x/s loses less than on x when x has outlier channels
    rng = np.random.default_rng(0)
    x = _outlier_x(rng, 64, 128).astype(np.float32)
    w = rng.standard_normal((32, 128)) * 0.05
    ref = x.astype(np.float64) @ w.T
    s = smooth_scales(np.abs(x).max(0), weight_absmax([w]), 0.5)

    def a8(a: np.ndarray) -> np.ndarray:
        q, sa = quantize_per_token_int8(a.astype(np.float32))
        return dequantize_per_token(q, sa).astype(np.float64)

    plain = rel_err(a8(x) @ w.T, ref)
    smoothed = rel_err(a8(x / s) @ scale_input_columns(w, s).T, ref)
    assert smoothed < plain / 2


@settings(max_examples=8)
@given(st.integers(0, 2**16), st.sampled_from([(4, 2), (4, 1), (2, 2)]))
def test_gqa_tied_smoothing_v_to_o_is_exact(seed: int, heads: tuple[int, int]) -> None:
    # o_proj's input channel (h, c) is a mix of v channel (h // G, c): tie s over each GQA group, fold 1/s into
    # v_proj rows and s into o_proj columns; attention output · Woᵀ is unchanged
    hq, hkv = heads
    d, hid, t = 4, 12, 7
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, hid))
    wq, wk = rng.standard_normal((hq * d, hid)), rng.standard_normal((hkv * d, hid))
    wv, wo = rng.standard_normal((hkv * d, hid)), rng.standard_normal((hid, hq * d))
    bv = rng.standard_normal(hkv * d)

    def out(wv_: np.ndarray, bv_: np.ndarray, wo_: np.ndarray) -> np.ndarray:
        q, k = (x @ wq.T).reshape(t, hq, d), (x @ wk.T).reshape(t, hkv, d)
        v = (x @ wv_.T + bv_).reshape(t, hkv, d)
        return np.asarray(sequence_attention(q, k, v)).reshape(t, hq * d) @ wo_.T

    s_o, s_v = tie_gqa_scales(rng.uniform(0.2, 5, hq * d), hq, hkv)
    wv2, bv2 = fold_scales_into_linear_rows(wv, s_v, bv)
    assert bv2 is not None
    assert rel_err(out(wv2, bv2, scale_input_columns(wo, s_o)), out(wv, bv, wo)) < 1e-12
    if hq != hkv:  # untied factors are not an equivalence
        s_bad = rng.uniform(0.2, 5, hq * d)
        wv3, bv3 = fold_scales_into_linear_rows(wv, s_bad.reshape(hkv, hq // hkv, d)[:, 0].reshape(-1), bv)
        assert bv3 is not None
        assert rel_err(out(wv3, bv3, scale_input_columns(wo, s_bad)), out(wv, bv, wo)) > 1e-3


def test_fold_into_norm_divides() -> None:
    np.testing.assert_array_equal(fold_scales_into_norm(np.array([2.0, 3.0]), np.array([2.0, 0.5])), [1.0, 6.0])


def test_errors_name_the_problem() -> None:
    w = np.ones((3, 4))
    with pytest.raises(ValueError, match="exactly one producer"):
        apply_smoothing(np.ones(4), [w])
    with pytest.raises(ValueError, match="exactly one producer"):
        apply_smoothing(np.ones(4), [w], norm_w=np.ones(4), prev_w=np.ones((4, 2)))
    with pytest.raises(ValueError, match="prev_bias given without prev_w"):
        apply_smoothing(np.ones(4), [w], norm_w=np.ones(4), prev_bias=np.ones(4))
    with pytest.raises(ValueError, match="consumers is empty"):
        apply_smoothing(np.ones(4), [], norm_w=np.ones(4))
    with pytest.raises(ValueError, match="non-positive"):
        scale_input_columns(w, np.array([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"expected \[N, K\] with K = 5"):
        scale_input_columns(w, np.ones(5))
    with pytest.raises(ValueError, match=r"out_features .* must be K = 4"):
        fold_scales_into_linear_rows(np.ones((3, 2)), np.ones(4))
    with pytest.raises(ValueError, match="alpha"):
        smooth_scales(np.ones(4), np.ones(4), alpha=1.5)
    with pytest.raises(ValueError, match="must both be"):
        smooth_scales(np.ones(4), np.ones(3))
    with pytest.raises(ValueError, match="num_heads % num_kv_heads"):
        tie_gqa_scales(np.ones(12), 3, 2)

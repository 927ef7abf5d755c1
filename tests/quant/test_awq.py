"""AWQ: scale normalisation and grid, α = 0 is RTN, the search's minimum, clip-search bounds, lower output
error than RTN on activations with outlier channels, exact folding of 1/s, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.config.spec import LinearSpec
from lowbit.quant.awq import (
    apply_clip,
    awq_quantize,
    awq_scales_for,
    awq_search_clip,
    awq_search_scales,
    fold_scales_into_linear_rows,
    fold_scales_into_norm,
)
from lowbit.quant.rtn import fake_quantize
from lowbit.reference.norm import rms_norm

from .numerics import rel_err
from .outlier_inputs import outlier_source

AWQ_SPEC = LinearSpec("awq", "uint4", 128, "post")  # AutoAWQ's default: uint4 g128 asymmetric


def _sq_err(x: np.ndarray, w: np.ndarray, x_in: np.ndarray, w_hat: np.ndarray) -> float:
    return float(np.sum((x @ w.T - x_in @ np.asarray(w_hat, np.float64).T) ** 2))


def test_scales_are_normalised_powers_of_the_mean() -> None:
    mu = np.array([0.5, 2.0, 8.0, 1e-6])
    np.testing.assert_array_equal(awq_scales_for(mu, 0.0), np.ones(4))
    s = awq_scales_for(mu, 0.5)
    raw = np.maximum(mu, 1e-4) ** 0.5
    np.testing.assert_allclose(s, raw / np.sqrt(raw.max() * raw.min()))
    assert s.max() * s.min() == pytest.approx(1.0)


def test_search_grid_alpha_zero_is_rtn_and_best_is_the_minimum() -> None:
    rng = np.random.default_rng(0)
    x = outlier_source(rng, 128)(rng, 64)
    ws = [rng.standard_normal((16, 128)) * 0.05, rng.standard_normal((8, 128)) * 0.05]
    r = awq_search_scales(x, ws, AWQ_SPEC, grid=10)
    assert r.errors.shape == (10,)
    rtn = sum(_sq_err(x, w, x, fake_quantize(w, AWQ_SPEC)) for w in ws)
    assert r.errors[0] == pytest.approx(rtn, rel=1e-12)
    assert r.alpha == np.argmin(r.errors) / 10
    np.testing.assert_allclose(r.scales, awq_scales_for(np.abs(x).mean(0), r.alpha))
    assert r.alpha > 0  # outlier channels make scaling worth it
    # the outlier channels get the largest scales
    assert set(np.argsort(r.scales)[-4:]) == set(np.argsort(np.abs(x).mean(0))[-4:])


@settings(max_examples=12)
@given(
    st.integers(0, 2**16),
    st.sampled_from([3, 4]),
    st.sampled_from([32, 64, 128]),
    st.sampled_from(["none", "post"]),
    st.booleans(),
)
def test_awq_beats_rtn_on_outlier_activations(seed: int, bits: int, group: int, zero: str, clip: bool) -> None:
    rng = np.random.default_rng(seed)
    spec = LinearSpec("awq", f"{'u' if zero == 'post' else ''}int{bits}", group, zero)
    draw = outlier_source(rng, 128)
    x = draw(rng, 96)
    ws = [rng.standard_normal((24, 128)) * 0.05, rng.standard_normal((16, 128)) * 0.05]
    s, qws = awq_quantize(x, ws, spec, grid=10, clip=clip)
    assert s.shape == (128,) and len(qws) == 2
    for x_eval, margin in ((x, 0.8), (draw(rng, 192), 0.9)):  # calibration tokens, then held-out tokens
        awq = sum(_sq_err(x_eval, w, x_eval / s, q.dequantize()) for w, q in zip(ws, qws, strict=True))
        rtn = sum(_sq_err(x_eval, w, x_eval, fake_quantize(w, spec)) for w in ws)
        assert awq < margin * rtn


def test_clip_search_bounds_and_gain() -> None:
    rng = np.random.default_rng(1)
    x = outlier_source(rng, 128)(rng, 200)
    w = rng.standard_normal((16, 128)) * 0.05
    w[3, 10] = 1.0  # a weight outlier: clipping it pays
    spec = LinearSpec("awq", "uint3", 32, "post")
    mv = awq_search_clip(x, w, spec, grid=20, max_shrink=0.5, n_sample_tokens=64)
    org = np.abs(w).reshape(16, 4, 32).max(-1)
    assert mv.shape == (16, 4)
    ratio = mv / org
    allowed = 1 - np.arange(10) / 20  # 1.0, 0.95, …, 0.55
    assert np.all(np.isclose(ratio[..., None], allowed).any(-1))
    assert ratio[3, 0] < 1
    clipped = apply_clip(w, mv)
    assert np.all(np.abs(clipped).reshape(16, 4, 32).max(-1) <= mv + 1e-15)
    # per (row, group) output error on the sampled tokens never exceeds the unclipped one
    xs = x[:: 200 // 64][:64]
    per_group = lambda wh: ((xs.reshape(-1, 4, 32)[None] * (wh - w).reshape(16, 1, 4, 32)).sum(-1) ** 2).mean(1)  # noqa: E731
    assert np.all(per_group(fake_quantize(clipped, spec)) <= per_group(fake_quantize(w, spec)) + 1e-12)
    with pytest.raises(ValueError, match="max_val"):
        apply_clip(w, mv[:, :3])


def test_folding_the_scales_is_exact_in_float64() -> None:
    # RMSNorm producer: rms_norm(h, g / s) (W·s)ᵀ = rms_norm(h, g) Wᵀ; linear producer: rows and bias / s
    rng = np.random.default_rng(2)
    h, g = rng.standard_normal((10, 64)), rng.uniform(0.5, 1.5, 64)
    x = rms_norm(h, g)
    ws = [rng.standard_normal((8, 64)), rng.standard_normal((4, 64))]
    s, qws = awq_quantize(x, ws, LinearSpec("awq", "int4", 32), grid=5)
    for w in ws:
        assert rel_err(rms_norm(h, fold_scales_into_norm(g, s)) @ (w * s).T, x @ w.T) < 1e-13
    z, w_prev, b = rng.standard_normal((10, 12)), rng.standard_normal((64, 12)), rng.standard_normal(64)
    w2, b2 = fold_scales_into_linear_rows(w_prev, s, b)
    assert b2 is not None
    assert rel_err((z @ w2.T + b2) @ (ws[0] * s).T, (z @ w_prev.T + b) @ ws[0].T) < 1e-13
    # and the quantized weights are of W·s: their error against W·s is RTN's on that matrix
    np.testing.assert_array_equal(
        qws[1].dequantize(),
        fake_quantize(
            apply_clip(ws[1] * s, awq_search_clip(x / s, ws[1] * s, LinearSpec("awq", "int4", 32), grid=5)),
            LinearSpec("awq", "int4", 32),
        ).astype(np.float32),
    )


def test_qoq_spec_is_searchable() -> None:
    rng = np.random.default_rng(3)
    x = outlier_source(rng, 128)(rng, 64)
    w = rng.standard_normal((8, 128)) * 0.05
    s, (qw,) = awq_quantize(x, [w], LinearSpec("qoq", "uint4", 64, "post", "w4a8_group"), grid=5)
    assert qw.scheme == "w4a8_group"
    assert _sq_err(x, w, x / s, qw.dequantize()) < _sq_err(
        x, w, x, fake_quantize(w, LinearSpec("qoq", "uint4", 64, "post", "w4a8_group"))
    )


def test_errors_name_the_problem() -> None:
    x, w = np.ones((8, 64)), np.ones((4, 64))
    with pytest.raises(ValueError, match="sequence of"):
        awq_search_scales(x, w, AWQ_SPEC)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights is empty"):
        awq_search_scales(x, [], AWQ_SPEC)
    with pytest.raises(ValueError, match=r"weights\[1\] has shape \(4, 32\); expected \[N, K\] with K = 64"):
        awq_search_scales(x, [w, np.ones((4, 32))], AWQ_SPEC)
    with pytest.raises(ValueError, match="grid"):
        awq_search_scales(x, [w], AWQ_SPEC, grid=0)
    with pytest.raises(ValueError, match="max_shrink"):
        awq_search_clip(x, w, LinearSpec("awq", "int4", 32), max_shrink=1.0)
    with pytest.raises(ValueError, match="n_sample_tokens"):
        awq_search_clip(x, w, LinearSpec("awq", "int4", 32), n_sample_tokens=0)
    with pytest.raises(ValueError, match="group_size 128 does not divide in_features K=64"):
        awq_search_scales(x, [w], AWQ_SPEC)
    with pytest.raises(ValueError, match="NaN or inf"):
        awq_quantize(np.full((8, 64), np.inf), [w], LinearSpec("awq", "int4", 32))
    with pytest.raises(ValueError, match=r"calibration inputs \[T >= 1, K\]"):
        awq_quantize(np.ones(64), [w], LinearSpec("awq", "int4", 32))

"""GPTQ: packed dequantize == the decisions, RTN when the Hessian is diagonal, lower output error than RTN on
activations with outlier channels, Hessian accumulation, dead inputs, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.config.spec import LinearSpec
from lowbit.quant.gptq import Hessian, as_hessian, gptq_decide, gptq_quantize
from lowbit.quant.rtn import SpecQuantizer, fake_quantize

from .numerics import rel_err
from .outlier_inputs import outlier_source

SPECS = [
    LinearSpec("gptq", "int4", 64),
    LinearSpec("gptq", "int3", -1),
    LinearSpec("gptq", "int8", 32),
    LinearSpec("gptq", "uint2", 32, "post"),
    LinearSpec("gptq", "uint4", 128, "post"),
    LinearSpec("gptq", "uint5", 64, "pre"),
    LinearSpec("gptq", "fp4_e2m1", 32),
    LinearSpec("gptq", "uint4", 64, "post", "w4a8_group"),
    LinearSpec("gptq", "uint4", -1, "post", "w4a8_channel"),
]


def _outlier_inputs(rng: np.random.Generator, t: int, k: int) -> np.ndarray:
    return outlier_source(rng, k)(rng, t)


def _out_err(x: np.ndarray, w: np.ndarray, w_hat: np.ndarray) -> float:
    return float(np.linalg.norm(x @ w.T - x @ np.asarray(w_hat, np.float64).T))


@settings(max_examples=20)
@given(
    st.sampled_from(SPECS),
    st.integers(0, 2**16),
    st.booleans(),
    st.sampled_from([16, 48, 128]),
)
def test_packed_weight_is_exactly_gptqs_decisions(spec: LinearSpec, seed: int, act_order: bool, block: int) -> None:
    rng = np.random.default_rng(seed)
    x, w = _outlier_inputs(rng, 96, 128), rng.standard_normal((24, 128)) * 0.05
    r = gptq_decide(w, x, spec, block_size=block, act_order=act_order)
    qw = r.pack()
    np.testing.assert_array_equal(qw.dequantize(), r.weights.astype(np.float32))
    assert np.array_equal(r.weights.astype(np.float32).astype(np.float64), r.weights)  # decisions are float32 values
    assert qw.scheme == spec.scheme and qw.shape == w.shape
    np.testing.assert_array_equal(gptq_quantize(w, x, spec, block, act_order=act_order).words, qw.words)


@settings(max_examples=10)
@given(st.sampled_from(SPECS), st.integers(0, 2**16), st.booleans())
def test_diagonal_hessian_is_rtn(spec: LinearSpec, seed: int, act_order: bool) -> None:
    # with H diagonal, H⁻¹ is diagonal: no error propagates and every group sees the original weights
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((16, 128)) * 0.05
    h = np.diag(rng.uniform(0.5, 3.0, 128))
    r = gptq_decide(w, h, spec, act_order=act_order)
    np.testing.assert_array_equal(r.weights, fake_quantize(w, spec))


def _gptq_rtn_ratios(seed: int, bits: int, group: int, zero: str, act_order: bool) -> tuple[float, float]:
    """(GPTQ / RTN output error on the 128 calibration tokens, the same on 256 held-out tokens of the same
    distribution: same outlier channels) for one random weight and outlier source."""
    rng = np.random.default_rng(seed)
    spec = LinearSpec("gptq", f"{'u' if zero == 'post' else ''}int{bits}", group, zero)
    draw = outlier_source(rng, 128)
    x, w = draw(rng, 128), rng.standard_normal((32, 128)) * 0.05
    gptq = gptq_quantize(w, x, spec, act_order=act_order).dequantize()
    rtn = fake_quantize(w, spec)
    x_test = draw(rng, 256)
    return _out_err(x, w, gptq) / _out_err(x, w, rtn), _out_err(x_test, w, gptq) / _out_err(x_test, w, rtn)


@settings(max_examples=12)
@given(
    st.integers(0, 2**16),
    st.sampled_from([3, 4]),
    st.sampled_from([32, 64, 128]),
    st.sampled_from(["none", "post"]),
    st.booleans(),
)
def test_gptq_never_loses_to_rtn_on_outlier_activations(
    seed: int, bits: int, group: int, zero: str, act_order: bool
) -> None:
    # per draw the gain varies (400 draws: calibration ratio 0.08-0.87, held-out 0.10-0.91): every draw must
    # at least not lose, on the calibration tokens and on held-out ones
    train, held_out = _gptq_rtn_ratios(seed, bits, group, zero, act_order)
    assert train < 0.95 and held_out < 1.0, (train, held_out)


@pytest.mark.parametrize("bits,group,zero", [(3, 32, "none"), (4, 128, "post"), (3, 64, "post"), (4, 32, "none")])
def test_gptq_beats_rtn_on_outlier_activations(bits: int, group: int, zero: str) -> None:
    # GPTQ's claim is about the typical draw: the median over 16 fixed seeds (both act orders) cuts the output
    # error by more than 2x against RTN (400 draws here: mean calibration ratio 0.37, held-out 0.44)
    ratios = np.array([_gptq_rtn_ratios(seed, bits, group, zero, ao) for seed in range(8) for ao in (False, True)])
    train, held_out = np.median(ratios, axis=0)
    assert train < 0.5 and held_out < 0.6, (train, held_out)


@pytest.mark.parametrize("block", [1, 7, 64])
def test_lazy_batches_equal_one_column_at_a_time_obq(block: int) -> None:
    # oracle: optimal brain quantization column by column, re-inverting the remaining Hessian each step
    # (what GPTQ's Cholesky rows and lazy block updates compute with less work)
    rng = np.random.default_rng(3)
    k = 48
    x, w = _outlier_inputs(rng, 100, k), rng.standard_normal((6, k)) * 0.05
    spec = LinearSpec("gptq", "int4", -1)
    h = 2 * x.T @ x / len(x)
    h += 0.01 * np.mean(np.diag(h)) * np.eye(k)
    q = SpecQuantizer.of(spec, k)
    s, z = q.params(w)
    left, decided = w.copy(), np.zeros_like(w)
    for i in range(k):
        h_inv = np.linalg.inv(h[i:, i:])
        decided[:, i] = q.dequant(q.values(left[:, i : i + 1], s, z), s, z)[:, 0]
        left[:, i:] -= np.outer((left[:, i] - decided[:, i]) / h_inv[0, 0], h_inv[0])
    np.testing.assert_allclose(gptq_decide(w, x, spec, block_size=block).weights, decided, rtol=1e-12, atol=0)


def test_hessian_accumulates_and_matches_direct_inputs() -> None:
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((10, 32)), rng.standard_normal((3, 4, 32))
    h = Hessian.of(x1).add(x2)
    both = np.concatenate([x1, x2.reshape(-1, 32)])
    assert h.num_tokens == 22
    assert rel_err(h.matrix, 2 * both.T @ both / 22) < 1e-14
    w = rng.standard_normal((8, 32))
    spec = LinearSpec("gptq", "int4", 32)
    a = gptq_decide(w, both, spec).weights
    np.testing.assert_allclose(gptq_decide(w, h, spec).weights, a, atol=0)
    np.testing.assert_allclose(gptq_decide(w, h.matrix, spec).weights, a, atol=0)
    np.testing.assert_array_equal(as_hessian(h.matrix, 32), h.matrix)


def test_dead_inputs_get_zero_weights() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 32))
    x[:, [3, 17]] = 0
    r = gptq_decide(rng.standard_normal((8, 32)), x, LinearSpec("gptq", "int4", 16))
    np.testing.assert_array_equal(r.weights[:, [3, 17]], 0)


def test_group_params_see_pending_updates_when_groups_span_blocks() -> None:
    # a group of 128 across blocks of 16 and the same group with one block give the same result
    rng = np.random.default_rng(2)
    x, w = _outlier_inputs(rng, 128, 128), rng.standard_normal((8, 128))
    spec = LinearSpec("gptq", "uint4", 128, "post")
    a = gptq_decide(w, x, spec, block_size=16).weights
    b = gptq_decide(w, x, spec, block_size=128).weights
    assert rel_err(a, b) < 1e-6


def test_errors_name_the_problem() -> None:
    w, x = np.ones((4, 32)), np.ones((8, 32))
    spec = LinearSpec("gptq", "int4", 32)
    with pytest.raises(ValueError, match="damp"):
        gptq_quantize(w, x, spec, damp=0)
    with pytest.raises(ValueError, match="block_size"):
        gptq_quantize(w, x, spec, block_size=0)
    with pytest.raises(ValueError, match=r"in_features K = 32; pass inputs \[T, 32\]"):
        gptq_quantize(w, np.ones((8, 16)), spec)
    with pytest.raises(ValueError, match="NaN or inf"):
        gptq_quantize(w, np.full((8, 32), np.nan), spec)
    with pytest.raises(ValueError, match="group_size 24 does not divide in_features K=32"):
        gptq_quantize(w, x, LinearSpec("gptq", "int4", 24))
    with pytest.raises(ValueError, match="not positive definite"):
        gptq_quantize(w, np.kron(np.eye(16), [[1.0, 3.0], [3.0, 1.0]]), spec)  # eigenvalues 4 and -2
    with pytest.raises(ValueError, match=r"pass a weight \[out_features N, in_features K\]"):
        gptq_quantize(np.ones(32), x, spec)
    with pytest.raises(ValueError, match="same linear"):
        Hessian.of(x).add(np.ones((2, 16)))
    with pytest.raises(ValueError, match="int16"):
        gptq_quantize(w, x, LinearSpec("gptq", "int16", 32))

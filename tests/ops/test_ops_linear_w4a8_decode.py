"""W4A8 (QoQ) weights on the TVM backend run the a8 GEMV at every M (`w4a8_runs_a8`; row tiles past 16): the
per-token int8 codes regrouped, scales s2·s1 and zero points per group. Oracle: the W4A8 formula in float64 from the
weight's own dequantization, y = (xq·sx) @ ŵᵀ with ŵ = (q − z)·s2·s1 (w4a8_group) or (q − z)·s (channel); the
GEMV's sums are exact integers scaled in fp32 per group, so float32 outputs agree to ~1e-7 (bound 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.ops.linear import (
    _quantize_tokens,
    quantized_linear,
    quantized_linear_int8,
    w4a8_gemv_group,
    w4a8_runs_a8,
)
from lowbit.ops.weight import quantize


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    assert np.isfinite(err)
    return err


def oracle(qa: np.ndarray, sa: np.ndarray, qw) -> np.ndarray:
    return (qa.astype(np.float64) * sa.astype(np.float64)[:, None]) @ qw.dequantize().astype(np.float64).T


def a8_plans(qw) -> list:
    return [key for key in qw.__dict__.get("_plans", {}) if isinstance(key, tuple) and key[-1] == "a8"]


@settings(max_examples=12, deadline=None)
@given(
    scheme=st.sampled_from(["w4a8_group", "w4a8_channel"]),
    group=st.sampled_from([32, 64, 128, -1]),
    m=st.integers(1, 16),
    n=st.sampled_from([1, 33, 100, 160]),
    kk=st.integers(1, 4),
    out_dtype=st.sampled_from(["float32", "bfloat16"]),
    seed=st.integers(0, 2**16),
)
def test_decode_gemv_matches_the_w4a8_formula(scheme, group, m, n, kk, out_dtype, seed):
    k = 128 * kk
    rng = np.random.default_rng(seed)
    qw = quantize(rng.standard_normal((n, k)).astype(np.float32), None, group, scheme=scheme)
    assert w4a8_runs_a8(qw, m, "tvm")
    qa, sa = _quantize_tokens(rng.standard_normal((m, k)).astype(np.float32))
    y = quantized_linear_int8(torch.from_numpy(qa), torch.from_numpy(sa), qw, out_dtype=out_dtype, backend="tvm")
    assert a8_plans(qw) == [(m, "tvm", out_dtype, "a8")]  # the GEMV ran, not the W4A8 GEMM
    assert rel(y.float().numpy(), oracle(qa, sa, qw)) < (1e-5 if out_dtype == "float32" else 1e-2)


@pytest.mark.parametrize("scheme", ["w4a8_group", "w4a8_channel"])
def test_decode_gemv_equals_the_w4a8_gemm(scheme):
    """Against the W4A8 GEMM (the reference interpreter): the same integer sums, fp32 rounding apart."""
    rng = np.random.default_rng(1)
    qw = quantize(rng.standard_normal((40, 256)).astype(np.float32), None, 64, scheme=scheme)
    qa, sa = _quantize_tokens(rng.standard_normal((3, 256)).astype(np.float32))
    y = quantized_linear_int8(qa, sa, qw, backend="tvm")  # NumPy in, NumPy out
    assert isinstance(y, np.ndarray) and a8_plans(qw)
    assert rel(y, quantized_linear_int8(qa, sa, qw, backend="reference")) < 1e-6


def test_float_activations_take_the_same_path_per_token():
    rng = np.random.default_rng(2)
    qw = quantize(rng.standard_normal((64, 384)).astype(np.float32), None, 128, scheme="w4a8_group")
    x = rng.standard_normal((5, 384)).astype(np.float32)
    x[2] = 0.0  # a row of zeros: scale 1, codes 0, y 0
    x[3, 7] = np.inf  # a row with an inf: NaN out, the other rows untouched
    y = quantized_linear(torch.from_numpy(x), qw, backend="tvm")
    qa, sa = _quantize_tokens(x)
    rows = [0, 1, 2, 4]
    assert torch.isnan(y[3]).all() and torch.isfinite(y[rows]).all()
    assert (y[2] == 0).all()
    expected = quantized_linear_int8(torch.from_numpy(qa[rows]), torch.from_numpy(sa[rows]), qw, backend="tvm")
    assert torch.equal(y[rows], expected)  # the same codes and kernel, row by row independent


@pytest.mark.parametrize("m", [17, 40, 70])
def test_prefill_rows_run_in_row_tiles(m):
    """Past 16 rows: the prefill plan (row tiles of 16, or 32 / 64 where AMX runs the dots), one per weight."""
    rng = np.random.default_rng(m)
    qw = quantize(rng.standard_normal((48, 256)).astype(np.float32), None, 64, scheme="w4a8_group")
    qa, sa = _quantize_tokens(rng.standard_normal((m, 256)).astype(np.float32))
    y = quantized_linear_int8(qa, sa, qw, backend="tvm")
    assert a8_plans(qw) == [(None, "tvm", "float32", "a8")]
    assert rel(y, oracle(qa, sa, qw)) < 1e-5
    one = [quantized_linear_int8(qa[i : i + 1], sa[i : i + 1], qw, backend="tvm") for i in (0, m - 1)]
    assert np.array_equal(y[[0, m - 1]], np.concatenate(one))  # rows are independent: tiles change nothing


def test_other_backends_and_ineligible_weights_keep_the_gemm():
    rng = np.random.default_rng(3)
    qw = quantize(rng.standard_normal((32, 256)).astype(np.float32), None, 128, scheme="w4a8_group")
    assert w4a8_runs_a8(qw, 300, "tvm") and not w4a8_runs_a8(qw, 4, "reference")
    assert not w4a8_runs_a8(qw, 0, "tvm")
    odd = quantize(rng.standard_normal((32, 200)).astype(np.float32), None, -1, scheme="w4a8_channel")
    assert w4a8_gemv_group(odd) is None  # no group size of the GEMV divides K = 200
    qa, sa = _quantize_tokens(rng.standard_normal((2, 200)).astype(np.float32))
    assert rel(quantized_linear_int8(qa, sa, odd, backend="tvm"), oracle(qa, sa, odd)) < 1e-5
    assert not a8_plans(odd)

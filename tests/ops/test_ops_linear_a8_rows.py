"""The int8-activation GEMV at any number of rows (a prefill through `quantized_linear(kernel=A8)` and the
executor's launcher): each row is quantized on its own and its dot products are exact integers, and the fp32
epilogue of a (row, column) sees only that row, so M rows in row tiles of 16 must equal the M = 1 path row by
row bit for bit (whatever the tile and the lowering: one row block, several, ragged last tile); against the
float product the only error is the activations' int8 rounding (~0.7% relative, bound 2e-2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.ops.linear import A8_KERNEL, a8_plan, linear_launcher, quantized_linear
from lowbit.ops.weight import quantize


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    assert np.isfinite(err)
    return err


@pytest.fixture(scope="module")
def weight():
    rng = np.random.default_rng(0)
    return quantize(rng.standard_normal((96, 256)).astype(np.float32), "int4", 64)


def row_by_row(x: np.ndarray, qw) -> np.ndarray:
    return np.concatenate([quantized_linear(x[i : i + 1], qw, backend="tvm", kernel=A8_KERNEL) for i in range(len(x))])


@settings(max_examples=6, deadline=None)
@given(m=st.integers(17, 70), seed=st.integers(0, 2**16))
def test_many_rows_equal_one_row_at_a_time(weight, m, seed):
    x = np.random.default_rng(seed).standard_normal((m, 256)).astype(np.float32)
    y = quantized_linear(x, weight, backend="tvm", kernel=A8_KERNEL)
    assert np.array_equal(y, row_by_row(x, weight))
    ref = x.astype(np.float64) @ weight.dequantize().astype(np.float64).T
    assert rel(y, ref) < 2e-2


def test_reference_backend_takes_many_rows(weight):
    x = np.random.default_rng(1).standard_normal((19, 256)).astype(np.float32)
    y = quantized_linear(x, weight, backend="reference", kernel=A8_KERNEL)
    assert rel(y, quantized_linear(x, weight, backend="tvm", kernel=A8_KERNEL)) < 1e-6


def test_one_launcher_and_one_plan_for_every_prefill_length(weight):
    """Rows beyond 16 share one plan per weight (M is a call argument) and one thread scratch, grown to the
    largest call and reused by shorter ones: a longer call after a shorter one and the reverse."""
    launch = linear_launcher(weight, 40, "tvm", "float32", A8_KERNEL)
    for m in (40, 23, 64, 17, 40):
        x = torch.from_numpy(np.random.default_rng(m).standard_normal((m, 256)).astype(np.float32))
        y = torch.full((m, 96), float("nan"))
        launch(x, y)
        assert np.array_equal(y.numpy(), row_by_row(x.numpy(), weight))
    assert a8_plan(weight, 17, "tvm", "float32") is a8_plan(weight, 300, "tvm", "float32")
    assert a8_plan(weight, 16, "tvm", "float32") is not a8_plan(weight, 17, "tvm", "float32")


@pytest.mark.parametrize("m", [64, 80, 96, 128])
def test_amx_prefill_takes_wide_row_tiles_where_they_pad_no_more_rows(m):
    """On AMX a prefill runs 64-row tiles where the 32-row tiles' padding is a whole number of them (M = 64,
    128; 80 pads to 96, which 64-row tiles would pad to 128): the same sums and epilogue, so the same bits as
    one row at a time either way."""
    from lowbit.ops.linear import A8_AMX_WIDE_ROWS, tvm_int8_dot

    rng = np.random.default_rng(m)
    qw = quantize(rng.standard_normal((64, 256)).astype(np.float32), "int4", 128)  # whole AMX tiles (G / 2 = 64)
    x = rng.standard_normal((m, 256)).astype(np.float32)
    y = quantized_linear(x, qw, backend="tvm", kernel=A8_KERNEL)
    assert np.array_equal(y, row_by_row(x, qw))
    plan = a8_plan(qw, m, "tvm", "float32")
    wide = tvm_int8_dot() == "amx" and -(-m // 32) % (A8_AMX_WIDE_ROWS // 32) == 0
    assert (plan._wide_gemv is not None) == wide

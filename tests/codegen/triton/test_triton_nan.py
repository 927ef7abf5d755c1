"""NaN through max and min on the Triton backend, against the reference interpreter (np.max / np.maximum: a NaN
anywhere in the operands gives NaN). Triton's tl.max / tl.min drop a NaN (arith.maxnumf on the GPU, np.nanmax in
the interpreter), so the backend reduces with a NaN-propagating combine (`lower.COMBINE_HELPERS`); every kernel
here is also compiled for sm_90 (`run_both`), and the PTX keeps NaN-propagating max / min only."""

from __future__ import annotations

import re

import numpy as np
import pytest
from backend_harness import assert_same, run_both
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.codegen.triton as triton_backend
import lowbit.lang as T
from lowbit.codegen.backend import compile_program
from lowbit.dtypes import dtype


@T.kernel
def extrema(
    x: T.Tensor("DT", ("M", "N")),
    rows: T.Tensor("DT", ("M", 2)),
    cols: T.Tensor("DT", (2, "N")),
    M: T.int32,
    N: T.int32,
    DT: T.constexpr = "float32",
    BM: T.constexpr = 4,
    BN: T.constexpr = 8,
):
    T.grid(1)
    v = T.load(x, (0, 0), (BM, BN), other=float("-inf"))
    T.store(rows, (0, 0), T.max(v, axis=1, keepdims=True))
    T.store(rows, (0, 1), T.min(v, axis=1, keepdims=True))
    T.store(cols, (0, 0), T.max(v, axis=0, keepdims=True))
    T.store(cols, (1, 0), T.min(v, axis=0, keepdims=True))


@T.kernel
def running_max(x: T.Tensor("float32", ("M", "N")), m: T.Tensor("float32", ("M", 1)), M: T.int32, N: T.int32):
    """The attention kernels' online max: m = maximum(m, max(tile)) over column tiles."""
    T.grid(1)
    acc = T.full((4, 1), -1e30, T.float32, name="acc")
    for n0 in T.range(0, N, 8, name="n0"):
        T.assign(acc, T.maximum(acc, T.max(T.load(x, (0, n0), (4, 8), other=float("-inf")), axis=1, keepdims=True)))
    T.store(m, (0, 0), acc)


@T.kernel
def pairwise(
    a: T.Tensor("DT", ("N",)),
    b: T.Tensor("DT", ("N",)),
    y: T.Tensor("DT", (2, "N")),
    N: T.int32,
    DT: T.constexpr = "float32",
):
    T.grid(1)
    u, v = T.load(a, (0,), (16,)), T.load(b, (0,), (16,))
    T.store(y, (0, 0), T.reshape(T.maximum(u, v), (1, 16)))
    T.store(y, (1, 0), T.reshape(T.minimum(u, v), (1, 16)))


def _host(dt: str):
    return dtype(dt).host_dtype


def _f32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32)  # ml_dtypes' bfloat16 compares NaN by bits in assert_same


@settings(max_examples=20)
@given(
    dt=st.sampled_from(["float32", "float16", "bfloat16"]),
    M=st.integers(1, 4),
    N=st.integers(1, 8),
    nans=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 7)), max_size=3),
    seed=st.integers(0, 3),
)
def test_max_and_min_reductions_propagate_nan_like_the_reference(dt, M, N, nans, seed):
    x = np.random.default_rng(seed).standard_normal((M, N)).astype(np.float32)
    for i, j in nans:
        x[i % M, j % N] = np.nan
    args = {"x": x.astype(_host(dt)), "rows": np.zeros((M, 2), _host(dt)), "cols": np.zeros((2, N), _host(dt))}
    ref, tri = run_both(extrema, {"DT": dt}, args)
    assert_same(_f32(tri["rows"]), _f32(ref["rows"]), "row max / min")
    assert_same(_f32(tri["cols"]), _f32(ref["cols"]), "column max / min")
    # the oracle's law: NaN exactly where the row (column) holds one
    row_nan, col_nan = np.isnan(x).any(axis=1), np.isnan(x).any(axis=0)
    assert np.array_equal(np.isnan(_f32(tri["rows"])), np.stack([row_nan, row_nan], 1))
    assert np.array_equal(np.isnan(_f32(tri["cols"])), np.stack([col_nan, col_nan], 0))


@pytest.mark.parametrize("where", [0, 3, 7])
def test_a_nan_anywhere_in_a_row_is_its_max(where):
    x = np.ones((4, 8), np.float32)
    x[1, where] = np.nan
    ref, tri = run_both(
        extrema, {}, {"x": x, "rows": np.zeros((4, 2), np.float32), "cols": np.zeros((2, 8), np.float32)}
    )
    assert np.isnan(ref["rows"][1]).all() and np.isnan(tri["rows"][1]).all()
    assert_same(tri["rows"], ref["rows"])


def test_the_running_max_keeps_a_nan_of_an_earlier_tile():
    x = np.arange(4 * 24, dtype=np.float32).reshape(4, 24)
    x[2, 3] = np.nan  # first tile: the later tiles' larger values must not replace it
    ref, tri = run_both(running_max, {}, {"x": x, "m": np.zeros((4, 1), np.float32)})
    assert np.isnan(ref["m"][2, 0]) and np.isnan(tri["m"][2, 0])
    assert_same(tri["m"], ref["m"])


@pytest.mark.parametrize("dt", ["float32", "float16", "bfloat16"])
def test_maximum_and_minimum_propagate_nan_like_the_reference(dt):
    a = np.array([np.nan, 1, -np.inf, np.inf, 0, -0.0, 3.5, np.nan, 2, -2, 5, 1, 0, 7, -1, 4], np.float32)
    b = np.array([1, np.nan, 5, -np.inf, -0.0, 1, -3.5, np.nan, 2, 3, np.nan, 1, 0, -7, -1, np.nan], np.float32)
    args = {"a": a.astype(_host(dt)), "b": b.astype(_host(dt)), "y": np.zeros((2, 16), _host(dt))}
    ref, tri = run_both(pairwise, {"DT": dt}, args)
    assert_same(_f32(tri["y"]), _f32(ref["y"]))
    nan = np.isnan(a) | np.isnan(b)
    assert np.array_equal(np.isnan(_f32(tri["y"])), np.stack([nan, nan]))


@pytest.mark.parametrize("dt", ["float32", "float16"])
def test_sm90_max_and_min_are_the_nan_propagating_instructions(dt):
    """On the GPU tl.max would be `max.f32` (drops NaN); the combine is `max.NaN.f32`, the same count."""
    ptx = triton_backend.compile_sm90(compile_program(extrema.trace(DT=dt), "triton"))["ptx"]
    float_minmax = re.findall(r"\b(?:max|min)(?:\.\w+)*\.(?:f16|f32|f16x2|bf16)\b", ptx)
    assert float_minmax and all(".NaN" in op for op in float_minmax), sorted(set(float_minmax))

"""Reductions along the last axis in `vector`-lane partials (`lower._reduce_lanes`): sum / max / min of a
[R, C] tile over C, for int32 (exact, wrapping like the reference), float32 and float16, with ragged loads
(`other` fills past the tensor's edge, so the checked read form is used) and keepdims both ways. Checked
against NumPy; the lane form must be the one chosen (its fold loop is in the source), and a vector width
too wide for it (C < 2·vector) takes the serial loop and gives the same exact results."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.lang as T
from lowbit.codegen.backend import compile_program


@T.kernel
def row_reductions(
    a: T.Tensor("dt", ("M", "N")),
    out: T.Tensor("dt", (4, "R")),
    M: T.int32,
    N: T.int32,
    dt: T.constexpr = "int32",
    R: T.constexpr = 4,
    C: T.constexpr = 64,
):
    T.grid(1)
    x = T.load(a, (0, 0), (R, C), other=0)
    T.store(out, (0, 0), T.reshape(T.sum(x, axis=1), (1, R)))
    T.store(out, (1, 0), T.reshape(T.max(x, axis=1), (1, R)))
    T.store(out, (2, 0), T.reshape(T.min(x, axis=1), (1, R)))
    T.store(out, (3, 0), T.transpose(T.sum(x, axis=1, keepdims=True)))


def _run(
    dt: str, R: int, C: int, M: int, N: int, seed: int, vector: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    rng = np.random.default_rng(seed)
    if dt == "int32":
        a = rng.integers(-(2**31), 2**31, (M, N), dtype=np.int64).astype(np.int32)  # sums wrap
    else:
        a = rng.standard_normal((M, N)).astype(dt)
    kernel = compile_program(row_reductions.trace(dt=dt, R=R, C=C), "tvm", {"vector": vector})
    out = np.zeros((4, R), dt)
    kernel({"a": a, "out": out, "M": M, "N": N})
    full = np.zeros((R, C), np.float64 if dt != "int32" else np.int64)
    full[: min(M, R), : min(N, C)] = a[:R, :C]
    s = full.sum(axis=1)
    if dt == "int32":
        s = ((s + 2**31) % 2**32 - 2**31).astype(np.int32)
    want = np.stack([s, full.max(axis=1), full.min(axis=1), s]).astype(dt)
    return out, want, np.abs(full).sum(axis=1), kernel.source


@settings(max_examples=8, deadline=None)
@given(
    st.sampled_from(["int32", "float32", "float16"]),
    st.sampled_from([(1, 16), (4, 64), (3, 32)]),
    st.integers(1, 6),
    st.integers(1, 80),
    st.integers(0, 2**16),
)
def test_lane_reductions_match_numpy(dt: str, rc: tuple[int, int], M: int, N: int, seed: int):
    R, C = rc
    got, want, abs_sum, source = _run(dt, R, C, M, N, seed, vector=8)
    assert "lanes = T.decl_buffer" in source and "T.vectorized(4)" in source  # lane partials, folded as a tree
    if dt == "int32":
        np.testing.assert_array_equal(got, want)
        return
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got[1:3], want[1:3])  # max / min are exact in any order
    # one rounding of the result plus C roundings of partial sums bounded by the row's sum of |x|
    eps = float(np.finfo(dt).eps)
    exact = np.asarray(want[0], np.float64)
    bound = eps * np.abs(exact) + C * eps * abs_sum
    assert np.all(np.abs(got[0].astype(np.float64) - exact) <= bound)
    assert np.array_equal(got[0], got[3])


@pytest.mark.parametrize("C, vector", [(16, 16), (32, 64)])
def test_too_few_lanes_take_the_serial_loop(C: int, vector: int):
    got, want, _, source = _run("int32", 2, C, 2, C - 3, 5, vector=vector)
    assert "T.serial(1, " not in source
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dt", ["int32", "float32"])
@pytest.mark.parametrize("M, N", [(4, 64), (6, 80), (4, 63), (3, 64)])
def test_in_bounds_tiles_take_the_unchecked_lane_loop(dt: str, M: int, N: int):
    """The [4, 64] tile inside the tensor runs the lane loop on plain loads (a guarded branch); one that
    crosses an edge (N = 63 or M = 3) runs the checked branch; both equal NumPy."""
    got, want, abs_sum, source = _run(dt, 4, 64, M, N, 11, vector=8)
    guarded = "if 0 + 4 <= M and 0 + 64 <= N:\n"
    assert guarded in source  # the unchecked lane loop, under the tile's in-bounds guard ...
    fast = source.split(guarded, 1)[1].split("else:", 1)[0]
    assert "a_1[(0 + o0)*N + (0 + ro * 8 + rl)]" in fast and "T.if_then_else" not in fast
    assert "T.if_then_else(0 + o0 < M" in source  # ... and the checked loop for a tile at an edge
    if dt == "int32":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_array_equal(got[1:3], want[1:3])
        eps = float(np.finfo(dt).eps)
        assert np.all(np.abs(got[0].astype(np.float64) - want[0]) <= eps * abs(want[0]) + 64 * eps * abs_sum)

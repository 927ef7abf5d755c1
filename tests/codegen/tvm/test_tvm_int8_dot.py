"""8-bit integer dots on the TVM backend: lowered to vpmaddubsw/vpmaddwd exactly when value ranges prove the
16-bit pair sums cannot saturate, and equal to the reference interpreter's exact int32 dot either way.

The operands are built at the extremes of what the range analysis allows (signed operand -128, unsigned
operand at its proven bound), so a chunk one quad too long, a wrong operand order or a sign error shows up
as a wrong integer, not as a small float error.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.lang as T
from lowbit.artifact.fingerprint import isa_flags
from lowbit.codegen.backend import compile_program

pytestmark = pytest.mark.skipif("avx2" not in isa_flags(), reason="the int8 dot lowering needs AVX2")
INTRINSIC = "llvm.x86.avx2.pmadd.ub.sw"


@T.kernel
def masked_dot(
    a: T.Tensor("int8", ("M", "K")),
    b: T.Tensor("bdtype", ("K", "N")),
    y: T.Tensor("int32", ("M", "N")),
    M: T.int32,
    N: T.int32,
    K: T.int32,
    bdtype: T.constexpr = "uint8",
    mask: T.constexpr = 15,
    unsigned_side: T.constexpr = "b",
    BM: T.constexpr = 2,
    BN: T.constexpr = 16,
    BK: T.constexpr = 64,
):
    pm, pn = T.grid(T.cdiv(M, BM), T.cdiv(N, BN))
    acc = T.zeros((BM, BN), T.int32)
    for k0 in T.range(0, K, BK):
        x = T.load(a, (pm * BM, k0), (BM, BK))
        w = T.load(b, (k0, pn * BN), (BK, BN))
        if mask is not None:
            w = w & mask
        if unsigned_side == "b":
            acc += T.dot(x, T.cast(w, T.int8), acc_dtype=T.int32)
        else:  # the unsigned operand on the left: (w^T [BN, BK] masked) @ (x^T [BK, BM]) -> y^T
            acc += T.transpose(T.dot(T.cast(T.transpose(w), T.int8), T.transpose(x), acc_dtype=T.int32))
    T.store(y, (pm * BM, pn * BN), acc)


def run(M, N, K, a, b, options=None, **consts):
    y = np.zeros((M, N), np.int32)
    kernel = compile_program(masked_dot.trace(**consts), "tvm", options or {})
    kernel({"a": a, "b": b, "y": y, "M": M, "N": N, "K": K})
    return y, kernel.source


def exact(a, b, mask):
    bb = b.astype(np.int64) & (mask if mask is not None else -1)
    return (a.astype(np.int64) @ bb.astype(np.int8).astype(np.int64)).astype(np.int32)


@pytest.mark.parametrize("mask", [15, 127, 1])
def test_proven_ranges_take_vpmaddubsw_and_stay_exact_at_the_extremes(mask):
    M, N, K = 4, 32, 128
    a = np.full((M, K), -128, np.int8)
    b = np.full((K, N), 255, np.uint8)
    y, src = run(M, N, K, a, b, mask=mask)
    assert INTRINSIC in src
    assert np.array_equal(y, exact(a, b, mask))
    rng = np.random.default_rng(mask)
    a = rng.integers(-128, 128, (M, K)).astype(np.int8)
    b = rng.integers(0, 256, (K, N)).astype(np.uint8)
    assert np.array_equal(run(M, N, K, a, b, mask=mask)[0], exact(a, b, mask))


def test_unsigned_operand_on_the_left():
    M, N, K = 16, 8, 64
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, (M, K)).astype(np.int8)
    b = rng.integers(0, 256, (K, N)).astype(np.uint8)
    y, src = run(M, N, K, a, b, unsigned_side="a", BM=16, BN=8)
    assert INTRINSIC in src
    assert np.array_equal(y, exact(a, b, 15))


@pytest.mark.parametrize(
    "consts, options",
    [
        (dict(mask=None), {}),  # u8 up to 255: a pair can reach 65280, beyond i16
        (dict(mask=None, bdtype="int8"), {}),  # int8 x int8: no unsigned operand
        (dict(mask=15), {"int8_dot": "none"}),  # turned off
    ],
)
def test_unproven_ranges_keep_the_generic_loops(consts, options):
    M, N, K = 2, 16, 64
    rng = np.random.default_rng(2)
    a = rng.integers(-128, 128, (M, K)).astype(np.int8)
    bdt = np.int8 if consts.get("bdtype") == "int8" else np.uint8
    b = rng.integers(np.iinfo(bdt).min, np.iinfo(bdt).max + 1, (K, N)).astype(bdt)
    y, src = run(M, N, K, a, b, options, **consts)
    assert INTRINSIC not in src
    assert np.array_equal(y, exact(a, b, consts.get("mask")))


def test_ragged_edges_take_the_checked_loops():
    M, N, K = 3, 20, 96  # ragged rows, columns and K tile: the guarded fast path is skipped at the edges
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (M, K)).astype(np.int8)
    b = rng.integers(0, 256, (K, N)).astype(np.uint8)
    y, src = run(M, N, K, a, b)
    assert INTRINSIC in src
    assert np.array_equal(y, exact(a, b, 15))


@settings(max_examples=8, deadline=None)
@given(
    bm=st.sampled_from([1, 2, 4, 8, 16]),
    tm=st.sampled_from([1, 2, 4]),
    bk=st.sampled_from([32, 96]),  # 8 and 24 quads: whole chunks of 8, and a tail chunk with mask 127 (chunk 1)
    mask=st.sampled_from([15, 127]),
    side=st.sampled_from(["a", "b"]),
    extreme=st.booleans(),
)
def test_row_blocks_and_chunks_are_exact(bm, tm, bk, mask, side, extreme):
    """One row block (tm >= BM: every row's accumulators in registers) and several (BM > tm: one column
    vector at a time, the quads reused by every row block), whole and tail chunks, either operand
    unsigned: the same exact integers."""
    # the dot's rows: BM of x (side b), or BN columns of w^T (side a: (w^T [BN, BK]) @ (x^T [BK, BM]))
    M, N, K = (2 * bm, 32, 2 * bk) if side == "b" else (16, 2 * bm, 2 * bk)
    rng = np.random.default_rng(bm * 1000 + tm * 100 + bk + mask)
    if extreme:
        a = np.full((M, K), -128, np.int8)
        b = np.full((K, N), 255, np.uint8)
    else:
        a = rng.integers(-128, 128, (M, K)).astype(np.int8)
        b = rng.integers(0, 256, (K, N)).astype(np.uint8)
    consts = dict(mask=mask, unsigned_side=side, BM=bm if side == "b" else 8, BN=16 if side == "b" else bm, BK=bk)
    y, src = run(M, N, K, a, b, {"tm": tm}, **consts)
    assert INTRINSIC in src
    assert np.array_equal(y, exact(a, b, mask))

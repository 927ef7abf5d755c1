"""The int8 dot's range analysis must not read an assigned tile's values from its initial `T.zeros`: a tile
overwritten by `T.assign` (signed int8 patterns packed into words, here) is unknown, so the dot keeps it as
the signed operand. Regression: the analysis took the zeros as the proven range [0, 0], made the signed
operand the unsigned one and returned wrong integers."""

from __future__ import annotations

import numpy as np
import pytest

import lowbit.lang as T
from lowbit.artifact.fingerprint import isa_flags
from lowbit.codegen.backend import compile_program

pytestmark = pytest.mark.skipif("avx2" not in isa_flags(), reason="the int8 dot lowering needs AVX2")


@T.kernel
def packed_columns_dot(
    a: T.Tensor("uint8", ("BM", "BK")),
    b: T.Tensor("int8", ("BK", "BN")),
    y: T.Tensor("int32", ("BM", "BN")),
    BM: T.constexpr = 8,
    BN: T.constexpr = 8,
    BK: T.constexpr = 32,
):
    (pid,) = T.grid(1)
    shifts = T.reshape(T.arange(0, 4) * 8, (1, 1, 4))
    # b's signed codes packed 4 per word along K (word [t, j] holds b[4t + r, j] at byte r), assigned below
    words = T.zeros((BK // 4, BN), T.int32, name="words")
    quads = T.transpose(T.reshape(T.cast(T.load(b, (pid, 0), (BK, BN)), T.int32), (BK // 4, 4, BN)), (0, 2, 1))
    T.assign(words, T.sum((quads & 255) << shifts, axis=2))
    cols = T.reshape(T.transpose(T.reshape(T.view(words, T.int8), (BK // 4, BN, 4)), (0, 2, 1)), (BK, BN))
    codes = T.cast(T.load(a, (0, 0), (BM, BK)) & 15, T.int8)  # proven 0..15: the unsigned operand
    T.store(y, (0, 0), T.dot(codes, cols, acc_dtype=T.int32))


def test_assigned_signed_operand_is_not_taken_as_unsigned():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (8, 32)).astype(np.uint8)
    b = rng.integers(-128, 128, (32, 8)).astype(np.int8)
    b[:, 0] = -128  # the extremes: a sign error shows as a wrong integer
    y = np.zeros((8, 8), np.int32)
    kernel = compile_program(packed_columns_dot.trace(), "tvm")
    kernel({"a": a, "b": b, "y": y})
    want = (a & 15).astype(np.int64) @ b.astype(np.int64)
    np.testing.assert_array_equal(y, want)
    assert "llvm.x86.avx2.pmadd.ub.sw" in kernel.source  # still the vpmaddubsw path, with the right operand order

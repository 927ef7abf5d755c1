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
def packed_rows_dot(
    a: T.Tensor("int8", ("BM", "BK")),
    b: T.Tensor("uint8", ("BK", "BN")),
    y: T.Tensor("int32", ("BM", "BN")),
    BM: T.constexpr = 8,
    BN: T.constexpr = 16,
    BK: T.constexpr = 32,
):
    (pid,) = T.grid(1)
    shifts = T.reshape(T.arange(0, 4) * 8, (1, 1, 4))
    words = T.zeros((BM, BK // 4), T.int32, name="words")  # a's codes packed 4 per word, assigned below
    quads = T.reshape(T.cast(T.load(a, (pid, 0), (BM, BK)), T.int32), (BM, BK // 4, 4))
    T.assign(words, T.sum((quads & 255) << shifts, axis=2))
    w = T.load(b, (0, 0), (BK, BN)) & 15
    acc = T.dot(T.view(words, T.int8), T.cast(w, T.int8), acc_dtype=T.int32)
    T.store(y, (0, 0), acc)


def test_assigned_signed_operand_is_not_taken_as_unsigned():
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (8, 32)).astype(np.int8)
    a[0, :] = -128  # the extremes: a sign error shows as a wrong integer
    b = rng.integers(0, 256, (32, 16)).astype(np.uint8)
    y = np.zeros((8, 16), np.int32)
    kernel = compile_program(packed_rows_dot.trace(), "tvm")
    kernel({"a": a, "b": b, "y": y})
    want = a.astype(np.int64) @ (b & 15).astype(np.int64)
    np.testing.assert_array_equal(y, want)
    assert "llvm.x86.avx2.pmadd.ub.sw" in kernel.source  # still the vpmaddubsw path, with the right operand order

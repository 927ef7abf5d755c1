"""Elementwise rows longer than `MAX_UNROLLED_VECTORS` vectors run a serial loop over unrolled groups
(`_Emitter._plan`) instead of one fully unrolled body: the result must equal NumPy for rows that take the
cap (whole groups), rows of an odd number of vectors (the gcd with the cap picks a smaller group), short rows
(fully unrolled, as before) and ragged loads (the checked form), and the fast path must carry no unroll wider
than the cap. silu_mul's bf16 block of 1024 fully unrolled took 52 s in `tvm.compile`."""

from __future__ import annotations

import re

import numpy as np
import pytest

import lowbit.lang as T
from lowbit.codegen.backend import compile_program
from lowbit.codegen.tvm.lower import MAX_UNROLLED_VECTORS


@T.kernel
def scale_shift(
    a: T.Tensor("float32", ("M", "N")),
    out: T.Tensor("float32", ("M", "N")),
    M: T.int32,
    N: T.int32,
    R: T.constexpr = 2,
    C: T.constexpr = 1024,
):
    (pm,) = T.grid(T.cdiv(M, R))
    x = T.load(a, (pm * R, 0), (R, C), other=0.0)
    T.store(out, (pm * R, 0), x * 3.0 - T.exp(x * 0.25))


@pytest.mark.parametrize(
    "C, N, vector",
    [
        (1024, 1024, 8),  # 128 vectors: serial(16) x unroll(8)
        (1024, 1000, 8),  # ragged columns: the checked loop nest
        (96, 96, 8),  # 12 vectors: serial(3) x unroll(4)
        (64, 64, 8),  # 8 vectors: fully unrolled, as before the cap
        (512, 512, 16),  # AVX-512-width lanes: 32 vectors
    ],
)
def test_long_rows_loop_over_unrolled_groups(C, N, vector):
    M = 5  # 3 row blocks of 2, the last one ragged
    rng = np.random.default_rng(C + N)
    a = rng.standard_normal((M, N)).astype(np.float32) * 4
    kernel = compile_program(scale_shift.trace(C=C), "tvm", {"vector": vector})
    out = np.full((M, N), np.nan, np.float32)
    kernel({"a": a, "out": out, "M": M, "N": N})
    x = a.astype(np.float64)
    want = x * 3.0 - np.exp(x * 0.25)
    # fp32 rounding relative to the terms' size (their difference cancels near its roots)
    err = np.abs(out - want) / (np.abs(x * 3.0) + np.exp(x * 0.25))
    assert np.isfinite(out).all() and float(err.max()) < 2e-6
    unrolls = [int(n) for n in re.findall(r"T\.unroll\((\d+)\)", kernel.source)]
    assert unrolls and max(unrolls) <= MAX_UNROLLED_VECTORS
    chunks = C // vector
    if chunks > MAX_UNROLLED_VECTORS:
        group = np.gcd(chunks, MAX_UNROLLED_VECTORS)
        assert f"T.serial({chunks // group}):" in kernel.source and f"T.unroll({group}):" in kernel.source

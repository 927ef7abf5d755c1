"""int8 dots on AMX (`int8_dot="amx"`, `_Emitter._dot_amx`): whole 16x16 / 64-k tiles run `tdpbssd`, others
the VNNI form; a dot without accumulator starts from `tilezero` (its ragged tiles fill zeros in the slow
path), one with an accumulator loads and stores it. Exact int32 results against NumPy at the operands'
extremes and on random data, over aligned and ragged shapes (tiles ragged in N take the generic loops, a
single dot's tile ragged in M runs AMX over its rows staged with zero rows past a).
Runs where Linux grants this process AMX's tile state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.lang as T
from lowbit.codegen.backend import compile_program
from lowbit.codegen.tvm.runtime import amx_permitted

pytestmark = pytest.mark.skipif(not amx_permitted(), reason="needs AMX-INT8 and Linux's grant of the tile state")


@T.kernel
def amx_dot(
    a: T.Tensor("int8", ("M", "K")),
    b: T.Tensor("uint8", ("K", "N")),
    y: T.Tensor("int32", ("M", "N")),
    M: T.int32,
    N: T.int32,
    K: T.int32,
    BM: T.constexpr = 32,
    BN: T.constexpr = 32,
    BK: T.constexpr = 64,
    fresh: T.constexpr = True,
    dependent: T.constexpr = False,
    single: T.constexpr = False,
):
    """y = a @ (b & 15), K a multiple of 2·BK. `fresh`: per 2·BK, a dot without accumulator and a second
    one accumulating into it, their sum added to the running total (the a8 GEMV's shape); else every dot
    accumulates into the total. `dependent` (BN = BK): the second dot's a is (total & 63) as it was before
    both dots, not a's rows. `single`: one dot per BK (no chain), fresh or accumulating."""
    pm, pn = T.grid(T.cdiv(M, BM), T.cdiv(N, BN))
    acc = T.zeros((BM, BN), T.int32)
    for k0 in T.range(0, K, BK if single else 2 * BK):
        q = T.cast(acc & 63, T.int8) if dependent else None
        x0 = T.load(a, (pm * BM, k0), (BM, BK))
        w0 = T.cast(T.load(b, (k0, pn * BN), (BK, BN)) & 15, T.int8)
        if single:
            if fresh:
                p = T.dot(x0, w0, acc_dtype=T.int32)
                acc += p
            else:
                acc += T.dot(x0, w0, acc_dtype=T.int32)
            continue
        x1 = q if dependent else T.load(a, (pm * BM, k0 + BK), (BM, BK))
        w1 = T.cast(T.load(b, (k0 + BK, pn * BN), (BK, BN)) & 15, T.int8)
        if fresh:
            p = T.dot(x0, w0, acc_dtype=T.int32)
            p += T.dot(x1, w1, acc_dtype=T.int32)
            acc += p
        else:
            acc += T.dot(x0, w0, acc_dtype=T.int32)
            acc += T.dot(x1, w1, acc_dtype=T.int32)
    T.store(y, (pm * BM, pn * BN), acc)


def run(a, b, **consts):
    M, K = a.shape
    N = b.shape[1]
    y = np.full((M, N), -7, np.int32)
    kernel = compile_program(amx_dot.trace(**consts), "tvm", {"int8_dot": "amx"})
    kernel({"a": a, "b": b, "y": y, "M": M, "N": N, "K": K})
    return y, kernel.source


def exact(a, b):
    return (a.astype(np.int64) @ (b.astype(np.int64) & 15)).astype(np.int32)


@pytest.mark.parametrize("fresh", [True, False])
@pytest.mark.parametrize("BM,BN,BK", [(16, 16, 64), (32, 32, 64), (32, 48, 128), (64, 32, 192)])
def test_amx_tiles_are_exact_at_the_extremes(BM, BN, BK, fresh):
    M, N, K = 2 * BM, 2 * BN, 4 * BK
    a = np.full((M, K), -128, np.int8)
    b = np.full((K, N), 255, np.uint8)
    y, src = run(a, b, BM=BM, BN=BN, BK=BK, fresh=fresh)
    assert "llvm.x86.tdpbssd" in src and "llvm.x86.ldtilecfg" in src and "llvm.x86.tilerelease" in src
    assert ("llvm.x86.tilezero" in src) == fresh
    assert np.array_equal(y, exact(a, b))


@settings(max_examples=8, deadline=None)
@given(
    m=st.integers(1, 70),
    n=st.integers(1, 70),
    kt=st.integers(1, 3),
    fresh=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_amx_dot_equals_numpy_on_ragged_shapes(m, n, kt, fresh, seed):
    """M and N not multiples of the tile: the last column tiles are masked loads, which take the generic
    loops (and, for a fresh dot, fill the zeros AMX's tilezero gives the fast path); so do the last row tiles
    of this kernel's chained dots (a chain keeps its row guard)."""
    rng = np.random.default_rng(seed)
    K = 128 * kt
    a = rng.integers(-128, 128, (m, K)).astype(np.int8)
    b = rng.integers(0, 256, (K, n)).astype(np.uint8)
    y, _ = run(a, b, BM=32, BN=32, BK=64, fresh=fresh)
    assert np.array_equal(y, exact(a, b))


def test_tiles_that_are_not_whole_amx_tiles_take_the_vnni_form():
    a = np.full((8, 128), -128, np.int8)
    b = np.full((128, 32), 255, np.uint8)
    y, src = run(a, b, BM=8, BN=32, BK=64)  # 8 rows: not a 16-row tile
    assert "tdpbssd" not in src and "vpdpbusd" in src
    assert np.array_equal(y, exact(a, b))


@pytest.mark.parametrize("fresh", [True, False])
def test_a_chain_of_dots_keeps_its_sums_in_tile_registers(fresh):
    """Two dots adding into one sum (a fresh one and its `+=`, or two in-place `acc +=`) run as one AMX
    sequence: each 16x16 block of the sum is stored once (not stored and reloaded between the dots), and a's
    rows, an int8 tensor's rows, are tile-loaded in place (no stack copy)."""
    a = np.random.default_rng(3).integers(-128, 128, (64, 256)).astype(np.int8)
    b = np.random.default_rng(4).integers(0, 256, (256, 64)).astype(np.uint8)
    y, src = run(a, b, BM=32, BN=32, BK=64, fresh=fresh)
    assert np.array_equal(y, exact(a, b))
    assert src.count("llvm.x86.tilestored64") == 2  # one per 16 columns of the chain's sum
    assert src.count("llvm.x86.tdpbssd") == 4  # both dots' tiles, in one row loop
    assert "amxa" not in src and "amxb" in src


def test_a_chained_dot_reads_its_operand_as_it_was_before_the_chain():
    """The second dot's a is computed from the sum before the first dot: run as one chain, it must still
    see that value, not the first dot's result."""
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (32, 384)).astype(np.int8)
    b = rng.integers(0, 256, (384, 128)).astype(np.uint8)
    y, src = run(a, b, BM=16, BN=64, BK=64, fresh=False, dependent=True)
    w = b.astype(np.int64) & 15
    want = np.zeros((32, 128), np.int64)
    for k0 in range(0, 384, 128):
        for j in (0, 64):
            old = want[:, j : j + 64].copy()
            want[:, j : j + 64] += a[:, k0 : k0 + 64].astype(np.int64) @ w[k0 : k0 + 64, j : j + 64]
            want[:, j : j + 64] += (old & 63) @ w[k0 + 64 : k0 + 128, j : j + 64]
    assert np.array_equal(y, want.astype(np.int32))
    # one chain: both dots in one loop over 16x16 blocks, each block stored once (unchained: one store per dot)
    assert src.count("llvm.x86.tilestored64") == 1


@pytest.mark.parametrize("fresh", [True, False])
@pytest.mark.parametrize("m", [40, 7, 64])
def test_a_ragged_row_tile_runs_amx_over_a_staged_copy_of_its_rows(fresh, m):
    """M = 40 / 7 rows in 32-row tiles: where the tile's rows run past a, the dot runs AMX over a copy of
    them staged with zero rows (`_ragged_rows`), not the generic loops (W4A8 per group, 4096², M = 13 / 100:
    27.0 / 28.8 -> 2.7 / 13.7 ms); exact at the operands' extremes."""
    rng = np.random.default_rng(m)
    a = rng.choice(np.array([-128, 127, -1, 0], np.int8), (m, 256))
    b = rng.choice(np.array([255, 15, 1, 0], np.uint8), (256, 64))
    y, src = run(a, b, BM=32, BN=32, BK=64, fresh=fresh, single=True)
    assert np.array_equal(y, exact(a, b))
    assert "llvm.x86.tdpbssd" in src and "ar = T.decl_buffer" in src

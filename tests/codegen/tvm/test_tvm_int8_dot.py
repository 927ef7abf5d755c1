"""8-bit integer dots on the TVM backend: lowered to vpmaddubsw/vpmaddwd ("avx2") exactly when value ranges
prove the 16-bit pair sums cannot saturate, or to AVX-512 VNNI's vpdpbusd ("vnni", where the CPU has it) when
one operand is proven unsigned, and equal to the reference interpreter's exact int32 dot either way. Every
test runs each lowering this CPU has.

The operands are built at the extremes of what the range analysis allows (signed operand -128, unsigned
operand at its proven bound), so a chunk one quad too long, a wrong operand order or a sign error shows up
as a wrong integer, not as a small float error.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.lang as T
from lowbit.artifact.fingerprint import isa_flags
from lowbit.codegen.backend import compile_program

pytestmark = pytest.mark.skipif("avx2" not in isa_flags(), reason="the int8 dot lowering needs AVX2")
INTRINSIC = {"avx2": "llvm.x86.avx2.pmadd.ub.sw", "vnni": "llvm.x86.avx512.vpdpbusd.512"}
MODES = ["avx2"] + (["vnni"] if "avx512_vnni" in isa_flags() else [])
ANY = tuple(INTRINSIC.values())


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


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mask", [15, 127, 1])
def test_proven_ranges_take_the_x86_dot_and_stay_exact_at_the_extremes(mask, mode):
    M, N, K = 4, 32, 128
    a = np.full((M, K), -128, np.int8)
    b = np.full((K, N), 255, np.uint8)
    y, src = run(M, N, K, a, b, {"int8_dot": mode}, mask=mask)
    assert INTRINSIC[mode] in src
    assert np.array_equal(y, exact(a, b, mask))
    rng = np.random.default_rng(mask)
    a = rng.integers(-128, 128, (M, K)).astype(np.int8)
    b = rng.integers(0, 256, (K, N)).astype(np.uint8)
    assert np.array_equal(run(M, N, K, a, b, {"int8_dot": mode}, mask=mask)[0], exact(a, b, mask))


@pytest.mark.parametrize("mode", MODES)
def test_unsigned_operand_on_the_left(mode):
    M, N, K = 16, 8, 64
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, (M, K)).astype(np.int8)
    b = rng.integers(0, 256, (K, N)).astype(np.uint8)
    y, src = run(M, N, K, a, b, {"int8_dot": mode}, unsigned_side="a", BM=16, BN=8)
    assert INTRINSIC[mode] in src  # the dot's b is x^T: 16 columns, so vpdpbusd applies
    assert np.array_equal(y, exact(a, b, 15))


@pytest.mark.skipif("vnni" not in MODES, reason="needs AVX-512 VNNI")
def test_vnni_takes_full_bytes_and_falls_back_on_narrow_tiles():
    """vpdpbusd has no i16 stage: a uint8 operand up to 255 times one proven in [0, 127] (beyond vpmaddubsw's
    exact range: the AVX2 form keeps the generic loops) runs on it exactly; a tile 8 columns wide takes the
    AVX2 form."""
    M, N, K = 4, 32, 128
    rng = np.random.default_rng(4)
    for a, b in (
        (np.full((M, K), 255, np.uint8), np.full((K, N), 255, np.uint8)),
        (rng.integers(0, 256, (M, K)).astype(np.uint8), rng.integers(0, 256, (K, N)).astype(np.uint8)),
    ):
        for mode, want in (("vnni", INTRINSIC["vnni"]), ("avx2", None)):
            kernel = compile_program(full_bytes_dot.trace(), "tvm", {"int8_dot": mode})
            y = np.zeros((M, N), np.int32)
            kernel({"a": a, "b": b, "y": y, "M": M, "N": N, "K": K})
            assert (want in kernel.source) if want else not any(i in kernel.source for i in ANY)
            assert np.array_equal(y, a.astype(np.int64) @ (b.astype(np.int64) & 127))
    a = np.full((M, K), -128, np.int8)
    b = np.full((K, N), 255, np.uint8)
    y, src = run(M, N, K, a, b, {"int8_dot": "vnni"}, mask=15, BN=8)
    assert INTRINSIC["avx2"] in src and INTRINSIC["vnni"] not in src
    assert np.array_equal(y, exact(a, b, 15))


@T.kernel
def full_bytes_dot(
    a: T.Tensor("uint8", ("M", "K")),
    b: T.Tensor("uint8", ("K", "N")),
    y: T.Tensor("int32", ("M", "N")),
    M: T.int32,
    N: T.int32,
    K: T.int32,
    BM: T.constexpr = 4,
    BN: T.constexpr = 32,
    BK: T.constexpr = 64,
):
    pm, pn = T.grid(T.cdiv(M, BM), T.cdiv(N, BN))
    acc = T.zeros((BM, BN), T.int32)
    for k0 in T.range(0, K, BK):
        w = T.load(b, (k0, pn * BN), (BK, BN)) & 127  # proven in [0, 127]: the signed operand's bytes
        acc += T.dot(T.load(a, (pm * BM, k0), (BM, BK)), w, acc_dtype=T.int32)
    T.store(y, (pm * BM, pn * BN), acc)


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
    assert not any(i in src for i in ANY)
    assert np.array_equal(y, exact(a, b, consts.get("mask")))


@pytest.mark.parametrize("mode", MODES)
def test_ragged_edges_take_the_checked_loops(mode):
    M, N, K = 3, 20, 96  # ragged rows, columns and K tile: the guarded fast path is skipped at the edges
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (M, K)).astype(np.int8)
    b = rng.integers(0, 256, (K, N)).astype(np.uint8)
    y, src = run(M, N, K, a, b, {"int8_dot": mode})
    assert INTRINSIC[mode] in src
    assert np.array_equal(y, exact(a, b, 15))


@settings(max_examples=8, deadline=None)
@given(
    bm=st.sampled_from([1, 2, 4, 8, 16]),
    tm=st.sampled_from([1, 2, 4]),
    bk=st.sampled_from([32, 96]),  # 8 and 24 quads: whole chunks of 8, and a tail chunk with mask 127 (chunk 1)
    mask=st.sampled_from([15, 127]),
    side=st.sampled_from(["a", "b"]),
    extreme=st.booleans(),
    mode=st.sampled_from(MODES),
)
def test_row_blocks_and_chunks_are_exact(bm, tm, bk, mask, side, extreme, mode):
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
    y, src = run(M, N, K, a, b, {"tm": tm, "int8_dot": mode}, **consts)
    # vpdpbusd takes tiles of 16 columns; narrower ones (side a: the dot's b is x^T, 8 wide) the AVX2 form
    want = "vnni" if mode == "vnni" and consts["BN" if side == "b" else "BM"] % 16 == 0 else "avx2"
    assert INTRINSIC[want] in src
    assert np.array_equal(y, exact(a, b, mask))


@T.kernel
def chained_dots(
    a: T.Tensor("int8", ("M", "K")),
    b: T.Tensor("uint8", ("K", "N")),
    y: T.Tensor("int32", ("M", "N")),
    M: T.int32,
    N: T.int32,
    K: T.int32,
    DOTS: T.constexpr = 3,
    BM: T.constexpr = 2,
    BN: T.constexpr = 32,
    BK: T.constexpr = 16,
):
    """DOTS int8 dots over consecutive BK-slices of one K step summed into one tile: a chain (operands first,
    then the dots back to back), as the x16 GEMV's planes are."""
    pm, pn = T.grid(T.cdiv(M, BM), T.cdiv(N, BN))
    acc = T.zeros((BM, BN), T.int32)
    for k0 in T.range(0, K, BK * DOTS):
        xs = [T.load(a, (pm * BM, k0 + d * BK), (BM, BK)) for d in range(DOTS)]
        ws = [T.cast(T.load(b, (k0 + d * BK, pn * BN), (BK, BN)) & 7, T.int8) for d in range(DOTS)]
        p = T.dot(xs[0], ws[0], acc_dtype=T.int32)
        for d in range(1, DOTS):
            p += T.dot(xs[d], ws[d], acc_dtype=T.int32)
        acc += p
    T.store(y, (pm * BM, pn * BN), acc)


@pytest.mark.skipif("vnni" not in MODES, reason="needs AVX-512 VNNI")
@pytest.mark.parametrize("BM,DOTS,BK", [(2, 3, 16), (4, 8, 16), (1, 2, 128)])
def test_a_vnni_chain_keeps_its_sums_in_one_accumulator_set(BM, DOTS, BK):
    """A chain of one-row-block VNNI dots (`_vnni_chain`) zeroes its accumulators once and sums them into the
    tile once (one set of `acc32` buffers for the whole chain, not one per dot: one buffer for up to two rows,
    past that one per row and chain), exactly, at the operands' extremes and on random values; with M ragged
    against the row tile the generic loops take the edge."""
    from lowbit.codegen.tvm.lower import OPTIONS

    M, N, K = 2 * BM + 1, 64, BK * DOTS * 2
    kernel = compile_program(chained_dots.trace(BM=BM, DOTS=DOTS, BK=BK), "tvm", {"int8_dot": "vnni"})
    chains = max(1, -(-OPTIONS["vnni_chains"] // BM))
    declared = len(re.findall(r"acc32(_\d+)? = T.decl_buffer", kernel.source))
    assert declared == (1 if BM <= 2 else BM * chains) and INTRINSIC["vnni"] in kernel.source
    rng = np.random.default_rng(BM * DOTS)
    for a, b in (
        (np.full((M, K), -128, np.int8), np.full((K, N), 255, np.uint8)),
        (rng.integers(-128, 128, (M, K)).astype(np.int8), rng.integers(0, 256, (K, N)).astype(np.uint8)),
    ):
        y = np.zeros((M, N), np.int32)
        kernel({"a": a, "b": b, "y": y, "M": M, "N": N, "K": K})
        assert np.array_equal(y, exact(a, b, 7))

"""Software prefetch in the TVM lowering: streaming tile loads inside a loop get `llvm.prefetch` hints for the
tiles a few iterations ahead; results do not change (a hint never faults, addresses are clamped into the
tensor); loads whose addresses go through a scalar read in the loop (a page from a block table) are
prefetched at that scalar re-read ahead (clamped), and loop-invariant loads get none."""

from __future__ import annotations

import numpy as np

import lowbit.lang as T
from lowbit.codegen.backend import compile_program

HINT = "llvm.prefetch"


@T.kernel
def column_sums(w: T.Tensor("float32", ("K", "N")), y: T.Tensor("float32", ("N",)), N: T.int32, K: T.int32):
    (pn,) = T.grid(T.cdiv(N, 64))
    acc = T.zeros((1, 64), T.float32)
    for k0 in T.range(0, K, 16):
        acc += T.sum(T.load(w, (k0, pn * 64), (16, 64)), axis=0, keepdims=True)  # 4 KB tiles down the rows
    T.store(y, (pn * 64,), T.reshape(acc, (64,)))


@T.kernel
def paged_sums(
    pages: T.Tensor("int32", ("P",)), w: T.Tensor("float32", ("NP", "R", 64)), y: T.Tensor("float32", (64,)),
    P: T.int32, NP: T.int32, R: T.int32,
):  # fmt: skip
    T.grid(1)
    acc = T.zeros((1, 64), T.float32)
    for i in T.range(0, P, 1):
        page = T.load_scalar(pages, (i,), name="page")
        acc += T.sum(T.reshape(T.load(w, (page, 0, 0), (1, 16, 64)), (16, 64)), axis=0, keepdims=True)
    T.store(y, (0,), T.reshape(acc, (64,)))


def test_streaming_loads_are_prefetched_and_results_unchanged():
    K, N = 256, 200  # ragged N: the last tiles and the prefetched addresses run past the edge
    w = np.random.default_rng(0).standard_normal((K, N)).astype(np.float32)
    outs = {}
    for dist in (0, 4096):
        kernel = compile_program(column_sums.trace(), "tvm", {"prefetch": dist})
        assert (HINT in kernel.source) == (dist > 0)
        outs[dist] = np.zeros(N, np.float32)
        kernel({"w": w, "y": outs[dist], "N": N, "K": K})
    assert np.array_equal(outs[0], outs[4096])
    np.testing.assert_allclose(outs[0], w.astype(np.float64).sum(0), rtol=1e-5, atol=1e-4)


def test_data_dependent_addresses_are_prefetched_through_the_scalar_ahead():
    w = np.random.default_rng(1).standard_normal((5, 16, 64)).astype(np.float32)
    pages = np.array([3, 0, 4], np.int32)  # the reads ahead run past the table: clamped, never a fault
    outs = {}
    for dist in (0, 4096):
        kernel = compile_program(paged_sums.trace(), "tvm", {"prefetch": dist})
        assert (HINT in kernel.source) == (dist > 0)
        if dist:
            assert "page_ahead" in kernel.source  # the block-table entry re-read at the advanced loop variable
        outs[dist] = np.zeros(64, np.float32)
        kernel({"pages": pages, "w": w, "y": outs[dist], "P": 3, "NP": 5, "R": 16})
    assert np.array_equal(outs[0], outs[4096])
    np.testing.assert_allclose(outs[0], w[pages].sum((0, 1)), rtol=1e-5, atol=1e-4)


@T.kernel
def chunked_paged_sums(
    pages: T.Tensor("int32", ("P",)), w: T.Tensor("float32", ("NP", 16, 32)), y: T.Tensor("float32", (32,)),
    P: T.int32, NP: T.int32,
):  # fmt: skip
    T.grid(1)
    accs = [T.zeros((1, 4), T.float32) for _ in T.static_range(8)]
    for i in T.range(0, P, 1):
        page = T.load_scalar(pages, (i,), name="page")
        for c in T.static_range(8):  # column chunks of 16 bytes: 4 per cache line
            accs[c] += T.sum(T.reshape(T.load(w, (page, 0, 4 * c), (1, 16, 4)), (16, 4)), axis=0, keepdims=True)
    for c in T.static_range(8):
        T.store(y, (4 * c,), T.reshape(accs[c], (4,)))


def test_narrow_column_chunks_are_prefetched_once_per_line():
    kernel = compile_program(chunked_paged_sums.trace(), "tvm", {})
    assert kernel.source.count(HINT) == 16 * 2  # 16 rows x the 2 lines of a 128-byte row, from chunks 0 and 4
    w = np.random.default_rng(2).standard_normal((5, 16, 32)).astype(np.float32)
    pages = np.array([4, 1, 1, 0], np.int32)
    y = np.zeros(32, np.float32)
    kernel({"pages": pages, "w": w, "y": y, "P": 4, "NP": 5})
    np.testing.assert_allclose(y, w[pages].sum((0, 1)), rtol=1e-5, atol=1e-4)

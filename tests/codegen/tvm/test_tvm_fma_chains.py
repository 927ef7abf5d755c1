"""TVM lowering options behind the words decode-attention kernel: `fma_chains` (a dot with few register vectors
accumulates k in interleaved partial sums, and its b operand is not stored to a buffer when the rows are one
unrolled block), `inline_consts` (tiles computed from constants stay inline where a deeper loop reads them) and
`reduce_vectors` (a one-vector reduction runs in lane partials folded as a tree). Integer-valued floats make every
sum exact, so each variant must equal the NumPy oracle bit for bit; the source shows which form was emitted."""

from __future__ import annotations

import numpy as np
import pytest

import lowbit.lang as T
from lowbit.codegen.backend import compile_program

BM, BN, KC = 4, 16, 32  # rows, columns, k per chunk (KC / 8 words)


@T.kernel
def plane_dot(
    a: T.Tensor("float32", ("M", "K")),
    w: T.Tensor("int32", ("K // 8", "N")),
    y: T.Tensor("float32", ("M", "N")),
    M: T.int32,
    N: T.int32,
    K: T.constexpr = 64,
    BM: T.constexpr = 4,
    BN: T.constexpr = 16,
    KC: T.constexpr = 32,
):
    # y[:, n] = Σ_chunks a[:, k0 : k0 + KC] @ C with C[j·W + v, n] = (w[k0/8 + v, n] >> 4j) & 15 (plane order)
    (pn,) = T.grid(T.cdiv(N, BN))
    shifts = T.reshape(T.arange(0, 8) * 4, (8, 1, 1))  # a constant tile read inside the k loop
    acc = T.zeros((BM, BN), T.float32, name="acc")
    for k0 in T.range(0, K, KC, name="k0"):
        av = T.load(a, (0, k0), (BM, KC))
        words = T.reshape(T.load(w, (k0 // 8, pn * BN), (KC // 8, BN)), (1, KC // 8, BN))
        codes = T.cast(T.reshape((words >> shifts) & 15, (KC, BN)), T.float32)
        acc += T.dot(av, codes)
    T.store(y, (0, pn * BN), acc)


@T.kernel
def row_max_sum(
    x: T.Tensor("float32", ("R", "C")),
    mx: T.Tensor("float32", ("R", 1)),
    sm: T.Tensor("float32", ("R", 1)),
    R: T.int32,
    C: T.constexpr = 16,
    BR: T.constexpr = 4,
):
    (pr,) = T.grid(T.cdiv(R, BR))
    v = T.load(x, (pr * BR, 0), (BR, C))
    T.store(mx, (pr * BR, 0), T.max(v, axis=1, keepdims=True))
    T.store(sm, (pr * BR, 0), T.sum(v, axis=1, keepdims=True))


def plane_dot_oracle(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    y = np.zeros((a.shape[0], w.shape[1]), np.float64)
    words = KC // 8
    for k0 in range(0, a.shape[1], KC):
        rows = w[k0 // 8 : k0 // 8 + words].astype(np.int64)  # [W, N]
        codes = np.concatenate([(rows >> (4 * j)) & 15 for j in range(8)])  # [8·W, N], row j·W + v
        y += a[:, k0 : k0 + KC].astype(np.float64) @ codes
    return y.astype(np.float32)


@pytest.mark.parametrize(
    "opts",
    [{}, {"fma_chains": 8}, {"fma_chains": 8, "inline_consts": False}, {"inline_consts": False}],
    ids=["defaults", "chains", "chains-stored-consts", "stored-consts"],
)
def test_plane_dot_equals_the_oracle_under_each_option(opts):
    rng = np.random.default_rng(7)
    M, K, N = BM, 64, 48
    a = rng.integers(-4, 5, (M, K)).astype(np.float32)
    w = rng.integers(-(2**31), 2**31, (K // 8, N), dtype=np.int64).astype(np.int32)  # all 8 nibbles, sign bit too
    kernel = compile_program(plane_dot.trace(K=K, BM=BM, BN=BN, KC=KC), "tvm", opts)
    y = np.full((M, N), np.nan, np.float32)
    kernel({"a": a, "w": w, "y": y, "M": M, "N": N})
    np.testing.assert_array_equal(y, plane_dot_oracle(a, w))


def test_the_options_change_the_emitted_form():
    def source(**opts):
        return compile_program(plane_dot.trace(K=64, BM=BM, BN=BN, KC=KC), "tvm", opts).source

    default, chains, stored = source(), source(fma_chains=8), source(inline_consts=False)
    b_buffer = f"({KC}, {BN},)"  # the decoded [KC, BN] b operand as a local buffer
    assert "accp" not in default and b_buffer in default
    assert "accp" in chains and b_buffer not in chains  # partial sums, b computed in registers
    assert "(8, 1, 1,)" in stored and "(8, 1, 1,)" not in default  # the shift tile: a buffer only when told


@pytest.mark.parametrize("reduce_vectors", [1, 2])
def test_one_vector_reductions_fold_as_a_tree_and_stay_exact(reduce_vectors):
    rng = np.random.default_rng(11)
    R = 8
    x = rng.integers(-50, 51, (R, 16)).astype(np.float32)
    kernel = compile_program(row_max_sum.trace(C=16, BR=4), "tvm", {"reduce_vectors": reduce_vectors, "vector": 16})
    mx, sm = np.full((R, 1), np.nan, np.float32), np.full((R, 1), np.nan, np.float32)
    kernel({"x": x, "mx": mx, "sm": sm, "R": R})
    np.testing.assert_array_equal(mx[:, 0], x.max(axis=1))
    np.testing.assert_array_equal(sm[:, 0], x.sum(axis=1))
    lanes = "lanes = T.decl_buffer" in kernel.source
    assert lanes == (reduce_vectors == 1)  # 16 elements = one vector: lane partials only from 1
    if lanes:
        assert "T.vectorized(8)" in kernel.source  # the first fold step: half onto half

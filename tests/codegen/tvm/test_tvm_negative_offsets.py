"""Tiles at offsets that can be negative in the TVM lowering (`may_be_negative`, `_inside_terms`, `_tile_guards`):
a load reads `other` where a coordinate is below 0 and a store drops those elements, on every axis, for dense and
packed tensors, on the CPU and in the CUDA lowering (run on the CPU by `simulate`). The fast path guarded only
the upper bound and clamped addresses only at N - 1, so `load(w, (pk*B, pn*B - 1))` read the previous row's last
element (or the memory before w) and a store there wrote into the previous row (or before y). Oracle: the
reference interpreter, with sentinels around the tensors that a read outside them would return or a write
outside them would change. Offsets the IR proves nonnegative get no lower-bound test (the fast paths stay as
they were)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from backend_harness import assert_same
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.lang as T
from lowbit.codegen.backend import compile_program
from lowbit.dtypes import decode
from lowbit.dtypes import dtype as D
from lowbit.ir.layout import packed_along

BACKENDS = ["tvm", "tvm-cuda"]
PAD = 8  # sentinel elements on each side of a tensor
SENTINEL = {"float32": np.nan, "float16": np.nan, "int8": -77}


@T.kernel
def shifted_load(
    w: T.Tensor("wdt", ("K", "N")),
    y: T.Tensor("float32", ("K", "N")),
    K: T.int32,
    N: T.int32,
    DR: T.int32,
    DC: T.int32,
    wdt: T.constexpr = "float32",
    B: T.constexpr = 4,
):
    pk, pn = T.grid(T.cdiv(K, B), T.cdiv(N, B))
    v = T.load(w, (pk * B - DR, pn * B - DC), (B, B), other=0)  # y[i, j] = w[i - DR, j - DC], 0 outside w
    T.store(y, (pk * B, pn * B), T.cast(v, T.float32))


@T.kernel
def shifted_store(
    w: T.Tensor("float32", ("K", "N")),
    y: T.Tensor("float32", ("K", "N")),
    K: T.int32,
    N: T.int32,
    DR: T.int32,
    DC: T.int32,
    B: T.constexpr = 4,
):
    pk, pn = T.grid(T.cdiv(K, B), T.cdiv(N, B))
    T.store(y, (pk * B - DR, pn * B - DC), T.load(w, (pk * B, pn * B), (B, B)))  # y[i - DR, j - DC] = w[i, j]


@T.kernel
def packed_load(
    w: T.Tensor("int4", ("K", "N")),
    y: T.Tensor("float32", ("R", "C")),
    K: T.int32,
    N: T.int32,
    R: T.int32,
    C: T.int32,
    OR: T.constexpr = -3,
    OC: T.constexpr = 0,
):
    T.grid(1)
    T.store(y, (0, 0), T.cast(T.load(w, (OR, OC), (8, 8)), T.float32))


@T.kernel
def scattered_rows(
    rows: T.Tensor("int32", ("R",)),
    w: T.Tensor("float32", ("R", 8)),
    y: T.Tensor("float32", ("K", 8)),
    R: T.int32,
    K: T.int32,
    GUARDED: T.constexpr = True,
):
    (p,) = T.grid(R)
    row = T.load_scalar(rows, (p,), name="row")  # a row of y from memory: may be negative
    v = T.load(w, (p, 0), (1, 8))
    if GUARDED:
        with T.if_(row >= 0):
            T.store(y, (row, 0), v)
    else:
        T.store(y, (row, 0), v)


def _padded(a: np.ndarray, fill) -> tuple[np.ndarray, np.ndarray]:
    """(buffer, view): `a` copied into the middle of a flat buffer with PAD `fill` elements on each side."""
    buf = np.full(a.size + 2 * PAD, fill, a.dtype)
    view = buf[PAD : PAD + a.size].reshape(a.shape)
    view[...] = a
    return buf, view


def _kernel(program, backend):
    if backend == "tvm-cuda":  # the CUDA lowering's own TVMScript, run on the CPU
        return compile_program(program, "tvm", {"target": "cuda"}).simulate()
    return compile_program(program, backend)


def _run(kernel, args):
    """Run on copies of `args` (views into padded buffers stay views into copied buffers)."""
    out = {}
    for k, v in args.items():
        if isinstance(v, tuple):  # (buffer, view)
            buf = v[0].copy()
            out[k] = (buf, buf[PAD : PAD + v[1].size].reshape(v[1].shape))
        else:
            out[k] = copy.deepcopy(v)
    kernel({k: (v[1] if isinstance(v, tuple) else v) for k, v in out.items()})
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wdt", ["float32", "float16", "int8"])
def test_a_load_below_zero_reads_other(backend, wdt):
    program = shifted_load.trace(wdt=wdt)
    kernels = {"reference": compile_program(program, "reference"), backend: _kernel(program, backend)}

    @settings(max_examples=12)
    @given(K=st.integers(1, 11), N=st.integers(1, 11), DR=st.integers(0, 5), DC=st.integers(0, 5))
    def check(K, N, DR, DC):
        w = (np.arange(K * N).reshape(K, N) % 97 + 1).astype(wdt)
        args = {"w": _padded(w, SENTINEL[wdt]), "y": np.full((K, N), -1, np.float32), "K": K, "N": N}
        args.update(DR=DR, DC=DC)
        ref, out = (_run(kernels[b], args) for b in ("reference", backend))
        expected = np.zeros((K, N), np.float32)
        if DR < K and DC < N:
            expected[DR:, DC:] = w[: K - DR, : N - DC]
        assert_same(ref["y"], expected, f"reference K={K} N={N} DR={DR} DC={DC}")
        assert_same(out["y"], ref["y"], f"{backend} {wdt} K={K} N={N} DR={DR} DC={DC}")

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_store_below_zero_writes_nothing_there(backend):
    program = shifted_store.trace()
    kernels = {"reference": compile_program(program, "reference"), backend: _kernel(program, backend)}

    @settings(max_examples=12)
    @given(K=st.integers(1, 11), N=st.integers(1, 11), DR=st.integers(0, 5), DC=st.integers(0, 5))
    def check(K, N, DR, DC):
        w = (np.arange(K * N).reshape(K, N) + 1).astype(np.float32)
        args = {"w": w, "y": _padded(np.full((K, N), -7, np.float32), -9.0), "K": K, "N": N, "DR": DR, "DC": DC}
        ref, out = (_run(kernels[b], args) for b in ("reference", backend))
        # y[i, j] = w[i + DR, j + DC]: 0 where that lies in a tile but outside w, untouched past the last tile
        tiles = np.zeros((-(-K // 4) * 4, -(-N // 4) * 4), np.float32)
        tiles[:K, :N] = w
        expected = np.full((K, N), -7, np.float32)
        covered = tiles[DR : DR + K, DC : DC + N]
        expected[: covered.shape[0], : covered.shape[1]] = covered
        assert_same(ref["y"][1], expected, f"reference K={K} N={N} DR={DR} DC={DC}")
        assert_same(out["y"][0], ref["y"][0], f"{backend} K={K} N={N} DR={DR} DC={DC} (sentinels included)")

    check()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("offset", [(-3, 0), (0, -1), (-3, -1), (-8, 0), (-3, 8), (2, 0), (10, 0)])
def test_a_packed_load_below_zero_reads_zero(backend, offset):
    K, N = 12, 16
    codes = (np.arange(K * N).reshape(K, N) % 15 + 1).astype(np.uint8)  # 1..15: a zero read is visible
    values = decode(D("int4"), codes).astype(np.float32)
    words = np.asarray(packed_along((K, N), 4, 1).pack(codes))
    ones = np.array(-1).astype(words.dtype)  # all-ones words around w: code 15 (-1) wherever one is read
    program = packed_load.trace(OR=offset[0], OC=offset[1])
    args = {"w": _padded(words, ones), "y": np.full((8, 8), -9, np.float32), "K": K, "N": N, "R": 8, "C": 8}
    ref = _run(compile_program(program, "reference"), args)
    out = _run(_kernel(program, backend), args)
    expected = np.zeros((8, 8), np.float32)
    rows, cols = np.arange(8)[:, None] + offset[0], np.arange(8)[None, :] + offset[1]
    inside = (rows >= 0) & (rows < K) & (cols >= 0) & (cols < N)
    expected[inside] = values[np.broadcast_to(rows, (8, 8))[inside], np.broadcast_to(cols, (8, 8))[inside]]
    assert_same(ref["y"], expected, f"reference at {offset}")
    assert_same(out["y"], ref["y"], f"{backend} packed int4 at {offset}")


def test_only_offsets_that_may_be_negative_get_a_lower_bound_test():
    source = compile_program(shifted_load.trace(), "tvm").source
    assert "pid1*4 - DC >= 0" in source and "pid0*4 - DR >= 0" in source  # the fast path's guard
    assert "T.max(T.min(pid1*4 - DC + i" in source  # the checked path's address, clamped at 0
    plain = compile_program(shifted_store.trace(), "tvm").source  # its load is at (pk*B, pn*B): provably >= 0
    load = [ln for ln in plain.splitlines() if "= w_1[" in ln or "w_1[T.min" in ln]
    assert load and not any("T.max(" in ln for ln in load), load


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("guarded", [True, False])
def test_rows_read_from_memory_are_bounded_unless_a_branch_proves_them(backend, guarded):
    # rows -1 and -3 (and 9, past K) write nothing; under `if row >= 0` (kv_append's slot) the store's fast path
    # needs no lower-bound test (`nonnegative_in`), without it the guard keeps the store inside y
    program = scattered_rows.trace(GUARDED=guarded)
    rows = np.array([2, -1, 0, -3, 5, 9], np.int32)
    w = (np.arange(6 * 8).reshape(6, 8) + 1).astype(np.float32)
    args = {"rows": rows, "w": w, "y": _padded(np.full((6, 8), -7, np.float32), -9.0), "R": 6, "K": 6}
    ref, out = (_run(k, args) for k in (compile_program(program, "reference"), _kernel(program, backend)))
    assert_same(out["y"][0], ref["y"][0], f"{backend}: rows {rows} (sentinels included)")
    if backend == "tvm":
        source = compile_program(program, "tvm").source
        assert ("row >= 0 and" in source or "and row >= 0" in source) is not guarded, source

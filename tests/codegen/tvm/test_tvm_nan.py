"""NaN through the TVM lowering (`float_compare`, `float_extreme`, `_reduce`'s combine): IEEE comparisons (false
with a NaN operand, `!=` true), `x == x` false and `x != x` true for NaN, negated comparisons, float -> bool
casts, NaN-propagating maximum / minimum in either operand, and max / min reductions that return NaN wherever
in the row the NaN sits (lane partials, the serial form, other axes). TVM's simplifier folded `x == x` to true,
its LLVM code emitted `!=` as an ordered compare and `max(a, b)` as `select(a > b, a, b)`, so `where(v != v, 0,
v)` kept NaNs and relu turned NaN into 0. Oracle: the reference interpreter (NumPy), exactly, NaN equal to NaN
only where the reference has NaN; on the CPU and in the CUDA lowering (run on the CPU by `simulate`)."""

from __future__ import annotations

import operator

import numpy as np
import pytest
from backend_harness import assert_same

import lowbit.lang as T
from lowbit.codegen.backend import compile_program

BACKENDS = ["tvm", "tvm-cuda"]
SPECIAL = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -2.5]
CMP_OPS = ["eq", "ne", "lt", "le", "gt", "ge"]


def _kernel(program, backend, options=None):
    if backend == "tvm-cuda":  # the CUDA lowering's own TVMScript, run on the CPU
        return compile_program(program, "tvm", {"target": "cuda", **(options or {})}).simulate()
    return compile_program(program, backend, options)


def _both(program, backend, args, options=None):
    """(reference outputs, backend outputs) for copies of `args`."""
    out = []
    for kernel in (compile_program(program, "reference"), _kernel(program, backend, options)):
        a = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()}
        kernel(a)
        out.append(a)
    return out


@T.kernel
def compares(
    x: T.Tensor("float32", ("N",)), y: T.Tensor("float32", ("N",)), z: T.Tensor("int32", (5, "N")), N: T.int32,
    op: T.constexpr = "eq", B: T.constexpr = 16,
):  # fmt: skip
    (p,) = T.grid(T.cdiv(N, B))
    a, b = T.load(x, (p * B,), (B,)), T.load(y, (p * B,), (B,))
    cmp = getattr(operator, op)
    T.store(z, (0, p * B), T.reshape(T.cast(cmp(a, b), T.int32), (1, B)))
    T.store(z, (1, p * B), T.reshape(T.cast(cmp(a, a), T.int32), (1, B)))  # one tile on both sides
    T.store(z, (2, p * B), T.reshape(T.cast(~cmp(a, b), T.int32), (1, B)))  # negated
    T.store(z, (3, p * B), T.reshape(T.cast(cmp(a, 1.0), T.int32), (1, B)))  # against a constant
    T.store(z, (4, p * B), T.reshape(T.cast(T.cast(a, T.boolean), T.int32), (1, B)))  # NaN is true


@T.kernel
def elementwise(
    x: T.Tensor("float32", ("N",)), y: T.Tensor("float32", ("N",)), z: T.Tensor("float32", (6, "N")), N: T.int32,
    B: T.constexpr = 16,
):  # fmt: skip
    (p,) = T.grid(T.cdiv(N, B))
    a, b = T.load(x, (p * B,), (B,)), T.load(y, (p * B,), (B,))
    rows = [T.where(a != a, 0.0, a), T.maximum(a, 0.0), T.maximum(a, b), T.maximum(b, a), T.minimum(a, b)]
    rows.append(T.minimum(b, a))
    for i, v in enumerate(rows):
        T.store(z, (i, p * B), T.reshape(v, (1, B)))


@T.kernel
def row_extremes(
    x: T.Tensor("float32", ("M", "N")), z: T.Tensor("float32", ("M", 4)), M: T.int32, N: T.int32,
    BM: T.constexpr = 4, BN: T.constexpr = 32,
):  # fmt: skip
    (p,) = T.grid(T.cdiv(M, BM))
    v = T.load(x, (p * BM, 0), (BM, BN), other=0.0)
    T.store(z, (p * BM, 0), T.max(v, axis=1, keepdims=True))
    T.store(z, (p * BM, 1), T.min(v, axis=1, keepdims=True))
    T.store(z, (p * BM, 2), T.reshape(T.max(T.max(v, axis=0), axis=0, keepdims=True), (1, 1)))  # down columns
    T.store(z, (p * BM, 3), T.reshape(T.min(T.min(v, axis=0), axis=0, keepdims=True), (1, 1)))


def _pairs() -> tuple[np.ndarray, np.ndarray]:
    """Every (x, y) of SPECIAL values, padded to whole tiles of 16."""
    x, y = (a.ravel().astype(np.float32) for a in np.meshgrid(SPECIAL, SPECIAL, indexing="ij"))
    return x, y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", CMP_OPS)
def test_float_comparisons_are_ieee(backend, op):
    x, y = _pairs()
    n = x.size
    ref, out = _both(compares.trace(op=op), backend, {"x": x, "y": y, "z": np.full((5, n), -1, np.int32), "N": n})
    cmp = getattr(operator, op)
    with np.errstate(invalid="ignore"):
        expected = np.stack([cmp(x, y), cmp(x, x), ~cmp(x, y), cmp(x, np.float32(1)), x != 0]).astype(np.int32)
    assert_same(ref["z"], expected, f"reference {op}")
    for row, what in enumerate(("a op b", "a op a", "not (a op b)", "a op 1.0", "bool(a)")):
        assert_same(out["z"][row], ref["z"][row], f"{backend}: {what} for op {op}, x={x}, y={y}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_where_maximum_and_minimum_propagate_nan(backend):
    x, y = _pairs()
    n = x.size
    ref, out = _both(elementwise.trace(), backend, {"x": x, "y": y, "z": np.zeros((6, n), np.float32), "N": n})
    with np.errstate(invalid="ignore"):
        rows = [np.where(x != x, 0, x), np.maximum(x, 0), np.maximum(x, y), np.maximum(y, x), np.minimum(x, y)]
        expected = np.stack([*rows, np.minimum(y, x)])
    assert_same(ref["z"], expected.astype(np.float32), "reference")
    names = ("where(v != v, 0, v)", "maximum(a, 0)", "maximum(a, b)", "maximum(b, a)", "minimum(a, b)", "min(b, a)")
    for row, what in enumerate(names):
        assert_same(out["z"][row], ref["z"][row], f"{backend}: {what}, x={x}, y={y}")


@pytest.mark.parametrize("backend", BACKENDS)
# one vector or less (serial form); 2 and 4 vectors (lane partials); lanes of 12 (not a power of two: no tree)
@pytest.mark.parametrize("BN,vector", [(8, 16), (32, 16), (64, 16), (48, 12)])
def test_max_and_min_reductions_return_nan_wherever_it_sits(backend, BN, vector):
    # row r has a NaN at column r (every position of the row, so every lane and every vector of the partials),
    # the last rows none; finite values and infinities elsewhere
    M = BN + 3
    rng = np.random.default_rng(BN)
    x = rng.standard_normal((M, BN)).astype(np.float32)
    x[::5, -1], x[1::7, 0] = np.inf, -np.inf
    x[np.arange(BN), np.arange(BN)] = np.nan
    program = row_extremes.trace(BN=BN)
    args = {"x": x, "z": np.zeros((M, 4), np.float32), "M": M, "N": BN}
    ref, out = _both(program, backend, args, {"vector": vector})
    assert np.isnan(ref["z"][:BN, :2]).all() and not np.isnan(ref["z"][BN:, :2]).any()  # the oracle's NaNs
    for col, what in enumerate(("max(axis=1)", "min(axis=1)", "max(axis=0) of a tile", "min(axis=0) of a tile")):
        assert_same(out["z"][:, col], ref["z"][:, col], f"{backend} BN={BN}: {what}")

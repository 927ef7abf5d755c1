"""DSL tracing: control flow, operators and broadcasting against NumPy; errors at the user's line."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.lang as T
from lowbit.ir.instructions import Dot
from lowbit.ir.statements import For, If, Let, walk
from lowbit.ir.verifier import VerificationError
from lowbit.lang import DSLError


@T.kernel
def softmax_rows(
    x: T.Tensor("float32", ("R", "C")),
    y: T.Tensor("float32", ("R", "C")),
    R: T.int32,
    C: T.int32,
    BR: T.constexpr = 4,
    BC: T.constexpr = 64,
):
    (pid,) = T.grid(T.cdiv(R, BR))
    cols = T.arange(BC)
    rows_ok = (pid * BR + T.arange(BR))[:, None] < R
    mask = rows_ok & (cols[None, :] < C)
    v = T.load(x, (pid * BR, 0), (BR, BC), mask=mask, other=float("-inf"))
    m = T.max(v, axis=1, keepdims=True)
    e = T.exp(v - m)
    T.store(y, (pid * BR, 0), e / T.sum(e, axis=1, keepdims=True), mask=mask)


@settings(max_examples=10)
@given(R=st.integers(1, 11), C=st.integers(1, 64), seed=st.integers(0, 1000))
def test_softmax_matches_numpy(R, C, seed):
    x = np.random.default_rng(seed).standard_normal((R, C)).astype(np.float32) * 4
    y = np.zeros_like(x)
    softmax_rows.run(x=x, y=y)
    ref = np.exp(x - x.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    assert np.abs(y - ref).max() <= 1e-6 * max(1.0, np.abs(ref).max())


@T.kernel
def branchy(x: T.Tensor("int32", ("N",)), y: T.Tensor("int32", ("N",)), N: T.int32, B: T.constexpr = 8):
    (pid,) = T.grid(T.cdiv(N, B))
    v = T.load(x, (pid * B,), (B,))
    out = T.zeros((B,), T.int32)
    with T.if_(T.eq(pid % 2, 0)):
        T.assign(out, v * 3 - 1)
    with T.else_():
        T.assign(out, (v // 4) + (v % 4) + ((v << 2) ^ (v >> 1)))
    total = T.zeros((B,), T.int32)
    for i in T.range(0, 3):
        total += out + i
    T.store(y, (pid * B,), T.where(total > 0, total, -total))


def test_control_flow_and_integer_ops_match_python():
    x = np.arange(-20, 20, dtype=np.int32)
    y = np.zeros_like(x)
    branchy.run(x=x, y=y)
    expected = []
    for i, v in enumerate(x.tolist()):
        out = v * 3 - 1 if (i // 8) % 2 == 0 else (v // 4) + (v % 4) + ((v << 2) ^ (v >> 1))
        total = sum(out + k for k in range(3))
        expected.append(abs(total))
    assert y.tolist() == expected


def test_trace_structure_and_specialisation_cache():
    p1 = branchy.trace(B=8)
    assert branchy.trace(B=8) is p1
    assert branchy.trace(B=16) != p1
    kinds = [type(s).__name__ for s in walk(p1.body)]
    assert "If" in kinds and "For" in kinds
    loop = next(s for s in walk(p1.body) if isinstance(s, For))
    assert str(loop.var) == "i"  # the loop variable keeps the name of the `for` statement
    assert next(s for s in walk(p1.body) if isinstance(s, If)).else_body


def test_loop_carried_accumulator_reads_naturally():
    @T.kernel
    def gemm(a: T.Tensor("float32", (16, 32)), b: T.Tensor("float32", (32, 8)), c: T.Tensor("float32", (16, 8))):
        T.grid(1)
        acc = T.zeros((16, 8))
        for k in T.range(0, 32, 8):
            acc += T.dot(T.load(a, (0, k), (16, 8)), T.load(b, (k, 0), (8, 8)))
        T.store(c, (0, 0), acc)

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((16, 32)).astype(np.float32), rng.standard_normal((32, 8)).astype(np.float32)
    c = np.zeros((16, 8), np.float32)
    gemm.run(a=a, b=b, c=c)
    assert np.abs(c - a @ b).max() < 1e-4
    assert any(isinstance(s, Let) and isinstance(s.inst, Dot) for s in walk(gemm.trace().body))


def test_rebinding_inside_a_loop_is_caught_with_a_fix():
    @T.kernel
    def bad(a: T.Tensor("float32", (8,)), c: T.Tensor("float32", (8,))):
        T.grid(1)
        acc = T.zeros((8,))
        for _ in T.range(0, 4):
            acc = acc + T.load(a, (0,), (8,))
        T.store(c, (0,), acc)

    with pytest.raises(VerificationError, match=r"acc \+= \.\.\.") as e:
        bad.trace()
    assert "test_dsl.py" in str(e.value)  # points at the user's line


def test_shape_error_names_the_user_line_and_operands():
    @T.kernel
    def bad(a: T.Tensor("float32", (16, 16)), c: T.Tensor("float32", (16, 16))):
        T.grid(1)
        x = T.load(a, (0, 0), (16, 8))
        T.store(c, (0, 0), T.dot(x, x))

    with pytest.raises(DSLError, match=r"inner dims differ") as e:
        bad.trace()
    assert "test_dsl.py:" in str(e.value) and "T.dot(x, x)" in str(e.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("store_f16", r"T.cast\(x, 'float32'\)"),
        ("runtime_shape", r"T.constexpr"),
        ("tile_truth", r"T.where"),
        ("subbyte_add", r"dequantize or T.cast"),
    ],
)
def test_semantic_errors_say_what_to_do(body, message):
    @T.kernel
    def k(a: T.Tensor("float32", ("N",)), q: T.Tensor("int4", ("N",)), N: T.int32, WHICH: T.constexpr):
        T.grid(1)
        x = T.load(a, (0,), (8,))
        if WHICH == "store_f16":
            T.store(a, (0,), T.cast(x, "float16"))
        elif WHICH == "runtime_shape":
            T.zeros((N,))
        elif WHICH == "tile_truth":
            if x > 0:
                pass
        elif WHICH == "subbyte_add":
            T.load(q, (0,), (8,)) + T.cast(x, "int8")

    with pytest.raises(DSLError, match=message):
        k.trace(WHICH=body)


def test_python_bool_condition_is_rejected_with_the_fix():
    @T.kernel
    def k(x: T.Tensor("int32", (8,))):
        (pid,) = T.grid(2)
        with T.if_(pid % 2 == 0):
            pass

    with pytest.raises(DSLError, match=r"T.eq\(a, b\)"):
        k.trace()


def test_missing_constant_and_annotation_errors():
    @T.kernel
    def needs(x: T.Tensor("float32", (4,)), B: T.constexpr):
        T.grid(1)

    with pytest.raises(DSLError, match=r"constant 'B' is missing; pass B=\.\.\."):
        needs.trace()
    with pytest.raises(DSLError, match=r"not T\.constexpr parameters"):
        needs.trace(B=1, C=2)
    with pytest.raises(DSLError, match="no annotation"):
        T.kernel(lambda x: None)


def test_scalar_arguments_are_inferred_from_shapes():
    x = np.arange(10, dtype=np.int32)
    y = np.zeros_like(x)
    branchy.run(x=x, y=y, B=4)  # N comes from x.shape
    assert y[0] == abs(sum(-1 + k for k in range(3)))

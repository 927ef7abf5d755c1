"""The verifier catches malformed IR and points at the statement."""

from __future__ import annotations

import pytest
import sympy

from lowbit.dtypes import float16, float32, int4, int32
from lowbit.ir.instructions import Binary, Dot, Full, Load
from lowbit.ir.program import Program
from lowbit.ir.statements import Assign, For, Let, ScalarLoad, Store
from lowbit.ir.types import TileType
from lowbit.ir.values import ScalarParam, TensorParam, Tile, index_symbol, scalar_symbol
from lowbit.ir.verifier import VerificationError, verify

N = ScalarParam("N", int32)
X = TensorParam("x", float32, (N.symbol,))
Y = TensorParam("y", float32, (N.symbol,))


def prog(*body, params=(X, Y, N)):
    return Program("k", tuple(params), (sympy.Integer(1),), tuple(body))


def let(inst, ty=None, loc=""):
    t = Tile(ty or inst.result_type())
    return t, Let(t, inst, loc)


def test_well_formed_program_passes_unchanged():
    t, s = let(Load(X, (sympy.Integer(0),), (8,)))
    p = prog(s, Store(Y, (sympy.Integer(0),), t))
    assert verify(p) is p


def test_type_rule_failure_points_at_the_statement_and_line():
    a, s1 = let(Full((8, 4), 0.0, float32))
    bad = Tile(TileType(float32, (8, 8)))
    p = prog(s1, Let(bad, Dot(a, a), "kernel.py:12"))
    with pytest.raises(VerificationError) as e:
        verify(p)
    msg = str(e.value)
    assert "inner dims differ" in msg and "kernel.py:12" in msg and "dot" in msg


def test_declared_type_must_match_the_rule():
    a, s1 = let(Full((8,), 0.0, float32))
    wrong = Tile(TileType(float16, (8,)))
    with pytest.raises(VerificationError, match="produces tile<float32, \\[8\\]> but the tile is declared"):
        verify(prog(s1, Let(wrong, Binary("add", a, a))))


def test_use_before_definition_and_out_of_scope():
    a = Tile(TileType(float32, (8,)))
    with pytest.raises(VerificationError, match="used before it is defined"):
        verify(prog(Store(Y, (sympy.Integer(0),), a)))
    k = index_symbol("k")
    inner, s = let(Full((8,), 1.0, float32))
    loop = For(k, sympy.Integer(0), sympy.Integer(2), sympy.Integer(1), (s,))
    with pytest.raises(VerificationError, match="outside the block that defines it"):
        verify(prog(loop, Store(Y, (sympy.Integer(0),), inner)))


def test_scalar_expressions_only_mention_visible_names():
    k = index_symbol("k")
    t, s = let(Load(X, (k,), (8,)))
    with pytest.raises(VerificationError, match="load offset 0 mentions k"):
        verify(prog(s, Store(Y, (sympy.Integer(0),), t)))


def test_store_dtype_and_assign_type():
    t, s = let(Full((8,), 0, int32))
    with pytest.raises(VerificationError, match="cast it first"):
        verify(prog(s, Store(Y, (sympy.Integer(0),), t)))
    f, s2 = let(Full((8,), 0.0, float32))
    with pytest.raises(VerificationError, match="assign"):
        verify(prog(s, s2, Assign(f, t)))


def test_subbyte_tensor_needs_a_packed_layout():
    W = TensorParam("w", int4, (N.symbol,))
    with pytest.raises(VerificationError, match="PackedLayout with bits=4"):
        verify(prog(params=(W, N)))


def test_every_problem_is_reported_at_once():
    a = Tile(TileType(float32, (8,)))
    b = Tile(TileType(float32, (8,)))
    with pytest.raises(VerificationError) as e:
        verify(prog(Store(Y, (sympy.Integer(0),), a), Store(Y, (sympy.Integer(0),), b)))
    assert len(e.value.diagnostics) == 2


def test_scalar_loads_are_checked_and_scoped():
    lens = TensorParam("lens", int32, (N.symbol,))
    n = scalar_symbol("n")
    i = index_symbol("i")
    t, load = let(Load(X, (n,), (8,)))
    ok = prog(ScalarLoad(n, lens, (sympy.Integer(0),)), load, Store(Y, (n,), t), params=(X, Y, lens, N))
    assert verify(ok) is ok
    # from a float tensor, with the wrong number of indices, and used outside the loop that loaded it
    for body, words in [
        ((ScalarLoad(n, X, (sympy.Integer(0),)), load, Store(Y, (n,), t)), ["scalar load from x", "int32"]),
        ((ScalarLoad(n, lens, ()), load, Store(Y, (n,), t)), ["rank 1", "one per dimension"]),
        ((For(i, sympy.Integer(0), N.symbol, sympy.Integer(1), (ScalarLoad(n, lens, (i,)),)), load), ["mentions n"]),
    ]:
        with pytest.raises(VerificationError) as e:
            verify(prog(*body, params=(X, Y, lens, N)))
        for w in words:
            assert w in str(e.value), (w, str(e.value))

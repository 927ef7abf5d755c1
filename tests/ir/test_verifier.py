"""The verifier catches malformed IR and points at the statement."""

from __future__ import annotations

import pytest
import sympy

from lowbit.dtypes import boolean, float16, float32, int4, int32
from lowbit.ir.instructions import Binary, Dot, Full, Load, Reduce
from lowbit.ir.parser import parse
from lowbit.ir.printer import print_program
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


def test_messages_name_tiles_as_the_printed_program_does():
    # a tile used outside its loop: the message and the statement it shows use one name, print_program's
    k = index_symbol("k")
    first, s0 = let(Full((8,), 0.0, float32))
    inner, s1 = let(Binary("add", first, first))
    loop = For(k, sympy.Integer(0), sympy.Integer(2), sympy.Integer(1), (s1,))
    p = prog(s0, loop, Store(Y, (sympy.Integer(0),), inner, None, "kernel.py:9"))
    with pytest.raises(VerificationError) as e:
        verify(p)
    assert "%1 = add %0, %0" in print_program(p)
    d = e.value.diagnostics[0]
    assert d.message.startswith("tile %1 is used outside") and d.statement == "store y[0], %1"


def test_parsed_text_keeps_its_tile_numbers_in_diagnostics():
    text = """kernel f(
    x: tensor<float32, [N]>,
    y: tensor<float32, [N]>,
    N: int32
) grid(cdiv(N, 16)) {
  %0 = load x[pid0*16] [16] other 0 : float32[16]
  %1 = exp %0 : float16[16]
  store y[pid0*16], %1
}
"""
    with pytest.raises(VerificationError) as e:
        verify(parse(text))
    statements = [d.statement for d in e.value.diagnostics]
    assert statements == ["%1 = exp %0 : float16[16]", "store y[pid0*16], %1"]


def test_index_expressions_must_be_integers():
    n = N.symbol
    t, s = let(Load(X, (n / 2,), (8,)))
    loop = For(index_symbol("k"), sympy.Integer(0), n, sympy.Float(64.0), ())
    with pytest.raises(VerificationError) as e:
        verify(prog(s, Store(Y, (sympy.Integer(0),), t), loop))
    msg = str(e.value)
    assert "load offset 0 is N/2, which is not an integer" in msg and "//" in msg
    assert "loop step is 64.0" in msg


def test_typing_rejects_float_dots_into_integer_accumulators_and_boolean_sums():
    a, s1 = let(Full((8, 8), 0.5, float16))
    acc = Tile(TileType(int32, (8, 8)))
    m, s2 = let(Binary("lt", a, a))
    total = Tile(TileType(boolean, (8,)))
    with pytest.raises(VerificationError) as e:
        verify(prog(s1, Let(acc, Dot(a, a, None, int32)), s2, Let(total, Reduce("sum", m, 0, keepdims=False))))
    msg = str(e.value)
    assert "dot of float16 tiles with acc_dtype int32" in msg and "float32" in msg
    assert "sum of a boolean tile" in msg and "int32" in msg

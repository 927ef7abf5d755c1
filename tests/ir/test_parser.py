"""lowbit.ir.parser: the text form reads back to the same program (the oracle is the round trip itself:
`parse(print_program(p)) == p` and `print_program(parse(text)) == text`), on hand-built programs covering
every statement, instruction and layout kind, and on random well-typed programs."""

from __future__ import annotations

import functools
import importlib
import math
import pkgutil

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.kernels
from lowbit.dtypes import ALL_TYPES, DataType, boolean, dtype, float16, float32, int4, int32, uint8, uint32
from lowbit.ir.instructions import (
    ARITH_OPS,
    BIT_OPS,
    COMPARE_OPS,
    FLOAT_ONLY_UNARY,
    REDUCE_OPS,
    Arange,
    Binary,
    Broadcast,
    Cast,
    Dequantize,
    Dot,
    Full,
    Inst,
    Load,
    Reduce,
    Reshape,
    Transpose,
    Unary,
    View,
    Where,
)
from lowbit.ir.layout import (
    ComposedLayout,
    Layout,
    Swizzle,
    column_spatial,
    local,
    packed_along,
    replicated,
    row_major,
    spatial,
)
from lowbit.ir.layout.text import layout_from_text, layout_to_text
from lowbit.ir.parser import IRParseError, parse
from lowbit.ir.passes import run_pipeline
from lowbit.ir.printer import print_program
from lowbit.ir.program import Program
from lowbit.ir.statements import Assign, For, If, Let, ScalarLoad, Stmt, Store
from lowbit.ir.types import TileType
from lowbit.ir.values import ScalarParam, TensorParam, Tile, index_symbol, program_id_symbol, scalar_symbol
from lowbit.lang import Kernel


def assert_round_trip(p: Program) -> str:
    text = print_program(p)
    q = parse(text)
    assert q == p, f"parse(print(p)) != p for\n{text}\nreprinted:\n{print_program(q)}"
    assert print_program(q) == text
    return text


class Body:
    """Collects statements; `let` types an instruction with its own typing rule."""

    def __init__(self) -> None:
        self.stmts: list[Stmt] = []

    def let(self, inst: Inst, name: str = "", layout: object = None) -> Tile:
        ty = inst.result_type()
        tile = Tile(TileType(ty.dtype, ty.shape, layout), name)
        self.stmts.append(Let(tile, inst))
        return tile

    def add(self, stmt: Stmt) -> None:
        self.stmts.append(stmt)


# ---- hand-built programs ----------------------------------------------------------------------------------

M, K, N = (ScalarParam(n, int32) for n in "MKN")
OFF = ScalarParam("off", uint32)  # unsigned: an index symbol (nonnegative)
ALPHA = ScalarParam("alpha", float32)  # float: a real symbol
Ms, Ks, Ns, offs = M.symbol, K.symbol, N.symbol, OFF.symbol
pid0, pid1 = program_id_symbol(0), program_id_symbol(1)


def every_kind_program() -> Program:
    """Every statement, every instruction, every layout kind on tensor parameters and tile types."""
    x = TensorParam("x", float16, (Ms, Ks), row_major((Ms, Ks)))
    w = TensorParam("w", int4, (Ks, Ns), packed_along((Ks, Ns), 4, axis=0))
    w3 = TensorParam("w3", dtype("int3"), (Ks, Ns), packed_along((Ks, Ns), 3, axis=0, dense=True))
    s = TensorParam("s", float16, (sympy.ceiling(Ks / 32), Ns))
    y = TensorParam("y", float32, (Ms, Ns), ComposedLayout(Swizzle(3, 4, 3), 0, Layout((8, 64), (64, 1))))
    z = TensorParam("z", float32, (Ms, Ns), ComposedLayout(Swizzle(2, 3, -3), offs, Layout((Ms, Ns), (Ns, 1))))
    v = TensorParam("v", uint8, (Ns,), Layout((Ns,), (1,)))  # a 1-tuple layout
    b = Body()
    k = index_symbol("k")
    r = b.let(Arange(0, 16), "r")
    r2 = b.let(Reshape(r, (16, 1)), "r")  # a second `r`: the printer renames it r_1
    rows = b.let(Broadcast(r2, (16, 16)), "rows")
    lim = b.let(Full((16, 16), Ms - pid0 * 16, int32), "lim")
    mask = b.let(Binary("lt", rows, lim), "mask")
    acc = b.let(Full((16, 16), 0.0, float32), "acc")
    loop = Body()
    page = scalar_symbol("page")
    loop.add(ScalarLoad(page, v, (k // 32 + 1,)))
    loop.let(Full((16, 16), page * 2 - 1, int32), "from_page")
    a = loop.let(Load(x, (pid0 * 16, k), (16, 32), None, 0.0), "a", local(16, 32))
    q = loop.let(Load(w, (k, pid1 * 16), (32, 16), None, 0))
    q3 = loop.let(Load(w3, (k, pid1 * 16), (32, 16), None, -1))
    sc = loop.let(Load(s, (sympy.floor(k / 32), pid1 * 16), (1, 16), None, 1.0), "scale")
    deq = loop.let(Dequantize(q, sc, None, 0, 32, "none", float16), "wq")
    deq3 = loop.let(Dequantize(q3, sc, sc, 0, 32, "pre", float16))
    both = loop.let(Binary("add", deq, deq3))
    t = loop.let(Dot(a, both, acc, float32))
    loop.add(Assign(acc, t))
    b.add(For(k, sympy.Integer(0), Ks, sympy.Integer(32), tuple(loop.stmts)))
    e = b.let(Unary("exp", acc), "e", spatial(4, 8).local(4, 2))
    neg = b.let(Unary("neg", e))
    tr = b.let(Transpose(neg, (1, 0)), "tr", column_spatial(16, 16))
    bits = b.let(View(tr, int32), "bits")
    back = b.let(View(bits, float32))
    small = b.let(View(bits, dtype("int8")))  # width change: the last axis grows
    big = b.let(Cast(small, float32))
    red = b.let(Reduce("max", big, 1, keepdims=True))
    red0 = b.let(Reduce("sum", back, 0), "red0", replicated(4).local(16))
    notm = b.let(Unary("not", mask))
    ninf = b.let(Full((16, 16), -math.inf, float32))
    sel = b.let(Where(notm, ninf, back))
    then = Body()
    then.add(Store(y, (pid0 * 16, pid1 * 16), sel, mask))
    otherwise = Body()
    otherwise.add(Store(z, (pid0 * 16, sympy.Integer(0)), back))
    cond = sympy.And(pid0 * 16 < Ms, sympy.Or(sympy.Eq(sympy.Mod(Ks, 32), 0), sympy.Ne(Ns, 1)))
    b.add(If(cond, tuple(then.stmts), tuple(otherwise.stmts)))
    b.add(If(sympy.true, (Store(v, (pid1 * 16,), b.let(Cast(red0, uint8))),)))
    b.add(If(sympy.Not(sympy.And(sympy.Ge(pid1, offs), Ms < 64)), (Store(y, (pid0, pid1), red),)))
    constants = (("BM", 16), ("dtype", float16), ("scale", -1.5), ("fast", True), ("mode", "a'b\"c\n"))
    params = (x, w, w3, s, y, z, v, M, K, N, OFF, ALPHA)
    grid = (sympy.ceiling(Ms / 16), sympy.ceiling(Ns / 16))
    return Program("every_kind", params, grid, tuple(b.stmts), constants)


def test_every_kind_round_trips() -> None:
    text = assert_round_trip(every_kind_program())
    for word in (
        "swizzle(3, 4, 3) o (8,64):(64,1)",
        "scalar page = v[k // 32 + 1]",
        "full [16, 16], page*2 - 1",
        "swizzle(2, 3, -3) o off o",
        "packed(bits=4",
        "dense=true",
        "register_layout(",
        "(N,):(1,)",
        "%r_1 = reshape %r",
        "if pid0*16 < M and ",
        "not (pid1 >= off and M < 64)",
    ):
        assert word in text, word


def test_symbolic_shapes_and_sympy_names() -> None:
    # N, S, E, I and O are sympy names: sympify of the text would turn them into constants
    names = [ScalarParam(n, int32) for n in ("N", "S", "E", "I", "O")]
    Nn, Sn, En, In, On = (p.symbol for p in names)
    shape = (Nn * Sn, sympy.ceiling(En / 8), sympy.Max(In, On) + 1)
    x = TensorParam("x", float32, shape, row_major(shape))
    i = index_symbol("i")
    b = Body()
    a = b.let(Load(x, (i * Sn, sympy.floor(i / 8) % En, sympy.Min(i, On)), (4, 4, 4), None, math.nan))
    b.add(Store(x, (sympy.Mod(i, Nn), i // 2, Sn**2), a))
    loop = For(i, sympy.Integer(1), Nn * Sn - 1, sympy.Integer(2), tuple(b.stmts))
    p = Program("sympy_names", (x, *names), (Nn, sympy.Integer(4)), (loop,))
    assert_round_trip(p)
    q = parse(print_program(p))
    assert q.param("E").symbol in q.params[0].shape[1].free_symbols
    assert not any(isinstance(s, sympy.NumberSymbol) or s is sympy.I for s in sympy.preorder_traversal(q.grid[0]))


def test_symbols_carry_the_ir_assumptions() -> None:
    text = """kernel k(x: tensor<float32, [M]>, M: int32, u: uint32) grid(M) {
      for i in range(0, M, u) {
        %a = load x[pid0 + i] [4] other 0 : float32[4]
      }
    }"""
    p = parse(text)
    loop = p.body[0]
    assert isinstance(loop, For)
    assert loop.var == index_symbol("i") and loop.var.is_nonnegative
    assert loop.stop == M.symbol and loop.stop.is_positive
    assert loop.step == ScalarParam("u", uint32).symbol == index_symbol("u")
    let = loop.body[0]
    assert isinstance(let, Let) and isinstance(let.inst, Load)
    assert let.inst.offsets == (program_id_symbol(0) + loop.var,)


def test_literals_keep_their_python_type() -> None:
    text = """kernel k(x: tensor<float32, [4]>, M: int32) grid(1) {
      %a = full [4], 0.0 : float32[4]
      %b = full [4], 0 : int32[4]
      %c = full [4], -inf : float32[4]
      %d = full [4], nan : float32[4]
      %e = full [4], true : boolean[4]
      %f = full [4], M - 1 : int32[4]
      %g = load x[0] [4] other 1e-05 : float32[4]
    }"""
    values = [s.inst.value if isinstance(s.inst, Full) else s.inst.other for s in parse(text).body]
    assert [type(v) for v in values[:5]] == [float, int, float, float, bool]
    assert values[2] == -math.inf and math.isnan(values[3]) and values[4] is True
    assert isinstance(values[5], sympy.Expr) and values[5] == M.symbol - 1
    assert values[6] == 1e-05


def test_comments_and_locations_are_ignored() -> None:
    p = every_kind_program()
    body = tuple(Let(s.tile, s.inst, loc="kernel.py:12") if isinstance(s, Let) else s for s in p.body)
    with_locs = print_program(p.replace(body=body), with_locs=True)
    assert "# kernel.py:12" in with_locs
    assert parse("# a header comment\n" + with_locs) == p


def test_tiles_resolve_to_one_object() -> None:
    p = parse("""kernel k(y: tensor<float32, [4]>) grid(1) {
      %acc = full [4], 0.0 : float32[4]
      %t = add %acc, %acc : float32[4]
      %acc <- %t
      store y[0], %acc
    }""")
    acc = p.body[0].tile
    assert p.body[1].inst.a is acc and p.body[1].inst.b is acc
    assert p.body[2].dst is acc and p.body[3].tile is acc
    assert acc.name == "acc" and p.body[1].tile.name == "t"


@pytest.mark.parametrize(
    "layout",
    [
        Layout(8),
        Layout((4, (2, 8)), (16, (8, 1))),
        Layout(((8, sympy.ceiling(Ks / 8)), Ns), ((1, 8 * Ns), 8)),
        Layout((Ms, Ns), (-Ns, 0)),
        ComposedLayout(Swizzle(3, 4, 3), 0, Layout((8, 64), (64, 1))),
        ComposedLayout(Swizzle(1, 0, 2), Ms * 4 + 16, row_major((Ms, 64))),
        packed_along((Ks, Ns), 4, axis=0),
        packed_along((Ms, Ks, Ns), 3, axis=2, dense=True),
        packed_along((64, 48), 3, axis=1, per_word=4, word_bits=16),
        spatial(4, 8).local(2, 2),
        column_spatial(2, 4) * local(3, 1),
        replicated(2),
        local(4).replicated(8),
    ],
    ids=layout_to_text,
)
def test_layout_text_round_trips(layout: object) -> None:
    text = layout_to_text(layout)
    symbols = {p.name: p.symbol for p in (M, K, N)}
    assert layout_from_text(text, symbols) == layout
    assert layout_to_text(layout_from_text(text, symbols)) == text


def store_offset_program(e: sympy.Expr) -> Program:
    x = TensorParam("x", int32, (Ms,))
    body = Body()
    tile = body.let(Full((4,), 0, int32))
    return Program("offset", (x, M, K), (Ms, Ms), (*body.stmts, Store(x, (e,), tile)))


# expressions the generated tests found printed or parsed wrongly once
@pytest.mark.parametrize(
    "e",
    [
        -sympy.floor(Ms / 2),  # `-(M // 2)`, not `-M // 2`, which is (-M) // 2
        -sympy.Mod(Ms, 4),
        1 - sympy.floor(Ms / 2),
        sympy.floor(Ms / 2) ** 2,  # `(M // 2)**2`, not `M // 2**2`
        (pid0 - 3) * (-42 * pid1),  # `-(pid0 - 3)*pid1*42` is one product, not (3 - pid0)*pid1*42
        (pid0 - 3) * (-1 / Ms),
        (pid0 - 3) * (-Ms) * (pid1 + 2),
    ],
    ids=str,
)
def test_tricky_expressions_round_trip(e: sympy.Expr) -> None:
    assert_round_trip(store_offset_program(e))


@pytest.mark.parametrize("e", [sympy.ceiling(Ms * pid0 / 2 + Ms / 2), sympy.floor(Ms**2 / 4 + Ms / 4)], ids=str)
def test_floor_of_a_factorable_sum_round_trips(e: sympy.Expr) -> None:
    assert_round_trip(store_offset_program(e))


# ---- errors -----------------------------------------------------------------------------------------------

HEADER = "kernel k(y: tensor<float32, [M, 4]>, M: int32) grid(cdiv(M, 16)) {\n"


@pytest.mark.parametrize(
    ("body", "where", "words"),
    [
        ("  store y[0, 0], %nope\n", "line 2:18", ["unknown tile %nope"]),
        ("  %a = full [4], 0.0 : float32[4]\n  %a <- %b\n", "line 3:9", ["unknown tile %b"]),
        ("  %a = full [4], Q : float32[4]\n", "line 2:18", ["unknown name Q", "M, pid0"]),
        ("  %a = full [4], pid1 : float32[4]\n", "line 2:18", ["pid1", "grid has 1 axis"]),
        ("  %a = full [4], y : float32[4]\n", "line 2:18", ["y is a tensor parameter"]),
        ("  %a = full [4] 0.0 : float32[4]\n", "line 2:17", ["unexpected '0.0'; expected ','"]),
        ("  %a = full [4], 0.0 float32[4]\n", "line 2:22", ["unexpected 'float32'", "':'"]),
        ("  %a = full [4], 0.0 : float33[4]\n", "line 2:24", ["float33"]),
        ("  %a = frob %b : float32[4]\n", "line 2:8", ["unknown instruction frob"]),
        ("  %a = full [4], 0.0 : float32[4]\n  %b = add %a : float32[4]\n", "line 3:8", ["add takes 2"]),
        ("  %a = full [4], 0.0 : float32[4]\n  %a = full [4], 1.0 : float32[4]\n", "line 3:3", ["defined twice"]),
        ("  store M[0, 0], %a\n", "line 2:9", ["M is a scalar parameter"]),
        ("  if M < 4 {\n  }\n  for i in range(0, M, 1) {\n", "line 6:1", ["the end of the text", "'}'"]),
        (
            "  %a = full [4], 0.0 : float32[4] layout register_layout(shape=[4])\n",
            "line 2:42",
            ["invalid layout", "mode_shape="],
        ),
        ("  %a = full [4], 0.0 ; float32[4]\n", "line 2:22", ["unexpected ';'; expected one of", "':'"]),
    ],
)
def test_errors_name_the_problem_and_the_place(body: str, where: str, words: list[str]) -> None:
    with pytest.raises(IRParseError) as info:
        parse(HEADER + body + "}\n")
    message = str(info.value)
    assert message.startswith(where), message
    for word in words:
        assert word in message, message


def test_header_errors() -> None:
    with pytest.raises(IRParseError, match="unknown name pid0"):
        parse("kernel k(M: int32) grid(pid0) {\n}\n")  # block indices exist only inside the body
    with pytest.raises(IRParseError, match="parameter M declared twice"):
        parse("kernel k(M: int32, M: int64) grid(1) {\n}\n")
    with pytest.raises(IRParseError, match="line 1:30: unknown name Z"):
        parse("kernel k(x: tensor<float16, [Z]>, M: int32) grid(1) {\n}\n")
    with pytest.raises(IRParseError, match="line 1:10: parameter inf has the name of an expression keyword"):
        parse("kernel k(inf: int32) grid(1) {\n}\n")
    with pytest.raises(IRParseError, match="line 2:7: loop variable min has the name"):
        parse("kernel k(M: int32) grid(1) {\n  for min in range(0, M, 1) {\n  }\n}\n")
    with pytest.raises(IRParseError, match="layout"):
        layout_from_text("(4,2):(1,)")  # shape and stride nest differently


# ---- generated programs -----------------------------------------------------------------------------------

SCALARS = [ScalarParam(n, dt) for n, dt in (("M", int32), ("N", int32), ("S", dtype("int64")), ("off", uint32))]
TENSOR_NAMES = ("x", "w", "out", "E")
TILE_NAMES = ("", "", "a", "acc", "t", "x_1", "é")  # duplicates and unnamed tiles exercise the printer's namer
LOOP_NAMES = ("i", "k", "n")
EXTENTS = (1, 2, 4, 8)
FLOATS = [t for t in ALL_TYPES if t.is_float]
INT_LITERALS = st.integers(-(2**40), 2**40)
FLOAT_LITERALS = st.floats(allow_nan=False) | st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0])
BOOL_LITERALS = st.booleans()
VALUE_TYPES = [t for t in ALL_TYPES if not t.is_subbyte] + [int4, dtype("fp4_e2m1"), dtype("uint2")]


@functools.cache  # building a strategy is slow: make each one once
def exprs(symbols: tuple[sympy.Symbol, ...]) -> st.SearchStrategy[sympy.Expr]:
    """Integer index expressions over `symbols`, with // % cdiv min max."""
    leaves = st.sampled_from(symbols) | st.integers(-3, 64).map(sympy.Integer) if symbols else st.integers(0, 64)
    divisors = st.sampled_from([2, 3, 8, 16]).map(sympy.Integer) | (
        st.sampled_from([s for s in symbols if s.is_positive]) if any(s.is_positive for s in symbols) else st.nothing()
    )

    def grow(children: st.SearchStrategy[sympy.Expr]) -> st.SearchStrategy[sympy.Expr]:
        pairs = st.tuples(children, children)
        by_divisor = st.tuples(children, divisors)
        return st.one_of(
            pairs.map(lambda ab: ab[0] + ab[1]),
            pairs.map(lambda ab: ab[0] - ab[1]),
            pairs.map(lambda ab: ab[0] * ab[1]),
            by_divisor.map(lambda ad: sympy.floor(ad[0] / ad[1])),
            by_divisor.map(lambda ad: sympy.Mod(ad[0], ad[1])),
            by_divisor.map(lambda ad: sympy.ceiling(ad[0] / ad[1])),
            pairs.map(lambda ab: sympy.Min(*ab)),
            pairs.map(lambda ab: sympy.Max(*ab)),
        )

    return st.recursive(leaves.map(sympy.sympify), grow, max_leaves=6).filter(is_canonical)


def is_canonical(e: sympy.Basic) -> bool:
    """Rebuilding `e` from its parts gives `e` back. Not always so: sympy folds Max(off, Min(Max(off, 39), 42))
    into an unevaluated Max(off, Min(39, 42)), which no text can reproduce (parsing evaluates Min(39, 42))."""

    def rebuild(x: sympy.Basic) -> sympy.Basic:
        return x if not x.args else x.func(*map(rebuild, x.args))

    return rebuild(e) == e


@functools.cache
def extents(symbols: tuple[sympy.Symbol, ...]) -> st.SearchStrategy[sympy.Expr]:
    """Positive tensor extents: 16, M, M*2, cdiv(N, 8)."""
    sizes = [s for s in symbols if s.is_positive]
    if not sizes:
        return st.integers(1, 64).map(sympy.Integer)
    return st.one_of(
        st.integers(1, 64).map(sympy.Integer),
        st.sampled_from(sizes),
        st.tuples(st.sampled_from(sizes), st.integers(2, 8)).map(lambda sn: sn[0] * sn[1]),
        st.tuples(st.sampled_from(sizes), st.integers(2, 8)).map(lambda sn: sympy.ceiling(sn[0] / sn[1])),
    )


def viewable(x: Tile, dt: DataType) -> bool:
    """The `View` typing rule's condition for reinterpreting tile `x` as `dt`."""
    src, dst = x.dtype.bits, dt.bits
    if src == dst:
        return True
    if not x.shape:
        return False
    return src % dst == 0 if src > dst else dst % src == 0 and x.shape[-1] % (dst // src) == 0


@functools.cache
def conditions(symbols: tuple[sympy.Symbol, ...]) -> st.SearchStrategy[sympy.Basic]:
    ops = st.sampled_from([sympy.Lt, sympy.Le, sympy.Gt, sympy.Ge, sympy.Eq, sympy.Ne])
    compare = st.builds(lambda op, a, b: op(a, b), ops, exprs(symbols), exprs(symbols))
    return st.recursive(
        compare | st.sampled_from([sympy.true, sympy.false]),
        lambda c: st.one_of(
            st.tuples(c, c).map(lambda ab: sympy.And(*ab)),
            st.tuples(c, c).map(lambda ab: sympy.Or(*ab)),
            c.map(sympy.Not),
        ),
        max_leaves=3,
    )


@functools.cache
def register_layouts(shape: tuple[int, ...]) -> st.SearchStrategy[object]:
    """A register layout of `shape`: per dim, threads times registers, optionally replicated."""

    @st.composite
    def build(draw: st.DrawFn) -> object:
        threads = tuple(draw(st.sampled_from([d for d in EXTENTS if e % d == 0])) for e in shape)
        layout = spatial(*threads).local(*(e // t for e, t in zip(shape, threads)))
        if draw(st.booleans()):
            layout = layout.replicated(2)
        return layout

    return st.none() | build() if shape else st.none()


class ProgramGen:
    """Draws a random well-typed program: every `Let` is typed by its instruction's own rule."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.scalars = draw(st.lists(st.sampled_from(SCALARS), min_size=1, max_size=4, unique_by=lambda p: p.name))
        self.symbols = tuple(p.symbol for p in self.scalars)
        self.tensors = [
            self.tensor(name)
            for name in draw(st.lists(st.sampled_from(TENSOR_NAMES), min_size=1, max_size=3, unique=True))
        ]
        self.grid = tuple(draw(st.lists(exprs(self.symbols), min_size=1, max_size=3)))
        self.pids = tuple(program_id_symbol(i) for i in range(len(self.grid)))
        self.budget = draw(st.integers(4, 16))
        self.pending: list[Stmt] = []  # operand tiles an instruction made for itself (dot, dequantize)

    def tensor(self, name: str) -> TensorParam:
        dt = self.draw(st.sampled_from(VALUE_TYPES))
        shape = tuple(self.draw(st.lists(extents(self.symbols), min_size=1, max_size=3)))
        layout = None
        if dt.is_subbyte:
            layout = packed_along(
                shape, dt.bits, axis=self.draw(st.integers(0, len(shape) - 1)), dense=self.draw(st.booleans())
            )
        elif self.draw(st.booleans()):
            layout = row_major(shape)
            if self.draw(st.booleans()):
                layout = ComposedLayout(Swizzle(2, 3, 3), self.draw(exprs(self.symbols)), layout)
        return TensorParam(name, dt, shape, layout)

    def program(self) -> Program:
        body = self.body(scope=[], loop_vars=(), depth=0)
        constants = self.draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["BM", "BN", "dtype", "flag", "note", "eps"]),
                    st.one_of(
                        st.integers(-10, 10**12),
                        st.floats(allow_nan=False),
                        st.booleans(),
                        st.text(max_size=5),
                        st.sampled_from(ALL_TYPES),
                    ),
                ),
                max_size=3,
                unique_by=lambda kv: kv[0],
            )
        )
        return Program("generated", (*self.tensors, *self.scalars), self.grid, body, tuple(constants))

    def body(self, scope: list[Tile], loop_vars: tuple[sympy.Symbol, ...], depth: int) -> tuple[Stmt, ...]:
        scope = list(scope)  # tiles defined in this block are not visible after it
        stmts: list[Stmt] = []
        for _ in range(self.draw(st.integers(0 if depth else 1, 6))):
            if self.budget == 0:
                break
            self.budget -= 1
            kind = self.draw(st.sampled_from(["let"] * 6 + ["store", "assign"] + ["for", "if"] * (depth < 2)))
            symbols = self.symbols + self.pids + loop_vars
            if kind == "let":
                inst = self.inst(scope, symbols)
                stmts += self.pending
                self.pending.clear()
                if inst is not None:
                    ty = inst.result_type()
                    layout = self.draw(register_layouts(ty.shape))
                    tile = Tile(TileType(ty.dtype, ty.shape, layout), self.draw(st.sampled_from(TILE_NAMES)))
                    stmts.append(Let(tile, inst))
                    scope.append(tile)
            elif kind == "store":
                tensor = self.draw(st.sampled_from(self.tensors))
                tiles = [t for t in scope if t.type.rank == tensor.rank]
                tile = (
                    self.draw(st.sampled_from(tiles))
                    if tiles
                    else self.define(self.load(tensor, scope, symbols), scope)
                )
                if tile.dtype != tensor.dtype:
                    tile = self.define(Cast(tile, tensor.dtype), scope)
                masks = [t for t in scope if t.dtype == boolean and t.shape == tile.shape]
                offsets = tuple(self.draw(exprs(symbols)) for _ in range(tensor.rank))
                stmts += self.pending
                self.pending.clear()
                stmts.append(Store(tensor, offsets, tile, self.draw(st.sampled_from([None, *masks]))))
            elif kind == "assign" and scope:
                dst = self.draw(st.sampled_from(scope))
                stmts.append(Assign(dst, self.draw(st.sampled_from([t for t in scope if t.type == dst.type]))))
            elif kind == "for":
                var = index_symbol(self.draw(st.sampled_from(LOOP_NAMES)))
                start, stop, step = self.draw(exprs(symbols)), self.draw(exprs(symbols)), self.draw(extents(symbols))
                stmts.append(For(var, start, stop, step, self.body(scope, (*loop_vars, var), depth + 1)))
            elif kind == "if":
                cond = self.draw(conditions(symbols))
                then = self.body(scope, loop_vars, depth + 1)
                otherwise = self.body(scope, loop_vars, depth + 1) if self.draw(st.booleans()) else ()
                stmts.append(If(cond, then, otherwise))
        return tuple(stmts)

    def inst(self, scope: list[Tile], symbols: tuple[sympy.Symbol, ...]) -> Inst | None:
        draw = self.draw
        kind = draw(
            st.sampled_from(
                [
                    "load",
                    "arange",
                    "full",
                    "unary",
                    "binary",
                    "cast",
                    "view",
                    "reduce",
                    "broadcast",
                    "reshape",
                    "transpose",
                    "where",
                    "dot",
                    "dequantize",
                ]
            )
        )
        if kind == "load" or not scope:
            return self.load(draw(st.sampled_from(self.tensors)), scope, symbols)
        if kind == "arange":
            start = draw(st.integers(-4, 8))
            return Arange(start, start + draw(st.sampled_from(EXTENTS)))
        if kind == "full":
            dt = draw(st.sampled_from(VALUE_TYPES))
            shape = tuple(draw(st.lists(st.sampled_from(EXTENTS), max_size=3)))
            value = draw(self.literal(dt) | exprs(symbols)) if not dt.is_bool else draw(st.booleans())
            return Full(shape, value, dt)
        x = draw(st.sampled_from(scope))
        same = [t for t in scope if t.type.dtype == x.dtype and t.shape == x.shape]
        if kind == "unary":
            ops = ["neg", "abs"] + (list(FLOAT_ONLY_UNARY) if x.dtype.is_float else ["not"])
            return Unary(draw(st.sampled_from(ops)), x)
        if kind == "binary":
            ops = list(COMPARE_OPS) + (
                ["add", "sub", "mul", "div", "max", "min"]
                if x.dtype.is_float
                else list(ARITH_OPS + BIT_OPS)
                if x.dtype.is_integer
                else ["and", "or", "xor"]
            )
            return Binary(draw(st.sampled_from(ops)), x, draw(st.sampled_from(same)))
        if kind == "cast":
            return Cast(x, draw(st.sampled_from(VALUE_TYPES)))
        if kind == "view":
            return View(x, draw(st.sampled_from([x.dtype, *(t for t in VALUE_TYPES if viewable(x, t))])))
        if kind == "reduce" and x.shape:
            return Reduce(
                draw(st.sampled_from(REDUCE_OPS)), x, draw(st.integers(0, len(x.shape) - 1)), draw(st.booleans())
            )
        if kind == "broadcast" and x.shape:
            return Broadcast(x, tuple(draw(st.sampled_from(EXTENTS)) if e == 1 else e for e in x.shape))
        if kind == "reshape":
            return Reshape(x, (math.prod(x.shape), 1))
        if kind == "transpose":
            return Transpose(x, tuple(draw(st.permutations(range(len(x.shape))))))
        if kind == "where":
            conds = [t for t in scope if t.dtype == boolean and t.shape == x.shape]
            cond = draw(st.sampled_from(conds)) if conds else self.define(Binary("eq", x, x), scope)
            return Where(cond, x, draw(st.sampled_from(same)))
        if kind == "dot":
            m, k, n = (draw(st.sampled_from(EXTENTS)) for _ in range(3))
            dt = draw(st.sampled_from([float16, dtype("bfloat16"), dtype("fp8_e4m3"), dtype("int8")]))
            a, b = (self.define(Full(shape, value, dt), scope) for shape, value in (((m, k), 1), ((k, n), 2)))
            c = self.define(Full((m, n), 0.0, float32), scope) if draw(st.booleans()) else None
            return Dot(a, b, c, float32)
        if kind == "dequantize" and x.shape:
            axis = draw(st.integers(0, len(x.shape) - 1))
            group = draw(st.sampled_from([g for g in EXTENTS if x.shape[axis] % g == 0]))
            groups = tuple(e // group if i == axis else e for i, e in enumerate(x.shape))
            scales = self.define(Full(groups, 0.5, draw(st.sampled_from(FLOATS))), scope)
            mode = draw(st.sampled_from(["none", "post", "pre"]))
            zeros = None if mode == "none" else self.define(Full(groups, 3, scales.dtype), scope)
            return Dequantize(x, scales, zeros, axis, group, mode, draw(st.sampled_from(FLOATS)))
        return None

    def load(self, tensor: TensorParam, scope: list[Tile], symbols: tuple[sympy.Symbol, ...]) -> Load:
        shape = tuple(self.draw(st.sampled_from(EXTENTS)) for _ in range(tensor.rank))
        masks = [t for t in scope if t.dtype == boolean and t.shape == shape]
        offsets = tuple(self.draw(exprs(symbols)) for _ in range(tensor.rank))
        return Load(
            tensor, offsets, shape, self.draw(st.sampled_from([None, *masks])), self.draw(self.literal(tensor.dtype))
        )

    def define(self, inst: Inst, scope: list[Tile]) -> Tile:
        """A tile an instruction needs as an operand, defined just before it (a pending `Let`)."""
        tile = Tile(inst.result_type(), self.draw(st.sampled_from(TILE_NAMES)))
        self.pending.append(Let(tile, inst))
        scope.append(tile)
        return tile

    def literal(self, dt: DataType) -> st.SearchStrategy[object]:
        return BOOL_LITERALS if dt.is_bool else INT_LITERALS if dt.is_integer else FLOAT_LITERALS


@st.composite
def programs(draw: st.DrawFn) -> Program:
    return ProgramGen(draw).program()


@given(programs())
def test_generated_programs_round_trip(p: Program) -> None:
    assert_round_trip(p)


@given(exprs((M.symbol, ScalarParam("u", uint32).symbol, index_symbol("i"), program_id_symbol(0))))
def test_generated_expressions_round_trip(e: sympy.Expr) -> None:
    x = TensorParam("x", int32, (M.symbol,))
    one = Body()
    tile = one.let(Full((4,), e, int32))
    p = Program(
        "e",
        (x, M, ScalarParam("u", uint32)),
        (M.symbol,),
        (For(index_symbol("i"), sympy.Integer(0), M.symbol, sympy.Integer(1), (*one.stmts, Store(x, (e,), tile))),),
    )
    assert_round_trip(p)


# ---- what the DSL traces: NaN constants, constexpr layout specs, the library kernels -----------------------


def test_nan_constants_made_anew_round_trip() -> None:
    # float("nan") is a new object each time (and nan != nan): equality treats every NaN constant as one value
    x = TensorParam("x", float32, (Ms,))
    b = Body()
    t = b.let(Load(x, (pid0 * 16,), (16,), None, float("nan")))
    u = b.let(Full((16,), float("nan"), float32))
    b.add(Store(x, (pid0 * 16,), b.let(Binary("add", t, u))))
    p = Program("nan", (x, M), (Ms,), tuple(b.stmts), (("fill", float("nan")),))
    assert_round_trip(p)


@functools.cache
def _library() -> dict[str, tuple[Kernel, st.SearchStrategy[dict[str, object]]]]:
    """Every kernel of lowbit.kernels, by module:name, with a strategy for constants its tests vary."""
    kv_append = importlib.import_module("lowbit.kernels.kv_append")
    weights = st.sampled_from(["int4", "uint3", "int8", "uint1", "fp4_e2m1", "fp6_e3m2", "fp8_e4m3"])
    floats = st.sampled_from(["float16", "bfloat16", "float32"])
    zero_mode = st.sampled_from(["none", "post", "pre"])
    quantized = dict(wdtype=weights, G=st.sampled_from([32, 128, -1]), zero_mode=zero_mode, adtype=floats)
    flag = st.booleans()
    table: dict[str, dict[str, st.SearchStrategy[object]]] = {
        "quantized_gemm:quantized_gemm": quantized,
        "quantized_gemm:quantized_gemm_persistent": quantized,
        "gemv:quantized_gemv": quantized,
        "gemv_fma:quantized_gemv_fma": quantized,
        "gemv_a8:quantized_gemv_a8": dict(
            wdtype=weights, zero_mode=zero_mode, biased=flag, ydtype=floats, TILES=st.sampled_from([1, 2])
        ),
        "gemv_a8:quantize_groups_int8": dict(G=st.sampled_from([32, 128]), adtype=floats),
        "gemv_a8:regroup_int8": dict(G=st.sampled_from([32, 128]), BM=st.sampled_from([1, 4])),
        "gemv_a8:quantize_tokens_int8": dict(G=st.sampled_from([32, 128]), BM=st.sampled_from([1, 4]), adtype=floats),
        "gemv_a8:quantize_rows_int8": dict(BK=st.sampled_from([64, 2048]), BM=st.sampled_from([1, 2]), adtype=floats),
        "gemv_x16:quantized_gemv_x16": dict(
            BITS=st.sampled_from([1, 2, 3, 4]),
            OFFSET=st.sampled_from([0, 4]),
            zero_mode=zero_mode,
            BM=st.sampled_from([1, 4]),
            TILES=st.sampled_from([1, 2]),
        ),
        "gemv_x16:quantize_groups_x16": dict(
            G=st.sampled_from([32, 128]), adtype=st.sampled_from(["bfloat16", "float16"])
        ),
        "w4a8:w4a8_gemm_per_group": dict(G=st.sampled_from([32, 64, 128]), ydtype=floats),
        "w4a8:w4a8_gemm_per_group_persistent": {},
        "w4a8:w4a8_gemm_per_channel": dict(ydtype=floats),
        "w4a8:w4a8_gemm_per_channel_persistent": {},
        "attention_decode:paged_decode_attention": dict(
            qdtype=floats, kvdtype=st.sampled_from(["float16", "int8", "int4", "fp8_e4m3"]), GQ=st.sampled_from([1, 4])
        ),
        "attention_decode:paged_decode_attention_persistent": {},
        "attention_decode:paged_decode_attention_words": dict(BITS=st.sampled_from([4, 8]), qdtype=floats),
        "attention_decode:attention_combine": dict(odtype=floats),
        "attention_prefill:prefill_attention": dict(CAUSAL=flag, dtype=floats),
        "attention_prefill:prefill_attention_persistent": dict(CAUSAL=flag),
        "activation:silu_mul": dict(dtype=floats),
        "kv_append:kv_append": dict(dtype=floats),  # with kv_dtype and its cache dtypes, below
        "norm:rms_norm_kernel": dict(add_residual=flag, inplace=flag, single_pass=flag, dtype=floats),
        "rope:rope": dict(style=st.sampled_from(["neox", "interleaved"]), inplace=flag, dtype=floats),
    }
    kv = st.sampled_from(["int4", "int8", "fp8_e4m3"]).map(
        lambda d: dict(kv_dtype=d, cdtype=kv_append.cache_dtype(d), kdtype=kv_append.key_dtype(d))
    )
    strategies = {k: st.fixed_dictionaries(v) for k, v in table.items()}
    strategies["kv_append:kv_append"] = st.tuples(strategies["kv_append:kv_append"], kv).map(lambda p: {**p[0], **p[1]})
    # import_module: lowbit/kernels/__init__.py rebinds some module names to the kernels they define
    kernel = {k: getattr(importlib.import_module(f"lowbit.kernels.{k.split(':')[0]}"), k.split(":")[1]) for k in table}
    return {k: (kernel[k], strategies[k]) for k in table}


def test_the_library_table_covers_every_kernel() -> None:
    found = set()
    for m in pkgutil.iter_modules(lowbit.kernels.__path__):
        module = importlib.import_module(f"lowbit.kernels.{m.name}")
        found |= {id(v) for v in vars(module).values() if isinstance(v, Kernel)}
    assert found == {id(k) for k, _ in _library().values()}


@pytest.mark.parametrize("name", sorted(_library()))
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_library_kernels_round_trip(name: str, data: st.DataObject) -> None:
    kernel, constants = _library()[name]
    p = kernel.trace(**data.draw(constants))
    assert_round_trip(p)  # constants included: a `T.packed(...)` layout spec prints as its text
    assert_round_trip(run_pipeline(p))

"""Reads the IR text form back into a `Program`: `parse(print_program(p)) == p` (alpha-equivalence).

The grammar is `grammar.lark` (LALR(1)); this file turns its parse tree into IR. Scalar expressions are
built as sympy directly (never by `sympify` of a string: `N`, `S`, `E` are sympy names), with the
symbols the IR itself makes: scalar parameters through `ScalarParam.symbol`, loop variables through
`index_symbol`, block indices through `program_id_symbol`. A `%name` is defined by its `Let` and every
later mention is that same `Tile`. Every failure is an `IRParseError` naming the line, the column and the
fix.
"""

from __future__ import annotations

import ast
import functools
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import sympy
from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError
from lark.tree import Meta

from lowbit.dtypes import DataType, dtype
from lowbit.ir.instructions import (
    BINARY_OPS,
    UNARY_OPS,
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
from lowbit.ir.layout import text as layout_text
from lowbit.ir.layout.symbolic import xor
from lowbit.ir.program import Program
from lowbit.ir.statements import Assign, For, If, Let, ScalarLoad, Stmt, Store
from lowbit.ir.types import TileType
from lowbit.ir.values import ScalarParam, TensorParam, Tile, index_symbol, program_id_symbol, scalar_symbol, size_symbol

__all__ = ["IRParseError", "parse", "parse_layout"]


class IRParseError(ValueError):
    """Text that is not the IR text form: `line:column`, what went wrong or was expected, the source line."""

    def __init__(self, message: str, line: int = 0, column: int = 0, text: str = "") -> None:
        self.line, self.column = line, column
        where = f"line {line}:{column}: " if line else ""
        context = ""
        if line and text:
            source = text.splitlines()[line - 1] if line <= len(text.splitlines()) else ""
            context = f"\n    {source}\n    {' ' * (column - 1)}^"
        super().__init__(f"{where}{message}{context}")


def parse(text: str) -> Program:
    """The `Program` that `print_program` printed as `text` (comments, `# file:line` included, are ignored)."""
    tree = _parse_tree(text, "program")
    return _ProgramBuilder(text).program(tree)


def parse_layout(text: str, symbols: Mapping[str, sympy.Symbol] | None = None) -> Any:
    """A layout from its text form (`lowbit.ir.layout.text`). Names resolve through `symbols`, or are
    size symbols (positive integers) when no mapping is given."""
    tree = _parse_tree(text, "layout")

    def lookup(tok: Token) -> sympy.Symbol:
        if symbols is None:
            return size_symbol(str(tok))
        if str(tok) in symbols:
            return symbols[str(tok)]
        _fail(text, tok, f"unknown name {tok!s} in layout; the names known here are {sorted(symbols)}")

    return _run(_Values(lookup, text), tree)


# ---- lark -------------------------------------------------------------------------------------------------


@functools.cache
def _lark() -> Lark:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return Lark(grammar, parser="lalr", start=["program", "layout"], propagate_positions=True, maybe_placeholders=True)


# what an expected terminal looks like to a person (string terminals show themselves)
_TERMINAL_WORDS = {
    "NAME": "a name",
    "TILE": "a tile (%name)",
    "INT": "an integer",
    "FLOAT": "a float",
    "STRING": "a quoted string",
    "$END": "the end of the text",
}


def _terminal_text(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    try:
        pattern = _lark().get_terminal(name).pattern
    except KeyError:
        return name
    return repr(pattern.value) if pattern.type == "str" else name


def _parse_tree(text: str, start: str) -> Tree:
    try:
        return _lark().parse(text, start=start)
    except UnexpectedInput as e:
        line, column = e.line, e.column
        expected: set[str]
        if isinstance(e, UnexpectedToken) and e.token.type != "$END":
            got, expected = repr(str(e.token)), set(e.accepts or e.expected)
        elif isinstance(e, UnexpectedCharacters):
            # the lexer's `allowed` is LALR's merged lookahead; ask the parser what it accepts right here
            pos = e.pos_in_stream or 0
            got, expected = repr(text[pos]), _accepts(text[:pos], start) or set(e.allowed or ())
        else:  # the end of the text: point just past it
            options: Any = getattr(e, "accepts", None) or getattr(e, "expected", None) or ()
            got, expected = "the end of the text", set(options)
            line, column = text.count("\n") + 1, len(text) - text.rfind("\n")
        wanted = sorted({_terminal_text(t) for t in expected})
        raise IRParseError(f"unexpected {got}; expected {_one_of(wanted)}", line, column, text) from None


def _accepts(prefix: str, start: str) -> set[str]:
    try:
        parser = _lark().parse_interactive(prefix, start)
        parser.exhaust_lexer()
        return set(parser.accepts())
    except UnexpectedInput:
        return set()


def _one_of(words: list[str]) -> str:
    return words[0] if len(words) == 1 else "one of " + ", ".join(words)


def _fail(text: str, at: Token | Tree | None, message: str) -> NoReturn:
    line = column = 0
    if isinstance(at, Token):
        line, column = at.line or 0, at.column or 0
    elif isinstance(at, Tree) and not at.meta.empty:
        line, column = at.meta.line, at.meta.column
    raise IRParseError(message, line, column, text)


def _run(transformer: Transformer, tree: Tree) -> Any:
    # lark wraps exceptions raised in callbacks; callers want ours
    try:
        return transformer.transform(tree)
    except VisitError as e:
        raise e.orig_exc from None


# ---- values: expressions, conditions, int lists, layouts --------------------------------------------------


class _Neg:
    """`-x` of a sum, held until we know whether a product follows. `-(a - 3)*b*42` prints
    `Mul(-42, b, a - 3)`; negating the sum first would make it `(3 - a)*b*42`, so `mul` builds
    `Mul(-1, a - 3, b)` in one go instead. Anything else reads it as `-x` (via `_sym` or `_done`)."""

    __slots__ = ("x",)

    def __init__(self, x: sympy.Basic) -> None:
        self.x = x


def _done(x: Any) -> Any:
    """An expression's final value: literals stay Python numbers."""
    return -x.x if isinstance(x, _Neg) else x


def _sym(x: Any) -> sympy.Basic:
    """A literal (Python number) as sympy; sympy values pass through."""
    if isinstance(x, _Neg):
        return -x.x
    if isinstance(x, bool):
        return sympy.true if x else sympy.false
    if isinstance(x, int):
        return sympy.Integer(x)
    if isinstance(x, float):
        return sympy.Float(x)
    return x


_COMPARE = {"<": sympy.Lt, "<=": sympy.Le, ">": sympy.Gt, ">=": sympy.Ge, "==": sympy.Eq, "!=": sympy.Ne}


class _Values(Transformer):
    """Bottom-up builder of everything below a statement. Number literals stay Python numbers (so a
    printed `0.0` reads back as the float it was) until an operator combines them into sympy."""

    def __init__(self, lookup: Callable[[Token], sympy.Basic], text: str) -> None:
        super().__init__()
        self.lookup, self.text = lookup, text

    # numbers and names
    def integer(self, c: list[Token]) -> int:
        return int(c[0])

    def real(self, c: list[Token]) -> float:
        return float(c[0])

    def inf(self, _: list[Any]) -> float:
        return math.inf

    def nan(self, _: list[Any]) -> float:
        return math.nan

    def true(self, _: list[Any]) -> bool:
        return True

    def false(self, _: list[Any]) -> bool:
        return False

    def name(self, c: list[Token]) -> sympy.Basic:
        return self.lookup(c[0])

    # arithmetic (Python semantics: // and % floor, like sympy's floor and Mod)
    def neg(self, c: list[Any]) -> Any:
        return _Neg(c[0]) if isinstance(c[0], sympy.Add) else -_done(c[0])

    def add(self, c: list[Any]) -> Any:
        return _sym(c[0]) + _sym(c[1])

    def sub(self, c: list[Any]) -> Any:
        return _sym(c[0]) - _sym(c[1])

    def mul(self, c: list[Any]) -> Any:
        if isinstance(c[0], _Neg):
            return sympy.Mul(-1, c[0].x, _sym(c[1]))
        return _sym(c[0]) * _sym(c[1])

    def truediv(self, c: list[Any]) -> Any:
        if isinstance(c[0], _Neg):
            return sympy.Mul(-1, c[0].x, 1 / _sym(c[1]))
        return _sym(c[0]) / _sym(c[1])

    def floordiv(self, c: list[Any]) -> Any:
        return sympy.floor(_sym(c[0]) / _sym(c[1]))

    def mod(self, c: list[Any]) -> Any:
        return sympy.Mod(_sym(c[0]), _sym(c[1]))

    def pow_(self, c: list[Any]) -> Any:
        return _sym(c[0]) ** _sym(c[1])

    def xor(self, c: list[Any]) -> Any:
        return xor(_sym(c[0]), _sym(c[1]))

    def cdiv(self, c: list[Any]) -> Any:
        return sympy.ceiling(_sym(c[0]) / _sym(c[1]))

    def min_(self, c: list[Any]) -> Any:
        return sympy.Min(*map(_sym, c))

    def max_(self, c: list[Any]) -> Any:
        return sympy.Max(*map(_sym, c))

    def floor_(self, c: list[Any]) -> Any:
        return sympy.floor(_sym(c[0]))

    def ceil_(self, c: list[Any]) -> Any:
        return sympy.ceiling(_sym(c[0]))

    def exprs(self, c: list[Any]) -> tuple[Any, ...]:
        return tuple(_sym(x) for x in c if x is not None)

    # conditions
    def compare_op(self, c: list[Token]) -> str:
        return str(c[0])

    def compare(self, c: list[Any]) -> Any:
        return _COMPARE[str(c[1])](_sym(c[0]), _sym(c[2]))

    def and_(self, c: list[Any]) -> Any:
        return sympy.And(_sym(c[0]), _sym(c[1]))

    def or_(self, c: list[Any]) -> Any:
        return sympy.Or(_sym(c[0]), _sym(c[1]))

    def not_(self, c: list[Any]) -> Any:
        return sympy.Not(_sym(c[0]))

    # tile shapes, axes, permutations
    def sint(self, c: list[Token]) -> int:
        return int(c[0])

    def neg_int(self, c: list[Token]) -> int:
        return -int(c[0])

    def int_list(self, c: list[Any]) -> tuple[int, ...]:
        return tuple(x for x in c if x is not None)

    # layouts
    def modes(self, c: list[Any]) -> tuple[Any, ...]:
        return tuple(_done(x) for x in c if x is not None)

    def bracket(self, c: list[Any]) -> list[Any]:
        return list(c[0])

    def kwarg(self, c: list[Any]) -> tuple[Token, Any]:
        return c[0], _done(c[1])

    @v_args(meta=True)
    def cute_layout(self, meta: Meta, c: list[Any]) -> Any:
        return self._build(meta, layout_text.cute_from_parts, _done(c[0]), _done(c[1]))

    @v_args(meta=True)
    def swizzled(self, meta: Meta, c: list[Any]) -> Any:
        bits, base, shift, offset, layout = c
        offset = 0 if offset is None else _done(offset)
        return self._build(meta, layout_text.composed_from_parts, bits, base, shift, offset, layout)

    @v_args(meta=True)
    def packed(self, meta: Meta, c: list[Any]) -> Any:
        *kwargs, layout = c
        return self._build(meta, layout_text.packed_from_parts, self._fields(kwargs), layout)

    @v_args(meta=True)
    def register(self, meta: Meta, c: list[Any]) -> Any:
        return self._build(meta, layout_text.register_from_parts, self._fields([kw for kw in c if kw is not None]))

    def _fields(self, kwargs: list[tuple[Token, Any]]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for name, value in kwargs:
            if str(name) in fields:
                _fail(self.text, name, f"field {name} given twice")
            fields[str(name)] = value
        return fields

    def _build(self, meta: Meta, build: Callable[..., Any], *args: Any) -> Any:
        try:
            return build(*args)
        except (ValueError, TypeError) as e:  # LayoutError is a ValueError
            line, column = (0, 0) if meta.empty else (meta.line, meta.column)
            raise IRParseError(f"invalid layout: {e}", line, column, self.text) from None


# ---- the program ------------------------------------------------------------------------------------------

_PID = re.compile(r"pid(\d+)")
_KEYWORDS = ("cdiv", "min", "max", "math", "inf", "nan", "true", "false", "not")  # words an expression reserves


class _ProgramBuilder:
    """Walks statements top-down (scopes, definition order); `_Values` builds everything inside them.

    Tile names are program-wide, as the printer makes them: whether a tile is visible where it is used
    is the verifier's question, not the parser's.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.scalars: dict[str, ScalarParam] = {}
        self.tensors: dict[str, TensorParam] = {}
        self.loop_vars: list[tuple[str, sympy.Symbol]] = []  # innermost last
        self.num_pids: int | None = None  # None in the header, where there are no block indices
        self.tiles: dict[str, tuple[Tile, int]] = {}  # "%name" -> (tile, line of its definition)
        self.declared: set[str] = set()  # parameter names
        self.values = _Values(self.lookup, text)

    def fail(self, at: Token | Tree | None, message: str) -> NoReturn:
        _fail(self.text, at, message)

    def value(self, tree: Any) -> Any:
        return _done(_run(self.values, tree)) if isinstance(tree, Tree) else tree

    def expr(self, tree: Any) -> Any:
        return _sym(self.value(tree))

    # names
    def lookup(self, tok: Token) -> sympy.Symbol:
        name = str(tok)
        for var, symbol in reversed(self.loop_vars):
            if var == name:
                return symbol
        if name in self.scalars:
            return self.scalars[name].symbol
        pids = self.num_pids or 0
        match = _PID.fullmatch(name)
        if match and int(match.group(1)) < pids:
            return program_id_symbol(int(match.group(1)))
        if match and self.num_pids is not None:
            axes = ", ".join(f"pid{i}" for i in range(pids))
            self.fail(tok, f"{name} is not a block index: the grid has {pids} axis{'' if pids == 1 else 'es'} ({axes})")
        if name in self.tensors:
            self.fail(tok, f"{name} is a tensor parameter; expressions use scalar parameters, loop variables, pid0..")
        known = [*(var for var, _ in self.loop_vars), *self.scalars, *(f"pid{i}" for i in range(pids))]
        self.fail(
            tok,
            f"unknown name {name}; declare it as a scalar parameter (`{name}: int32`) or use one of "
            f"{', '.join(dict.fromkeys(known)) or '(none)'}",
        )

    def dtype(self, tok: Token) -> DataType:
        try:
            return dtype(str(tok))
        except ValueError as e:
            self.fail(tok, str(e))

    def tile(self, tok: Token) -> Tile:
        entry = self.tiles.get(str(tok))
        if entry is None:
            self.fail(tok, f"unknown tile {tok}; define it (`{tok} = ...`) before line {tok.line} uses it")
        return entry[0]

    def maybe_tile(self, tok: Token | None) -> Tile | None:
        return None if tok is None else self.tile(tok)

    def tensor(self, tok: Token) -> TensorParam:
        if str(tok) not in self.tensors:
            what = "a scalar parameter" if str(tok) in self.scalars else "not a parameter"
            known = ", ".join(self.tensors) or "none declared"
            self.fail(tok, f"{tok} is {what}; load and store take a tensor parameter ({known})")
        return self.tensors[str(tok)]

    # kernel
    def program(self, tree: Tree) -> Program:
        name, params, grid, constants, body = tree.children
        param_parts: list[list[Any]] = [p.children for p in params.children if p is not None]
        for pname, *_ in param_parts:
            self.declare(pname)
        for pname, dt, *tensor_parts in param_parts:  # scalars first: tensor shapes and layouts may name any
            if not tensor_parts:
                self.scalars[str(pname)] = ScalarParam(str(pname), self.dtype(dt))
        for pname, dt, *tensor_parts in param_parts:
            if tensor_parts:
                shape, layout = tensor_parts
                self.tensors[str(pname)] = TensorParam(
                    str(pname), self.dtype(dt), self.value(shape), self.value(layout)
                )
        names = [str(pname) for pname, *_ in param_parts]
        ordered = [self.scalars[n] if n in self.scalars else self.tensors[n] for n in names]
        grid_exprs = self.value(grid)
        self.num_pids = len(grid_exprs)
        consts = () if constants is None else tuple(self.constant(c) for c in constants.children if c is not None)
        return Program(str(name), tuple(ordered), grid_exprs, self.body(body), consts)

    def declare(self, tok: Token) -> None:
        if str(tok) in self.declared:
            self.fail(tok, f"parameter {tok} declared twice")
        self.check_name(tok, "parameter")
        self.declared.add(str(tok))

    def check_name(self, tok: Token, what: str) -> None:
        if str(tok) in _KEYWORDS:
            self.fail(tok, f"{what} {tok} has the name of an expression keyword ({', '.join(_KEYWORDS)}); rename it")

    def constant(self, tree: Tree) -> tuple[str, Any]:
        name, value = tree.children
        assert isinstance(name, Token)
        if isinstance(value, Tree) and value.data == "string":
            return str(name), ast.literal_eval(str(value.children[0]))
        if isinstance(value, Tree) and value.data == "dtype_name":
            return str(name), self.dtype(value.children[0])  # type: ignore[arg-type]
        return str(name), self.value(value)

    # statements
    def body(self, tree: Tree) -> tuple[Stmt, ...]:
        depth = len(self.loop_vars)  # scalars loaded in this body are visible until its end
        try:
            return tuple(self.stmt(s) for s in tree.children)
        finally:
            del self.loop_vars[depth:]

    def stmt(self, tree: Tree) -> Stmt:
        c: list[Any] = tree.children
        if tree.data == "let":
            tok, inst_tree, type_tree = c
            ty = self.tile_type(type_tree)
            inst = self.inst(inst_tree, ty)
            if str(tok) in self.tiles:
                self.fail(tok, f"tile {tok} is defined twice (first on line {self.tiles[str(tok)][1]}); rename one")
            name = str(tok)[1:]
            tile = Tile(ty, name if name.isidentifier() or name.isdigit() else "")  # keeps `%3` for messages
            self.tiles[str(tok)] = (tile, tok.line or 0)
            return Let(tile, inst)
        if tree.data == "assign":
            return Assign(self.tile(c[0]), self.tile(c[1]))
        if tree.data == "store":
            tensor, offsets, tile, mask = c
            return Store(self.tensor(tensor), self.value(offsets), self.tile(tile), self.maybe_tile(mask))
        if tree.data == "scalar_load":
            var, tensor, indices = c
            self.check_name(var, "scalar")
            stmt = ScalarLoad(scalar_symbol(str(var)), self.tensor(tensor), self.value(indices))
            self.loop_vars.append((str(var), stmt.var))
            return stmt
        if tree.data == "for_":
            var, start, stop, step, body = c
            self.check_name(var, "loop variable")
            bounds = self.expr(start), self.expr(stop), self.expr(step)
            symbol = index_symbol(str(var))
            self.loop_vars.append((str(var), symbol))
            try:
                return For(symbol, *bounds, self.body(body))
            finally:
                self.loop_vars.pop()
        if tree.data == "if_":
            cond, then_body, else_body = c
            return If(self.expr(cond), self.body(then_body), () if else_body is None else self.body(else_body))
        raise AssertionError(f"grammar rule {tree.data} has no statement builder")

    def tile_type(self, tree: Tree) -> TileType:
        c: list[Any] = tree.children
        dt, shape, layout = c
        return TileType(self.dtype(dt), self.value(shape), self.value(layout))

    # instructions: result dtypes and shapes come from the declared type
    def inst(self, tree: Tree, ty: TileType) -> Inst:
        c: list[Any] = tree.children
        if tree.data == "load":
            tensor, offsets, shape, mask, other = c
            return Load(
                self.tensor(tensor), self.value(offsets), self.value(shape), self.maybe_tile(mask), self.value(other)
            )
        if tree.data == "arange":
            return Arange(self.value(c[0]), self.value(c[1]))
        if tree.data == "full":
            return Full(self.value(c[0]), self.value(c[1]), ty.dtype)
        if tree.data == "dequantize":
            codes, scales, zeros, axis, group, mode = c
            return Dequantize(
                self.tile(codes), self.tile(scales), self.maybe_tile(zeros), int(axis), int(group), str(mode), ty.dtype
            )
        if tree.data == "reduce":
            op, x, axis, keepdims = c
            return Reduce(str(op), self.tile(x), int(axis), keepdims is not None)
        if tree.data == "transpose":
            return Transpose(self.tile(c[0]), self.value(c[1]))
        if tree.data == "op":
            return self.op(c[0], c[1:], ty)
        raise AssertionError(f"grammar rule {tree.data} has no instruction builder")

    def op(self, op: Token, operands: list[Token], ty: TileType) -> Inst:
        if str(op) not in _OPS:
            self.fail(op, f"unknown instruction {op}; the instructions are {', '.join(_INSTRUCTION_NAMES)}")
        fewest, most, build = _OPS[str(op)]
        if not fewest <= len(operands) <= most:
            count = str(fewest) if fewest == most else f"{fewest} or {most}"
            self.fail(op, f"{op} takes {count} tile operands, got {len(operands)}")
        return build([self.tile(t) for t in operands], ty)


# the generic `op %a, %b, ...` instructions: name -> (fewest operands, most operands, build(operands, type))
_OPS: dict[str, tuple[int, int, Callable[[list[Tile], TileType], Inst]]] = {
    "cast": (1, 1, lambda t, ty: Cast(t[0], ty.dtype)),
    "view": (1, 1, lambda t, ty: View(t[0], ty.dtype)),
    "broadcast": (1, 1, lambda t, ty: Broadcast(t[0], ty.shape)),
    "reshape": (1, 1, lambda t, ty: Reshape(t[0], ty.shape)),
    "dot": (2, 3, lambda t, ty: Dot(t[0], t[1], t[2] if len(t) == 3 else None, ty.dtype)),
    "where": (3, 3, lambda t, ty: Where(t[0], t[1], t[2])),
    **{op: (1, 1, functools.partial(lambda op, t, ty: Unary(op, t[0]), op)) for op in UNARY_OPS},
    **{op: (2, 2, functools.partial(lambda op, t, ty: Binary(op, t[0], t[1]), op)) for op in BINARY_OPS},
}
_INSTRUCTION_NAMES = ["load", "arange", "full", "dequantize", "reduce", "transpose", *_OPS]

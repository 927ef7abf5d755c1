"""The text form of the tile IR. `lowbit.ir.parser.parse` reads it back: parse(print_program(p)) == p.

kernel name(x: tensor<float16, [M, K]>, M: int32) grid(cdiv(M, 16)) constants(BM=16) {
  %acc = full [16, 32], 0.0 : float32[16, 32]
  for k in range(0, K, 32) {
    %a = load x[pid0*16, k] [16, 32] other 0.0 : float16[16, 32]
    ...
    %acc <- %t
  }
  store y[pid0*16, 0], %out
}
"""

from __future__ import annotations

from typing import Any

import sympy

from lowbit.ir.instructions import (
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
from lowbit.ir.layout.symbolic import to_source
from lowbit.ir.layout.text import layout_to_text
from lowbit.ir.program import Program, constant_text
from lowbit.ir.statements import Assign, For, If, Let, ScalarLoad, Stmt, Store
from lowbit.ir.types import TileType
from lowbit.ir.values import ScalarParam, TensorParam, Tile


def expr_text(e: Any) -> str:
    if isinstance(e, bool):
        return "true" if e else "false"
    if isinstance(e, (int, float)):
        return repr(e)
    if e is sympy.true:
        return "true"
    if e is sympy.false:
        return "false"
    return to_source(e)


def cond_text(c: Any) -> str:
    """An `if` condition: comparisons joined by `and` / `or` / `not` (to_source would print `Eq(a, b)`, `&`)."""
    if isinstance(c, (sympy.And, sympy.Or)):
        word = " and " if isinstance(c, sympy.And) else " or "
        return word.join(_cond_operand(a) for a in c.args)
    if isinstance(c, sympy.Not):
        return "not " + _cond_operand(c.args[0])
    if isinstance(c, sympy.core.relational.Relational):
        return f"{to_source(c.lhs)} {c.rel_op} {to_source(c.rhs)}"
    return expr_text(c)


def _cond_operand(c: Any) -> str:
    return f"({cond_text(c)})" if isinstance(c, (sympy.And, sympy.Or)) else cond_text(c)


def exprs_text(es: tuple[Any, ...]) -> str:
    return ", ".join(expr_text(e) for e in es)


def shape_text(shape: tuple[Any, ...]) -> str:
    return "[" + exprs_text(tuple(shape)) + "]"


def type_text(t: TileType) -> str:
    s = f"{t.dtype.name}{shape_text(t.shape)}"
    if t.layout is not None:
        s += f" layout {layout_to_text(t.layout)}"
    return s


def param_text(p: TensorParam | ScalarParam) -> str:
    if isinstance(p, ScalarParam):
        return f"{p.name}: {p.dtype.name}"
    layout = "" if p.layout is None else f", {layout_to_text(p.layout)}"
    return f"{p.name}: tensor<{p.dtype.name}, {shape_text(p.shape)}{layout}>"


class Namer:
    """Readable, unique tile names, given in order of first mention: the hint the DSL recorded (or the name
    the text had: `%acc`, `%3`), else a number."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.used: set[str] = set()

    def __call__(self, tile: Tile) -> str:
        name = self.names.get(id(tile))
        if name is None:
            named = tile.name and (tile.name.isidentifier() or tile.name.isdigit())
            base = tile.name if named else str(len(self.names))
            name, n = base, 1
            while name in self.used:
                name, n = f"{base}_{n}", n + 1
            self.names[id(tile)] = name
            self.used.add(name)
        return "%" + name


_Namer = Namer  # the name lowbit.codegen.triton imports


def inst_text(inst: Inst, name: Namer) -> str:
    """The right-hand side of `%t = ...` (without the result type)."""
    if isinstance(inst, Load):
        s = f"load {inst.tensor.name}[{exprs_text(inst.offsets)}] {shape_text(inst.shape)}"
        if inst.mask is not None:
            s += f" mask {name(inst.mask)}"
        return s + f" other {expr_text(inst.other)}"
    if isinstance(inst, Arange):
        return f"arange {inst.start}, {inst.stop}"
    if isinstance(inst, Full):
        return f"full {shape_text(inst.shape)}, {expr_text(inst.value)}"
    if isinstance(inst, Dot):
        acc = "" if inst.c is None else f", {name(inst.c)}"
        return f"dot {name(inst.a)}, {name(inst.b)}{acc}"
    if isinstance(inst, (Cast, View)):
        return f"{inst.opname} {name(inst.x)}"
    if isinstance(inst, Dequantize):
        zeros = "" if inst.zeros is None else f", {name(inst.zeros)}"
        return (
            f"dequantize {name(inst.codes)}, {name(inst.scales)}{zeros} "
            f"axis={inst.axis} group={inst.group_size} zero={inst.zero_mode}"
        )
    if isinstance(inst, Unary):
        return f"{inst.op} {name(inst.x)}"
    if isinstance(inst, Binary):
        return f"{inst.op} {name(inst.a)}, {name(inst.b)}"
    if isinstance(inst, Where):
        return f"where {name(inst.cond)}, {name(inst.a)}, {name(inst.b)}"
    if isinstance(inst, Reduce):
        return f"reduce {inst.op} {name(inst.x)} axis={inst.axis}" + (" keepdims" if inst.keepdims else "")
    if isinstance(inst, (Broadcast, Reshape)):
        return f"{inst.opname} {name(inst.x)}"
    if isinstance(inst, Transpose):
        return f"transpose {name(inst.x)} {shape_text(inst.perm)}"
    raise NotImplementedError(f"printer has no rule for {type(inst).__name__}; add one in lowbit/ir/printer.py")


def stmt_lines(stmt: Stmt, name: Namer, indent: str, with_locs: bool) -> list[str]:
    loc = f"  # {stmt.location}" if with_locs and stmt.location else ""
    if isinstance(stmt, Let):
        return [f"{indent}{name(stmt.tile)} = {inst_text(stmt.inst, name)} : {type_text(stmt.tile.type)}{loc}"]
    if isinstance(stmt, Assign):
        return [f"{indent}{name(stmt.dst)} <- {name(stmt.src)}{loc}"]
    if isinstance(stmt, Store):
        mask = "" if stmt.mask is None else f" mask {name(stmt.mask)}"
        return [f"{indent}store {stmt.tensor.name}[{exprs_text(stmt.offsets)}], {name(stmt.tile)}{mask}{loc}"]
    if isinstance(stmt, ScalarLoad):
        return [f"{indent}scalar {stmt.var} = {stmt.tensor.name}[{exprs_text(stmt.indices)}]{loc}"]
    if isinstance(stmt, For):
        head = f"{indent}for {stmt.var} in range({exprs_text((stmt.start, stmt.stop, stmt.step))}) {{{loc}"
        return [head, *body_lines(stmt.body, name, indent + "  ", with_locs), indent + "}"]
    if isinstance(stmt, If):
        then_lines = body_lines(stmt.then_body, name, indent + "  ", with_locs)
        lines = [f"{indent}if {cond_text(stmt.cond)} {{{loc}", *then_lines]
        if stmt.else_body:
            lines += [indent + "} else {", *body_lines(stmt.else_body, name, indent + "  ", with_locs)]
        return [*lines, indent + "}"]
    raise NotImplementedError(f"printer has no rule for {type(stmt).__name__}")


def body_lines(body: tuple[Stmt, ...], name: Namer, indent: str, with_locs: bool) -> list[str]:
    return [line for stmt in body for line in stmt_lines(stmt, name, indent, with_locs)]


def print_stmt(stmt: Stmt, name: Namer | None = None) -> str:
    """One statement (its first line for loops and branches), for diagnostics. Pass the `Namer` that named
    the whole program to name its tiles as `print_program` does."""
    return stmt_lines(stmt, name or Namer(), "", False)[0]


def print_program(program: Program, with_locs: bool = False) -> str:
    params = ",\n    ".join(param_text(p) for p in program.params)
    header = f"kernel {program.name}(\n    {params}\n) grid({exprs_text(program.grid)})"
    if program.constants:
        header += " constants(" + ", ".join(f"{k}={constant_text(v)}" for k, v in program.constants) + ")"
    lines = [header + " {", *body_lines(program.body, Namer(), "  ", with_locs), "}"]
    return "\n".join(lines) + "\n"

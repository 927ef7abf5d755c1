"""Statements: the control structure of a kernel body.

`loc` (the user's source line, "file:line") is carried for diagnostics and excluded from equality.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from lowbit.ir.instructions import Inst
from lowbit.ir.types import Expr
from lowbit.ir.values import TensorParam, Tile


@dataclass(frozen=True)
class Stmt:
    @property
    def location(self) -> str:
        """The user's source line ("file:line"), or "" when unknown."""
        return str(getattr(self, "loc", ""))


@dataclass(frozen=True)
class Let(Stmt):
    """`tile = inst`: defines a new tile."""

    tile: Tile
    inst: Inst
    loc: str = field(default="", compare=False)


@dataclass(frozen=True)
class Assign(Stmt):
    """`dst <- src`: overwrites an existing tile (how a loop carries an accumulator)."""

    dst: Tile
    src: Tile
    loc: str = field(default="", compare=False)


@dataclass(frozen=True)
class Store(Stmt):
    """tensor[offsets + i...] = tile[i...] where inside the tensor (and the mask, if any)."""

    tensor: TensorParam
    offsets: tuple[Expr, ...]
    tile: Tile
    mask: Tile | None = None
    loc: str = field(default="", compare=False)


@dataclass(frozen=True)
class ScalarLoad(Stmt):
    """`scalar var = tensor[indices]`: reads one element of an integer tensor into a block-uniform scalar
    (0 where the indices fall outside the tensor). `var` may appear in the offsets, loop bounds, branch
    conditions and fill values of the statements after it in the same body (and in nested bodies): this is
    how a kernel follows a block table, a sequence length or a ragged offset."""

    var: sympy.Symbol
    tensor: TensorParam
    indices: tuple[Expr, ...]
    loc: str = field(default="", compare=False)


@dataclass(frozen=True)
class For(Stmt):
    """for var in range(start, stop, step): body."""

    var: sympy.Symbol
    start: Expr
    stop: Expr
    step: Expr
    body: tuple[Stmt, ...]
    loc: str = field(default="", compare=False)


@dataclass(frozen=True)
class If(Stmt):
    """A uniform (per-block) branch on a scalar condition."""

    cond: sympy.Basic
    then_body: tuple[Stmt, ...]
    else_body: tuple[Stmt, ...] = ()
    loc: str = field(default="", compare=False)


STATEMENTS: tuple[type[Stmt], ...] = (Let, Assign, Store, ScalarLoad, For, If)


def child_bodies(stmt: Stmt) -> tuple[tuple[Stmt, ...], ...]:
    if isinstance(stmt, For):
        return (stmt.body,)
    if isinstance(stmt, If):
        return (stmt.then_body, stmt.else_body)
    return ()


def walk(body: tuple[Stmt, ...]):
    """Every statement in program order, depth first."""
    for stmt in body:
        yield stmt
        for child in child_bodies(stmt):
            yield from walk(child)


def tiles_read(stmt: Stmt) -> tuple[Tile, ...]:
    """Tiles a single statement reads (not counting nested bodies)."""
    if isinstance(stmt, Let):
        return stmt.inst.operands
    if isinstance(stmt, Assign):
        return (stmt.src,)
    if isinstance(stmt, Store):
        return (stmt.tile,) if stmt.mask is None else (stmt.tile, stmt.mask)
    return ()

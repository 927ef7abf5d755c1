"""Simplify every scalar expression (offsets, loop bounds, grid, branch conditions) with sympy.

Constant branches disappear: `if true {A} else {B}` becomes A. Loops that run zero times are removed.
"""

from __future__ import annotations

import sympy

from lowbit.ir.program import Program
from lowbit.ir.rewrite import map_scalars, rewrite_body
from lowbit.ir.statements import For, If, Stmt


def _simp(e):
    if not isinstance(e, sympy.Basic):
        return e
    s = sympy.simplify(e) if not e.is_Atom else e
    # keep the original object when sympy finds nothing simpler (so an unchanged pass returns `program`)
    return e if s == e or sympy.count_ops(s) >= sympy.count_ops(e) else s


def _simp_all(es: tuple) -> tuple:
    new = tuple(_simp(e) for e in es)
    return es if all(a is b for a, b in zip(new, es)) else new


def _rule(stmt: Stmt) -> Stmt | tuple[Stmt, ...] | None:
    new = map_scalars(stmt, _simp)
    s = stmt if new is None else new
    if isinstance(s, If):
        if s.cond is sympy.true or s.cond is True:
            return s.then_body
        if s.cond is sympy.false or s.cond is False:
            return s.else_body
    if isinstance(s, For):
        trip = sympy.sympify(s.stop - s.start)
        if trip.is_number and trip <= 0:
            return ()
    return new


def simplify_exprs(program: Program) -> Program:
    body = rewrite_body(program.body, _rule)
    grid = _simp_all(program.grid)
    if body is program.body and grid is program.grid:
        return program
    return program.replace(body=body, grid=grid)

"""Simplify every scalar expression (offsets, loop bounds, grid, branch conditions) with sympy.

Constant branches disappear: `if true {A} else {B}` becomes A. Loops that run zero times are removed.
"""

from __future__ import annotations

import dataclasses

import sympy

from lowbit.ir.instructions import Full, Load
from lowbit.ir.program import Program
from lowbit.ir.rewrite import rewrite_body
from lowbit.ir.statements import For, If, Let, ScalarLoad, Stmt, Store


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
    if isinstance(stmt, Let) and isinstance(stmt.inst, Load):
        offsets = _simp_all(stmt.inst.offsets)
        if offsets is not stmt.inst.offsets:
            return dataclasses.replace(stmt, inst=dataclasses.replace(stmt.inst, offsets=offsets))
    if isinstance(stmt, Let) and isinstance(stmt.inst, Full):
        value = _simp(stmt.inst.value)
        if value is not stmt.inst.value:
            return dataclasses.replace(stmt, inst=dataclasses.replace(stmt.inst, value=value))
    if isinstance(stmt, Store):
        offsets = _simp_all(stmt.offsets)
        if offsets is not stmt.offsets:
            return dataclasses.replace(stmt, offsets=offsets)
    if isinstance(stmt, ScalarLoad):
        indices = _simp_all(stmt.indices)
        if indices is not stmt.indices:
            return dataclasses.replace(stmt, indices=indices)
    if isinstance(stmt, If):
        cond = _simp(stmt.cond)
        if cond is sympy.true or cond is True:
            return stmt.then_body
        if cond is sympy.false or cond is False:
            return stmt.else_body
        if cond is not stmt.cond:
            return dataclasses.replace(stmt, cond=cond)
    if isinstance(stmt, For):
        start, stop, step = _simp_all((stmt.start, stmt.stop, stmt.step))
        trip = sympy.sympify(stop - start)
        if trip.is_number and trip <= 0:
            return ()
        if (start, stop, step) != (stmt.start, stmt.stop, stmt.step) or start is not stmt.start:
            return dataclasses.replace(stmt, start=start, stop=stop, step=step)
    return None


def simplify_exprs(program: Program) -> Program:
    body = rewrite_body(program.body, _rule)
    grid = _simp_all(program.grid)
    if body is program.body and grid is program.grid:
        return program
    return program.replace(body=body, grid=grid)

"""Fuse `t = dot a, b; s = add acc, t; acc <- s` into `s = dot a, b, acc; acc <- s`.

The fused form is what the backends emit as one MMA with an accumulator (tl.dot(a, b, acc)). Applies when
`t` is read only by the add and the accumulator has the dot's result type.
"""

from __future__ import annotations

import dataclasses

from lowbit.ir.instructions import Binary, Dot
from lowbit.ir.program import Program
from lowbit.ir.rewrite import rewrite_body
from lowbit.ir.statements import Let, Stmt, tiles_read, walk


def fuse_dot_accumulate(program: Program) -> Program:
    uses: dict[int, int] = {}
    for stmt in walk(program.body):
        for t in tiles_read(stmt):
            uses[id(t)] = uses.get(id(t), 0) + 1
    dots = {id(s.tile): s.inst for s in walk(program.body) if isinstance(s, Let) and isinstance(s.inst, Dot)}
    fused: set[int] = set()

    def fuse(stmt: Stmt) -> Stmt | tuple[Stmt, ...] | None:
        if not (isinstance(stmt, Let) and isinstance(stmt.inst, Binary) and stmt.inst.op == "add"):
            return None
        a, b = stmt.inst.a, stmt.inst.b
        for acc, prod in ((a, b), (b, a)):
            d = dots.get(id(prod))
            if d is None or uses.get(id(prod)) != 1 or d.c is not None or acc.type != prod.type:
                continue
            fused.add(id(prod))
            return dataclasses.replace(stmt, inst=Dot(d.a, d.b, acc, d.acc_dtype))
        return None

    body = rewrite_body(program.body, fuse)
    if body is program.body:
        return program
    body = rewrite_body(body, lambda s: () if isinstance(s, Let) and id(s.tile) in fused else None)
    return program.replace(body=body)

"""`make_persistent`: the persistent form of a kernel, with its program count a runtime parameter.

A kernel over a grid (g0, g1, g2) of `tiles = g0·g1·g2` blocks becomes one over `min(BUDGET, tiles)`
programs, each looping over the tiles `t = pid0, pid0 + P, pid0 + 2P, ... < tiles` (P = the program count)
and running the original body for the block indices that tile stands for:

    pid0 = t mod g0,  pid1 = (t // g0) mod g1,  pid2 = t // (g0·g1)        (axis 0 fastest, launch order)

`BUDGET` (an int32 scalar parameter, >= 1) is the resource share: the number of SMs (GPU) or workers (CPU)
the kernel may occupy. Every tile still runs the same statements on the same data, so the result is the
non-persistent kernel's, bit for bit, for every budget. The IR needs nothing new: the loop is a `For` with
runtime bounds and step, the grid a runtime expression.

Not in the pass pipeline: a caller asks for it (`lowbit.lang.persistent(kernel)`).
"""

from __future__ import annotations

from typing import Any

import sympy

from lowbit.dtypes import int32
from lowbit.ir.program import Program
from lowbit.ir.rewrite import map_scalars, rewrite_body
from lowbit.ir.statements import For, ScalarLoad, Stmt, walk
from lowbit.ir.values import ScalarParam, index_symbol

BUDGET = "BUDGET"


def _subst(e: Any, mapping: dict[sympy.Symbol, sympy.Expr]) -> Any:
    return e.xreplace(mapping) if isinstance(e, sympy.Basic) else e


def _substitute(body: tuple[Stmt, ...], mapping: dict[sympy.Symbol, sympy.Expr]) -> tuple[Stmt, ...]:
    """`body` with the symbols of `mapping` replaced in every scalar expression (tiles keep their identity)."""
    return rewrite_body(body, lambda s: map_scalars(s, lambda e: _subst(e, mapping)))


def _fresh(program: Program, hint: str) -> sympy.Symbol:
    taken = {p.name for p in program.params} | {str(s) for s in program.program_ids}
    taken |= {str(s.var) for s in walk(program.body) if isinstance(s, (For, ScalarLoad))}
    name, n = hint, 1
    while name in taken:
        name, n = f"{hint}{n}", n + 1
    return index_symbol(name)


def num_tiles(program: Program) -> sympy.Expr:
    """The number of blocks of `program`'s grid (for a persistent program: of the grid it was made from)."""
    return sympy.Mul(*program.grid)


def make_persistent(program: Program, budget: str = BUDGET) -> Program:
    """The persistent form of `program` (see the module docstring): one more int32 parameter `budget`,
    grid `(min(budget, tiles),)`, the body inside a loop over tiles. ValueError if `program` already has a
    parameter named `budget` (e.g. it is persistent already)."""
    if any(p.name == budget for p in program.params):
        raise ValueError(
            f"kernel {program.name} already has a parameter {budget!r}; it is persistent already or uses the "
            f"name: pass make_persistent(program, budget=<another name>)"
        )
    param = ScalarParam(budget, int32)
    tiles = num_tiles(program)
    programs = sympy.Min(param.symbol, tiles)  # the program count P
    t = _fresh(program, "tile")
    pids, mapping = program.program_ids, {}
    stride: sympy.Expr = sympy.Integer(1)
    for i, (pid, g) in enumerate(zip(pids, program.grid)):
        q = t if i == 0 else sympy.floor(t / stride)
        mapping[pid] = q if i == len(pids) - 1 else sympy.Mod(q, g)
        stride = stride * g
    body = _substitute(program.body, mapping)
    loop = For(t, pids[0], tiles, programs, body, program.loc)
    return program.replace(
        name=f"{program.name}_persistent",
        params=(*program.params, param),
        grid=(programs,),
        body=(loop,),
    )


__all__ = ["BUDGET", "make_persistent", "num_tiles"]

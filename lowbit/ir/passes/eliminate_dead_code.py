"""Remove `Let`s whose tile nobody reads (stores and assigns are the roots), repeating until stable."""

from __future__ import annotations

from lowbit.ir.program import Program
from lowbit.ir.rewrite import rewrite_body
from lowbit.ir.statements import Assign, For, If, Let, Stmt, tiles_read, walk


def _live_tiles(body: tuple[Stmt, ...]) -> set[int]:
    live: set[int] = set()
    for stmt in walk(body):
        live.update(id(t) for t in tiles_read(stmt))
    return live


def _assigned_but_unread(body: tuple[Stmt, ...], live: set[int]) -> set[int]:
    """Tiles only ever written by Assign and never read: their Assigns are dead too."""
    return {id(s.dst) for s in walk(body) if isinstance(s, Assign) and id(s.dst) not in live}


def eliminate_dead_code(program: Program) -> Program:
    body = program.body
    while True:
        live = _live_tiles(body)
        dead_assign_targets = _assigned_but_unread(body, live)
        live_reads = live

        def rule(stmt: Stmt, live_reads=live_reads, dead=dead_assign_targets) -> Stmt | tuple[Stmt, ...] | None:
            if isinstance(stmt, Let) and id(stmt.tile) not in live_reads:
                return ()
            if isinstance(stmt, Assign) and id(stmt.dst) in dead:
                return ()
            if isinstance(stmt, For) and not stmt.body:
                return ()
            if isinstance(stmt, If) and not stmt.then_body and not stmt.else_body:
                return ()
            return None

        new = rewrite_body(body, rule)
        if new is body:
            break
        body = new
    return program if body is program.body else program.replace(body=body)

"""Helpers for passes: rebuild a body bottom-up, returning the very same objects when nothing changed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from lowbit.ir.statements import For, If, Stmt

StmtRule = Callable[[Stmt], "Stmt | tuple[Stmt, ...] | None"]


def rewrite_body(body: tuple[Stmt, ...], rule: StmtRule) -> tuple[Stmt, ...]:
    """Apply `rule` to every statement (children first). The rule returns None (keep), a statement, or a
    tuple of statements (splice; `()` deletes). Unchanged bodies are returned as the same tuple."""
    out: list[Stmt] = []
    changed = False
    for stmt in body:
        new = _rewrite_children(stmt, rule)
        replaced = rule(new)
        if replaced is not None:
            new_stmts = replaced if isinstance(replaced, tuple) else (replaced,)
        else:
            new_stmts = (new,)
        if len(new_stmts) != 1 or new_stmts[0] is not stmt:
            changed = True
        out.extend(new_stmts)
    return tuple(out) if changed else body


def _rewrite_children(stmt: Stmt, rule: StmtRule) -> Stmt:
    if isinstance(stmt, For):
        body = rewrite_body(stmt.body, rule)
        return stmt if body is stmt.body else dataclasses.replace(stmt, body=body)
    if isinstance(stmt, If):
        then_body = rewrite_body(stmt.then_body, rule)
        else_body = rewrite_body(stmt.else_body, rule)
        if then_body is stmt.then_body and else_body is stmt.else_body:
            return stmt
        return dataclasses.replace(stmt, then_body=then_body, else_body=else_body)
    return stmt

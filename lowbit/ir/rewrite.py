"""Helpers for passes: rebuild a body bottom-up, returning the very same objects when nothing changed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from lowbit.ir import instructions as I
from lowbit.ir.statements import For, If, Let, ScalarLoad, Stmt, Store

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


def map_scalars(stmt: Stmt, fn: Callable[[Any], Any]) -> Stmt | None:
    """`stmt` with `fn` applied to each of its own scalar expressions (Load offsets and Full's value in a
    Let, Store offsets, ScalarLoad indices, For bounds, If condition; not its children), or None when `fn`
    returned every one of them unchanged (the same object). The one list of scalar fields the passes
    that rewrite expressions share (simplify_exprs, make_persistent)."""

    def each(es: tuple[Any, ...]) -> tuple[Any, ...]:
        new = tuple(fn(e) for e in es)
        return es if all(a is b for a, b in zip(new, es)) else new

    if isinstance(stmt, Let) and isinstance(stmt.inst, I.Load):
        offsets = each(stmt.inst.offsets)
        return None if offsets is stmt.inst.offsets else dataclasses.replace(
            stmt, inst=dataclasses.replace(stmt.inst, offsets=offsets)
        )  # fmt: skip
    if isinstance(stmt, Let) and isinstance(stmt.inst, I.Full):
        value = fn(stmt.inst.value)
        return None if value is stmt.inst.value else dataclasses.replace(
            stmt, inst=dataclasses.replace(stmt.inst, value=value)
        )  # fmt: skip
    if isinstance(stmt, Store):
        offsets = each(stmt.offsets)
        return None if offsets is stmt.offsets else dataclasses.replace(stmt, offsets=offsets)
    if isinstance(stmt, ScalarLoad):
        indices = each(stmt.indices)
        return None if indices is stmt.indices else dataclasses.replace(stmt, indices=indices)
    if isinstance(stmt, For):
        bounds = (stmt.start, stmt.stop, stmt.step)
        new = each(bounds)
        return None if new is bounds else dataclasses.replace(stmt, start=new[0], stop=new[1], step=new[2])
    if isinstance(stmt, If):
        cond = fn(stmt.cond)
        return None if cond is stmt.cond else dataclasses.replace(stmt, cond=cond)
    return None

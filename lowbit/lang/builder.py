"""The trace context: where the DSL's builtins append statements, and how errors find the user's line."""

from __future__ import annotations

import dis
import functools
import keyword
import linecache
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import CodeType, FrameType

import sympy

from lowbit.ir.statements import Stmt
from lowbit.ir.values import index_symbol

_LANG_DIR = os.path.dirname(os.path.abspath(__file__))
_IR_DIR = os.path.dirname(_LANG_DIR) + os.sep + "ir"


class DSLError(Exception):
    """A kernel that cannot be built, reported at the user's source line."""

    def __init__(self, message: str, loc: str = ""):
        self.loc = loc or user_location()
        text = message
        if self.loc:
            file, _, line = self.loc.rpartition(":")
            src = linecache.getline(file, int(line)).strip() if line.isdigit() else ""
            text = f"{self.loc}: {message}" + (f"\n    {src}" if src else "")
        super().__init__(text)


def user_location() -> str:
    """`file:line` of the innermost frame outside lowbit.lang and lowbit.ir (the kernel author's line)."""
    frame = sys._getframe(1)
    while frame is not None:
        fname = os.path.abspath(frame.f_code.co_filename)
        if not (fname.startswith(_LANG_DIR) or fname.startswith(_IR_DIR)) and "contextlib" not in fname:
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return ""


# names a loop variable does not take from the `for` statement: the IR text form's expression words
# (lowbit.ir.parser), block indices, and the module and builtin names generated Triton / TVM code uses
_RESERVED = frozenset(
    {"cdiv", "min", "max", "math", "inf", "nan", "true", "false", "not", "_"}
    | {"tl", "triton", "T", "tvm", "range", "float", "int", "INF", "NAN"}
)


def for_target(frame: FrameType) -> str | None:
    """The variable of the `for` statement that `frame` is starting (`k0` in `for k0 in T.range(...)`), read
    off its bytecode: the store right after the FOR_ITER it is executing. None for any other target."""
    name = _stores_after_for_iter(frame.f_code).get(frame.f_lasti)
    if name is None or not name.isidentifier() or keyword.iskeyword(name) or name in _RESERVED:
        return None
    if name.startswith("pid") and name[3:].isdigit():
        return None
    return name


@functools.lru_cache(maxsize=256)
def _stores_after_for_iter(code: CodeType) -> dict[int, str]:
    out, prev = {}, None
    for ins in dis.get_instructions(code):
        if prev is not None and prev.opname == "FOR_ITER" and ins.opname.startswith("STORE_"):
            out[prev.offset] = str(ins.argval)
        prev = ins
    return out


@dataclass
class Builder:
    """Collects statements into nested blocks while a kernel function runs."""

    blocks: list[list[Stmt]] = field(default_factory=lambda: [[]])
    grid: tuple[sympy.Expr, ...] | None = None
    names: set[str] = field(default_factory=set)
    last_stmt: Stmt | None = None

    def emit(self, stmt: Stmt) -> None:
        self.blocks[-1].append(stmt)
        self.last_stmt = stmt

    @contextmanager
    def block(self) -> Iterator[list[Stmt]]:
        self.blocks.append([])
        try:
            yield self.blocks[-1]
        finally:
            self.blocks.pop()

    def fresh_symbol(self, hint: str) -> sympy.Symbol:
        name, n = hint, 1
        while name in self.names:
            name, n = f"{hint}{n}", n + 1
        self.names.add(name)
        return index_symbol(name)


_state = threading.local()


def current() -> Builder:
    b = getattr(_state, "builder", None)
    if b is None:
        raise DSLError("lowbit.lang builtins can only be called while a @kernel function is being traced")
    return b


@contextmanager
def tracing(builder: Builder) -> Iterator[Builder]:
    prev = getattr(_state, "builder", None)
    _state.builder = builder
    try:
        yield builder
    finally:
        _state.builder = prev

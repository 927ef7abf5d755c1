"""Evaluate sympy index expressions on Python ints or NumPy integer arrays, exactly.

Expressions are printed with `to_source` (the same printer the code generators use) and compiled once;
floor division and modulo keep integer semantics (sympy's floor(a/b) would go through floats).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import sympy

from lowbit.ir.layout.symbolic import SOURCE_NAMESPACE, to_source


def _cdiv(a: Any, b: Any) -> Any:
    return -(-a // b)


def _min(a: Any, b: Any, *rest: Any) -> Any:
    out = np.minimum(a, b)
    for r in rest:
        out = np.minimum(out, r)
    return out if isinstance(out, np.ndarray) else type(a)(out) if isinstance(a, int) else out


def _max(a: Any, b: Any, *rest: Any) -> Any:
    out = np.maximum(a, b)
    for r in rest:
        out = np.maximum(out, r)
    return out if isinstance(out, np.ndarray) else type(a)(out) if isinstance(a, int) else out


# the printer's namespace, with min/max/cdiv that also work elementwise on integer arrays
_NAMESPACE = {**SOURCE_NAMESPACE, "cdiv": _cdiv, "min": _min, "max": _max, "__builtins__": {}}


@functools.lru_cache(maxsize=4096)
def compile_expr(expr: sympy.Basic) -> tuple[Callable[..., Any], tuple[str, ...]]:
    names = tuple(sorted(str(s) for s in expr.free_symbols))
    src = to_source(expr)
    code = compile(f"lambda {', '.join(names)}: ({src})", f"<index {src}>", "eval")
    return eval(code, dict(_NAMESPACE)), names


def evaluate(expr: Any, env: dict[str, Any]) -> Any:
    """Value of `expr` with symbols bound by name in `env` (ints or integer arrays)."""
    if isinstance(expr, (int, float, bool, np.integer, np.floating)):
        return expr
    if isinstance(expr, sympy.Integer):
        return int(expr)
    if isinstance(expr, sympy.Float):
        return float(expr)
    if expr is sympy.true or expr is sympy.false:
        return bool(expr)
    if isinstance(expr, sympy.Basic) and expr.is_number:
        return float(expr) if not expr.is_integer else int(expr)
    fn, names = compile_expr(expr)
    try:
        return fn(*(env[n] for n in names))
    except KeyError as e:
        raise ValueError(f"expression {to_source(expr)} needs {e.args[0]}, which has no value here") from None

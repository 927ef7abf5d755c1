"""Symbolic index arithmetic: integer symbols, `cdiv`, bitwise xor, and a Python-source printer.

Scalar index arithmetic in lowbit is sympy over integer symbols (docs/CONTRACTS.md). Two kinds of symbol:

* index symbols (`index_symbols("i k n")`): nonnegative integers, the coordinates a layout is evaluated at;
* size symbols (`size_symbols("M K N")`): positive integers, the extents and strides of a tensor.

`to_source(expr)` prints an expression the way a person writes it in Python, so generated kernels read
like hand-written ones. The conventions, chosen once:

* `floor(a/b)` prints `a // b`, `Mod(a, b)` prints `a % b`, `ceiling(a/b)` prints `cdiv(a, b)`,
  `Min`/`Max` print `min(...)`/`max(...)`, `xor(a, b)` prints `a ^ b`.
* Spacing: `*` is tight, every other binary operator (`+ - // % ^`) has one space on each side.
* A product reads as *coordinate × stride*: factors holding an index symbol first, then size symbols,
  then the integer coefficient: `i*K`, `(k // 8)*N`, `(k % 8)*4`.
* A sum puts its most significant term first: more size-symbol factors first, then the larger integer
  coefficient, then alphabetical; constants last: `i*K + k`, `(k // 8)*N + n`; a sum never starts
  with a minus when it has a positive term: `3 - k`.
* Parentheses only where a `//`, `%`, `^` or `+` sits inside a product, a sum sits inside `//`/`%`, or a
  divisor is not a single name or number: `(k // 8)*N`, `(k + 3) // 8`, `k // (8*N)`.

Every printed string is valid Python with the same value as the expression for nonnegative integers
(Python's `//` and `%` floor, like sympy's `floor` and `Mod`); the tests check this by `eval`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import sympy
from sympy.printing.str import StrPrinter

__all__ = [
    "cdiv",
    "index_symbols",
    "is_symbolic",
    "mod",
    "simplify_index",
    "size_symbols",
    "to_source",
    "xor",
]


def _symbols(names: str | Iterable[str], **assumptions: bool) -> Any:
    if isinstance(names, str):
        return sympy.symbols(names, integer=True, **assumptions)
    return tuple(sympy.Symbol(name, integer=True, **assumptions) for name in names)


def index_symbols(names: str | Iterable[str]) -> Any:
    """Nonnegative integer symbols for coordinates: `i, k = index_symbols("i k")`.

    `names` is a space- or comma-separated string (one name gives one Symbol, several give a tuple,
    as `sympy.symbols`) or an iterable of names (always a tuple).
    """
    return _symbols(names, nonnegative=True)


def size_symbols(names: str | Iterable[str]) -> Any:
    """Positive integer symbols for extents and strides: `M, K = size_symbols("M K")`."""
    return _symbols(names, positive=True)


def is_symbolic(x: object) -> bool:
    """True for a sympy expression that is not a plain integer."""
    return isinstance(x, sympy.Basic) and not x.is_Integer


def cdiv(a: Any, b: Any) -> Any:
    """Ceiling division: an int for ints, `ceiling(a/b)` (printed `cdiv(a, b)`) for sympy values."""
    if is_symbolic(a) or is_symbolic(b):
        return sympy.ceiling(sympy.sympify(a) / b)
    return -(-int(a) // int(b))


def mod(a: Any, b: Any) -> Any:
    """`a % b` for ints, numpy arrays and sympy expressions.

    A sympy dividend that already holds a `Mod` gets an unevaluated outer `Mod`: sympy 1.14's automatic
    `Mod` evaluation distributes over products of `Mod`s wrongly, e.g. `Mod(3*Mod(k, 32), 32)` becomes
    `3*Mod(k, 32)` (sympy issues #24215, #28744, #29757). Substituting numbers re-evaluates it correctly.
    """
    if is_symbolic(a) or is_symbolic(b):
        a = sympy.sympify(a)
        return sympy.Mod(a, b, evaluate=not a.has(sympy.Mod))
    return a % b


class xor(sympy.Function):  # lowercase: sympy prints a Function by its class name
    """Bitwise xor of two nonnegative integers; folds when both are numbers, printed `a ^ b`."""

    is_integer = True

    @classmethod
    def eval(cls, a: sympy.Expr, b: sympy.Expr) -> sympy.Expr | None:
        if a.is_Integer and b.is_Integer:
            return sympy.Integer(int(a) ^ int(b))
        if a == 0:
            return b
        if b == 0:
            return a
        return None

    def _eval_is_nonnegative(self) -> bool | None:
        if all(arg.is_nonnegative for arg in self.args):
            return True
        return None


def simplify_index(expr: Any) -> Any:
    """Light normalisation of an index expression: ints stay ints, sympy integers become ints.

    Sympy's automatic canonicalisation already merges like terms; we deliberately avoid
    `sympy.simplify`, which is slow and may rewrite `k // 8` into forms the printer cannot read.
    """
    if isinstance(expr, sympy.Basic) and expr.is_Integer:
        return int(expr)
    return expr


# ---------------------------------------------------------------------------------------------------
# printer


def _factor_rank(factor: sympy.Expr) -> int:
    # 0: depends on an index (non-size) symbol, 1: only size symbols, 2: a number
    if factor.is_number:
        return 2
    return 1 if all(s.is_positive for s in factor.free_symbols) else 0


def _size_degree(term: sympy.Expr) -> int:
    # number of factors of a product that depend on size symbols only, counting powers
    degree = 0
    for factor in sympy.Mul.make_args(term):
        base, exp = factor.as_base_exp()
        if _factor_rank(base) == 1:
            degree += int(exp) if exp.is_Integer else 1
    return degree


def _term_key(term: sympy.Expr) -> tuple[Any, ...]:
    coeff, _ = term.as_coeff_Mul()
    return (term.is_number, -_size_degree(term), -abs(coeff), str(term))


class SourcePrinter(StrPrinter):
    """Prints sympy index expressions as readable Python source (conventions in the module docstring)."""

    def _wrap(self, expr: sympy.Expr, when: tuple[type, ...]) -> str:
        text = self._print(expr)
        return f"({text})" if isinstance(expr, when) else text

    def _operand(self, expr: sympy.Expr) -> str:
        # left operand of // or %: a product prints bare (same precedence, left-associative)
        return self._wrap(expr, (sympy.Add, sympy.floor, sympy.Mod, xor))

    def _divisor(self, expr: sympy.Expr) -> str:
        text = self._print(expr)
        return text if expr.is_Atom else f"({text})"

    def _print_Add(self, expr: sympy.Add, order: str | None = None) -> str:
        terms = sorted(expr.args, key=_term_key)
        positive = [t for t in terms if not t.could_extract_minus_sign()]
        if positive and positive[0] is not terms[0]:  # `3 - k`, not `-k + 3`
            terms.remove(positive[0])
            terms.insert(0, positive[0])
        out = self._print(terms[0])
        for term in terms[1:]:
            if term.could_extract_minus_sign():
                out += " - " + self._print(-term)
            else:
                out += " + " + self._print(term)
        return out

    def _print_Mul(self, expr: sympy.Mul) -> str:
        if expr.could_extract_minus_sign():
            # unary minus binds tighter than // % ^ + in Python: -(M // 2) must not print as -M // 2
            return f"-{self._wrap(-expr, (sympy.Add, sympy.floor, sympy.Mod, xor))}"
        num, den = sympy.fraction(expr)
        if den != 1:
            return f"{self._wrap(num, (sympy.Add, xor))}/{self._divisor(den)}"
        coeff, rest = expr.as_coeff_Mul()
        factors = sorted(sympy.Mul.make_args(rest), key=lambda f: (_factor_rank(f), str(f)))
        parts = [self._wrap(f, (sympy.Add, sympy.floor, sympy.Mod, xor)) for f in factors]
        if coeff != 1:
            parts.append(self._print(coeff))
        return "*".join(parts)

    @staticmethod
    def _fraction(arg: sympy.Expr) -> tuple[sympy.Expr, sympy.Expr]:
        # together() may factor the numerator ((pid0 + 1)*M); print it expanded when that reads back
        # as the very same argument, so parse(print(e)) == e
        num, den = sympy.fraction(sympy.together(arg))
        expanded = sympy.expand(num)
        return (expanded, den) if expanded / den == arg else (num, den)

    def _print_floor(self, expr: sympy.floor) -> str:
        num, den = self._fraction(expr.args[0])
        if den == 1:
            return f"math.floor({self._print(num)})"
        return f"{self._operand(num)} // {self._divisor(den)}"

    def _print_ceiling(self, expr: sympy.ceiling) -> str:
        num, den = self._fraction(expr.args[0])
        if den == 1:
            return f"math.ceil({self._print(num)})"
        return f"cdiv({self._print(num)}, {self._print(den)})"

    def _print_Mod(self, expr: sympy.Mod) -> str:
        a, b = expr.args
        return f"{self._operand(a)} % {self._divisor(b)}"

    def _print_xor(self, expr: xor) -> str:
        a, b = expr.args
        return f"{self._wrap(a, (sympy.Add, xor))} ^ {self._wrap(b, (sympy.Add, xor))}"

    def _print_Pow(self, expr: sympy.Pow, rational: bool = False) -> str:
        base, exp = expr.args
        if exp == -1:
            return f"1/{self._divisor(base)}"
        return f"{self._divisor(base)}**{self._divisor(exp)}"

    def _print_Min(self, expr: sympy.Min) -> str:
        return "min(" + ", ".join(self._print(a) for a in expr.args) + ")"

    def _print_Max(self, expr: sympy.Max) -> str:
        return "max(" + ", ".join(self._print(a) for a in expr.args) + ")"


_PRINTER = SourcePrinter()


def to_source(expr: Any) -> str:
    """Python source for an index expression: `i*K + k`, `(k // 8)*N + n`, `(k % 8)*4`, `cdiv(K, 16)`.

    Accepts ints, sympy expressions, and (nested) tuples of them (printed as Python tuples).
    """
    if isinstance(expr, tuple):
        inner = ", ".join(to_source(e) for e in expr)
        return f"({inner},)" if len(expr) == 1 else f"({inner})"
    if isinstance(expr, int):
        return str(expr)
    return _PRINTER.doprint(sympy.sympify(expr))


# the names a printed expression may call, for `eval(to_source(e), SOURCE_NAMESPACE | values)`
SOURCE_NAMESPACE: dict[str, Any] = {"cdiv": cdiv, "min": min, "max": max, "math": math}

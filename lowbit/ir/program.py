"""A kernel: parameters, a grid of blocks, and a body of statements run by every block."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, fields
from typing import Any

import sympy

from lowbit.ir.instructions import Inst
from lowbit.ir.statements import Stmt, Store, walk
from lowbit.ir.types import Expr
from lowbit.ir.values import Param, ScalarParam, TensorParam, Tile, program_id_symbol


@dataclass(frozen=True, eq=False)
class Program:
    """One kernel. Blocks are indexed by `pid0, pid1, ...` over `grid`; each runs `body`.

    `constants` records the compile-time values the kernel was specialised with (documentation: they are
    already folded into the body). Equality is alpha-equivalence: programs that differ only in the identity
    or names of their tiles are equal, so `parse(print(p)) == p`. Constants compare by their text form
    (`constant_text`: a `T.packed(...)` spec and the string it prints as are the same constant), and NaN
    constants in the body are equal to each other (the text form has one `nan`).
    """

    name: str
    params: tuple[Param, ...]
    grid: tuple[Expr, ...]
    body: tuple[Stmt, ...]
    constants: tuple[tuple[str, Any], ...] = ()
    loc: str = field(default="", compare=False)

    @property
    def tensor_params(self) -> tuple[TensorParam, ...]:
        return tuple(p for p in self.params if isinstance(p, TensorParam))

    @property
    def scalar_params(self) -> tuple[ScalarParam, ...]:
        return tuple(p for p in self.params if isinstance(p, ScalarParam))

    @property
    def program_ids(self) -> tuple[sympy.Symbol, ...]:
        return tuple(program_id_symbol(i) for i in range(len(self.grid)))

    @functools.cached_property
    def stored(self) -> frozenset[str]:
        """The tensors the body stores to, at any depth: the kernel's outputs (a backend writes back only these
        of the arguments it converted)."""
        return frozenset(s.tensor.name for s in walk(self.body) if isinstance(s, Store))

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"kernel {self.name} has no parameter {name!r}; it has {[p.name for p in self.params]}")

    def replace(self, **changes: Any) -> Program:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Program(**values)

    @functools.cached_property
    def _key(self) -> Any:
        return structural_key(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Program) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __str__(self) -> str:
        from lowbit.ir.printer import print_program

        return print_program(self)


def constant_text(v: Any) -> str:
    """A compile-time constant as the text form writes it: numbers and booleans as literals, a dtype by
    name, anything else (a string, a layout spec) as a quoted string of its `str`."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if hasattr(v, "bits") and hasattr(v, "name"):  # a DataType
        return str(v.name)
    return repr(str(v))


def structural_key(node: Any) -> Any:
    """A hashable value equal for alpha-equivalent IR: tiles become their definition order, constants
    their text, NaNs one value."""
    numbering: dict[int, int] = {}

    def key(x: Any) -> Any:
        if isinstance(x, Tile):
            n = numbering.setdefault(id(x), len(numbering))
            return ("%", n, x.type)
        if isinstance(x, float) and math.isnan(x):
            return ("nan",)
        if isinstance(x, Program):
            constants = tuple((k, constant_text(v)) for k, v in x.constants)
            return ("Program", x.name, key(x.params), x.grid, key(x.body), constants)
        if isinstance(x, (Stmt, Inst)):
            return (type(x).__name__, *(key(getattr(x, f.name)) for f in fields(x) if f.compare))
        if isinstance(x, tuple):
            return tuple(key(v) for v in x)
        return x

    return key(node)

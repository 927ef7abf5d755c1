"""Types of IR values: tiles (block-local values) and global tensors (kernel parameters in memory)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy

from lowbit.dtypes import DataType

Expr = sympy.Expr  # scalar index arithmetic is sympy over integer symbols (docs/CONTRACTS.md)


@dataclass(frozen=True)
class TileType:
    """A block-local tile: a dtype, a static shape, and optionally a register layout (thread, local) -> index."""

    dtype: DataType
    shape: tuple[int, ...]
    layout: Any = None  # lowbit.ir.layout.RegisterLayout | None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def with_dtype(self, dtype: DataType) -> TileType:
        return TileType(dtype, self.shape, self.layout)

    def with_shape(self, shape: tuple[int, ...]) -> TileType:
        return TileType(self.dtype, tuple(shape), None)

    def __str__(self) -> str:
        return f"tile<{self.dtype.name}, [{', '.join(map(str, self.shape))}]>"


def non_integer_part(e: Any) -> Any:
    """The part of index expression `e` that makes it non-integer (a float, a true division `N/2`, a real
    symbol), or None when `e` is an integer expression. Offsets, loop bounds, grid extents and tensor
    dimensions must be integers: `//` is floor division, `/` is not."""
    if isinstance(e, int):  # bool included
        return None
    if not isinstance(e, sympy.Basic):
        return e  # a Python float (or anything else that is not an index)
    if e.is_Integer or isinstance(e, (sympy.floor, sympy.ceiling)):
        return None
    if e.is_Number or e.is_Symbol:  # a Float or a fraction; a symbol of a float parameter
        return None if e.is_integer else e
    if isinstance(e, sympy.Pow) and not (e.exp.is_Integer and e.exp >= 0):
        return e  # 1/x
    for arg in e.args:  # sums, products, Mod, Min, Max, xor of integers are integers
        if non_integer_part(arg) is not None:
            return e
    return None

"""Named things an IR program refers to: kernel parameters and tile variables.

Equality: parameters compare structurally (they are part of the kernel's signature); a `Tile` compares
by identity — two tiles of the same type are still different values (see lowbit/ir/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy

from lowbit.dtypes import DataType
from lowbit.ir.types import Expr, TileType


def size_symbol(name: str) -> sympy.Symbol:
    """A runtime size parameter (M, N, K...): a positive integer."""
    return sympy.Symbol(name, integer=True, positive=True)


def index_symbol(name: str) -> sympy.Symbol:
    """A loop variable or block index: a non-negative integer."""
    return sympy.Symbol(name, integer=True, nonnegative=True)


def scalar_symbol(name: str) -> sympy.Symbol:
    """A scalar read from memory (`ScalarLoad`): an integer of either sign."""
    return sympy.Symbol(name, integer=True)


def program_id_symbol(axis: int) -> sympy.Symbol:
    return index_symbol(f"pid{axis}")


@dataclass(frozen=True)
class ScalarParam:
    """A runtime scalar argument (sizes, strides). Integer scalars appear in expressions as `symbol`."""

    name: str
    dtype: DataType

    @property
    def symbol(self) -> sympy.Symbol:
        if self.dtype.is_integer and not self.dtype.is_signed:
            return index_symbol(self.name)
        if self.dtype.is_integer:
            return size_symbol(self.name)
        return sympy.Symbol(self.name, real=True)


@dataclass(frozen=True)
class TensorParam:
    """A global tensor argument: logical dtype and shape, and how its elements are laid out in memory.

    `layout` maps a logical coordinate to an element offset (a CuTe `Layout`) or, for sub-byte dtypes,
    to a (word, bit) position (a `PackedLayout`); None means row-major over `shape`.
    """

    name: str
    dtype: DataType
    shape: tuple[Expr, ...]
    layout: Any = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_packed(self) -> bool:
        from lowbit.ir.layout import PackedLayout

        return isinstance(self.layout, PackedLayout)


Param = ScalarParam | TensorParam


_tile_counter = iter(range(1 << 62))


@dataclass(frozen=True, eq=False)
class Tile:
    """A tile variable, defined once by a `Let` and updated in place only by `Assign` (loop-carried)."""

    type: TileType
    name: str = ""
    uid: int = field(default_factory=lambda: next(_tile_counter), repr=False)

    @property
    def dtype(self) -> DataType:
        return self.type.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    def __repr__(self) -> str:
        return f"%{self.name or self.uid}: {self.type}"

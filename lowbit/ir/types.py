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

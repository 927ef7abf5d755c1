"""Swizzles: the xor permutation that spreads shared-memory rows over banks, and swizzled layouts.

`Swizzle(bits, base, shift)` is CuTe's `Swizzle<B,M,S>` (NVIDIA/cutlass include/cute/swizzle.hpp; the
Tilus paper uses the same form): with `yyy` the B bits of x starting at bit M + max(0, S),

    y = x ^ ((x & (((1 << B) - 1) << (M + S))) >> S)        (S >= 0; a negative S shifts left)

i.e. the B bits at M + S are xor-ed into the B bits at M. With |S| >= B the two bit fields are disjoint,
so the swizzle is an involution and a bijection on every [0, 2^k) with k >= B + M + |S|.

Symbolic form: sympy has no bitwise operators on symbols, so a swizzled symbolic offset is written with
lowbit's `xor` function and the field extraction in `//` and `%`, which are equivalent for x >= 0:

    (x & mask) >> S  ==  ((x // 2**(M + S)) % 2**B) * 2**M

`to_source` prints it as `x ^ ((x // 128) % 8)*16` for `Swizzle(3, 4, 3)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .memory import Layout, LayoutError
from .symbolic import is_symbolic, simplify_index, xor

__all__ = ["ComposedLayout", "Swizzle"]


@dataclass(frozen=True)
class Swizzle:
    """CuTe `Swizzle<B,M,S>`: xor the `bits` bits at `base + shift` into the `bits` bits at `base`.

    Works on ints, numpy integer arrays (elementwise) and sympy expressions (a symbolic `xor`).
    """

    bits: int
    base: int
    shift: int

    def __post_init__(self) -> None:
        if self.bits < 0 or self.base < 0:
            raise LayoutError(f"Swizzle bits and base must be >= 0, got {self}")
        if abs(self.shift) < self.bits:
            raise LayoutError(
                f"{self}: |shift| {abs(self.shift)} < bits {self.bits} makes the xor fields overlap, so it "
                f"is not a permutation; use |shift| >= {self.bits}"
            )

    @property
    def source_mask(self) -> int:
        """The bits read (the `yyy` field)."""
        return ((1 << self.bits) - 1) << (self.base + max(0, self.shift))

    @property
    def target_mask(self) -> int:
        """The bits flipped (the `zzz` field)."""
        return ((1 << self.bits) - 1) << (self.base - min(0, self.shift))

    def __call__(self, x: Any) -> Any:
        if is_symbolic(x):
            field = (x // 2 ** (self.base + max(0, self.shift))) % 2**self.bits
            return xor(x, field * 2 ** (self.base - min(0, self.shift)))
        picked = x & self.source_mask
        moved = picked >> self.shift if self.shift >= 0 else picked << -self.shift
        return simplify_index(x ^ moved)

    def __str__(self) -> str:
        return f"Sw<{self.bits},{self.base},{self.shift}>"


@dataclass(frozen=True)
class ComposedLayout:
    """`swizzle(offset + layout(c))`: a layout whose offsets pass through a swizzle (CuTe's
    `ComposedLayout<Swizzle, Offset, Layout>`). Shape, size and coordinates are the inner layout's.
    """

    swizzle: Swizzle
    offset: Any
    layout: Layout

    @property
    def shape(self) -> Any:
        return self.layout.shape

    @property
    def rank(self) -> int:
        return self.layout.rank

    @property
    def size(self) -> Any:
        return self.layout.size

    @property
    def cosize(self) -> Any:
        """The inner layout's cosize: exact when it is a multiple of 2**(bits + base + |shift|), since
        the swizzle permutes each such aligned block."""
        return self.layout.cosize

    def __call__(self, *coord: Any) -> Any:
        return self.swizzle(self.offset + self.layout(*coord))

    def __str__(self) -> str:
        return f"{self.swizzle} o {self.offset} o {self.layout}"

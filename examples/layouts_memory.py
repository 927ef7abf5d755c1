"""A tour of lowbit's memory layouts: CuTe layouts, their algebra, a swizzle, packed sub-byte layouts.

Run: python examples/layouts_memory.py
"""

from __future__ import annotations

from lowbit.ir.layout import (
    ComposedLayout,
    Layout,
    Swizzle,
    composition,
    grid,
    index_symbols,
    logical_divide,
    packed_along,
    row_major,
    size_symbols,
    to_source,
)


def main() -> None:
    print("== CuTe layouts (shape:stride, coordinate -> offset)")
    tile = Layout((4, (2, 8)), (16, (8, 1)))
    print(f"{tile}  size {tile.size}, cosize {tile.cosize}, (1, (1, 3)) -> {tile((1, (1, 3)))}")
    print(f"row-major 4x8: {row_major((4, 8))}\n{grid(row_major((4, 8)))}")
    M, K, N = size_symbols("M K N")
    i, k, n = index_symbols("i k n")
    print(f"symbolic row-major {row_major((M, K))} at (i, k) = {to_source(row_major((M, K))(i, k))}")

    print("\n== composition and logical_divide")
    a, b = Layout((6, 2), (8, 2)), Layout((4, 3), (3, 1))
    print(f"{a} o {b} = {composition(a, b)}")
    print(f"{row_major((8, 8))} / (2, 4) = {logical_divide(row_major((8, 8)), (2, 4))}")

    print("\n== swizzled 8x8 row-major tile, Sw<3,0,3>: each column hits all 8 banks")
    print(grid(ComposedLayout(Swizzle(3, 0, 3), 0, row_major((8, 8)))))

    print("\n== packed sub-byte layouts: (k, n) -> (word, bit)")
    for bits, dense in [(4, False), (3, False), (3, True)]:
        packed = packed_along((K, N), bits, axis=0, dense=dense)
        word, bit = packed.locate(k, n)
        print(f"{packed}\n    word = {to_source(word)}, bit = {to_source(bit)}, words {packed.word_shape}")


if __name__ == "__main__":
    main()

"""Register layouts in a few lines: build, draw, compose and divide (run: python examples/layouts_register.py)."""

from __future__ import annotations

import sympy

from lowbit.ir.layout.register import column_spatial, local, spatial
from lowbit.ir.layout.register_ops import divide, reduce, visualize


def main() -> None:
    # 8 threads, row-major, each holding a 2x1 column strip
    print(visualize(spatial(2, 4).local(2, 1)), end="\n\n")
    print(visualize(column_spatial(2, 4)), end="\n\n")

    # the mma.m16n8k16 accumulator fragment: a 2x1 repeat of an 8x4 warp grid, 1x2 registers per thread
    mma_c = local(2, 1).spatial(8, 4).local(1, 2)
    print(visualize(mma_c), end="\n\n")
    t, l = sympy.symbols("t l", integer=True, nonnegative=True)
    print("mma C index of (t, l):", mma_c.map_symbolic(t, l), end="\n\n")

    # compose: a 2x2 grid of warps, each holding the mma tile -> a 32x16 tile over 128 threads
    block = spatial(2, 2) * mma_c
    print(f"compose: {block}  shape={block.shape} threads={block.num_threads} locals={block.local_size}")

    # divide: the mma fragment fits the block tile iff the block layout divides by it
    print(f"divide:  {block} / {mma_c} = {block / mma_c}")
    assert divide(block, mma_c) == spatial(2, 2)

    # reduce over columns: the 4 threads of a row group now all hold that row's result
    print(visualize(reduce(mma_c, 1)))


if __name__ == "__main__":
    main()

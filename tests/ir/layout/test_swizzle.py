"""Swizzles: the CuTe formula, involution and bijection, symbolic form, swizzled layouts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbit.ir.layout import ComposedLayout, Layout, LayoutError, Swizzle, grid, index_symbols, row_major, to_source
from lowbit.ir.layout.symbolic import SOURCE_NAMESPACE


@st.composite
def swizzles(draw):
    bits = draw(st.integers(0, 3))
    base = draw(st.integers(0, 3))
    shift = draw(st.integers(bits, bits + 3)) * draw(st.sampled_from([1, -1]))
    if shift < 0 and base < -shift:
        base = -shift  # keep the target field at or above bit 0
    return Swizzle(bits, base, shift)


def _span(sw: Swizzle) -> int:
    return 1 << (sw.bits + sw.base + abs(sw.shift))


@given(swizzles())
def test_involution_and_bijection(sw: Swizzle) -> None:
    xs = list(range(_span(sw)))
    ys = [sw(x) for x in xs]
    assert sorted(ys) == xs  # a permutation of [0, 2^(B+M+|S|))
    assert [sw(y) for y in ys] == xs  # its own inverse
    np.testing.assert_array_equal(sw(np.arange(_span(sw))), ys)  # numpy arrays elementwise


@given(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.integers(0, 1023))
def test_cute_formula(bits: int, base: int, extra: int, x: int) -> None:
    shift = bits + extra
    mask = ((1 << bits) - 1) << (base + shift)
    assert Swizzle(bits, base, shift)(x) == x ^ ((x & mask) >> shift)


@given(swizzles())
def test_symbolic_equals_numeric(sw: Swizzle) -> None:
    (x,) = index_symbols(["x"])
    code = compile(to_source(sw(x)), "<swizzle>", "eval")
    assert all(eval(code, {**SOURCE_NAMESPACE, "x": v}) == sw(v) for v in range(_span(sw)))


def test_symbolic_form_reads_like_python() -> None:
    (x,) = index_symbols(["x"])
    assert to_source(Swizzle(3, 4, 3)(x)) == "x ^ ((x // 128) % 8)*16"
    assert to_source(Swizzle(0, 4, 3)(x)) == "x"
    assert str(Swizzle(3, 4, 3)) == "Sw<3,4,3>"


def test_composed_layout() -> None:
    sw = ComposedLayout(Swizzle(3, 0, 3), 0, row_major((8, 8)))
    assert str(sw) == "Sw<3,0,3> o 0 o (8,8):(8,1)"
    offsets = [sw((r, c)) for r in range(8) for c in range(8)]
    assert sorted(offsets) == list(range(64))
    # row r is xor-permuted by r: every column of the grid hits each bank (offset % 8) once
    assert all(sorted(sw((r, c)) % 8 for r in range(8)) == list(range(8)) for c in range(8))
    assert grid(sw).splitlines()[1].split() == ["9", "8", "11", "10", "13", "12", "15", "14"]
    shifted = ComposedLayout(Swizzle(1, 0, 1), 2, Layout(4))
    assert [shifted(i) for i in range(4)] == [Swizzle(1, 0, 1)(2 + i) for i in range(4)]
    assert (sw.size, sw.cosize, sw.rank, sw.shape) == (64, 64, 2, (8, 8))


def test_overlapping_fields_are_rejected() -> None:
    with pytest.raises(LayoutError, match=r"\|shift\| 2 < bits 3 .* use \|shift\| >= 3"):
        Swizzle(3, 0, 2)

"""CuTe memory layouts: evaluation and the algebra's laws, checked by enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from memory_strategies import brute, complementable_layouts, flat_coords, layouts, pow2_layouts, pow2_tilers

from lowbit.ir.layout import (
    Layout,
    LayoutError,
    coalesce,
    column_major,
    complement,
    composition,
    left_inverse,
    logical_divide,
    logical_product,
    make_layout,
    right_inverse,
    row_major,
    size_symbols,
    tiled_divide,
    zipped_divide,
)
from lowbit.ir.layout.memory import flatten, offsets

# ---------------------------------------------------------------------------------------------------
# construction, printing, evaluation


@pytest.mark.parametrize(
    ("layout", "text"),
    [
        (Layout((4, (2, 8)), (16, (8, 1))), "(4,(2,8)):(16,(8,1))"),
        (Layout(8), "8:1"),
        (Layout((4, 8)), "(4,8):(1,4)"),
        (row_major((4, 8)), "(4,8):(8,1)"),
        (column_major((4, (2, 3))), "(4,(2,3)):(1,(4,8))"),
        (row_major((2, (3, 4))), "(2,(3,4)):(12,(4,1))"),
        (make_layout(Layout(4, 2), 3), "(4,3):(2,1)"),
    ],
)
def test_cute_notation(layout: Layout, text: str) -> None:
    assert str(layout) == text


def test_structure() -> None:
    layout = Layout((4, (2, 8)), (16, (8, 1)))
    assert (layout.size, layout.cosize, layout.rank, layout.depth) == (64, 64, 2, 2)
    assert layout[1] == Layout((2, 8), (8, 1))
    assert Layout(8).depth == 0 and Layout(8)[0] == Layout(8)
    assert layout == Layout([4, [2, 8]], [16, [8, 1]]) and hash(layout) == hash(Layout((4, (2, 8)), (16, (8, 1))))


@given(layouts())
def test_evaluation_forms_agree(layout: Layout) -> None:
    # a 1-D index, the flat tuple and the hierarchical tuple all give Σ c_i·d_i
    for i, (coord, offset) in enumerate(zip(flat_coords(layout), brute(layout))):
        assert layout(i) == offset
        if len(coord) > 1:
            assert layout(*coord) == offset
        hierarchical = _unflatten(coord, layout.shape)
        assert layout(hierarchical) == offset
    assert layout.size == len(brute(layout))
    assert layout.cosize == max(brute(layout)) + 1


def _unflatten(flat, profile):
    it = iter(flat)

    def build(p):
        return tuple(build(e) for e in p) if isinstance(p, tuple) else next(it)

    return build(profile)


def test_bad_coordinate_and_stride_are_named() -> None:
    with pytest.raises(LayoutError, match=r"does not match the nesting"):
        Layout((4, 8), 1)
    with pytest.raises(LayoutError, match=r"coordinate \(1, 2, 3, 4\) does not match"):
        Layout((4, (2, 8)))((1, 2, 3, 4))


# ---------------------------------------------------------------------------------------------------
# composition


def _composition_holds(a: Layout, b: Layout, r: Layout) -> None:
    assert r.size == b.size
    for c in range(b.size):
        if b(c) < a.size:  # beyond A's domain only A's last mode extends; CuTe leaves that to the caller
            assert r(c) == a(b(c)), (str(a), str(b), str(r), c)


@given(pow2_layouts, pow2_tilers)
def test_composition_law(a: Layout, b: Layout) -> None:
    r = composition(a, b)
    _composition_holds(a, b, r)
    if isinstance(b.shape, tuple):  # R keeps B's modes (a one-mode B may come back split)
        assert r.rank == b.rank and all(r[m].size == b[m].size for m in range(b.rank))


@given(layouts(), layouts(strides=st.integers(0, 6), max_depth=0, max_rank=1))
def test_composition_law_whenever_defined(a: Layout, b: Layout) -> None:
    # any A and a one-mode B: a LayoutError naming the mode, or a correct composition (checks suffice)
    try:
        r = composition(a, b)
    except LayoutError as err:
        assert "composition:" in str(err) and "mode" in str(err)
        return
    _composition_holds(a, b, r)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (Layout((6, 2), (8, 2)), Layout((4, 3), (3, 1)), "((2,2),3):((24,2),8)"),
        (Layout(20, 2), Layout((4, 5), (1, 4)), "(4,5):(2,8)"),
        (Layout((10, 2), (16, 4)), Layout((5, 4), (1, 5)), "(5,(2,2)):(16,(80,4))"),
    ],
)
def test_composition_examples(a: Layout, b: Layout, expected: str) -> None:
    assert str(composition(a, b)) == expected


def test_composition_by_mode_tiler() -> None:
    a = Layout((12, (4, 8)), (59, (13, 1)))
    tiler = (Layout(3, 4), Layout(8, 2))
    assert composition(a, tiler) == make_layout(composition(a[0], tiler[0]), composition(a[1], tiler[1]))
    assert composition(a, (None, 8)) == make_layout(a[0], composition(a[1], 8))


def test_composition_errors_name_the_mode() -> None:
    a = Layout((8, 4), (1, 16))
    with pytest.raises(LayoutError, match=r"stride 3 of B's mode 1 does not divide shape 8 of A's mode 0"):
        composition(a, Layout((2, 2), (1, 3)))
    with pytest.raises(LayoutError, match=r"shape 12 of B does not divide into shape 8 left of A's mode 0"):
        composition(a, Layout(12, 1))
    M, K = size_symbols("M K")
    with pytest.raises(LayoutError, match=r"composition needs integer .* A's mode 0 .* is M"):
        composition(row_major((M, K)), 4)


# ---------------------------------------------------------------------------------------------------
# complement, divide, product


@given(complementable_layouts(), st.integers(1, 200))
def test_complement_law(a: Layout, cotarget: int) -> None:
    c = complement(a, cotarget)
    image_a, image_c = set(brute(a)), set(brute(c))
    assert image_a & image_c == {0}  # disjoint apart from the shared origin
    combined = brute(make_layout(a, c))
    assert len(set(combined)) == len(combined)  # (A, complement) is injective
    assert set(range(cotarget)) <= set(combined)  # and covers [0, cotarget)
    assert all(x < y for x, y in zip(flatten(c.stride), flatten(c.stride)[1:]))  # ordered


@pytest.mark.parametrize(
    ("a", "cotarget", "expected"),
    [
        (Layout(4, 1), 24, "6:4"),
        (Layout(6, 4), 24, "4:1"),
        (Layout((4, 6), (1, 4)), 24, "1:0"),
        (Layout(4, 2), 24, "(2,3):(1,8)"),
        (Layout((2, 2), (1, 6)), 24, "(3,2):(2,12)"),
    ],
)
def test_complement_examples(a: Layout, cotarget: int, expected: str) -> None:
    assert str(complement(a, cotarget)) == expected


def test_complement_error_names_the_mode() -> None:
    with pytest.raises(LayoutError, match=r"complement: mode 1 \(2:3\) of A .* overlaps"):
        complement(Layout((2, 2), (1, 3)))


@given(pow2_layouts, complementable_layouts(pow2=True, max_rank=2))
def test_logical_divide_is_its_definition(a: Layout, b: Layout) -> None:
    d = logical_divide(a, b)
    tiler = make_layout(b, complement(b, a.size))
    assert d == composition(a, tiler)
    assert a / b == d
    for c in range(d.size):
        if tiler(c) < a.size:
            assert d(c) == a(tiler(c))


def test_logical_divide_examples() -> None:
    assert str(logical_divide(Layout((4, 2, 3), (2, 1, 8)), Layout(4, 2))) == "((2,2),(2,3)):((4,1),(2,8))"
    assert str(logical_divide(Layout(8), 3)) == "(3,3):(1,3)"  # the tiles run past A's end
    a = Layout((4, 8), (8, 1))
    assert str(logical_divide(a, (2, 4))) == "((2,2),(4,2)):((8,16),(1,4))"
    assert str(zipped_divide(a, (2, 4))) == "((2,4),(2,2)):((8,1),(16,4))"
    assert str(tiled_divide(a, (2, 4))) == "((2,4),2,2):((8,1),16,4)"


@given(complementable_layouts(pow2=True), complementable_layouts(pow2=True, max_rank=2))
def test_logical_product(a: Layout, b: Layout) -> None:
    p = logical_product(a, b)
    assert p[0] == a and p.size == a.size * b.size and a * b == p
    offsets = brute(p)
    assert len(set(offsets)) == len(offsets)  # A repeated in B's pattern never overlaps itself
    rest = composition(complement(a, a.size * b.cosize), b)
    assert p[1] == rest


def _outcome(op, *args):
    try:
        return op(*args)
    except LayoutError as err:
        return str(err)


@given(layouts(), st.integers(1, 8))
@pytest.mark.parametrize("op", [composition, logical_divide, logical_product, zipped_divide, tiled_divide])
def test_int_means_layout(op, a: Layout, n: int) -> None:
    # the same result, or the same error, whichever way the right argument is spelled
    assert _outcome(op, a, n) == _outcome(op, a, Layout(n))
    if a.rank >= 2:
        assert _outcome(op, a, (n, 2)) == _outcome(op, a, (Layout(n), Layout(2)))
        assert _outcome(op, a, [n, None]) == _outcome(op, a, (Layout(n), None))


# ---------------------------------------------------------------------------------------------------
# coalesce and inverses


@given(layouts())
def test_coalesce_law(a: Layout) -> None:
    c = coalesce(a)
    assert c.size == a.size
    assert [c(i) for i in range(a.size)] == brute(a)
    modes = c.flat_modes()
    if modes != [(1, 0)]:
        assert all(s != 1 for s, _ in modes)  # no size-1 modes left
        assert all(s * d != d_next for (s, d), (_, d_next) in itertools.pairwise(modes))  # nothing mergeable
    assert c.depth <= 1


@given(layouts())
def test_right_inverse_law(a: Layout) -> None:
    r = right_inverse(a)
    assert all(a(r(i)) == i for i in range(r.size))


@given(complementable_layouts())
def test_left_inverse_law(a: Layout) -> None:
    left = left_inverse(a)
    assert all(left(a(c)) == c for c in range(a.size))


def test_right_inverse_of_a_permutation_is_its_inverse() -> None:
    a = Layout((2, 4), (4, 1))
    r = right_inverse(a)
    assert r.size == 8 and sorted(r(i) for i in range(8)) == list(range(8))
    assert all(r(a(i)) == i for i in range(8))


# ---------------------------------------------------------------------------------------------------
# offsets: every coordinate's offset at once


@given(layouts(), st.data())
def test_offsets_equal_the_layout_evaluated_at_every_row_major_coordinate(layout, data):
    """`offsets(layout, extents)` against `layout(c)` at each coordinate of extents (row-major), with each extent
    up to its mode's size (a mode bigger than the tensor: packed layouts pad a dimension to whole words)."""
    modes = list(layout) if isinstance(layout.shape, tuple) else [layout]
    sizes = [int(np.prod(flatten(m.shape))) for m in modes]
    extents = tuple(data.draw(st.integers(1, n)) for n in sizes)
    want = [int(layout(c if len(c) > 1 else c[0])) for c in itertools.product(*(range(e) for e in extents))]
    got = offsets(layout, extents)
    assert got is not None and got.dtype == np.int64 and got.tolist() == want


def test_offsets_decline_what_they_cannot_evaluate_by_broadcasting():
    """None (the caller evaluates the layout instead) for a rank other than the extents', a mode smaller than its
    extent, and symbolic sizes."""
    n = size_symbols("N")
    assert offsets(Layout((4, 8)), (4,)) is None
    assert offsets(Layout((4, 8)), (5, 8)) is None
    assert offsets(Layout((4, n)), (4, 8)) is None
    assert offsets(Layout((4, 8), (8, 1)), (4, 8)).tolist() == [8 * i + j for i in range(4) for j in range(8)]

"""Hand-checked register layouts: known tables, the PTX mma fragments, text, and error messages."""

from __future__ import annotations

import numpy as np
import pytest
import sympy

from lowbit.ir.layout.register import (
    RegisterLayout,
    canonicalize,
    column_local,
    column_spatial,
    compose,
    local,
    register_layout,
    replicated,
    spatial,
)
from lowbit.ir.layout.register_ops import (
    divide,
    left_divide,
    permute,
    reduce,
    reshape,
    same_mapping,
    visualize,
)


def test_spatial_local_table() -> None:
    layout = spatial(2, 4).local(2, 1)
    assert (layout.shape, layout.num_threads, layout.local_size) == ((4, 4), 8, 2)
    assert layout == RegisterLayout((4, 4), (2, 2, 4), (0, 2), (1,))
    expected = [[(2 * (t // 4) + l, t % 4) for l in range(2)] for t in range(8)]
    assert layout.table().tolist() == [[list(ix) for ix in row] for row in expected]
    assert layout.map(5, 1) == (3, 1)
    assert layout.locate((3, 1)) == [(5, 1)]


def test_column_orders() -> None:
    assert [column_spatial(2, 4).map(t, 0) for t in range(8)] == [(t % 2, t // 2) for t in range(8)]
    assert [column_local(2, 3).map(0, l) for l in range(6)] == [(l % 2, l // 2) for l in range(6)]
    assert [local(2, 3).map(0, l) for l in range(6)] == [(l // 3, l % 3) for l in range(6)]


def test_mma_m16n8k16_c_fragment_matches_ptx() -> None:
    # PTX ISA, mma.m16n8k16 f32 accumulator: groupID = lane >> 2, threadID_in_group = lane % 4,
    # row = groupID (+8 for c2, c3), col = threadID_in_group * 2 + (i & 1)
    layout = local(2, 1).spatial(8, 4).local(1, 2)
    assert (layout.shape, layout.num_threads, layout.local_size) == ((16, 8), 32, 4)
    for lane in range(32):
        for i in range(4):
            assert layout.map(lane, i) == ((lane >> 2) + 8 * (i >> 1), (lane % 4) * 2 + (i & 1))


def test_mma_m16n8k16_a_fragment_matches_ptx() -> None:
    # a0..a7: row = groupID (+8 when (i >> 1) & 1), col = threadID_in_group * 2 + (i & 1) (+8 when i >= 4)
    layout = column_local(2, 2).spatial(8, 4).local(1, 2)
    assert layout.shape == (16, 16)
    for lane in range(32):
        for i in range(8):
            row = (lane >> 2) + 8 * ((i >> 1) & 1)
            col = (lane % 4) * 2 + (i & 1) + 8 * (i >> 2)
            assert layout.map(lane, i) == (row, col)


def test_map_symbolic() -> None:
    t, l = sympy.symbols("t l", integer=True, nonnegative=True)
    assert spatial(4, 8).map_symbolic(t, l) == (t // 8, t % 8)
    assert spatial(2, 4).local(2, 1).map_symbolic(t, l) == (2 * (t // 4) + l, t % 4)
    assert local(3).map_symbolic(t, l) == (l,)


def test_text() -> None:
    assert str(spatial(2, 4).local(2, 1)) == "spatial(2, 4).local(2, 1)"
    assert str(spatial(4) * (local(2).column_spatial(2))) == "spatial(4).local(2).column_spatial(2)"
    quotient = divide(spatial(2, 4).local(2, 1), local(2, 1))
    assert str(quotient) == "register_layout(shape=[2, 4], mode_shape=[2, 4], spatial_modes=[0, 1], local_modes=[])"
    assert quotient == spatial(2, 4)


def test_visualize() -> None:
    assert visualize(spatial(2, 4).local(2, 1)) == "\n".join(
        [
            "spatial(2, 4).local(2, 1)",
            "     0    1    2    3",
            "0 t0:0 t1:0 t2:0 t3:0",
            "1 t0:1 t1:1 t2:1 t3:1",
            "2 t4:0 t5:0 t6:0 t7:0",
            "3 t4:1 t5:1 t6:1 t7:1",
        ]
    )
    assert "t{0,1}:0" in visualize(spatial(2).replicated(2))
    assert "[1, :, :]" in visualize(local(2, 2, 2))


def test_equality_is_structural_and_ignores_text() -> None:
    built = register_layout(shape=[2, 4], mode_shape=[2, 4], spatial_modes=[0, 1], local_modes=[])
    assert built == spatial(2, 4) and hash(built) == hash(spatial(2, 4))
    assert {spatial(2, 4): "x"}[built] == "x"
    assert spatial(2, 4) != column_spatial(2, 4)
    # a non-canonical form of the same mapping: unequal structurally, equal as mappings
    split = RegisterLayout((2, 4), (2, 2, 2), (0, 1, 2), ())
    assert split != spatial(2, 4) and same_mapping(split, spatial(2, 4))
    assert canonicalize(split) == spatial(2, 4)


def test_canonicalize_returns_same_object_when_unchanged() -> None:
    layout = spatial(2, 4).local(2, 1)
    assert canonicalize(layout) is layout


def test_compose_pads_rank_and_operators_are_sugar() -> None:
    assert spatial(4) * local(2, 2) == spatial(1, 4).local(2, 2)
    assert spatial(4).local(2) == compose(spatial(4), local(2))
    assert spatial(4, 2) / spatial(2, 2) == divide(spatial(4, 2), spatial(2, 2)) == spatial(2, 1)


def test_replicated() -> None:
    layout = spatial(4).replicated(2)
    assert (layout.num_threads, layout.num_replicas, layout.local_size) == (8, 2, 1)
    assert layout.locate((3,)) == [(6, 0), (7, 0)]
    assert replicated(1) == RegisterLayout((), (), (), ())
    assert divide(spatial(4).replicated(4), replicated(2)) == spatial(4).replicated(2)


def test_reduce_turns_spatial_modes_into_replicas() -> None:
    layout = reduce(spatial(4, 8).local(1, 2), 1)
    assert (layout.shape, layout.num_threads, layout.num_replicas, layout.local_size) == ((4, 1), 32, 8, 1)
    assert [layout.map(t, 0) for t in range(32)] == [(t // 8, 0) for t in range(32)]


def test_reshape_and_permute() -> None:
    assert reshape(spatial(2, 3), (6,)) == spatial(6)
    assert reshape(spatial(6), (2, 3)) == spatial(2, 3)
    assert permute(spatial(2, 4), (1, 0)) == column_spatial(4, 2)


def test_left_divide() -> None:
    layout = spatial(2, 4).local(2, 1)
    assert left_divide(layout, spatial(2, 1)) == spatial(1, 4).local(2, 1)
    assert spatial(2, 1) * left_divide(layout, spatial(2, 1)) == layout


def test_divide_error_names_the_dim() -> None:
    with pytest.raises(
        ValueError, match=r"divide: dim 1 of spatial\(4, 8\) has modes \[8\] which do not end with \[16\] of B"
    ):
        divide(spatial(4, 8), spatial(16))
    with pytest.raises(ValueError, match=r"left_divide: dim 1 of spatial\(4, 8\) has modes \[8\] which do not start"):
        left_divide(spatial(4, 8), spatial(1, 16))


def test_divide_error_names_the_mode_kind_and_order() -> None:
    with pytest.raises(ValueError, match=r"mode of size 2 in dim 0 is local in B \(local\(2\)\) but spatial in A"):
        divide(spatial(4), local(2))
    with pytest.raises(ValueError, match=r"the threads of A .* do not end with the threads of B"):
        divide(column_spatial(4, 4), spatial(2, 2))
    with pytest.raises(ValueError, match=r"rank 2 > rank 1"):
        divide(spatial(4), spatial(2, 2))


def test_reshape_error_names_the_mode() -> None:
    with pytest.raises(ValueError, match=r"new dim 0 needs 3 more elements but the next mode \(size 2, dim 0\)"):
        reshape(spatial(2, 3), (3, 2))
    with pytest.raises(ValueError, match=r"has 6 elements but shape \[4\]"):
        reshape(spatial(2, 3), (4,))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (((4,), (2, 3), (0, 1), ()), r"mode_shape \[2, 3\] does not split shape \[4\]: dim 0"),
        (((4,), (4,), (1,), ()), r"spatial_modes \[1\] names mode 1"),
        (((4,), (4,), (), (-2,)), r"local_modes \[-2\] names mode -2.*replicas \(-r\) go in spatial_modes"),
        (((4,), (2, 2), (0,), ()), r"mode 1 \(size 2\) appears 0 times"),
        (((4,), (2, 2), (0, 1), (1,)), r"mode 1 \(size 2\) appears 2 times"),
        (((0,), (), (), ()), r"shape \[0\] has an entry < 1"),
    ],
)
def test_validation_names_the_field(fields: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RegisterLayout(*fields)


def test_argument_errors() -> None:
    with pytest.raises(TypeError, match=r"compose: inner must be a RegisterLayout, got int"):
        spatial(2) * 3  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"spatial: shape \(2, 0\) must be positive ints"):
        spatial(2, 0)
    with pytest.raises(ValueError, match=r"map: thread 8 is out of range .* 0 <= thread < 8"):
        spatial(2, 4).map(8, 0)
    with pytest.raises(ValueError, match=r"permute: dims \[0, 0\] repeat a dim"):
        permute(spatial(2, 4), (0, 0))
    assert np.array_equal(local(2).table(), [[[0], [1]]])

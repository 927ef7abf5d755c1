"""Register layout laws, checked against brute-force enumeration on hypothesis-built layouts."""

from __future__ import annotations

import numpy as np
import sympy
from hypothesis import given
from hypothesis import strategies as st

from lowbit.ir.layout.register import (
    RegisterLayout,
    canonicalize,
    column_local,
    column_spatial,
    compose,
    local,
    replicated,
    spatial,
)
from lowbit.ir.layout.register_ops import divide, left_divide, permute, reduce, reshape, same_mapping

CONSTRUCTORS = [spatial, local, column_spatial, column_local]
MAX_THREADS, MAX_LOCAL = 32, 16


@st.composite
def chain(draw: st.DrawFn, rank: int) -> RegisterLayout:
    """A layout built from 1-3 constructor calls (sizes 1-3, occasional replicas), kept small."""
    layout = spatial(*[1] * rank)
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 5)) == 0:
            part = replicated(draw(st.sampled_from([2, 3])))
        else:
            sizes = draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
            part = draw(st.sampled_from(CONSTRUCTORS))(*sizes)
        candidate = layout * part
        if candidate.num_threads <= MAX_THREADS and candidate.local_size <= MAX_LOCAL:
            layout = candidate
    return layout


def chains(count: int) -> st.SearchStrategy[list[RegisterLayout]]:
    ranks = st.integers(1, 3)
    return ranks.flatmap(lambda rank: st.lists(chain(rank), min_size=count, max_size=count))


layouts = st.integers(1, 3).flatmap(chain)


def same_table(a: RegisterLayout, b: RegisterLayout) -> bool:
    return a.shape == b.shape and np.array_equal(a.table(), b.table())


def reference_compose(a: RegisterLayout, b: RegisterLayout) -> np.ndarray:
    # thread = t_a * T_b + t_b, local = l_a * L_b + l_b, index = x_a * shape_b + x_b
    ta, tb = a.table(), b.table()  # [Ta, La, r], [Tb, Lb, r]
    ref = ta[:, None, :, None, :] * np.array(b.shape) + tb[None, :, None, :, :]  # [Ta, Tb, La, Lb, r]
    return ref.reshape(a.num_threads * b.num_threads, a.local_size * b.local_size, a.rank)


def hit_counts(layout: RegisterLayout) -> np.ndarray:
    flat = np.ravel_multi_index(layout.table().reshape(-1, layout.rank).T, layout.shape)
    return np.bincount(flat, minlength=layout.size)


@given(chains(2))
def test_compose_matches_reference(pair: list[RegisterLayout]) -> None:
    a, b = pair
    assert np.array_equal((a * b).table(), reference_compose(a, b))
    assert a * b == compose(a, b)


@given(chains(3))
def test_compose_is_associative(triple: list[RegisterLayout]) -> None:
    a, b, c = triple
    left, right = (a * b) * c, a * (b * c)
    assert left == right  # structurally: both are canonical
    assert same_table(left, right)


@given(layouts)
def test_every_index_is_held_num_replicas_times(layout: RegisterLayout) -> None:
    assert layout.num_threads * layout.local_size == layout.size * layout.num_replicas
    assert (hit_counts(layout) == layout.num_replicas).all()


@given(chains(2))
def test_divide_undoes_compose(pair: list[RegisterLayout]) -> None:
    a, b = pair
    assert divide(a * b, b) == a and same_table(divide(a * b, b), a)
    assert (a * b) / b == a
    assert left_divide(b * a, b) == a and same_table(left_divide(b * a, b), a)


@given(chains(3))
def test_divide_by_a_tail_of_the_chain(triple: list[RegisterLayout]) -> None:
    a, b, c = triple
    assert divide(a * b * c, b * c) == a
    assert divide(a * b * c, c) == a * b
    assert left_divide(a * b * c, a * b) == c


@st.composite
def refinements(draw: st.DrawFn) -> tuple[RegisterLayout, RegisterLayout]:
    """A layout and a non-canonical form of it: modes split into factors, replicas split, unit modes added."""
    layout = draw(layouts)
    mode_shape, spatial_modes, local_modes = (
        list(layout.mode_shape),
        list(layout.spatial_modes),
        list(layout.local_modes),
    )
    for _ in range(draw(st.integers(0, 3))):
        m = draw(st.integers(0, len(mode_shape)))
        if m == len(mode_shape) or mode_shape[m] == 1:  # insert a size-1 local mode after mode m - 1
            renumber = {e: e + 1 if e >= m else e for e in range(len(mode_shape))}
            mode_shape.insert(m, 1)
            spatial_modes = [renumber[e] if e >= 0 else e for e in spatial_modes]
            local_modes = [renumber[e] for e in local_modes]
            local_modes.insert(draw(st.integers(0, len(local_modes))), m)
            continue
        size = mode_shape[m]
        factor = draw(st.sampled_from([f for f in range(1, size + 1) if size % f == 0]))
        mode_shape[m : m + 1] = [factor, size // factor]

        def expand(seq: list[int], m: int = m) -> list[int]:
            out: list[int] = []
            for e in seq:
                out += [m, m + 1] if e == m else [e + 1 if e > m else e]
            return out

        spatial_modes, local_modes = expand(spatial_modes), expand(local_modes)
    replicas = [i for i, e in enumerate(spatial_modes) if e < 0]
    if replicas and draw(st.booleans()):
        i = draw(st.sampled_from(replicas))
        spatial_modes[i : i + 1] = [-1, spatial_modes[i], -1]
    return layout, RegisterLayout(layout.shape, tuple(mode_shape), tuple(spatial_modes), tuple(local_modes))


@given(refinements())
def test_canonical_form_preserves_the_mapping_and_is_unique(pair: tuple[RegisterLayout, RegisterLayout]) -> None:
    layout, refined = pair
    assert same_table(refined, layout)
    assert canonicalize(refined) == layout == canonicalize(layout)
    assert same_mapping(refined, layout)


@given(layouts, st.data())
def test_reduce_keeps_threads_and_projects(layout: RegisterLayout, data: st.DataObject) -> None:
    dims = data.draw(st.lists(st.integers(0, layout.rank - 1), unique=True))
    reduced = reduce(layout, dims)
    assert reduced.num_threads == layout.num_threads
    assert reduced.shape == tuple(1 if d in dims else n for d, n in enumerate(layout.shape))
    projected = layout.table().copy()
    projected[:, :, dims] = 0
    for t in range(layout.num_threads):
        assert {tuple(ix) for ix in projected[t]} == {tuple(ix) for ix in reduced.table()[t]}


@given(layouts, st.data())
def test_reshape_preserves_flat_index(layout: RegisterLayout, data: st.DataObject) -> None:
    flat = reshape(layout, (layout.size,))
    assert np.array_equal(flat.table()[..., 0], np.ravel_multi_index(np.moveaxis(layout.table(), -1, 0), layout.shape))
    assert reshape(flat, layout.shape) == layout
    target = data.draw(st.permutations([n for n in layout.shape]))
    try:
        reshaped = reshape(layout, target)
    except ValueError:
        return
    assert np.array_equal(
        np.ravel_multi_index(np.moveaxis(reshaped.table(), -1, 0), reshaped.shape), flat.table()[..., 0]
    )


@given(layouts, st.data())
def test_permute_permutes_the_index(layout: RegisterLayout, data: st.DataObject) -> None:
    dims = data.draw(st.permutations(range(layout.rank)))
    permuted = permute(layout, dims)
    assert np.array_equal(permuted.table(), layout.table()[..., list(dims)])
    inverse = list(np.argsort(dims))
    assert permute(permuted, inverse) == layout


@given(layouts)
def test_map_symbolic_and_locate_agree_with_table(layout: RegisterLayout) -> None:
    t, l = sympy.symbols("t l", integer=True, nonnegative=True)
    exprs = layout.map_symbolic(t, l)
    table = layout.table()  # [T, L, rank]
    threads, locals_ = np.meshgrid(np.arange(layout.num_threads), np.arange(layout.local_size), indexing="ij")
    evaluate = sympy.lambdify((t, l), exprs, modules="numpy")
    for d, values in enumerate(evaluate(threads, locals_)):
        assert np.array_equal(np.broadcast_to(values, threads.shape), table[:, :, d])
    holders: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for thread, loc in np.ndindex(*table.shape[:2]):
        index = tuple(table[thread, loc].tolist())
        holders.setdefault(index, []).append((thread, loc))
        if thread < 2:  # exact sympy evaluation and `map` on a few pairs
            assert tuple(int(e.subs({t: thread, l: loc})) for e in exprs) == index == layout.map(thread, loc)
    for index in np.ndindex(*layout.shape):
        assert layout.locate(index) == holders[index]


@given(layouts, st.sampled_from(CONSTRUCTORS), st.lists(st.integers(1, 3), min_size=1, max_size=3))
def test_chaining_is_compose(layout: RegisterLayout, constructor, sizes: list[int]) -> None:  # type: ignore[no-untyped-def]
    method = getattr(layout, constructor.__name__)
    assert method(*sizes) == layout * constructor(*sizes) == compose(layout, constructor(*sizes))
    assert str(method(*sizes)) == f"{layout}.{constructor(*sizes)}"


@given(chains(2))
def test_a_quotient_when_found_is_exact(pair: list[RegisterLayout]) -> None:
    a, b = pair
    for op, rebuild in ((divide, lambda c: c * b), (left_divide, lambda c: b * c)):
        try:
            quotient = op(a, b)
        except ValueError:
            continue
        assert rebuild(quotient) == a and same_table(rebuild(quotient), a)

"""Hypothesis strategies for small integer CuTe layouts, shared by the memory-layout tests."""

from __future__ import annotations

import itertools

from hypothesis import strategies as st

from lowbit.ir.layout import Layout


@st.composite
def profiles(draw, leaves: int, max_depth: int = 2):
    """A nesting profile with `leaves` leaves: None is a leaf, a tuple holds sub-profiles."""
    if leaves == 1 and (max_depth == 0 or draw(st.booleans())):
        return None
    if max_depth <= 1:
        return (None,) * leaves
    cuts = sorted(draw(st.sets(st.integers(1, leaves - 1)))) if leaves > 1 else []
    bounds = [0, *cuts, leaves]
    return tuple(draw(profiles(b - a, max_depth - 1)) for a, b in itertools.pairwise(bounds))


def fill(profile, values):
    """Replace the leaves of `profile` by successive items of the iterator `values`."""
    if profile is None:
        return next(values)
    return tuple(fill(p, values) for p in profile)


def num_leaves(profile) -> int:
    return 1 if profile is None else sum(num_leaves(p) for p in profile)


SMALL_SHAPES = st.integers(1, 4)
SMALL_STRIDES = st.integers(0, 12)


@st.composite
def layouts(draw, shapes=SMALL_SHAPES, strides=SMALL_STRIDES, max_depth: int = 2, max_rank: int = 3):
    """A random layout with leaves drawn from `shapes` and `strides`, nested up to `max_depth`."""
    n = draw(st.integers(1, max_rank))
    profile = draw(profiles(n, max_depth))
    shape = fill(profile, iter(draw(st.lists(shapes, min_size=n, max_size=n))))
    stride = fill(profile, iter(draw(st.lists(strides, min_size=n, max_size=n))))
    return Layout(shape, stride)


@st.composite
def complementable_layouts(draw, pow2: bool = False, max_rank: int = 3, zero_strides: bool = False):
    """Injective layouts whose sorted modes leave gaps that are whole multiples (complement is defined).

    With `zero_strides`, some modes get stride 0 (then the layout is no longer injective).
    """
    values = [1, 2, 4] if pow2 else [1, 2, 3, 4]
    rank = draw(st.integers(1, max_rank))
    modes, reach = [], 1
    for _ in range(rank):
        gap = draw(st.sampled_from(values))
        shape = draw(st.sampled_from(values))
        zero = zero_strides and draw(st.integers(0, 3)) == 0
        modes.append((shape, 0 if zero else reach * gap))
        reach = reach * gap * shape
    modes = draw(st.permutations(modes))
    profile = draw(profiles(rank))
    shape = fill(profile, iter(s for s, _ in modes))
    stride = fill(profile, iter(d for _, d in modes))
    return Layout(shape, stride)


# powers of two always divide each other, so these compose with any layout of power-of-two shapes;
# the tilers' modes address disjoint bit fields, so composing mode by mode never carries between them
pow2_layouts = layouts(shapes=st.sampled_from([1, 2, 4]), strides=st.integers(0, 9))
pow2_tilers = complementable_layouts(pow2=True, zero_strides=True)


def flat_coords(layout: Layout):
    """Every flattened coordinate of `layout` in colexicographic order (first leaf fastest)."""
    from lowbit.ir.layout.memory import flatten

    shape = flatten(layout.shape)
    for rev in itertools.product(*(range(s) for s in reversed(shape))):
        yield tuple(reversed(rev))


def brute(layout: Layout) -> list[int]:
    """The layout's offsets for indices 0..size-1, computed from the definition Σ c_i·d_i."""
    from lowbit.ir.layout.memory import flatten

    stride = flatten(layout.stride)
    return [sum(c * d for c, d in zip(coord, stride)) for coord in flat_coords(layout)]

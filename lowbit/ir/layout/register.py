"""Register layouts (Tilus): which thread holds each element of a tile, and in which of its registers.

A register layout maps (thread, local) -> logical index of a tile. The unified form splits every tile
dimension into *modes* (row-major within the dimension: the first mode is the most significant digit)
and gives each mode's digit a source: the thread index (`spatial_modes`) or the per-thread register
index (`local_modes`). Both lists are outermost first, so the thread index is the row-major
serialisation of the spatial digits and the local index that of the local digits. An entry -r in
`spatial_modes` is a replica axis: r groups of threads hold the same elements.

    spatial(2, 4).local(2, 1)
      shape (4, 4), mode_shape (2, 2, 4)   # dim 0 = modes (2, 2), dim 1 = mode (4,)
      spatial_modes (0, 2), local_modes (1,)
      thread t, local l -> (2 * (t // 4) + l, t % 4)

Layouts are frozen values compared structurally on the unified form; every constructor and operation
returns the canonical form (see `canonicalize`), so for those `==` is equality of mappings. The algebra
beyond `compose` (divide, reduce, reshape, ...) lives in `register_ops.py`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import sympy

_FIELDS = ("shape", "mode_shape", "spatial_modes", "local_modes")


@dataclass(frozen=True)
class RegisterLayout:
    """How a tile of `shape` is spread over threads (spatial modes) and their registers (local modes).

    `text` is the constructor chain that built the layout (shown by `str`); it takes no part in
    equality or hashing.
    """

    shape: tuple[int, ...]
    mode_shape: tuple[int, ...]
    spatial_modes: tuple[int, ...]
    local_modes: tuple[int, ...]
    text: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in _FIELDS:
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        _validate(self)

    # -- derived sizes -------------------------------------------------------------------------
    @cached_property
    def dim_modes(self) -> tuple[tuple[int, ...], ...]:
        """The mode indices of each dimension, outermost first."""
        return _group_modes(self.shape, self.mode_shape)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Extent of each `spatial_modes` entry (a replica entry -r has extent r)."""
        return tuple(self.mode_shape[e] if e >= 0 else -e for e in self.spatial_modes)

    @property
    def local_shape(self) -> tuple[int, ...]:
        return tuple(self.mode_shape[m] for m in self.local_modes)

    @property
    def num_threads(self) -> int:
        return math.prod(self.spatial_shape)

    @property
    def local_size(self) -> int:
        return math.prod(self.local_shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def num_replicas(self) -> int:
        return math.prod(-e for e in self.spatial_modes if e < 0)

    # -- evaluation ----------------------------------------------------------------------------
    def map(self, thread: int, local: int) -> tuple[int, ...]:
        """The logical index held by `thread` in register `local`."""
        for name, value, bound in (("thread", thread, self.num_threads), ("local", local, self.local_size)):
            if not 0 <= value < bound:
                raise ValueError(f"map: {name} {value} is out of range for {self}; use 0 <= {name} < {bound}")
        return tuple(int(x) for x in self._evaluate(int(thread), int(local)))

    def map_symbolic(self, thread: Any, local: Any) -> tuple[sympy.Expr, ...]:
        """`map` over sympy integer symbols, e.g. spatial(4, 8) gives (t // 8, t % 8).

        Assumes 0 <= thread < num_threads and 0 <= local < local_size (the outermost digit takes no `%`).
        """
        return tuple(sympy.sympify(x) for x in canonicalize(self)._evaluate(thread, local))

    def table(self) -> np.ndarray:
        """Every logical index at once: int64 array [num_threads, local_size, rank]."""
        threads = np.arange(self.num_threads, dtype=np.int64)[:, None]  # [T, 1]
        locals_ = np.arange(self.local_size, dtype=np.int64)[None, :]  # [1, L]
        out = np.zeros((self.num_threads, self.local_size, self.rank), dtype=np.int64)  # [T, L, rank]
        for d, index in enumerate(self._evaluate(threads, locals_)):
            out[:, :, d] = index
        return out

    def locate(self, index: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
        """All (thread, local) pairs holding logical `index` (one per replica), sorted."""
        index = tuple(int(i) for i in index)
        if len(index) != self.rank or not all(0 <= i < n for i, n in zip(index, self.shape)):
            raise ValueError(f"locate: index {index} is outside shape {self.shape} of {self}")
        digit: dict[int, int] = {}
        for i, modes in zip(index, self.dim_modes):
            for m in reversed(modes):  # innermost mode is the least significant digit
                i, digit[m] = divmod(i, self.mode_shape[m])
        local = _serialize([digit[m] for m in self.local_modes], self.local_shape)
        choices = [range(-e) if e < 0 else [digit[e]] for e in self.spatial_modes]
        threads = [_serialize(list(ds), self.spatial_shape) for ds in itertools.product(*choices)]
        return sorted((t, local) for t in threads)

    def _evaluate(self, thread: Any, local: Any) -> list[Any]:
        # generic over int, numpy arrays and sympy symbols: only `//`, `%`, `*`, `+` are used
        digit = _digits(thread, self.spatial_modes, self.spatial_shape)
        digit.update(_digits(local, self.local_modes, self.local_shape))
        indices = []
        for modes in self.dim_modes:
            index: Any = 0
            for m in modes:
                index = index * self.mode_shape[m] + digit[m]
            indices.append(index)
        return indices

    # -- text ----------------------------------------------------------------------------------
    def __str__(self) -> str:
        if self.text is not None:
            return self.text
        fields = ", ".join(f"{name}={list(getattr(self, name))}" for name in _FIELDS)
        return f"register_layout({fields})"

    # -- operator sugar and chaining: `a.local(2, 1)` is `a * local(2, 1)` ---------------------
    def __mul__(self, other: RegisterLayout) -> RegisterLayout:
        return compose(self, other)

    def __truediv__(self, other: RegisterLayout) -> RegisterLayout:
        from lowbit.ir.layout.register_ops import divide

        return divide(self, other)

    def spatial(self, *shape: int) -> RegisterLayout:
        return compose(self, spatial(*shape))

    def local(self, *shape: int) -> RegisterLayout:
        return compose(self, local(*shape))

    def column_spatial(self, *shape: int) -> RegisterLayout:
        return compose(self, column_spatial(*shape))

    def column_local(self, *shape: int) -> RegisterLayout:
        return compose(self, column_local(*shape))

    def replicated(self, num_threads: int) -> RegisterLayout:
        return compose(self, replicated(num_threads))


def _digits(value: Any, entries: tuple[int, ...], sizes: tuple[int, ...]) -> dict[int, Any]:
    # value = row-major serialisation of one digit per entry; returns {mode: digit}, replicas dropped
    digit: dict[int, Any] = {}
    stride = math.prod(sizes)
    for i, (entry, size) in enumerate(zip(entries, sizes)):
        stride //= size
        d = value // stride if stride > 1 else value
        if i > 0:  # the outermost digit needs no `%` while value is in range
            d = d % size
        if entry >= 0:
            digit[entry] = d
    return digit


def _serialize(digits: list[int], sizes: tuple[int, ...]) -> int:
    value = 0
    for d, size in zip(digits, sizes):
        value = value * size + d
    return value


def _group_modes(shape: tuple[int, ...], mode_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    # each dim takes modes until their product reaches its size, then any size-1 modes that follow
    groups = []
    m = 0
    for d, n in enumerate(shape):
        group, covered = [], 1
        while covered < n and m < len(mode_shape):
            covered *= mode_shape[m]
            group.append(m)
            m += 1
        while m < len(mode_shape) and mode_shape[m] == 1:
            group.append(m)
            m += 1
        if covered != n:
            sizes = [mode_shape[i] for i in group]
            raise ValueError(
                f"RegisterLayout.mode_shape {list(mode_shape)} does not split shape {list(shape)}: dim {d} "
                f"of size {n} gets modes {sizes} (product {covered}); list each dim's modes in order, "
                f"with product equal to the dim's size"
            )
        groups.append(tuple(group))
    if m != len(mode_shape):
        raise ValueError(
            f"RegisterLayout.mode_shape {list(mode_shape)} has modes {list(mode_shape[m:])} left over after "
            f"covering shape {list(shape)}; drop them or grow the shape"
        )
    return tuple(groups)


def _validate(layout: RegisterLayout) -> None:
    shape, mode_shape = layout.shape, layout.mode_shape
    for name, values in (("shape", shape), ("mode_shape", mode_shape)):
        if any(v < 1 for v in values):
            raise ValueError(f"RegisterLayout.{name} {list(values)} has an entry < 1; every size must be >= 1")
    _group_modes(shape, mode_shape)
    num_modes = len(mode_shape)
    for name, entries, allow_replica in (
        ("spatial_modes", layout.spatial_modes, True),
        ("local_modes", layout.local_modes, False),
    ):
        for e in entries:
            if e >= num_modes or (e < 0 and not allow_replica):
                fix = "use a mode index or -r for r replicas" if allow_replica else "replicas (-r) go in spatial_modes"
                raise ValueError(
                    f"RegisterLayout.{name} {list(entries)} names mode {e}, but mode_shape {list(mode_shape)} "
                    f"has modes 0..{num_modes - 1}; {fix}"
                )
    used = [e for e in layout.spatial_modes if e >= 0] + list(layout.local_modes)
    for m in range(num_modes):
        if used.count(m) != 1:
            raise ValueError(
                f"RegisterLayout mode {m} (size {mode_shape[m]}) appears {used.count(m)} times in "
                f"spatial_modes {list(layout.spatial_modes)} + local_modes {list(layout.local_modes)}; "
                f"each mode must be spatial or local exactly once"
            )


@dataclass
class _Draft:
    """A mutable working copy of the unified form for the algebra; mode ids are any ints >= 0."""

    shape: list[int]
    dims: list[list[int]]  # per dim: mode ids, outermost first
    sizes: dict[int, int]  # mode id -> size
    spatial: list[int]  # mode ids, or -r for r replicas; outermost first
    local: list[int]

    @staticmethod
    def of(layout: RegisterLayout, offset: int = 0) -> _Draft:
        return _Draft(
            shape=list(layout.shape),
            dims=[[m + offset for m in modes] for modes in layout.dim_modes],
            sizes={m + offset: s for m, s in enumerate(layout.mode_shape)},
            spatial=[e + offset if e >= 0 else e for e in layout.spatial_modes],
            local=[m + offset for m in layout.local_modes],
        )

    def split(self, mode: int, outer: int, inner: int) -> int:
        """Split `mode` into (outer, inner), adjacent in its dim and its thread/local list; return inner's id."""
        new = max(self.sizes) + 1
        self.sizes[mode], self.sizes[new] = outer, inner
        for seq in (*self.dims, self.spatial, self.local):
            if mode in seq:
                seq.insert(seq.index(mode) + 1, new)
        return new

    def build(self, text: str | None = None) -> RegisterLayout:
        order = [m for modes in self.dims for m in modes]
        rename = {m: i for i, m in enumerate(order)}
        return RegisterLayout(
            shape=tuple(self.shape),
            mode_shape=tuple(self.sizes[m] for m in order),
            spatial_modes=tuple(rename[e] if e >= 0 else e for e in self.spatial),
            local_modes=tuple(rename[m] for m in self.local),
            text=text,
        )


def canonicalize(layout: RegisterLayout) -> RegisterLayout:
    """The canonical form of `layout`: same mapping, size-1 modes and 1-replicas dropped, adjacent replicas
    merged, and modes merged where they are adjacent both in their dim and in the thread (or local) order.

    Two layouts have the same mapping iff their canonical forms are equal. Returns `layout` itself when it
    is already canonical.
    """
    draft = _Draft.of(layout)
    ones = {m for m, s in draft.sizes.items() if s == 1}
    draft.dims = [[m for m in modes if m not in ones] for modes in draft.dims]
    draft.local = [m for m in draft.local if m not in ones]
    spatial: list[int] = []
    for e in draft.spatial:
        if e in ones or e == -1:
            continue
        if e < 0 and spatial and spatial[-1] < 0:
            spatial[-1] = -(spatial[-1] * e)  # -a, -b -> -(a*b)
        else:
            spatial.append(e)
    draft.spatial = spatial
    for modes in draft.dims:
        i = 0
        while i + 1 < len(modes):
            x, y = modes[i], modes[i + 1]
            seq = draft.spatial if x in draft.spatial else draft.local
            j = seq.index(x)
            if j + 1 < len(seq) and seq[j + 1] == y:  # y is the next digit of x in both orders: merge
                draft.sizes[x] *= draft.sizes[y]
                del modes[i + 1], seq[j + 1]
            else:
                i += 1
    result = draft.build(layout.text)
    return layout if result == layout else result


def _layout_arg(op: str, name: str, value: Any) -> RegisterLayout:
    # the one place layout arguments are normalised (STYLE habit 3)
    if isinstance(value, RegisterLayout):
        return value
    raise TypeError(
        f"{op}: {name} must be a RegisterLayout, got {type(value).__name__} {value!r}; "
        f"build one with spatial(...), local(...) or register_layout(...)"
    )


def _shape_arg(op: str, shape: Any) -> tuple[int, ...]:
    # accept f(2, 4) and f((2, 4))
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    if not all(isinstance(s, (int, np.integer)) and s >= 1 for s in shape):
        raise ValueError(f"{op}: shape {tuple(shape)} must be positive ints, e.g. {op}(2, 4)")
    return tuple(int(s) for s in shape)


def _pad_rank(layout: RegisterLayout, rank: int) -> RegisterLayout:
    # leading size-1 dims hold no modes, so the mapping is unchanged
    if layout.rank == rank:
        return layout
    shape = (1,) * (rank - layout.rank) + layout.shape
    return RegisterLayout(shape, layout.mode_shape, layout.spatial_modes, layout.local_modes, layout.text)


def register_layout(
    *,
    shape: Any,
    mode_shape: Any,
    spatial_modes: Any,
    local_modes: Any,
) -> RegisterLayout:
    """A layout from its unified form (validated), returned in canonical form."""
    return canonicalize(RegisterLayout(tuple(shape), tuple(mode_shape), tuple(spatial_modes), tuple(local_modes)))


def _leaf(name: str, shape: Any, is_spatial: bool, column: bool) -> RegisterLayout:
    shape = _shape_arg(name, shape)
    order = tuple(reversed(range(len(shape)))) if column else tuple(range(len(shape)))
    text = f"{name}({', '.join(map(str, shape))})"
    spatial_modes, local_modes = (order, ()) if is_spatial else ((), order)
    return canonicalize(RegisterLayout(shape, shape, spatial_modes, local_modes, text))


def spatial(*shape: int) -> RegisterLayout:
    """One element per thread, threads row-major over the tile: thread t holds unravel(t, shape)."""
    return _leaf("spatial", shape, is_spatial=True, column=False)


def column_spatial(*shape: int) -> RegisterLayout:
    """One element per thread, threads column-major over the tile (the first dim varies fastest)."""
    return _leaf("column_spatial", shape, is_spatial=True, column=True)


def local(*shape: int) -> RegisterLayout:
    """One thread holds the whole tile, registers row-major: local l holds unravel(l, shape)."""
    return _leaf("local", shape, is_spatial=False, column=False)


def column_local(*shape: int) -> RegisterLayout:
    """One thread holds the whole tile, registers column-major (the first dim varies fastest)."""
    return _leaf("column_local", shape, is_spatial=False, column=True)


def replicated(num_threads: int) -> RegisterLayout:
    """A rank-0 tile held by `num_threads` threads; `a.replicated(r)` gives every element of `a` r replicas
    (thread = t_a * r + replica)."""
    if not isinstance(num_threads, (int, np.integer)) or num_threads < 1:
        raise ValueError(f"replicated: num_threads {num_threads!r} must be a positive int, e.g. replicated(2)")
    layout = RegisterLayout((), (), (-int(num_threads),), (), f"replicated({num_threads})")
    return canonicalize(layout)


def compose(outer: RegisterLayout, inner: RegisterLayout) -> RegisterLayout:
    """`outer * inner`: the tile-of-tiles (Kronecker) product; each element of `outer` becomes a copy of `inner`.

    thread = t_o * inner.num_threads + t_i, local = l_o * inner.local_size + l_i and, per dim,
    index = x_o * inner.shape[d] + x_i. Associative, not commutative. The lower-rank operand is padded
    with leading size-1 dims.
    """
    outer, inner = _layout_arg("compose", "outer", outer), _layout_arg("compose", "inner", inner)
    rank = max(outer.rank, inner.rank)
    o = _Draft.of(_pad_rank(outer, rank))
    i = _Draft.of(_pad_rank(inner, rank), offset=len(outer.mode_shape))
    draft = _Draft(
        shape=[a * b for a, b in zip(o.shape, i.shape)],
        dims=[mo + mi for mo, mi in zip(o.dims, i.dims)],  # outer modes are the more significant digits
        sizes={**o.sizes, **i.sizes},
        spatial=o.spatial + i.spatial,
        local=o.local + i.local,
    )
    text = f"{outer.text}.{inner.text}" if outer.text and inner.text else None
    return canonicalize(draft.build(text))

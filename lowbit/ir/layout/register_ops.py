"""The register layout algebra beyond `compose`: division, reduction, reshaping, comparison and drawing.

Every operation takes canonical forms in and gives a canonical form out (see `register.canonicalize`);
the work happens on a `_Draft`, a mutable copy of the unified form whose modes can be split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.ir.layout.register import (
    RegisterLayout,
    _Draft,
    _layout_arg,
    _pad_rank,
    _shape_arg,
    canonicalize,
)


def divide(a: RegisterLayout, b: RegisterLayout) -> RegisterLayout:
    """`a / b`: the layout C with `a == C * b` (B's modes must be the innermost modes of each dim of A,
    and its thread and local digits the least significant ones). B may have lower rank (padded with
    leading 1s). Raises ValueError naming the dim or the thread/local order that does not divide."""
    a, b = _layout_arg("divide", "A", a), _layout_arg("divide", "B", b)
    return _divide_suffix(a, b, "divide", str(a), str(b), reverse=False)


def left_divide(a: RegisterLayout, b: RegisterLayout) -> RegisterLayout:
    """The layout C with `a == b * C` (B's modes must be the outermost modes of each dim of A)."""
    a, b = _layout_arg("left_divide", "A", a), _layout_arg("left_divide", "B", b)
    # reversing every digit order turns B * C into rev(C) * rev(B), so a prefix into a suffix
    c = _divide_suffix(_reversed(a), _reversed(b), "left_divide", str(a), str(b), reverse=True)
    return canonicalize(_reversed(c))


def _reversed(layout: RegisterLayout) -> RegisterLayout:
    # not the same mapping: the mirror image used by left_divide
    draft = _Draft.of(layout)
    draft.dims = [modes[::-1] for modes in draft.dims]
    draft.spatial, draft.local = draft.spatial[::-1], draft.local[::-1]
    return canonicalize(draft.build())


def _divide_suffix(
    a: RegisterLayout, b: RegisterLayout, op: str, a_name: str, b_name: str, reverse: bool
) -> RegisterLayout:
    end = "start" if reverse else "end"

    def shown(xs: list[Any]) -> list[Any]:  # lists read outermost first in the caller's orientation
        return xs[::-1] if reverse else xs

    if b.rank > a.rank:
        raise ValueError(f"{op}: B = {b_name} has rank {b.rank} > rank {a.rank} of A = {a_name}; B must not outrank A")
    a, b = canonicalize(a), canonicalize(_pad_rank(b, a.rank))
    draft = _Draft.of(a)
    pair: dict[int, int] = {}  # B mode -> the (split) A mode holding the same digit
    dim_of: dict[int, int] = {}
    kept: list[int] = []  # per dim: how many leading A modes stay in C
    for d in range(a.rank):
        a_sizes = [draft.sizes[m] for m in draft.dims[d]]
        j = len(draft.dims[d])  # draft.dims[d][:j] is not matched yet
        for bm in reversed(b.dim_modes[d]):
            bs = b.mode_shape[bm]
            if j == 0 or draft.sizes[draft.dims[d][j - 1]] % bs:
                b_sizes = [b.mode_shape[m] for m in b.dim_modes[d]]
                raise ValueError(
                    f"{op}: dim {d} of {a_name} has modes {shown(a_sizes)} which do not {end} with "
                    f"{shown(b_sizes)} of B ({b_name})"
                )
            am = draft.dims[d][j - 1]
            if draft.sizes[am] == bs:
                pair[bm], j = am, j - 1
            else:  # B's digit is the inner part of A's mode
                pair[bm] = draft.split(am, draft.sizes[am] // bs, bs)
            dim_of[bm] = d
        kept.append(j)

    for bm, am in pair.items():
        b_kind = "spatial" if bm in b.spatial_modes else "local"
        a_kind = "spatial" if am in draft.spatial else "local"
        if a_kind != b_kind:
            raise ValueError(
                f"{op}: the mode of size {b.mode_shape[bm]} in dim {dim_of[bm]} is {b_kind} in B ({b_name}) "
                f"but {a_kind} in A ({a_name})"
            )

    def describe(entries: list[int], sizes: dict[int, int], dims: list[Any]) -> list[str]:
        where = {m: d for d, modes in enumerate(dims) for m in modes}
        return shown([f"{sizes[e]}@dim{where[e]}" if e >= 0 else f"rep{-e}" for e in entries])

    b_mode_sizes = dict(enumerate(b.mode_shape))
    rests = []
    for kind, a_seq, b_seq in (
        ("threads", draft.spatial, list(b.spatial_modes)),
        ("locals", draft.local, list(b.local_modes)),
    ):
        rest = list(a_seq)
        for e in reversed(b_seq):
            got = rest[-1] if rest else None
            if e >= 0 and got == pair[e]:
                rest.pop()
            elif e < 0 and got is not None and got < 0 and got % e == 0:  # -r_a over -r_b: r_b | r_a
                rest.pop()
                if got != e:
                    rest.append(-(got // e))
            else:
                raise ValueError(
                    f"{op}: the {kind} of A ({a_name}) run over {describe(a_seq, draft.sizes, draft.dims)} "
                    f"which do not {end} with the {kind} of B ({b_name}) "
                    f"{describe(b_seq, b_mode_sizes, list(b.dim_modes))}"
                )
        rests.append(rest)

    quotient = _Draft(
        shape=[n // m for n, m in zip(a.shape, b.shape)],
        dims=[modes[:j] for modes, j in zip(draft.dims, kept)],
        sizes=draft.sizes,
        spatial=rests[0],
        local=rests[1],
    )
    return canonicalize(quotient.build())


def _dims_arg(op: str, layout: RegisterLayout, dims: Any) -> list[int]:
    dims = [dims] if isinstance(dims, (int, np.integer)) else list(dims)
    if any(not -layout.rank <= d < layout.rank for d in dims):
        raise ValueError(f"{op}: dims {dims} out of range for rank {layout.rank} layout {layout}")
    dims = [int(d) % layout.rank for d in dims]
    if len(set(dims)) != len(dims):
        raise ValueError(f"{op}: dims {dims} repeat a dim; list each dim once")
    return dims


def reduce(layout: RegisterLayout, dims: Any) -> RegisterLayout:
    """Reduce over `dims`: they become size 1; their spatial modes turn into replicas (the thread count
    is kept, every thread now holds the reduced value) and their local modes are dropped."""
    layout = _layout_arg("reduce", "layout", layout)
    dims = _dims_arg("reduce", layout, dims)
    draft = _Draft.of(layout)
    gone = {m for d in dims for m in draft.dims[d]}
    draft.spatial = [-draft.sizes[e] if e in gone else e for e in draft.spatial]
    draft.local = [m for m in draft.local if m not in gone]
    for d in dims:
        draft.dims[d], draft.shape[d] = [], 1
    return canonicalize(draft.build())


def permute(layout: RegisterLayout, dims: Any) -> RegisterLayout:
    """Reorder the tile's dims: result index i is the original's index dims[i]; threads and locals unchanged."""
    layout = _layout_arg("permute", "layout", layout)
    dims = _dims_arg("permute", layout, dims)
    if sorted(dims) != list(range(layout.rank)):
        raise ValueError(f"permute: dims {dims} is not a permutation of 0..{layout.rank - 1} for {layout}")
    draft = _Draft.of(layout)
    draft.shape = [layout.shape[d] for d in dims]
    draft.dims = [draft.dims[d] for d in dims]
    return canonicalize(draft.build())


def reshape(layout: RegisterLayout, shape: Any) -> RegisterLayout:
    """The same layout seen through a row-major reshape of the tile (flat index preserved). Modes may be
    split at the new dim boundaries; raises ValueError naming the mode that cannot be split."""
    layout = _layout_arg("reshape", "layout", layout)
    shape = _shape_arg("reshape", tuple(shape))
    if np.prod(shape, dtype=np.int64) != layout.size:
        raise ValueError(f"reshape: {layout} has {layout.size} elements but shape {list(shape)} holds {np.prod(shape)}")
    draft = _Draft.of(canonicalize(layout))
    origin = {m: d for d, modes in enumerate(draft.dims) for m in modes}
    queue = [m for modes in draft.dims for m in modes]  # all digits, most significant first
    new_dims: list[list[int]] = []
    for d, n in enumerate(shape):
        group, need = [], n
        while need > 1:
            m = queue[0]
            size = draft.sizes[m]
            if need % size == 0:  # the whole mode fits in this dim
                group.append(queue.pop(0))
                need //= size
            elif size % need == 0:  # the boundary cuts the mode: outer part here, inner part onwards
                queue[0] = draft.split(m, need, size // need)
                group.append(m)
                need = 1
            else:
                raise ValueError(
                    f"reshape: cannot regroup {layout} (shape {list(layout.shape)}) into {list(shape)}: new dim "
                    f"{d} needs {need} more elements but the next mode (size {size}, dim {origin[m]}) does not "
                    f"split there; sizes must divide at every new dim boundary"
                )
        new_dims.append(group)
    draft.shape, draft.dims = list(shape), new_dims
    return canonicalize(draft.build())


def same_mapping(a: RegisterLayout, b: RegisterLayout) -> bool:
    """True iff `a` and `b` map every (thread, local) to the same index (equal canonical forms)."""
    a, b = _layout_arg("same_mapping", "a", a), _layout_arg("same_mapping", "b", b)
    return canonicalize(a) == canonicalize(b)


def visualize(layout: RegisterLayout) -> str:
    """The tile as a text grid: each cell reads `t<thread>:<local>`, or `t{0,4}:<local>` for replicas.
    Rank > 2 tiles are drawn one [i, j, :, :] slice at a time."""
    layout = _layout_arg("visualize", "layout", layout)
    shape = layout.shape
    table = layout.table().reshape(layout.num_threads * layout.local_size, layout.rank)  # [T * L, rank]
    flat = np.ravel_multi_index(table.T, shape) if layout.rank else np.zeros(len(table), dtype=np.int64)
    holders: list[list[tuple[int, int]]] = [[] for _ in range(layout.size)]
    for k, f in enumerate(flat.tolist()):
        holders[f].append(divmod(k, layout.local_size))
    cells = []
    for held in holders:
        threads = sorted(t for t, _ in held)
        who = f"t{threads[0]}" if len(threads) == 1 else "t{" + ",".join(map(str, threads)) + "}"
        cells.append(f"{who}:{held[0][1]}")
    rows, cols = (shape[-2] if layout.rank >= 2 else 1), (shape[-1] if layout.rank >= 1 else 1)
    width = max(len(c) for c in [*cells, str(cols - 1), str(rows - 1)])
    lines = [str(layout)]
    for block, lead in enumerate(np.ndindex(*shape[:-2])):
        if layout.rank > 2:
            lines.append("[" + ", ".join(map(str, lead)) + ", :, :]")
        label = len(str(rows - 1))
        lines.append(" " * label + " " + " ".join(f"{c:>{width}}" for c in range(cols)))
        for r in range(rows):
            row = cells[(block * rows + r) * cols : (block * rows + r + 1) * cols]
            lines.append(f"{r:>{label}} " + " ".join(f"{c:>{width}}" for c in row))
    return "\n".join(lines)

"""`make_split_k`: split a kernel's reduction loop over a new grid axis, each split writing an fp32 partial.

A GEMV at batch 1 has one program per column tile: on a GPU with 132 SMs an 8192-column layer in 32-column
tiles is 256 programs, two per SM, too few warps in flight to hide the loads' latency. Splitting K over S
programs multiplies the grid by S; the partial results are summed afterwards (`split_k_sum`, one small
kernel over [S, M, N] fp32).

The kernel's reduction loop (the top-level `For` named `loop`, from 0 in steps of BK to `stop`) becomes

    KS = BK · ceil(stop / (BK · SPLIT))                 rows per split, whole K steps
    for k0 in range(s · KS, min(stop, s · KS + KS), BK)   s = the new last program id, grid (..., SPLIT)

and its one output store `y[offs] = cast(v, y.dtype)` becomes `y_part[s, offs] = v` in float32 (the final
rounding cast is dropped: the sum of the partials is rounded once, by `split_k_sum`). K steps stay aligned to
multiples of BK from 0, so no step crosses K where the original's did not (masks and `inbounds` unchanged).

This is only correct if the stored value is a linear function of the loop's accumulators: then the sum over
splits of each split's epilogue equals the epilogue of the summed accumulators. The pass checks it and
refuses a kernel otherwise, naming the instruction. Linear: every accumulator starts as zeros (`full 0`);
after the loop, a value depending on the accumulators is built only by add / sub of two such values, mul by
(or div by) a value that does not depend on them, neg, sum reductions, casts to float32, broadcast, reshape,
transpose. Numerics: the same products, summed in a different order (per split, then across splits in fp32).

Not in the pass pipeline: a caller asks for it, directly or through the compile option `split_k`, which
`lowbit.codegen.backend.compile_program` applies to any program with such a loop.
"""

from __future__ import annotations

import dataclasses

import sympy

from lowbit.dtypes import float32, int32
from lowbit.ir import instructions as I
from lowbit.ir.program import Program
from lowbit.ir.statements import Assign, For, Let, Stmt, Store, walk
from lowbit.ir.types import TileType
from lowbit.ir.values import ScalarParam, TensorParam, Tile, program_id_symbol

SPLIT = "SPLIT"
SHAPE_OPS = (I.Broadcast, I.Reshape, I.Transpose)


class SplitKError(ValueError):
    """A kernel whose reduction loop cannot be split (the message names the reason and the statement)."""


def _refuse(program: Program, why: str) -> SplitKError:
    return SplitKError(f"kernel {program.name} cannot be split along K: {why}")


def _reduction_loop(program: Program, loop: str) -> int:
    found = [i for i, s in enumerate(program.body) if isinstance(s, For) and str(s.var) == loop]
    if len(found) != 1:
        raise _refuse(
            program,
            f"it has {len(found)} top-level loops named {loop!r}, not one (name it with T.range(..., name={loop!r}))",
        )
    fl = program.body[found[0]]
    assert isinstance(fl, For)
    if fl.start != 0 or not isinstance(fl.step, (int, sympy.Integer)):
        raise _refuse(
            program,
            f"loop {loop} runs range({fl.start}, {fl.stop}, {fl.step}); it must start at 0 with a constant step",
        )
    return found[0]


def _check_accumulators(program: Program, before: tuple[Stmt, ...], fl: For) -> set[int]:
    """The ids of the tiles the loop carries; each must start as zeros before it."""
    accs = {id(s.dst): s.dst for s in walk(fl.body) if isinstance(s, Assign)}
    if not accs:
        raise _refuse(program, f"loop {fl.var} carries no accumulator (no `acc += ...` in its body)")
    defs = {id(s.tile): s for s in before if isinstance(s, Let)}
    for key, acc in accs.items():
        d = defs.get(key)
        if d is None or not isinstance(d.inst, I.Full) or d.inst.value != 0:
            raise _refuse(
                program,
                f"accumulator %{acc.name or acc.uid} does not start as zeros before the loop "
                f"({d.loc if d else 'no definition'}); each split would add its start value",
            )
    for s in walk((*before, fl)):
        if isinstance(s, Store):
            raise _refuse(
                program,
                f"it stores to {s.tensor.name} before or inside the loop ({s.loc}); only the epilogue may store",
            )
    return set(accs)


def _linear(inst: I.Inst, dep: list[bool]) -> bool:
    """Whether `inst` is linear in its operands marked `dep` (the others held fixed)."""
    if isinstance(inst, SHAPE_OPS) or (isinstance(inst, I.Reduce) and inst.op == "sum"):
        return True
    if isinstance(inst, I.Unary):
        return inst.op == "neg"
    if isinstance(inst, I.Cast):
        return inst.dtype == float32 and (inst.x.dtype.is_integer or inst.x.dtype == float32)
    if isinstance(inst, I.Binary):
        if inst.op in ("add", "sub"):
            return all(dep)
        if inst.op == "mul":
            return dep.count(True) == 1
        if inst.op == "div":
            return dep == [True, False]
    return False


def _describe(inst: I.Inst) -> str:
    op = getattr(inst, "op", None)
    return f"{inst.opname} {op}" if isinstance(op, str) else inst.opname


def make_split_k(program: Program, loop: str = "k0", splits: str = SPLIT) -> Program:
    """The split-K form of `program` (module docstring): one more int32 parameter `splits` (>= 1), a last
    grid axis of that extent, the output tensor `y` replaced by `y_part` [splits, *y.shape] float32. Raises
    `SplitKError` (a ValueError) naming the reason when the loop or the epilogue does not allow it."""
    if any(p.name == splits for p in program.params):
        raise _refuse(program, f"it already has a parameter {splits!r} (split already?)")
    i = _reduction_loop(program, loop)
    before, fl, after = program.body[:i], program.body[i], program.body[i + 1 :]
    assert isinstance(fl, For)
    linear = _check_accumulators(program, before, fl)
    rounded: dict[int, Tile] = {}  # a rounded value's id -> its float32 counterpart
    y: TensorParam | None = None  # the output tensor (every store after the loop writes it: one per row, say)
    s_sym = ScalarParam(splits, int32).symbol
    pid = program_id_symbol(len(program.grid))
    out: list[Stmt] = []
    for s in after:
        if isinstance(s, Let):
            ops = s.inst.operands
            if any(id(o) in rounded for o in ops):
                if not isinstance(s.inst, SHAPE_OPS):
                    raise _refuse(
                        program,
                        f"{s.inst.opname} at {s.loc} uses a value already rounded to the output dtype; cast last",
                    )
                src = rounded[id(ops[0])]
                t = Tile(TileType(float32, s.tile.shape), s.tile.name)
                out += [s, Let(t, dataclasses.replace(s.inst, x=src), s.loc)]
                rounded[id(s.tile)] = t
                continue
            dep = [id(o) in linear for o in ops]
            if any(dep):
                if isinstance(s.inst, I.Cast) and s.inst.dtype.is_float and s.inst.dtype != float32:
                    src = ops[0]
                    if src.dtype != float32:
                        t = Tile(TileType(float32, src.shape), src.name)
                        out.append(Let(t, I.Cast(src, float32), s.loc))
                        src = t
                    rounded[id(s.tile)] = src
                elif _linear(s.inst, dep):
                    linear.add(id(s.tile))
                else:
                    raise _refuse(
                        program,
                        f"`{_describe(s.inst)}` at {s.loc} is not linear in the loop's accumulators; the sum of the "
                        "splits' outputs would differ",
                    )
            out.append(s)
        elif isinstance(s, Store):
            if y is not None and s.tensor.name != y.name:
                raise _refuse(
                    program, f"it stores to {y.name} and {s.tensor.name} after the loop; a split kernel has one output"
                )
            y = s.tensor
            out += _partial_store(program, s, rounded, linear, partial_param(y, splits), pid)
        else:
            raise _refuse(
                program, f"a {type(s).__name__} follows the loop ({s.location}); the epilogue must be straight-line"
            )
    if y is None:
        raise _refuse(program, "nothing is stored after the loop")
    step = sympy.Integer(fl.step)
    ks = step * sympy.ceiling(fl.stop / (step * s_sym))
    start = pid * ks
    loop_stmt = dataclasses.replace(fl, start=start, stop=sympy.Min(fl.stop, start + ks))
    part = partial_param(y, splits)
    params = tuple(part if p.name == y.name else p for p in program.params)
    return program.replace(
        name=f"{program.name}_split_k",
        params=(*params, ScalarParam(splits, int32)),
        grid=(*program.grid, s_sym),
        body=(*before, loop_stmt, *out),
    )


def partial_param(y: TensorParam, splits: str = SPLIT) -> TensorParam:
    """The split form's partials of output `y`: `<y>_part`, float32 [splits, *y.shape]."""
    return TensorParam(f"{y.name}_part", float32, (ScalarParam(splits, int32).symbol, *y.shape))


def _partial_store(
    program: Program, store: Store, rounded: dict[int, Tile], linear: set[int], part: TensorParam, pid: sympy.Expr
) -> list[Stmt]:
    """`store` of the output as a store of its float32 value (before the rounding cast) into `part[pid, ...]`."""
    value = rounded.get(id(store.tile), store.tile)
    if id(store.tile) not in rounded and id(store.tile) not in linear:
        raise _refuse(program, f"the value stored to {store.tensor.name} ({store.loc}) does not depend on the loop")
    out: list[Stmt] = []
    if value.dtype != float32:  # an accumulator of another dtype stored as it is (int32): as float32
        t = Tile(TileType(float32, value.shape), value.name)
        out.append(Let(t, I.Cast(value, float32), store.loc))
        value = t
    v3 = Tile(TileType(float32, (1, *value.shape)), value.name)
    out.append(Let(v3, I.Reshape(value, (1, *value.shape)), store.loc))
    mask = store.mask
    if mask is not None:
        m3 = Tile(TileType(mask.dtype, (1, *mask.shape)), mask.name)
        out.append(Let(m3, I.Reshape(mask, (1, *mask.shape)), store.loc))
        mask = m3
    out.append(Store(part, (pid, *store.offsets), v3, mask, store.loc))
    return out


def split_k_sum(y: TensorParam, block: int = 256, splits: str = SPLIT) -> Program:
    """The program that finishes a split: `y[m, n] = cast(Σ_s y_part[s, m, n], y.dtype)` for the rank-2 output
    `y` of a split form (`make_split_k`), grid (M rows, column tiles of `block`). The partials are summed in
    split order in float32, then rounded once."""
    if y.rank != 2:
        raise SplitKError(f"split_k_sum: output {y.name} has rank {y.rank}; split forms of rank-2 outputs only")
    s_sym = ScalarParam(splits, int32).symbol
    part = partial_param(y, splits)
    sizes = [ScalarParam(str(e), int32) for e in y.shape if isinstance(e, sympy.Symbol)]
    pid0, pid1 = program_id_symbol(0), program_id_symbol(1)
    k = sympy.Symbol("s", integer=True, nonnegative=True)
    acc = Tile(TileType(float32, (1, 1, block)), "acc")
    t, total = Tile(TileType(float32, (1, 1, block)), "t"), Tile(TileType(float32, (1, 1, block)), "sum")
    flat = Tile(TileType(float32, (1, block)), "flat")
    out = Tile(TileType(y.dtype, (1, block)), "out")
    body: tuple[Stmt, ...] = (
        Let(acc, I.Full((1, 1, block), sympy.Integer(0), float32)),
        For(
            k,
            sympy.Integer(0),
            s_sym,
            sympy.Integer(1),
            (
                Let(t, I.Load(part, (k, pid0, pid1 * block), (1, 1, block))),
                Let(total, I.Binary("add", acc, t)),
                Assign(acc, total),
            ),
        ),
        Let(flat, I.Reshape(acc, (1, block))),
        *((Let(out, I.Cast(flat, y.dtype)),) if y.dtype != float32 else ()),
        Store(y, (pid0, pid1 * block), out if y.dtype != float32 else flat),
    )
    return Program(
        "split_k_sum",
        (part, y, ScalarParam(splits, int32), *sizes),
        (y.shape[0], sympy.ceiling(y.shape[1] / block)),
        body,
        (("block", block),),
    )


def output_name(program: Program) -> str:
    """The tensor the split form of `program` replaces: the one its epilogue stores to."""
    names = {s.tensor.name for s in program.body if isinstance(s, Store)}
    if len(names) != 1:
        raise _refuse(program, f"it stores to {len(names)} tensors at the top level, not one")
    return names.pop()


__all__ = ["SPLIT", "SplitKError", "make_split_k", "output_name", "partial_param", "split_k_sum"]

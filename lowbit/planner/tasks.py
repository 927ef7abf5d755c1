"""The nano-ops of a plan over a window of layers: one task per (layer, op, nano-batch), the same rows, units and
order as the runtime's `lowbit.runtime.nano.derive_tasks` would give them.

- Rows: `nano_ranges(dense_batch, fractions, tile)`; attention cuts snap to sequence boundaries (every decode
  row is a sequence, then the prefill chunks), as the runtime runs attention on sub-batches of whole sequences.
- Dependencies: a piece waits for the pieces of its inputs (ops.py `inputs`, previous-layer edges included)
  whose rows intersect its own rows.
- Order: every unit's FIFO queue follows one global priority-topological order with key (stage, first row,
  position), where a stage is a run of consecutive ops whose first nano-op is on the same unit — the
  runtime's rule, so a nano-batch runs through a stage before the next one and overlaps the other units.
  A placement's `delay` (in stages, default 0: exactly the runtime's rule) moves the op's nano-ops that many
  stages later in the key. A plan with planned orders (`Placement.order`, one key per nano-batch, in layers)
  replaces the rule: key (layer + order, graph position) — the order a list-scheduled simulation found, frozen
  into FIFO queues (search.py `orders_from_schedule`; NanoFlow's MILP searches the order too).
  Collectives are stages like any op: the tensor-parallel graph has their all_reduce nodes (ops.PATTERNS), and
  the runtime counts them. Only an op without a graph node (`pattern` None) takes the stage of the op before it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from lowbit.planner.cost import CostModel, gemm_config
from lowbit.planner.hardware import Category
from lowbit.planner.nanoplan import NanoPlan
from lowbit.planner.ops import PREV, ModelOps, Work, piece_work
from lowbit.planner.workload import Workload
from lowbit.runtime.plan import nano_ranges, priority_topo


@dataclass(frozen=True)
class SimTask:
    index: int  # position in the global order (dependencies point to smaller indices)
    layer: int
    op: str
    nano: int
    rows: tuple[int, int]
    unit: int  # index into plan.units
    share: float
    deps: tuple[int, ...]
    work: Work
    category: Category
    kernel: str = ""

    @property
    def label(self) -> str:
        return f"L{self.layer}.{self.op}[{self.rows[0]}:{self.rows[1]}]"


def op_cuts(plan: NanoPlan, op: str, kind: str, wl: Workload) -> list[int]:
    """Cut points of `op`'s nano-batches in a step of `wl`, as the runtime computes them."""
    p = plan.placement(op)
    if kind != "attention":
        return nano_ranges(wl.dense_batch, p.fractions, plan.tile)
    return list(_seq_cuts(wl, p.fractions))


@functools.lru_cache(maxsize=4096)
def _seq_cuts(wl: Workload, fractions: tuple[float, ...]) -> tuple[int, ...]:
    """`nano_ranges` snapped to the step's sequence boundaries (cached: a search asks for the same cuts often,
    and a decode-heavy step has one boundary per decode row)."""
    return tuple(nano_ranges(wl.dense_batch, fractions, 1, wl.seq_bounds()))


def op_stages(mo: ModelOps, plan: NanoPlan, layers: int) -> dict[tuple[int, int], int]:
    """(layer, op position) -> stage: runs of consecutive ops whose first nano-op is on the same unit."""
    stage_of: dict[tuple[int, int], int] = {}
    stage, last_unit = 0, None
    for layer in range(layers):
        for j, o in enumerate(mo.ops):
            unit = plan.unit_index(plan.placement(o.name).unit_of(0))
            if o.pattern is not None and unit != last_unit:  # an op without a graph node keeps the stage
                stage, last_unit = stage + (last_unit is not None), unit
            stage_of[(layer, j)] = stage
    return stage_of


def derive_tasks(mo: ModelOps, plan: NanoPlan, wl: Workload, cost: CostModel, layers: int = 1) -> tuple[SimTask, ...]:
    """The tasks of `layers` consecutive decoder layers of `mo` under `plan` for one step of `wl`."""
    names = mo.names
    cuts = {o.name: op_cuts(plan, o.name, o.kind, wl) for o in mo.ops}
    stage_of = op_stages(mo, plan, layers)
    proto: list[tuple[int, int, int, tuple[int, int]]] = []  # (layer, op position, nano, rows)
    pieces: dict[tuple[int, str], list[int]] = {}
    for layer in range(layers):
        for j, o in enumerate(mo.ops):
            c = cuts[o.name]
            for k in range(len(c) - 1):
                pieces.setdefault((layer, o.name), []).append(len(proto))
                proto.append((layer, j, k, (c[k], c[k + 1])))
    deps: list[list[int]] = []
    for layer, j, _, (a, b) in proto:
        d: set[int] = set()
        for src in mo.ops[j].inputs:
            src_layer, src_op = (layer - 1, src[len(PREV) :]) if src.startswith(PREV) else (layer, src)
            if src_layer < 0 or src_op not in names:
                continue
            for pi in pieces[(src_layer, src_op)]:
                pa, pb = proto[pi][3]
                if max(a, pa) < min(b, pb):
                    d.add(pi)
        deps.append(sorted(d))
    keys = _queue_keys(mo, plan, wl, proto, stage_of)
    order = priority_topo(deps, keys)
    new = {old: i for i, old in enumerate(order)}
    tasks = []
    for old in order:
        layer, j, k, (a, b) = proto[old]
        o = mo.ops[j]
        p = plan.placement(o.name)
        share = p.share_of(k)
        work = cost.calibrated(o.name, piece_work(o, a, b, wl), share)
        kernel = gemm_config(cost.hw, b - a, o.n, share).describe() if o.kind == "gemm" else ""
        tasks.append(
            SimTask(new[old], layer, o.name, k, (a, b), plan.unit_index(p.unit_of(k)), share,
                    tuple(sorted(new[x] for x in deps[old])), work, cost.category(work), kernel)
        )  # fmt: skip
    return tuple(tasks)


def _queue_keys(
    mo: ModelOps,
    plan: NanoPlan,
    wl: Workload,
    proto: list[tuple[int, int, int, tuple[int, int]]],
    stage_of: dict[tuple[int, int], int],
) -> list[tuple[float, int]]:
    """Each nano-op's priority in the global queue order: the runtime's (stage + first row / rows + delay, graph
    position), or, for a plan with planned orders, (layer + the placement's order of that nano-batch, graph
    position) — a periodic schedule whose nano-ops of one layer may queue among the next layer's."""
    npos = len(mo.ops)
    if plan.ordered:
        missing = [o.name for o in mo.ops if len(plan.placement(o.name).order) != plan.placement(o.name).num_nano]
        if missing:
            raise ValueError(f"plan orders some nano-ops but not those of {missing}; give every placement an order")
        return [(layer + plan.placement(mo.ops[j].name).order[k], layer * npos + j) for layer, j, k, _ in proto]
    delay = {o.name: plan.placement(o.name).delay for o in mo.ops}
    rows = wl.dense_batch
    return [(stage_of[(layer, j)] + r[0] / rows + delay[mo.ops[j].name], layer * npos + j)
            for layer, j, _, r in proto]  # fmt: skip


__all__ = ["SimTask", "derive_tasks", "op_cuts", "op_stages"]

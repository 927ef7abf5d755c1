"""`NanoPlan`: a pipeline plan as the planner searches it — per op of the layer, its nano-batch row fractions,
the execution unit of each nano-batch, each nano-op's resource share and kernel config — plus what it was
searched for (model, device, workload, precision, tp). Frozen data with a versioned JSON form.

It says the same thing as the runtime's `lowbit.runtime.plan.PipelinePlan` (rules by node-name pattern, one
per op, fractions + units, tile) plus the shares and planned queue orders; `to_pipeline_plan` converts (ops
without a graph node are dropped). Row cuts follow `lowbit.runtime.plan.nano_ranges`, so
the simulator and the runtime cut the same rows.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lowbit.planner.ops import ModelOps
from lowbit.planner.workload import Workload
from lowbit.runtime.plan import OpRule, PipelinePlan, PlanError, Unit

NANOPLAN_VERSION = 1


@dataclass(frozen=True)
class Placement:
    op: str  # the op's name in the layer (ops.py)
    fractions: tuple[float, ...] = (1.0,)  # row fraction of each nano-batch, in row order
    units: tuple[str, ...] = ("compute",)  # one unit for all nano-batches, or one per nano-batch
    shares: tuple[float, ...] = (1.0,)  # resource share (fraction of SMs / cores): one, or one per nano-batch
    kernels: tuple[str, ...] = ()  # kernel config per nano-batch (informational: what the cost model chose)
    delay: float = 0.0  # stages added to the op's queue-order key (tasks.py): its nano-ops queue behind later work
    order: tuple[float, ...] = ()  # planned queue key of each nano-op, in layers (tasks.py); (): the runtime's rule

    def __post_init__(self) -> None:
        n = len(self.fractions)
        if not n or any(not (isinstance(f, (int, float)) and f > 0) for f in self.fractions):
            raise PlanError(f"placement {self.op}: fractions {self.fractions} must be positive numbers")
        if not math.isclose(sum(self.fractions), 1.0, abs_tol=1e-6):
            raise PlanError(f"placement {self.op}: fractions {self.fractions} sum to {sum(self.fractions):g}, not 1")
        if len(self.units) not in (1, n):
            raise PlanError(f"placement {self.op}: {len(self.units)} units for {n} nano-batches; give 1 or {n}")
        if isinstance(self.delay, bool) or not isinstance(self.delay, (int, float)) or not 0 <= self.delay < 1e6:
            raise PlanError(f"placement {self.op}: delay {self.delay!r} must be a non-negative number of stages")
        if len(self.order) not in (0, n) or any(not math.isfinite(k) for k in self.order):
            raise PlanError(
                f"placement {self.op}: order {self.order} must be empty or {n} finite queue keys (one per nano-batch)"
            )
        if len(self.shares) not in (1, n) or any(not 0 < s <= 1 for s in self.shares):
            raise PlanError(
                f"placement {self.op}: shares {self.shares} must be 1 or {n} values in (0, 1] (fractions of the device)"
            )

    @property
    def num_nano(self) -> int:
        return len(self.fractions)

    def unit_of(self, nano: int) -> str:
        return self.units[min(nano, len(self.units) - 1)]

    def share_of(self, nano: int) -> float:
        return self.shares[min(nano, len(self.shares) - 1)]


@dataclass(frozen=True)
class NanoPlan:
    units: tuple[Unit, ...]
    placements: tuple[Placement, ...]
    tile: int = 128
    min_tokens: int = 0
    model: str = ""
    hardware: str = ""
    precision: str = ""
    tp: int = 1
    workload: Workload | None = None
    version: int = NANOPLAN_VERSION

    def __post_init__(self) -> None:
        if self.version != NANOPLAN_VERSION:
            raise PlanError(f"nano plan version {self.version!r}: this lowbit reads {NANOPLAN_VERSION}; re-plan")
        if not self.units:
            raise PlanError("a nano plan needs at least one unit")
        names = [u.name for u in self.units]
        if len(set(names)) != len(names):
            raise PlanError(f"unit names {names} repeat; give each unit its own name")
        ops = [p.op for p in self.placements]
        if len(set(ops)) != len(ops):
            raise PlanError(f"placements name ops {ops} more than once; one placement per op")
        for p in self.placements:
            for u in p.units:
                if u not in names:
                    raise PlanError(f"placement {p.op} names unit {u!r}, which is not in the plan's units {names}")
        if not isinstance(self.tile, int) or self.tile < 1:
            raise PlanError(f"tile {self.tile!r} must be a positive number of token rows")

    def placement(self, op: str) -> Placement:
        """The op's placement; an op the plan does not name runs unsplit on units[0] with the whole device."""
        for p in self.placements:
            if p.op == op:
                return p
        return Placement(op, (1.0,), (self.units[0].name,), (1.0,))

    @property
    def ordered(self) -> bool:
        """True when the plan sets its own queue order (a placement has `order`; then every op needs one: tasks.py,
        `to_pipeline_plan`)."""
        return any(p.order for p in self.placements)

    def unit_index(self, name: str) -> int:
        return [u.name for u in self.units].index(name)

    def with_placements(self, placements: Mapping[str, Placement]) -> NanoPlan:
        new = tuple(placements.get(p.op, p) for p in self.placements)
        extra = tuple(p for op, p in placements.items() if op not in {q.op for q in self.placements})
        return NanoPlan(self.units, new + extra, self.tile, self.min_tokens, self.model, self.hardware,
                        self.precision, self.tp, self.workload)  # fmt: skip

    def describe(self) -> str:
        lines = [f"units: {', '.join(f'{u.name} ({u.kind})' for u in self.units)}; tile {self.tile}"]
        for p in self.placements:
            parts = []
            for i, f in enumerate(p.fractions):
                parts.append(f"{f:.3f}@{p.unit_of(i)}:{p.share_of(i):.2f}" + (f"#{p.order[i]:.3f}" if p.order else ""))
            lines.append(f"  {p.op:<15} " + " ".join(parts))
        return "\n".join(lines)

    # -- conversion -----------------------------------------------------------------------------------------
    def to_pipeline_plan(self, mo: ModelOps) -> PipelinePlan:
        """The runtime plan: one rule per op with a graph node (by its name pattern), same fractions, units,
        shares and planned queue orders (the nano executor keys its queues by them as tasks.py does); the units
        keep their kinds and streams. Ops without a graph node are dropped."""
        rules = []
        if self.ordered:
            missing = [o.name for o in mo.ops if o.pattern is not None and not self.placement(o.name).order]
            if missing:
                raise PlanError(
                    f"placements {missing} have no planned order while others do; give every op an order "
                    "(search.orders_from_schedule) or none"
                )
        else:
            delayed = [p.op for p in self.placements if p.delay]
            if delayed:
                raise PlanError(
                    f"placements {delayed} have queue delays, which the runtime's nano executor does not honour "
                    "(it orders nano-ops by stage, first row, graph order, or by planned orders); search without "
                    "--delays, or with --order (planned orders, which the runtime runs)"
                )
        for op in mo.ops:
            if op.pattern is None:
                continue
            p = self.placement(op.name)
            rules.append(OpRule(pattern=op.pattern, fractions=p.fractions, units=p.units, shares=p.shares,
                                order=p.order))  # fmt: skip
        return PipelinePlan(self.units, tuple(rules), tile=self.tile, min_tokens=self.min_tokens)

    # -- JSON -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "tile": self.tile,
            "min_tokens": self.min_tokens,
            "model": self.model,
            "hardware": self.hardware,
            "precision": self.precision,
            "tp": self.tp,
            "workload": None if self.workload is None else self.workload.to_dict(),
            "units": [{"name": u.name, "kind": u.kind, "cores": list(u.cores), "stream": u.stream} for u in self.units],
            "placements": [
                {
                    "op": p.op,
                    "fractions": list(p.fractions),
                    "units": list(p.units),
                    "shares": list(p.shares),
                    "kernels": list(p.kernels),
                    "delay": p.delay,
                    **({"order": list(p.order)} if p.order else {}),
                }
                for p in self.placements
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @staticmethod
    def from_json(text: str | Mapping[str, Any]) -> NanoPlan:
        d = json.loads(text) if isinstance(text, str) else text
        if not isinstance(d, Mapping):
            raise PlanError(f"nano plan is {type(d).__name__}; it must be a JSON object")
        known = {"version", "tile", "min_tokens", "model", "hardware", "precision", "tp", "workload", "units",
                 "placements"}  # fmt: skip
        unknown = sorted(set(d) - known)
        if unknown:
            raise PlanError(f"nano plan has unknown key(s) {unknown}; the known keys are {sorted(known)}")
        if d.get("version") != NANOPLAN_VERSION:
            raise PlanError(f"nano plan version {d.get('version')!r}: this lowbit reads {NANOPLAN_VERSION}; re-plan")
        units = tuple(Unit(u["name"], u.get("kind", "compute"), tuple(u.get("cores", ())), u.get("stream"))
                      for u in d["units"])  # fmt: skip
        placements = []
        for i, p in enumerate(d.get("placements", [])):
            extra = sorted(set(p) - {"op", "fractions", "units", "shares", "kernels", "delay", "order"})
            if extra:
                raise PlanError(f"nano plan placements[{i}] has unknown key(s) {extra}")
            placements.append(Placement(p["op"], tuple(p["fractions"]), tuple(p["units"]),
                                        tuple(p.get("shares", (1.0,))), tuple(p.get("kernels", ())),
                                        p.get("delay", 0.0), tuple(p.get("order", ()))))  # fmt: skip
        wl = d.get("workload")
        return NanoPlan(units, tuple(placements), d.get("tile", 128), d.get("min_tokens", 0), d.get("model", ""),
                        d.get("hardware", ""), d.get("precision", ""), d.get("tp", 1),
                        None if wl is None else Workload.from_dict(dict(wl)))  # fmt: skip


def fractions_of_cuts(cuts: tuple[int, ...] | list[int], rows: int) -> tuple[float, ...]:
    """Row fractions of nano-batches cut at `cuts` (0 < c1 < ... < rows, ends excluded) of `rows` rows; the last
    fraction is 1 - the others, so the fractions sum to 1 exactly as the runtime checks."""
    edges = [0, *cuts, rows]
    fr = [(b - a) / rows for a, b in itertools.pairwise(edges)]
    return (*fr[:-1], 1.0 - sum(fr[:-1]))


__all__ = ["NANOPLAN_VERSION", "NanoPlan", "Placement", "fractions_of_cuts"]

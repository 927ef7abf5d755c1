"""`PipelinePlan`: how the nano-batch executor (nano.py) splits a step's dense batch and where each piece runs.

A plan is frozen data with a versioned JSON form (`to_json` / `from_json`), so an artifact can carry one and
a search (issue 7) can produce one. It holds

- `units`: the execution units, each a worker with an ordered task queue — `kind` says what it is meant to
  overlap (compute-bound GEMMs, memory-bound decode attention, network-bound collectives); on the CPU a unit
  is a thread pinned to `cores` (empty: not pinned), on a GPU it launches on CUDA stream `stream` (units with
  the same index share a stream; None: a stream of its own).
- `rules`: first match wins. A rule matches a node by op kind (`ops`: op names or the class names of
  `OP_CLASSES`, e.g. "norm") and/or by a regex over the node name (`pattern`, full match); it splits the
  node's token rows into `len(fractions)` nano-batches of those row fractions and runs nano-batch i on
  `units[i]` (or all on `units[0]` when one unit is named). A node no rule matches runs unsplit on unit 0.
  Optional `shares`: the resource share (fraction of SMs / cores) of each nano-op, as the planner (issue 7,
  lowbit/planner) searched it; carried in the JSON only when set. The nano executor runs each nano-op inside
  `lowbit.kernels.launch.resource_share(share)`: persistent kernels it launches take round(share · SMs)
  programs (`PersistentLauncher`); kernels launched on a grid ignore it.
  Optional `order`: a planned queue key per nano-batch, in layers (the planner's `lowbit plan --order`,
  lowbit/planner/README.md "Queue order"); carried in the JSON only when set. A plan whose rules carry orders
  (all of them: `ordered`) replaces the executor's queue rule (stage, first row, graph position) by
  (layer of the node + order[k], graph position), see nano.py `planned_keys`.
- `tile`: nano-batch boundaries are rounded to multiples of `tile` token rows (the GEMM tile; NanoFlow used
  128 on A100); a boundary that rounds onto another or onto an end disappears, so a small step splits less.
- `min_tokens`: steps with fewer token rows run the unsplit schedule.

Splits of consecutive ops may differ: the executor derives each nano-op's dependencies from the
intersection of its token rows with its producers' rows, never from equal splits.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lowbit.graph.verify import OPS

PLAN_VERSION = 1
UNIT_KINDS = ("compute", "memory", "network")
OP_KINDS = tuple(OPS)  # the graph contract's ops
OP_CLASSES: Mapping[str, tuple[str, ...]] = {
    "norm": ("rms_norm", "add_rms_norm", "rms_norm_quant", "add_rms_norm_quant"),
    "gemm": ("linear",),
    "elementwise": ("add", "silu_mul", "rope", "embedding"),
    "network": ("all_reduce", "all_gather"),  # tensor-parallel collectives (lowbit.parallel)
}

UnitKind = Literal["compute", "memory", "network"]


class PlanError(ValueError):
    """A plan (or its JSON) is malformed; the message names the field, the value and the fix."""


@dataclass(frozen=True)
class Unit:
    name: str
    kind: UnitKind = "compute"
    cores: tuple[int, ...] = ()  # CPU cores the worker thread is pinned to (empty: not pinned)
    stream: int | None = None  # GPU stream index (None: a stream of its own)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise PlanError(f"unit name {self.name!r}: give a non-empty string")
        if self.kind not in UNIT_KINDS:
            raise PlanError(f"unit {self.name}: kind {self.kind!r} is not one of {list(UNIT_KINDS)}")
        if any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in self.cores):
            raise PlanError(f"unit {self.name}: cores {self.cores} must be non-negative core ids")
        if len(set(self.cores)) != len(self.cores):
            raise PlanError(f"unit {self.name}: cores {self.cores} repeat a core; list each once")
        if self.stream is not None and (not isinstance(self.stream, int) or self.stream < 0):
            raise PlanError(f"unit {self.name}: stream {self.stream!r} must be a non-negative index or null")


@dataclass(frozen=True)
class OpRule:
    ops: tuple[str, ...] = ()  # op names or OP_CLASSES names; empty: any op
    pattern: str | None = None  # regex, full match over the node name; None: any name
    fractions: tuple[float, ...] = (1.0,)  # row fraction of each nano-batch, in row order; sums to 1
    units: tuple[str, ...] = ()  # one unit for all nano-batches, or one per nano-batch
    shares: tuple[float, ...] = ()  # resource share (fraction of SMs / cores) per nano-op: () none, one, or one each
    order: tuple[float, ...] = ()  # planned queue key per nano-batch, in layers: () none, else one each

    def __post_init__(self) -> None:
        if not self.ops and self.pattern is None:
            raise PlanError("a rule needs `ops` or `pattern` (or both); a catch-all is pattern '.*'")
        for op in self.ops:
            if op not in OP_KINDS and op not in OP_CLASSES:
                raise PlanError(f"rule op {op!r} is not an op or op class; use one of {[*OP_KINDS, *OP_CLASSES]}")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise PlanError(f"rule pattern {self.pattern!r} is not a valid regex ({e})") from None
        if not self.fractions or any(
            isinstance(f, bool) or not (isinstance(f, (int, float)) and f > 0) for f in self.fractions
        ):
            raise PlanError(f"rule {self.describe()}: fractions {self.fractions} must be positive numbers")
        if not math.isclose(sum(self.fractions), 1.0, abs_tol=1e-6):
            raise PlanError(
                f"rule {self.describe()}: fractions {self.fractions} sum to {sum(self.fractions):g}; they must sum to 1"
            )
        if len(self.units) not in (1, len(self.fractions)):
            raise PlanError(
                f"rule {self.describe()}: {len(self.units)} units {self.units} for {len(self.fractions)} nano-batches;"
                f" name one unit or one per nano-batch"
            )
        if len(self.shares) not in (0, 1, len(self.fractions)) or any(
            isinstance(x, bool) or not (isinstance(x, (int, float)) and 0 < x <= 1) for x in self.shares
        ):
            raise PlanError(
                f"rule {self.describe()}: shares {self.shares} must be empty, one, or one per nano-batch, each in"
                f" (0, 1] (the fraction of the device's SMs / cores the nano-op may use)"
            )
        if len(self.order) not in (0, len(self.fractions)) or any(
            isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in self.order
        ):
            raise PlanError(
                f"rule {self.describe()}: order {self.order} must be empty or {len(self.fractions)} finite numbers,"
                f" one queue key per nano-batch in layers (the planner's Placement.order; `lowbit plan --order`)"
            )

    @property
    def num_nano(self) -> int:
        return len(self.fractions)

    def describe(self) -> str:
        return f"ops={list(self.ops)} pattern={self.pattern!r}"

    def matches(self, op: str, name: str) -> bool:
        ops = {o for k in self.ops for o in OP_CLASSES.get(k, (k,))}
        return (not ops or op in ops) and (self.pattern is None or re.fullmatch(self.pattern, name) is not None)

    def unit_of(self, nano: int) -> str:
        return self.units[nano if len(self.units) > 1 else 0]


@dataclass(frozen=True)
class PipelinePlan:
    units: tuple[Unit, ...]
    rules: tuple[OpRule, ...] = ()
    tile: int = 1  # nano-batch boundaries are multiples of this many token rows
    min_tokens: int = 0  # steps with fewer token rows run unsplit
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        if self.version != PLAN_VERSION:
            raise PlanError(f"plan version {self.version!r}: this lowbit reads version {PLAN_VERSION}; re-plan")
        if not self.units:
            raise PlanError("a plan needs at least one unit")
        names = [u.name for u in self.units]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise PlanError(f"unit names {dup} repeat; give each unit its own name")
        for r in self.rules:
            for u in r.units:
                if u not in names:
                    raise PlanError(f"rule {r.describe()} names unit {u!r}, which is not in the plan's units {names}")
        if not isinstance(self.tile, int) or self.tile < 1:
            raise PlanError(f"tile {self.tile!r} must be a positive number of token rows (e.g. 16, 128)")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise PlanError(f"min_tokens {self.min_tokens!r} must be a non-negative token count")
        unordered = [r.describe() for r in self.rules if not r.order]
        if self.ordered and unordered:
            raise PlanError(
                f"rules {unordered} have no order while others do; a planned queue order needs an order on every"
                f" rule (or on none: the executor's own queue rule)"
            )

    @property
    def ordered(self) -> bool:
        """True when the rules carry planned queue orders (nano.py keys nano-ops by them)."""
        return any(r.order for r in self.rules)

    def rule_for(self, op: str, name: str) -> OpRule | None:
        return next((r for r in self.rules if r.matches(op, name)), None)

    def unit_index(self, name: str) -> int:
        return [u.name for u in self.units].index(name)

    # -- JSON ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "tile": self.tile,
            "min_tokens": self.min_tokens,
            "units": [{"name": u.name, "kind": u.kind, "cores": list(u.cores), "stream": u.stream} for u in self.units],
            "rules": [
                {"ops": list(r.ops), "pattern": r.pattern, "fractions": list(r.fractions), "units": list(r.units)}
                | ({"shares": list(r.shares)} if r.shares else {})
                | ({"order": list(r.order)} if r.order else {})
                for r in self.rules
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @staticmethod
    def from_json(text: str | Mapping[str, Any]) -> PipelinePlan:
        """The plan of `to_json` text (or its dict); unknown keys, a missing version or a wrong type are refused."""
        d = json.loads(text) if isinstance(text, str) else text
        _expect(d, Mapping, "plan", "a JSON object")
        _keys(d, "plan", required=("version", "units"), optional=("tile", "min_tokens", "rules"))
        if d["version"] != PLAN_VERSION:
            raise PlanError(f"plan version {d['version']!r}: this lowbit reads version {PLAN_VERSION}; re-plan")
        units = []
        for i, u in enumerate(_expect(d["units"], list, "plan.units", "a list")):
            where = f"plan.units[{i}]"
            _expect(u, Mapping, where, "an object")
            _keys(u, where, required=("name",), optional=("kind", "cores", "stream"))
            cores = _expect(u.get("cores", []), list, f"{where}.cores", "a list of core ids")
            units.append(Unit(u["name"], u.get("kind", "compute"), tuple(cores), u.get("stream")))
        rules = []
        for i, r in enumerate(_expect(d.get("rules", []), list, "plan.rules", "a list")):
            where = f"plan.rules[{i}]"
            _expect(r, Mapping, where, "an object")
            _keys(r, where, required=("fractions", "units"), optional=("ops", "pattern", "shares", "order"))
            rules.append(
                OpRule(
                    tuple(_expect(r.get("ops", []), list, f"{where}.ops", "a list of op names")),
                    r.get("pattern"),
                    tuple(_expect(r["fractions"], list, f"{where}.fractions", "a list of numbers")),
                    tuple(_expect(r["units"], list, f"{where}.units", "a list of unit names")),
                    tuple(_expect(r.get("shares", []), list, f"{where}.shares", "a list of numbers")),
                    tuple(_expect(r.get("order", []), list, f"{where}.order", "a list of numbers")),
                )
            )
        return PipelinePlan(tuple(units), tuple(rules), d.get("tile", 1), d.get("min_tokens", 0))


def _expect(v: Any, kind: Any, where: str, what: str) -> Any:
    if not isinstance(v, kind):
        raise PlanError(f"{where} is {type(v).__name__} {v!r}; it must be {what}")
    return v


def _keys(d: Mapping[str, Any], where: str, *, required: Sequence[str], optional: Sequence[str]) -> None:
    unknown = sorted(set(d) - {*required, *optional})
    if unknown:
        raise PlanError(f"{where} has unknown key(s) {unknown}; the known keys are {sorted({*required, *optional})}")
    missing = [k for k in required if k not in d]
    if missing:
        raise PlanError(f"{where} misses key(s) {missing}")


def nano_ranges(num_rows: int, fractions: Sequence[float], tile: int, bounds: Sequence[int] | None = None) -> list[int]:
    """Cut points 0 = c0 < c1 < ... < cn = num_rows of the nano-batches of `fractions` over `num_rows` rows:
    each inner cut rounded to the nearest multiple of `tile`, or, given `bounds` (the sequence boundaries of
    the batch, 0 and num_rows included), snapped to the nearest boundary; ties go down; a cut that lands on
    another or on an end disappears (so does its empty nano-batch)."""
    cuts = [0]
    acc = 0.0
    for f in fractions[:-1]:
        acc += f
        x = acc * num_rows
        if bounds is None:
            c = math.ceil(x / tile - 0.5) * tile  # nearest multiple, ties go down
        else:
            c = min(bounds, key=lambda b: (abs(b - x), b))
        if cuts[-1] < c < num_rows:
            cuts.append(c)
    cuts.append(num_rows)
    return cuts


def unsplit_plan() -> PipelinePlan:
    """One unit, no rules: every op runs on the whole batch, in graph order (the unsplit schedule, threaded)."""
    return PipelinePlan((Unit("compute", "compute"),))


def default_plan(arch: Any = None, device: str = "cpu", *, num_nano: int = 2, tensor_parallel: int = 1) -> PipelinePlan:
    """A NanoFlow-like default: `num_nano` equal nano-batches for every op; GEMMs, norms and element-wise ops on
    a compute unit, attention (memory-bound decode over the paged cache, plus the KV append) on a memory unit,
    so one nano-batch's attention overlaps the next one's GEMMs; with `tensor_parallel` > 1 the collectives
    (all_reduce) on a network unit, so one nano-batch's all_reduce overlaps the next one's GEMMs (one network
    unit: every rank issues its collectives in the same order, see nano.py). Rows in multiples of 128 on a GPU
    (NanoFlow's quantum), 8 on the CPU; steps under two tiles run unsplit. Threads are not pinned: on the CPU the
    kernels' own thread pools spread over the cores (a pinned unit would confine its GEMMs to its cores).
    `arch` is the hook for a model-dependent plan (issue 7's cost model); this default does not depend on it."""
    if device not in ("cpu", "cuda"):
        raise PlanError(f"device {device!r}: use 'cpu' or 'cuda'")
    if not isinstance(tensor_parallel, int) or isinstance(tensor_parallel, bool) or tensor_parallel < 1:
        raise PlanError(f"tensor_parallel {tensor_parallel!r}: give the number of ranks (1, 2, 4 or 8)")
    tile = 128 if device == "cuda" else 8
    even = tuple(1.0 / num_nano for _ in range(num_nano - 1))
    fractions = (*even, 1.0 - sum(even))
    units: tuple[Unit, ...] = (Unit("compute", "compute", stream=0), Unit("memory", "memory", stream=1))
    rules: tuple[OpRule, ...] = (
        OpRule(ops=("attention",), fractions=fractions, units=("memory",)),
        OpRule(pattern=".*", fractions=fractions, units=("compute",)),
    )
    if tensor_parallel > 1:
        units = (*units, Unit("network", "network", stream=2))
        rules = (OpRule(ops=("network",), fractions=fractions, units=("network",)), *rules)
    return PipelinePlan(units, rules, tile=tile, min_tokens=2 * tile)


def priority_topo(deps: Sequence[Sequence[int]], keys: Sequence[tuple[Any, ...]]) -> list[int]:
    """A topological order of tasks (`deps[i]` = the tasks i waits for) that always takes the ready task with
    the smallest key: the queue order of the nano executor's units, which the planner's simulator reproduces."""
    users: list[list[int]] = [[] for _ in deps]
    waiting = [len(d) for d in deps]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    ready = [(keys[i], i) for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if not waiting[u]:
                heapq.heappush(ready, (keys[u], u))
    if len(order) != len(deps):
        raise PlanError("the nano-op graph has a cycle (an op reads a later op of its own layer)")
    return order


__all__ = [
    "OP_CLASSES",
    "OP_KINDS",
    "PLAN_VERSION",
    "UNIT_KINDS",
    "OpRule",
    "PipelinePlan",
    "PlanError",
    "Unit",
    "default_plan",
    "nano_ranges",
    "priority_topo",
    "unsplit_plan",
]

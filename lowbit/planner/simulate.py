"""A discrete-event simulator of a plan's nano-ops on one device.

Each unit is a FIFO stream (tasks.py gives the order). A task takes its unit when its dependencies are done and
it is at the head of the queue, waits the launch gap, then progresses at a rate (fraction of its work per
second) set, between events, by everything running at that moment:

1. Resource shares: a task uses its own share of the device; when the running shares sum past 1 they are all
   scaled down to fit (a plan the search emits never oversubscribes; `SimResult.peak_share` reports it).
2. Roofline on the share (cost.py): rate0 = 1 / max(F/C, Y/M, X/N), divided by the interference factor — the
   largest slowdown any other running category inflicts on this task's category (Hardware.interference).
3. Shared bandwidth: the link, then HBM, are divided among the running tasks by max-min fairness
   (water-filling) over what each would move at its rate; a task gets rate = min(rate0, allocation / bytes).

Events are task starts, launch-gap ends and completions; between them rates are constant, so the simulation is
exact for this model. `simulate_step` runs a window of layers and extrapolates the steady-state layer period
to the model's depth, then adds the head (final norm, lm_head) run alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lowbit.planner.cost import CostModel
from lowbit.planner.nanoplan import NanoPlan
from lowbit.planner.ops import ModelOps, head_work
from lowbit.planner.tasks import SimTask, derive_tasks
from lowbit.planner.workload import Workload

EPS = 1e-12


@dataclass(frozen=True)
class Segment:
    """An interval with constant rates: the tasks running, what each moves per second, and their shares."""

    t0: float
    t1: float
    running: tuple[int, ...]
    rates: tuple[float, ...]  # fraction of the task's work per second
    hbm: tuple[float, ...]  # HBM bytes/s each moves
    net: tuple[float, ...]  # link bytes/s each moves
    shares: float  # sum of the running tasks' requested shares


@dataclass(frozen=True)
class SimResult:
    tasks: tuple[SimTask, ...]
    start: tuple[float, ...]  # the task takes its unit (launch gap begins)
    end: tuple[float, ...]
    makespan: float
    peak_share: float  # the largest sum of requested shares of tasks running at once
    segments: tuple[Segment, ...] = ()  # with trace=True


def waterfill(demands: list[float], capacity: float) -> list[float]:
    """Max-min fair shares of `capacity` for `demands`: nobody gets more than asked, the rest is split evenly."""
    alloc = [0.0] * len(demands)
    left, todo = capacity, sorted(range(len(demands)), key=lambda i: demands[i])
    while todo:
        fair = left / len(todo)
        i = todo[0]
        if demands[i] <= fair:
            alloc[i] = demands[i]
            left -= demands[i]
            todo.pop(0)
        else:
            for j in todo:
                alloc[j] = fair
            break
    return alloc


def _rates(
    tasks: tuple[SimTask, ...], running: list[int], cost: CostModel, busy_cache: dict[tuple[int, float], float]
) -> tuple[list[float], list[float], list[float]]:
    hw = cost.hw
    total = sum(tasks[i].share for i in running)
    scale = 1.0 / max(1.0, total)
    rho, ys, xs = [], [], []
    for i in running:
        t = tasks[i]
        f = max((hw.interference_factor(t.category, tasks[j].category) for j in running if j != i), default=1.0)
        busy = busy_cache.get((i, scale))
        if busy is None:
            busy = busy_cache[(i, scale)] = cost.rates(t.work, t.share * scale).time(t.work)
            if busy == math.inf:
                raise ValueError(
                    f"{t.label} ({t.work.kind}) cannot run on {hw.name}: a resource it needs has no rate "
                    f"(net_gbs {hw.net_gbs}: collectives need an interconnect; use tp 1 or a GPU preset)"
                )
        rho.append(math.inf if busy <= 0 else 1.0 / (busy * f))
        ys.append(t.work.hbm_bytes)
        xs.append(t.work.net_bytes)
    for need, cap in ((xs, hw.net_gbs * 1e9), (ys, hw.hbm_gbs * 1e9)):
        idx = [k for k, b in enumerate(need) if b > 0 and rho[k] < math.inf]
        if not idx:
            continue
        alloc = waterfill([rho[k] * need[k] for k in idx], cap)
        for k, a in zip(idx, alloc):
            rho[k] = min(rho[k], a / need[k])
    hbm = [r * y if r < math.inf else 0.0 for r, y in zip(rho, ys)]
    net = [r * x if r < math.inf else 0.0 for r, x in zip(rho, xs)]
    return rho, hbm, net


def simulate(
    tasks: tuple[SimTask, ...], num_units: int, cost: CostModel, *, trace: bool = False, dispatch: str = "fifo"
) -> SimResult:
    """Run `tasks` (in their global order) on `num_units` units; times in seconds. `dispatch` "fifo": each unit
    runs its tasks strictly in order (the runtime's worker queues); "ready": a free unit takes the first task in
    its order whose dependencies are done (list scheduling; what a worker that skips blocked tasks would do)."""
    n = len(tasks)
    queues: list[list[int]] = [[] for _ in range(num_units)]
    for t in tasks:
        queues[t.unit].append(t.index)
    users: list[list[int]] = [[] for _ in range(n)]
    waiting = [len(t.deps) for t in tasks]
    for t in tasks:
        for d in t.deps:
            users[d].append(t.index)
    head = [0] * num_units
    busy: list[int | None] = [None] * num_units
    remaining = [1.0] * n
    ready_at = [math.inf] * n
    start, end = [math.nan] * n, [math.nan] * n
    running: list[int] = []
    launching: list[int] = []
    launch = cost.hw.launch_us * 1e-6
    segments: list[Segment] = []
    busy_cache: dict[tuple[int, float], float] = {}
    t_now, done, peak = 0.0, 0, 0.0
    while done < n:
        for u in range(num_units):
            if busy[u] is not None or head[u] >= len(queues[u]):
                continue
            if dispatch == "fifo":
                pick = head[u] if waiting[queues[u][head[u]]] == 0 else None
            else:  # "ready": the first task in queue order whose dependencies are done
                pick = next((k for k in range(head[u], len(queues[u])) if waiting[queues[u][k]] == 0), None)
            if pick is None:
                continue
            i = queues[u].pop(pick)
            queues[u].insert(head[u], i)
            head[u] += 1
            busy[u] = i
            start[i], ready_at[i] = t_now, t_now + launch
            launching.append(i)
        for i in [i for i in launching if ready_at[i] <= t_now + EPS]:
            launching.remove(i)
            running.append(i)
        if not running and not launching:
            stuck = [tasks[queues[u][head[u]]].label for u in range(num_units) if head[u] < len(queues[u])]
            raise RuntimeError(f"simulation deadlock: the unit heads {stuck} wait on tasks behind them")
        rho, hbm, net = _rates(tasks, running, cost, busy_cache) if running else ([], [], [])
        peak = max(peak, sum(tasks[i].share for i in running))
        dt: float = math.inf
        first: int | None = None
        for k, i in enumerate(running):
            left = 0.0 if rho[k] == math.inf else remaining[i] / rho[k]
            if left < dt:
                dt, first = left, i
        for i in launching:
            if ready_at[i] - t_now < dt:
                dt, first = ready_at[i] - t_now, None
        if trace and dt > 0 and running:
            segments.append(Segment(t_now, t_now + dt, tuple(running), tuple(rho), tuple(hbm), tuple(net),
                                    sum(tasks[i].share for i in running)))  # fmt: skip
        for k, i in enumerate(running):
            remaining[i] = 0.0 if i == first or rho[k] == math.inf else remaining[i] - rho[k] * dt
        t_now += dt
        for i in [i for i in running if remaining[i] <= 1e-9]:
            running.remove(i)
            end[i] = t_now
            busy[tasks[i].unit] = None
            done += 1
            for u in users[i]:
                waiting[u] -= 1
    return SimResult(tasks, tuple(start), tuple(end), t_now, peak, tuple(segments))


@dataclass(frozen=True)
class StepEstimate:
    """One serving step of the whole model under a plan."""

    seconds: float
    layer_period: float  # steady-state time per decoder layer
    head_seconds: float
    window: SimResult  # the simulated layers
    tokens_per_s: float  # per device: dense_batch / seconds / tp (NanoFlow's tokens/s/GPU)


def simulate_step(
    mo: ModelOps,
    plan: NanoPlan,
    wl: Workload,
    cost: CostModel,
    *,
    window: int = 3,
    trace: bool = False,
    dispatch: str = "fifo",
) -> StepEstimate:
    """The step time of all layers: `window` layers simulated, plus the steady-state layer period times the
    remaining layers, plus the head. The period is (T(window) - T(window - 2)) / 2 from two simulations (a
    layer's own end time would mislead: the unit queues may run a nano-batch through several layers first)."""
    w = max(1, min(window, mo.num_layers))
    res = simulate(derive_tasks(mo, plan, wl, cost, w), len(plan.units), cost, trace=trace, dispatch=dispatch)
    if w < mo.num_layers:
        base = max(1, w - 2)
        short = simulate(derive_tasks(mo, plan, wl, cost, base), len(plan.units), cost, dispatch=dispatch).makespan
        period = (res.makespan - short) / (w - base) if w > base else res.makespan / w
    else:
        period = res.makespan / w
    head = sum(cost.time(wk) for _, wk in head_work(mo, wl))
    seconds = res.makespan + (mo.num_layers - w) * period + head
    return StepEstimate(seconds, period, head, res, wl.dense_batch / seconds / mo.tp)


def optimal_tokens_per_s(mo: ModelOps, cost: CostModel) -> float:
    """NanoFlow's optimal throughput per device: Compute / (2 · P_model), Compute = the dense GEMM rate of the
    dtype the GEMMs run in (int8 for W4A8: twice the bf16 ceiling)."""
    return cost.hw.peak(mo.precision.compute_dtype) / (2.0 * mo.num_params)


__all__ = ["Segment", "SimResult", "StepEstimate", "optimal_tokens_per_s", "simulate", "simulate_step", "waterfill"]

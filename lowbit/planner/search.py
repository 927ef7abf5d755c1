"""Automatic search of a nano-batch pipeline plan over the simulator (NanoFlow's two stages, with greedy /
coordinate descent in place of their Gurobi MILPs).

Stage I — structure, interference ignored (every interference factor 1): the number of nano-batches of the
attention block (input norm, QKV, rope, attention) and of the rest of the layer, their row cuts (multiples of
the tile, decode/prefill boundary included as a candidate), which unit the elementwise ops run on, and one share
per unit kind. Stage II — resource shares per nano-op with interference on, under the constraint that the
shares of nano-ops that overlap in the simulated schedule fit the device (peak sum <= 1). Stages I and II
split the first `descent_evals` evaluations; stage III (anneal.py) spends the other max_evals - descent_evals on
simulated annealing over structure, shares and order jointly from stage II's plan, then runs stage II's descent on its
result.

    res = search(mo, wl, cost, SearchConfig(max_evals=400, time_budget_s=20))
    res.plan, res.estimate.tokens_per_s, res.history

The objective is the simulated step time (simulate.simulate_step). Every candidate is simulated; the best so
far is returned when the evaluation or time budget runs out. `progress(stage, evals, best_seconds)` is called
after each improvement. With the evaluation budget binding (not the time budget) the result is a pure
function of the inputs and the config (stage III draws from `random.Random(seed)`).
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from lowbit.planner.anneal import anneal
from lowbit.planner.cost import CostModel, gemm_config
from lowbit.planner.nanoplan import NanoPlan, Placement, fractions_of_cuts
from lowbit.planner.ops import ModelOps
from lowbit.planner.schedules import ATTN_BLOCK, KIND_UNIT, NANOFLOW_ATTN, NANOFLOW_MLP, units_for
from lowbit.planner.simulate import SimResult, StepEstimate, simulate_step
from lowbit.planner.tasks import op_cuts, op_stages
from lowbit.planner.workload import Workload
from lowbit.runtime.plan import nano_ranges

Progress = Callable[[str, int, float], None]


@dataclass(frozen=True)
class SearchConfig:
    max_evals: int = 600  # simulations, all stages together
    time_budget_s: float = 60.0
    max_nano: int = 4  # nano-batches per block: 1..max_nano
    tile: int = 128  # row quantum of the cuts (NanoFlow: 128 on A100)
    window: int = 3  # layers simulated per evaluation
    stage1_fraction: float = 0.5  # of the descents' evaluations (descent_evals) for stage I
    delays: bool = False  # search queue delays too (the runtime's executor does not honour them)
    order: bool = False  # plan the queue order (Placement.order; the runtime runs it as OpRule.order)
    order_fraction: float = 0.25  # of the descents' evaluations for the order descent (with order)
    descent_evals: int = 400  # stages I and II split min(max_evals, this); stage III (anneal.py) the rest
    anneal_t0: float = 0.002  # stage III's initial temperature (relative slowdown accepted with probability 1/e)
    anneal_rounds: int = 3  # stage III restarts from its best plan this many times (reheats)
    anneal_repair: bool = True  # after a structural move, the compute nano-ops' shares fitted to the new overlaps
    polish_fraction: float = 0.1  # of stage III's evaluations: stage II's descent (and the order's) on its result
    seed: int = 0  # stage III's random moves (same seed, same inputs, same budget: same plan)
    dispatch: str = "fifo"  # simulate.simulate: "fifo" (the runtime's workers) or "ready" (list scheduling)
    progress: Progress | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SearchResult:
    plan: NanoPlan
    estimate: StepEstimate
    stage1_plan: NanoPlan
    stage1_estimate: StepEstimate
    evals: int
    elapsed_s: float
    history: tuple[tuple[str, int, float], ...]  # (stage, evals so far, best step seconds) at each improvement


@dataclass
class _Search:
    mo: ModelOps
    wl: Workload
    cost: CostModel
    cfg: SearchConfig
    deadline: float
    evals: int = 0
    history: list[tuple[str, int, float]] = field(default_factory=list)
    memo: dict[tuple, StepEstimate] = field(default_factory=dict)

    def budget_left(self, limit: int) -> bool:
        return self.evals < limit and time.perf_counter() < self.deadline

    def evaluate(self, plan: NanoPlan, cost: CostModel, dispatch: str | None = None) -> StepEstimate:
        dispatch = dispatch or self.cfg.dispatch
        key = (plan.placements, cost.hw.interference, dispatch)
        est = self.memo.get(key)
        if est is None:
            self.evals += 1
            est = self.memo[key] = simulate_step(self.mo, plan, self.wl, cost, window=self.cfg.window,
                                                 dispatch=dispatch)  # fmt: skip
        return est

    def note(self, stage: str, seconds: float) -> None:
        self.history.append((stage, self.evals, seconds))
        if self.cfg.progress is not None:
            self.cfg.progress(stage, self.evals, seconds)


@dataclass(frozen=True)
class _Structure:
    """Stage I's variables: cuts per block, the unit of each elementwise op, each op's queue delay, and one
    share per unit kind."""

    attn_cuts: tuple[int, ...]
    mlp_cuts: tuple[int, ...]
    elementwise_unit: tuple[tuple[str, str], ...]  # (op, unit)
    shares: tuple[tuple[str, float], ...]  # (unit, share)
    delays: tuple[tuple[str, float], ...] = ()  # (op, stages), only the non-zero ones

    def plan(self, mo: ModelOps, wl: Workload, cfg: SearchConfig, hardware: str) -> NanoPlan:
        units = units_for(mo)
        shares, ew, delays = dict(self.shares), dict(self.elementwise_unit), dict(self.delays)
        placements = []
        for o in mo.ops:
            cuts = self.attn_cuts if o.name in ATTN_BLOCK else self.mlp_cuts
            unit = ew.get(o.name, KIND_UNIT[o.kind])
            placements.append(Placement(o.name, fractions_of_cuts(cuts, wl.dense_batch), (unit,), (shares[unit],),
                                        delay=delays.get(o.name, 0)))  # fmt: skip
        return NanoPlan(units, tuple(placements), cfg.tile, 0, mo.name, hardware, mo.precision.name, mo.tp, wl)


def equal_cuts(rows: int, n: int, tile: int) -> tuple[int, ...]:
    """n nano-batches of near-equal rows, cuts on tile multiples (fewer when the batch has too few tiles)."""
    return tile_cuts(rows, (1.0 / n,) * n, tile)


def tile_cuts(rows: int, fractions: tuple[float, ...], tile: int) -> tuple[int, ...]:
    """The inner cuts of `fractions` of `rows` on tile multiples, as the runtime rounds them (nano_ranges)."""
    return tuple(nano_ranges(rows, fractions, tile)[1:-1])


def search(mo: ModelOps, wl: Workload, cost: CostModel, cfg: SearchConfig | None = None) -> SearchResult:
    """The best plan found for `mo` on `cost.hw` at workload `wl` within the budgets of `cfg`."""
    cfg = cfg or SearchConfig()
    t0 = time.perf_counter()
    s = _Search(mo, wl, cost, cfg, t0 + cfg.time_budget_s)
    descents = min(cfg.max_evals, cfg.descent_evals)  # stages I and II; stage III gets the rest
    stage1_limit = max(1, int(descents * cfg.stage1_fraction))
    quiet = replace(cost, hw=cost.hw.scaled_interference(0.0))
    hw_name = cost.hw.name

    # with planned orders, stage I judges a structure by list scheduling (the order it will be given later)
    stage1_dispatch = "ready" if cfg.order else None

    def cost_of(st: _Structure) -> float:
        return s.evaluate(st.plan(mo, wl, cfg, hw_name), quiet, stage1_dispatch).seconds

    # -- stage I: seeds x unit shares, then coordinate descent ---------------------------------------------
    units = [u.name for u in units_for(mo)]
    tile = min(cfg.tile, wl.dense_batch)
    q = cost.hw.min_share
    rows = wl.dense_batch
    ew_ops = [o.name for o in mo.ops if o.kind == "elementwise"]

    def shares_of(mem: float, net: float) -> tuple[tuple[str, float], ...]:
        hw = cost.hw
        sh = {"compute": hw.quantize_share(max(q, 1.0 - mem - (net if "network" in units else 0.0))),
              "memory": hw.quantize_share(max(q, mem))}  # fmt: skip
        if "network" in units:
            sh["network"] = hw.quantize_share(max(q, net))
        return tuple(sorted(sh.items()))

    seeds: list[tuple[tuple[int, ...], tuple[int, ...]]] = [
        (tile_cuts(rows, NANOFLOW_ATTN, tile), tile_cuts(rows, NANOFLOW_MLP, tile))
    ]
    for n in range(1, cfg.max_nano + 1):
        seeds.append((equal_cuts(rows, n, tile), equal_cuts(rows, n, tile)))
    seeds = list(dict.fromkeys(seeds))
    placements_of_ew = [tuple((op, "compute") for op in ew_ops), tuple((op, "memory") for op in ew_ops)]
    if "network" in units:  # norms after an all-reduce queue behind it, off the compute queue (op-major GEMMs)
        after = {"post_norm", "input_norm"}
        placements_of_ew.append(tuple((op, "network" if op in after else "compute") for op in ew_ops))
    share_seeds = (
        [(0.1, 0.05), (0.15, 0.05), (0.2, 0.1)] if "network" in units else [(0.1, 0.0), (0.15, 0.0), (0.25, 0.0)]
    )
    best: _Structure | None = None
    best_t = math.inf
    pipelining = (False, True) if cfg.delays else (False,)
    for (ac, mc), ew, (mem, net), piped in itertools.product(seeds, placements_of_ew, share_seeds, pipelining):
        if not s.budget_left(stage1_limit):
            break
        st = _Structure(ac, mc, ew, shares_of(mem, net))
        if piped:
            st = replace(st, delays=pipelined_delays(mo, st.plan(mo, wl, cfg, hw_name)))
        t = cost_of(st)
        if t < best_t:
            best, best_t = st, t
            s.note("I:seeds", t)
    assert best is not None
    improved = True
    while improved and s.budget_left(stage1_limit):
        improved = False
        for cand in _structure_moves(best, wl, tile, mo, shares_of, cfg.delays):
            if not s.budget_left(stage1_limit):
                break
            t = cost_of(cand)
            if t < best_t - 1e-12:
                best, best_t, improved = cand, t, True
                s.note("I:descent", t)
    stage1_plan = best.plan(mo, wl, cfg, hw_name)
    stage1_est = s.evaluate(stage1_plan, cost)
    if cfg.order:  # freeze the list-scheduled order into FIFO queues, then descend over it
        ordered = orders_from_schedule(mo, stage1_plan, wl, cost, cfg.window)
        stage1_plan, stage1_est = _order_descent(
            s, ordered, s.evaluate(ordered, cost), stage1_limit + int(descents * cfg.order_fraction)
        )

    # -- stage II -------------------------------------------------------------------------------------------
    plan, est = _stage2(s, stage1_plan, stage1_est, max(1, int(descents)))

    # -- stage III: annealing over structure, shares and order from there, then stage II's descent again ----
    third = cfg.max_evals - descents  # its own evaluations (not what the descents left: they stop when converged)
    if third > 0 and s.budget_left(cfg.max_evals):
        limit = min(cfg.max_evals, s.evals + third)
        polish = int(third * cfg.polish_fraction)
        start = s.evals
        s.note("III:start", est.seconds)
        plan, est = anneal(
            plan, est, lambda p: s.evaluate(p, cost), lambda: s.budget_left(limit - polish), mo, rows,
            cost.hw.share_grid(), random.Random(cfg.seed), spent=lambda: (s.evals - start) / max(1, third - polish),
            t0=cfg.anneal_t0, rounds=cfg.anneal_rounds, repair=cfg.anneal_repair, max_draws=20 * third,
            note=lambda t: s.note("III:anneal", t),
        )  # fmt: skip
        plan, est = _stage2(s, plan, est, limit)
        if plan.ordered:
            plan, est = _order_descent(s, plan, est, limit)
    return SearchResult(_with_kernels(plan, mo, wl, cost), est, stage1_plan, stage1_est, s.evals,
                        time.perf_counter() - t0, tuple(s.history))  # fmt: skip


def _stage2(s: _Search, plan: NanoPlan, est: StepEstimate, limit: int) -> tuple[NanoPlan, StepEstimate]:
    """Coordinate descent over the nano-ops' shares (interference on) while the simulated overlaps fit. Each
    round tries the fill moves of the current schedule first (`_fill_moves`; after one is taken the round starts
    again from the new schedule, whose overlaps moved), then the grid moves (`_share_moves`)."""
    s.note("II:start", est.seconds)
    grid = s.cost.hw.share_grid()
    improved = True
    while improved and s.budget_left(limit):
        improved = False
        fills = _fill_moves(plan, est.window, grid)
        for i, cand in enumerate([*fills, *_share_moves(plan, grid)]):
            if not s.budget_left(limit):
                break
            e = s.evaluate(cand, s.cost)
            if e.window.peak_share <= 1.0 + 1e-9 and e.seconds < est.seconds - 1e-12:
                plan, est, improved = cand, e, True
                s.note("II:fill" if i < len(fills) else "II:shares", e.seconds)
                if i < len(fills):
                    break
    return plan, est


def overlap_shares(res: SimResult, plan: NanoPlan | None = None) -> dict[tuple[str, int], float]:
    """Per (op, nano-batch): the largest sum of the other tasks' shares at any moment while one of its nano-ops
    runs (launch gap included), over the simulated layers — what it must leave to the tasks beside it. With
    `plan`, the tasks' shares are read from it (the same schedule with other shares)."""
    tasks, start, end = res.tasks, res.start, res.end
    share = [t.share if plan is None else plan.placement(t.op).share_of(t.nano) for t in tasks]
    out: dict[tuple[str, int], float] = {}
    for t in tasks:
        a, b = start[t.index], end[t.index]
        beside = [u.index for u in tasks if u.index != t.index and start[u.index] < b and end[u.index] > a]
        # the sum of shares changes only when a task starts, so its maximum is at a or at a start inside (a, b)
        points = [a, *(start[j] for j in beside if start[j] > a)]
        worst = max((sum(share[j] for j in beside if start[j] <= x < end[j]) for x in points), default=0.0)
        key = (t.op, t.nano)
        out[key] = max(out.get(key, 0.0), worst)
    return out


def _fill_moves(plan: NanoPlan, res: SimResult, grid: list[float]) -> list[NanoPlan]:
    """Nano-ops raised to the largest grid share that fits beside what overlapped them in the schedule `res`
    (`overlap_shares`): all of them, those on a compute unit, each op alone; then the squeezes: one op off the
    compute units (or all of such a unit's ops) one grid step lower and the compute nano-ops filled into what it
    frees. The schedule moves when shares change, so a candidate can overlap more than `res` did; the caller's
    peak-share check rejects those."""
    compute = {u.name for u in plan.units if u.kind == "compute"}

    def filled(base: NanoPlan, only_compute: bool) -> dict[str, Placement]:
        room = overlap_shares(res, base)
        new = {}
        for p in base.placements:
            shares = []
            for k in range(p.num_nano):
                cur, free = p.share_of(k), 1.0 - room.get((p.op, k), 1.0)
                up = not only_compute or p.unit_of(k) in compute
                shares.append(max([cur, *(g for g in grid if up and g <= free + 1e-9)]))
            if shares != [p.share_of(k) for k in range(p.num_nano)]:
                new[p.op] = replace(p, shares=tuple(shares))
        return new

    def lowered(p: Placement) -> Placement | None:
        shares = []
        for k in range(p.num_nano):
            i = min(range(len(grid)), key=lambda j: abs(grid[j] - p.share_of(k)))
            if i == 0:
                return None
            shares.append(grid[i - 1])
        return replace(p, shares=tuple(shares))

    everything = filled(plan, False)
    groups = [everything, filled(plan, True), *({op: q} for op, q in everything.items())]
    others = [p for p in plan.placements if not compute & set(p.units)]
    squeezes = [[p] for p in others] + [[p for p in others if u in p.units] for u in {x.units[0] for x in others}]
    for ps in squeezes:
        low = {p.op: q for p in ps if (q := lowered(p)) is not None}
        if low and len(low) == len(ps):
            base = plan.with_placements(low)
            groups.append({**low, **filled(base, True)})
    out: list[NanoPlan] = []
    for g in groups:
        cand = plan.with_placements(g) if g else None
        if cand is not None and cand not in out:
            out.append(cand)
    return out


def orders_from_schedule(mo: ModelOps, plan: NanoPlan, wl: Workload, cost: CostModel, window: int = 3) -> NanoPlan:
    """`plan` with planned queue orders: the start times of a list-scheduled simulation ("ready" dispatch: a
    free unit takes the first task whose inputs are done) of `window` layers, read off the middle layer as
    offsets from that layer's first start in layer periods. FIFO queues in that order (tasks.py) replay the
    periodic part of the list schedule with static queues, as CUDA streams or a captured graph need."""
    w = max(3, window)
    est = simulate_step(mo, plan, wl, cost, window=w, dispatch="ready")
    res, mid = est.window, w // 2
    starts = [(t.op, t.nano, res.start[t.index]) for t in res.tasks if t.layer == mid]
    t0 = min(x for _, _, x in starts)
    period = est.layer_period if est.layer_period > 0 else res.makespan / w
    key = {(op, k): round((x - t0) / period, 4) for op, k, x in starts}
    new = {}
    for o in mo.ops:
        p = plan.placement(o.name)
        order: list[float] = []
        for k in range(p.num_nano):  # a nano-batch whose rows snapped away (attention) has no task: any key
            order.append(key.get((o.name, k), order[-1] if order else min(key.values(), default=0.0)))
        new[o.name] = replace(p, order=tuple(order))
    return plan.with_placements(new)


ORDER_STEPS = (0.02, -0.02, 0.06, -0.06, 0.2, -0.2)  # in layers


def _order_descent(s: _Search, plan: NanoPlan, est: StepEstimate, limit: int) -> tuple[NanoPlan, StepEstimate]:
    """Coordinate descent over each nano-op's queue key (interference on, FIFO queues)."""
    s.note("I:order", est.seconds)
    improved = True
    while improved and s.budget_left(limit):
        improved = False
        for p in plan.placements:
            for k, step in itertools.product(range(p.num_nano), ORDER_STEPS):
                if not s.budget_left(limit):
                    break
                order = list(p.order)
                order[k] = round(order[k] + step, 4)
                cand = plan.with_placements({p.op: replace(p, order=tuple(order))})
                e = s.evaluate(cand, s.cost)
                if e.seconds < est.seconds - 1e-12:
                    plan, est, improved = cand, e, True
                    p = cand.placement(p.op)
                    s.note("I:order", e.seconds)
    return plan, est


def tune_shares(
    mo: ModelOps, wl: Workload, cost: CostModel, plan: NanoPlan, cfg: SearchConfig | None = None
) -> SearchResult:
    """Stage II alone: the resource shares of a given plan's nano-ops (its splits and units kept)."""
    cfg = cfg or SearchConfig()
    t0 = time.perf_counter()
    s = _Search(mo, wl, cost, cfg, t0 + cfg.time_budget_s)
    est0 = s.evaluate(plan, cost)
    best, est = _stage2(s, plan, est0, cfg.max_evals)
    return SearchResult(best, est, plan, est0, s.evals, time.perf_counter() - t0, tuple(s.history))


def pipelined_delays(mo: ModelOps, plan: NanoPlan) -> tuple[tuple[str, float], ...]:
    """Queue delays of a software pipeline: along the layer's op chain the order key advances by one nano-batch
    (1 / nano-batches of the op) wherever the chain changes unit, so an op's nano-op k queues behind the previous
    op's nano-op k + 1 and the hop through the other unit overlaps it. Returned as delays over the runtime's
    stage keys (tasks.op_stages), shifted to be non-negative."""
    stages = op_stages(mo, plan, 2)
    lam, acc, prev_unit = {}, 0.0, None
    for o in mo.ops:
        p = plan.placement(o.name)
        unit = p.unit_of(0)
        if prev_unit is not None and unit != prev_unit:
            acc += 1.0 / p.num_nano
        lam[o.name] = acc
        prev_unit = unit
    raw = {o.name: lam[o.name] - stages[(1, j)] for j, o in enumerate(mo.ops)}
    base = min(raw.values())
    return tuple(sorted((k, round(v - base, 6)) for k, v in raw.items() if v - base > 1e-9))


def _structure_moves(
    st: _Structure, wl: Workload, tile: int, mo: ModelOps, shares_of: Callable[[float, float], tuple], delays: bool
) -> list[_Structure]:
    """Neighbours of a structure: each cut moved by ±4/2/1 tiles, a cut at the decode/prefill boundary, a cut
    removed or an even split one finer, an elementwise op moved to another unit, an op's queue delay changed,
    the memory / network unit's share one step up or down."""
    out: list[_Structure] = []
    rows = wl.dense_batch
    for block in ("attn_cuts", "mlp_cuts"):
        cuts: tuple[int, ...] = getattr(st, block)
        variants: list[tuple[int, ...]] = []
        for i, step in itertools.product(range(len(cuts)), (4, 2, 1, -1, -2, -4)):
            c = list(cuts)
            c[i] += step * tile
            variants.append(tuple(c))
        variants.append(tuple(sorted({*cuts, wl.decode_tokens // tile * tile})))
        variants += [tuple(c for j, c in enumerate(cuts) if j != i) for i in range(len(cuts))]
        variants.append(equal_cuts(rows, len(cuts) + 2, tile))
        for v in variants:
            if all(0 < c < rows for c in v) and list(v) == sorted(set(v)) and v != cuts:
                out.append(replace(st, attn_cuts=v) if block == "attn_cuts" else replace(st, mlp_cuts=v))
    units = [u for u, _ in st.shares]
    for i, (op, unit) in enumerate(st.elementwise_unit):
        for other in units:
            if other != unit:
                ew = list(st.elementwise_unit)
                ew[i] = (op, other)
                out.append(replace(st, elementwise_unit=tuple(ew)))
    current = dict(st.delays)
    for o in mo.ops if delays else ():
        d0 = current.get(o.name, 0.0)
        for d in (d0 + 0.125, d0 + 0.25, d0 + 1.0, d0 - 0.125, d0 - 0.25, d0 - 1.0, 0.0):
            if d >= 0 and d != d0:
                nd = {**current, o.name: d}
                out.append(replace(st, delays=tuple(sorted((k, v) for k, v in nd.items() if v))))
    sh = dict(st.shares)
    mem, net = sh["memory"], sh.get("network", 0.0)
    for dm, dn in ((0.05, 0.0), (-0.05, 0.0), (0.0, 0.05), (0.0, -0.05)):
        if mem + dm > 0 and (net + dn > 0 or "network" not in sh):
            cand = shares_of(mem + dm, net + dn)
            if cand != st.shares:
                out.append(replace(st, shares=cand))
    return out


def _share_moves(plan: NanoPlan, grid: list[float]) -> list[NanoPlan]:
    """Neighbours in stage II: one unit's shares up while another's go down (all their nano-ops, one or two grid
    steps), each nano-op's share one step either way, and each nano-op filled to the whole device (a nano-op
    that overlaps nothing should have it; the simulator's peak-share check rejects the ones that overlap)."""
    out = []

    def step(x: float, k: int) -> float | None:
        i = min(range(len(grid)), key=lambda j: abs(grid[j] - x)) + k
        return grid[i] if 0 <= i < len(grid) else None

    def shifted(unit: str, k: int) -> dict[str, Placement] | None:
        new = {}
        for p in plan.placements:
            if unit not in p.units:
                continue
            shares = [step(p.share_of(i), k) if p.unit_of(i) == unit else p.share_of(i) for i in range(p.num_nano)]
            if any(x is None for x in shares):
                return None
            new[p.op] = replace(p, shares=tuple(x for x in shares if x is not None))
        return new

    units = [u.name for u in plan.units]
    for up, down in itertools.permutations(units, 2):
        for k in (1, 2):
            a, b = shifted(up, k), shifted(down, -k)
            if a and b:
                out.append(plan.with_placements({**a, **b}))
    for unit in units:
        for k in (1, -1):
            a = shifted(unit, k)
            if a:
                out.append(plan.with_placements(a))
    for p in plan.placements:
        for i, k in itertools.product(range(p.num_nano), (1, -1, 99)):
            x = grid[-1] if k == 99 else step(p.share_of(i), k)
            if x is None or x == p.share_of(i):
                continue
            shares = [p.share_of(j) for j in range(p.num_nano)]
            shares[i] = x
            out.append(plan.with_placements({p.op: replace(p, shares=tuple(shares))}))
    return out


def _with_kernels(plan: NanoPlan, mo: ModelOps, wl: Workload, cost: CostModel) -> NanoPlan:
    """The plan with each GEMM nano-op's kernel config (the tile the cost model chose) written down."""
    new = {}
    for o in mo.ops:
        if o.kind != "gemm":
            continue
        p = plan.placement(o.name)
        cuts = op_cuts(plan, o.name, o.kind, wl)
        kernels = tuple(gemm_config(cost.hw, b - a, o.n, p.share_of(i)).describe()
                        for i, (a, b) in enumerate(itertools.pairwise(cuts)))  # fmt: skip
        new[o.name] = replace(p, kernels=kernels)
    return plan.with_placements(new)


def needs_research(plan: NanoPlan, wl: Workload, threshold: float = 0.25) -> bool:
    """True when `wl` drifted from the workload the plan was searched for by more than `threshold`
    (Workload.drift), or the plan does not say what it was searched for."""
    return plan.workload is None or plan.workload.drift(wl) > threshold


__all__ = ["SearchConfig", "SearchResult", "equal_cuts", "needs_research", "orders_from_schedule", "overlap_shares",
           "pipelined_delays", "search", "tune_shares"]  # fmt: skip

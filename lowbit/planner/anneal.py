"""Stage III of the search: simulated annealing over a whole plan — structure, shares and queue order jointly —
seeded from the coordinate descents' result (search.py), so it can leave their local optimum.

    plan, est = anneal(plan, est, evaluate, budget_left, mo, rows, grid, rng, spent=...)

A move changes one nano-op or one op (`random_move`): a share one to three grid steps, a nano-op filled to the
largest share that fits beside what overlaps it in the current schedule (search.overlap_shares), a queue key
(ordered plans), the unit of a non-collective nano-op, a row cut moved by one or two tiles, a nano-batch split
in two or merged with its neighbour — the cut moves on one op or on every op that has the same cuts (a run of
ops whose nano-batches line up stays lined up). One to three moves make a candidate; after a move of cuts or
units the compute nano-ops' shares are fitted to the new overlaps (`fitted`: a GEMM nano-op that now overlaps
less takes more of the device, one that overlaps more gives some back — a share schedule that is still static
per nano-op). A candidate whose simulated overlaps oversubscribe the device (peak share > 1) is rejected, as in
stage II; a worse one is accepted with probability exp(-relative slowdown / T), T falling linearly from `t0`
to 0 over each of `rounds` rounds, each round restarting from the best plan so far.
Every plan it visits stays in the runtime's plan space: per-op fractions on tile multiples, a unit and share
per nano-batch, one queue key per nano-batch (`to_pipeline_plan` converts it; the nano executor runs any op on
any unit). The moves draw from `rng` (a seeded `random.Random`), so the same inputs and budget give the same
plan.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import replace

from lowbit.planner.nanoplan import NanoPlan, Placement, fractions_of_cuts
from lowbit.planner.ops import ModelOps
from lowbit.planner.simulate import SimResult, StepEstimate

ORDER_NUDGES = (0.01, 0.03, 0.1, 0.3)  # in layers
MOVES = (  # (move, weight)
    ("share", 0.32),
    ("fill", 0.08),
    ("order", 0.28),
    ("unit", 0.06),
    ("cut", 0.12),
    ("split", 0.07),
    ("merge", 0.07),
)


def cuts_of(p: Placement, rows: int) -> list[int]:
    """The inner row cuts of `p`'s fractions over `rows` rows (the inverse of fractions_of_cuts)."""
    return [round(x) for x in itertools.accumulate(f * rows for f in p.fractions[:-1])]


def _nearest(grid: list[float], x: float) -> int:
    return min(range(len(grid)), key=lambda j: abs(grid[j] - x))


def _per_nano(p: Placement) -> tuple[list[float], list[str], list[float]]:
    n = p.num_nano
    return [p.share_of(k) for k in range(n)], [p.unit_of(k) for k in range(n)], list(p.order)


def _recut(p: Placement, cuts: list[int], rows: int, keep: list[int]) -> Placement:
    """`p` cut at `cuts`, nano-batch i taking the unit, share and queue key of old nano-batch keep[i]."""
    shares, units, order = _per_nano(p)
    return replace(
        p,
        fractions=fractions_of_cuts(cuts, rows),
        shares=tuple(shares[k] for k in keep),
        units=tuple(units[k] for k in keep),
        order=tuple(order[k] for k in keep) if order else (),
    )


def _cut_move(p: Placement, move: str, k: int, rows: int, tile: int, rng: random.Random) -> Placement | None:
    """One op's cuts changed: cut k moved, nano-batch k split at its middle tile, or merged with the next."""
    cuts = cuts_of(p, rows)
    n = len(cuts) + 1
    if move == "cut":
        if not cuts:
            return None
        c = k % len(cuts)
        cuts[c] += rng.choice((-2, -1, 1, 2)) * tile
        if not all(0 < x < rows for x in cuts) or cuts != sorted(set(cuts)):
            return None
        return _recut(p, cuts, rows, list(range(n)))
    if move == "split":
        edges = [0, *cuts, rows]
        mid = (edges[k] + edges[k + 1]) // 2 // tile * tile
        if not edges[k] < mid < edges[k + 1]:
            return None
        new = _recut(p, sorted([*cuts, mid]), rows, [*range(k + 1), *range(k, n)])
        if new.order:  # the new second half queues just behind the first
            order = list(new.order)
            order[k + 1] = round(order[k] + 0.01, 4)
            new = replace(new, order=tuple(order))
        return new
    if n == 1:  # merge
        return None
    k = min(k, n - 2)
    return _recut(p, cuts[:k] + cuts[k + 1 :], rows, [*range(k + 1), *range(k + 2, n)])


def random_move(
    plan: NanoPlan,
    mo: ModelOps,
    rows: int,
    grid: list[float],
    rng: random.Random,
    schedule: SimResult | None = None,
) -> NanoPlan | None:
    """One random neighbour of `plan` (MOVES), or None when the drawn move does not apply. `schedule` (the
    plan's simulated window) enables the fill move."""
    move = rng.choices([m for m, _ in MOVES], [w for _, w in MOVES])[0]
    p = plan.placements[rng.randrange(len(plan.placements))]
    kind = mo.op(p.op).kind
    k = rng.randrange(p.num_nano)
    shares, units, order = _per_nano(p)
    if move == "share":
        j = _nearest(grid, shares[k]) + rng.choice((-3, -2, -1, 1, 2, 3))
        if not 0 <= j < len(grid):
            return None
        shares[k] = grid[j]
        return plan.with_placements({p.op: replace(p, shares=tuple(shares))})
    if move == "fill":
        if schedule is None:
            return None
        from lowbit.planner.search import overlap_shares  # search.py imports this module

        free = 1.0 - overlap_shares(schedule, plan).get((p.op, k), 1.0)
        up = max((g for g in grid if g <= free + 1e-9), default=shares[k])
        if up <= shares[k]:
            return None
        shares[k] = up
        return plan.with_placements({p.op: replace(p, shares=tuple(shares))})
    if move == "order":
        if not order:
            return None
        order[k] = round(order[k] + rng.choice((-1, 1)) * rng.choice(ORDER_NUDGES), 4)
        return plan.with_placements({p.op: replace(p, order=tuple(order))})
    if move == "unit":
        others = [u.name for u in plan.units if u.name != units[k]]
        if kind == "collective" or not others:  # a collective stays on its unit: ranks issue them in one order
            return None
        units[k] = rng.choice(others)
        return plan.with_placements({p.op: replace(p, units=tuple(units), shares=tuple(shares))})
    # cut, split, merge: on this op alone, or on every op with the same cuts
    group = [q for q in plan.placements if q.fractions == p.fractions] if rng.random() < 0.5 else [p]
    state = rng.getstate()
    new = {}
    for q in group:
        rng.setstate(state)  # the same cut step for every op of the group
        moved = _cut_move(q, move, k, rows, plan.tile, rng)
        if moved is None:
            return None
        new[q.op] = moved
    return plan.with_placements(new)


def fitted(plan: NanoPlan, schedule: SimResult, grid: list[float]) -> NanoPlan:
    """`plan` with every nano-op on a compute unit at the largest grid share that fits beside what overlapped it
    in `schedule` (search.overlap_shares; raised or lowered): a structural move changes what overlaps what,
    and the GEMMs' shares follow."""
    from lowbit.planner.search import overlap_shares  # search.py imports this module

    compute = {u.name for u in plan.units if u.kind == "compute"}
    room = overlap_shares(schedule, plan)
    new = {}
    for p in plan.placements:
        shares = [p.share_of(k) for k in range(p.num_nano)]
        for k in range(p.num_nano):
            if p.unit_of(k) in compute and (p.op, k) in room:
                shares[k] = max((g for g in grid if g <= 1.0 - room[(p.op, k)] + 1e-9), default=grid[0])
        if shares != [p.share_of(k) for k in range(p.num_nano)]:
            new[p.op] = replace(p, shares=tuple(shares))
    return plan.with_placements(new) if new else plan


def _structural(a: NanoPlan, b: NanoPlan) -> bool:
    return any((p.fractions, p.units) != (q.fractions, q.units) for p, q in zip(a.placements, b.placements))


def anneal(
    plan: NanoPlan,
    est: StepEstimate,
    evaluate: Callable[[NanoPlan], StepEstimate],
    budget_left: Callable[[], bool],
    mo: ModelOps,
    rows: int,
    grid: list[float],
    rng: random.Random,
    *,
    spent: Callable[[], float],
    t0: float = 0.002,
    rounds: int = 3,
    repair: bool = True,
    max_draws: int = 10**6,
    note: Callable[[float], None] | None = None,
) -> tuple[NanoPlan, StepEstimate]:
    """The best plan seen by simulated annealing from (`plan`, `est`) while `budget_left()`; `evaluate`
    simulates a candidate (memoised by the caller: a revisit costs no evaluation), `spent()` is the fraction of
    the evaluation budget used (0 -> 1: the temperature falls from `t0` to 0 over each of `rounds` rounds, and
    each round restarts from the best plan so far). With `repair`, a structural move (cuts, units) is followed by
    its compute nano-ops' shares fitted to the overlaps of its simulated schedule (`fitted`, one more
    evaluation), kept when it fits and is faster. At most `max_draws` candidates are drawn (revisits are free).
    Never returns a plan worse than `plan`."""
    cur, cur_est = plan, est
    best, best_est = plan, est
    round_now = 0
    for _ in range(max_draws):
        if not budget_left():
            break
        pos = rounds * min(1.0, spent())  # rounds done, fractional
        if int(pos) > round_now:  # a new round: reheat from the best plan
            round_now, cur, cur_est = int(pos), best, best_est
        cand = cur
        for _ in range(1 + (rng.random() < 0.3) + (rng.random() < 0.1)):
            cand = random_move(cand, mo, rows, grid, rng, cur_est.window) or cand
        if cand == cur:
            continue
        e = evaluate(cand)
        if repair and _structural(cand, cur) and budget_left():  # the GEMMs' shares follow the new overlaps
            fit = fitted(cand, e.window, grid)
            if fit != cand:
                e_fit = evaluate(fit)
                if e_fit.window.peak_share <= 1.0 + 1e-9 and (
                    e.window.peak_share > 1.0 + 1e-9 or e_fit.seconds < e.seconds
                ):
                    cand, e = fit, e_fit
        if e.window.peak_share > 1.0 + 1e-9:
            continue
        temp = t0 * (1.0 - (pos - int(pos)))
        worse = (e.seconds - cur_est.seconds) / cur_est.seconds
        if worse < 0 or (temp > 0 and rng.random() < math.exp(-worse / temp)):
            cur, cur_est = cand, e
            if e.seconds < best_est.seconds - 1e-12:
                best, best_est = cand, e
                if note is not None:
                    note(e.seconds)
    return best, best_est


__all__ = ["MOVES", "anneal", "cuts_of", "random_move"]

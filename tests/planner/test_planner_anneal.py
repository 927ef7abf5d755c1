"""Stage III (anneal.py): every move stays in the runtime's plan space (fractions on tile multiples, one unit /
share / queue key per nano-batch, collectives on their unit, the plan converts); the annealed search is a pure
function of its inputs and budget; it starts from stage II's result and never returns a worse plan; the
evaluation budget holds."""

from __future__ import annotations

import random

import pytest

from lowbit.planner.anneal import MOVES, cuts_of, fitted, random_move
from lowbit.planner.cost import CostModel
from lowbit.planner.hardware import get_hardware
from lowbit.planner.models import get_arch
from lowbit.planner.nanoplan import Placement, fractions_of_cuts
from lowbit.planner.ops import model_ops
from lowbit.planner.schedules import NANOFLOW_SHARES, split_plan
from lowbit.planner.search import SearchConfig, orders_from_schedule, overlap_shares, search
from lowbit.planner.simulate import simulate_step
from lowbit.planner.workload import Workload
from lowbit.runtime.plan import nano_ranges

WL = Workload(2048, 1408, 1024, 640, 0)


@pytest.fixture(scope="module")
def setup70():
    mo = model_ops(get_arch("llama-2-70b"), None, 8, "llama-2-70b")
    cost = CostModel(get_hardware("a100"))
    return mo, cost, orders_from_schedule(mo, split_plan(mo, WL), WL, cost)


@pytest.mark.parametrize("cuts", [(), (128,), (256, 1408), (128, 640, 1280, 1920)])
def test_cuts_of_inverts_fractions_of_cuts(cuts):
    assert cuts_of(Placement("x", fractions_of_cuts(cuts, 2048)), 2048) == list(cuts)


def test_every_move_stays_in_the_runtime_plan_space(setup70):
    """A walk of 300 random moves (each from the last plan): after every one, each placement's fractions are
    cuts on tile multiples as the runtime rounds them (nano_ranges gives the cuts back), units / shares /
    orders have one entry per nano-batch, collectives stay on the network unit, shares are on the device's
    grid, and the plan converts to the runtime's PipelinePlan with the same rules."""
    mo, cost, plan = setup70
    allowed = {*cost.hw.share_grid(), *NANOFLOW_SHARES.values()}  # grid moves, or the start's shares
    rng = random.Random(1)
    schedule = simulate_step(mo, plan, WL, cost).window
    moved = 0
    for _ in range(300):
        new = random_move(plan, mo, WL.dense_batch, cost.hw.share_grid(), rng, schedule)
        if new is None:
            continue
        moved += new != plan
        plan = new
        for p in plan.placements:
            cuts = cuts_of(p, WL.dense_batch)
            assert nano_ranges(WL.dense_batch, p.fractions, plan.tile) == [0, *cuts, WL.dense_batch]
            assert all(c % plan.tile == 0 for c in cuts)
            assert len(p.units) in (1, p.num_nano) and len(p.order) == p.num_nano
            assert all(p.share_of(k) in allowed for k in range(p.num_nano))
            if mo.op(p.op).kind == "collective":
                assert set(p.units) == {"network"}
        pp = plan.to_pipeline_plan(mo)
        assert [r.fractions for r in pp.rules] == [plan.placement(o.name).fractions for o in mo.ops]
    assert moved > 150  # most draws apply


def test_every_kind_of_move_is_drawn():
    assert {m for m, _ in MOVES} == {"share", "fill", "order", "unit", "cut", "split", "merge"}
    assert sum(w for _, w in MOVES) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def annealed():
    mo = model_ops(get_arch("llama-3-8b"), None, 1, "llama-3-8b")
    cost = CostModel(get_hardware("h200"))
    wl = Workload(2048, 768, 1024, 640, 0)
    base = SearchConfig(max_evals=60, descent_evals=60, order=True)
    more = SearchConfig(max_evals=160, descent_evals=60, order=True)
    return mo, cost, wl, search(mo, wl, cost, base), search(mo, wl, cost, more), more


def test_stage_three_starts_from_stage_two_and_never_loses(annealed):
    mo, cost, wl, base, res, cfg = annealed
    assert res.evals <= cfg.max_evals
    assert res.estimate.seconds <= base.estimate.seconds
    # the same descents ran first (stage III only adds evaluations after them)
    assert res.history[: len(base.history)] == base.history
    third = [t for st, _, t in res.history if st.startswith("III")]
    assert third and third == sorted(third, reverse=True)
    assert res.estimate.window.peak_share <= 1.0 + 1e-9
    assert simulate_step(mo, res.plan, wl, cost).seconds == pytest.approx(res.estimate.seconds, rel=1e-12)
    res.plan.to_pipeline_plan(mo)


def test_the_annealed_search_is_deterministic(annealed):
    mo, cost, wl, _, res, cfg = annealed
    again = search(mo, wl, cost, cfg)
    assert again.plan == res.plan and again.evals == res.evals
    other = search(mo, wl, cost, SearchConfig(max_evals=160, descent_evals=60, order=True, seed=1))
    assert other.estimate.seconds <= search(mo, wl, cost, SearchConfig(max_evals=60, order=True)).estimate.seconds


def test_fitted_gives_each_compute_nano_op_the_room_beside_it(setup70):
    """Oracle: overlap_shares of the schedule; a compute nano-op gets the largest grid share <= 1 - that room
    (up or down), every other nano-op keeps its share, the structure is untouched."""
    mo, cost, plan = setup70
    res = simulate_step(mo, plan, WL, cost).window
    grid, room = cost.hw.share_grid(), overlap_shares(res, plan)
    new = fitted(plan, res, grid)
    changed = 0
    for p, q in zip(plan.placements, new.placements, strict=True):
        assert (p.op, p.fractions, p.units, p.order) == (q.op, q.fractions, q.units, q.order)
        for k in range(p.num_nano):
            if p.unit_of(k) == "compute" and (p.op, k) in room:
                assert q.share_of(k) == max(g for g in grid if g <= 1.0 - room[(p.op, k)] + 1e-9)
                changed += q.share_of(k) != p.share_of(k)
            else:
                assert q.share_of(k) == p.share_of(k)
    assert changed  # the NanoFlow-like 0.75 of the GEMMs is not what fits

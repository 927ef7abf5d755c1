"""Search goals (issue 7) on the two configurations, with the simulator as the judge.

Llama-3-8B on one H200 (tp 1) at dense batch 2048: 768 decode rows over 1024 cached tokens + 1280 prefill rows
(NanoFlow's Llama-3-8B search config, 384/640 of 1024, doubled). Goal: >= 80% of optimal; met.
Llama-2-70B on 8xA100 (tp 8) at NanoFlow's batch (golden file): the issue's >= 80% takes stage III (anneal.py)
and 8000 evaluations (~1 min; lowbit/planner/README.md), too long for a test; at the 160 evaluations here the
test asserts what the descents reach (>= 62%, > 1.2x sequential, > the NanoFlow-like fixed split) so a
regression shows. Stage III's own laws are in test_planner_anneal.py.
"""

from __future__ import annotations

import pytest

from lowbit.planner.cost import CostModel
from lowbit.planner.hardware import get_hardware
from lowbit.planner.models import get_arch
from lowbit.planner.ops import model_ops
from lowbit.planner.precision import get_precision
from lowbit.planner.schedules import split_plan, unsplit_plan
from lowbit.planner.search import (
    SearchConfig,
    _fill_moves,
    equal_cuts,
    needs_research,
    overlap_shares,
    search,
    tune_shares,
)
from lowbit.planner.simulate import optimal_tokens_per_s, simulate_step
from lowbit.planner.workload import Workload

CONFIGS = {
    "llama-3-8b/h200": ("llama-3-8b", "h200", 1, Workload(2048, 768, 1024, 640, 0)),
    "llama-2-70b/8xa100": ("llama-2-70b", "a100", 8, Workload(2048, 1408, 1024, 640, 0)),
}
BUDGET = SearchConfig(max_evals=160, time_budget_s=120)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def searched(request):
    model, hw, tp, wl = CONFIGS[request.param]
    mo, cost = model_ops(get_arch(model), None, tp, model), CostModel(get_hardware(hw))
    seq = simulate_step(mo, unsplit_plan(mo, wl), wl, cost)
    return request.param, mo, wl, cost, search(mo, wl, cost, BUDGET), seq, optimal_tokens_per_s(mo, cost)


def test_search_goals(searched):
    name, mo, wl, cost, res, seq, opt = searched
    frac, speedup = res.estimate.tokens_per_s / opt, res.estimate.tokens_per_s / seq.tokens_per_s
    nanoflow_like = simulate_step(mo, split_plan(mo, wl), wl, cost).tokens_per_s
    assert res.estimate.tokens_per_s >= nanoflow_like
    assert res.estimate.window.peak_share <= 1.0 + 1e-9  # overlapping nano-ops fit the device
    if name == "llama-3-8b/h200":
        assert frac >= 0.80 and speedup >= 1.4
    else:
        assert frac >= 0.62 and speedup >= 1.2


def test_searched_plan_converts_and_is_reproducible(searched):
    _, mo, wl, cost, res, _, _ = searched
    again = simulate_step(mo, res.plan, wl, cost)
    assert again.seconds == pytest.approx(res.estimate.seconds, rel=1e-12)
    pp = res.plan.to_pipeline_plan(mo)
    assert pp.__class__.from_json(pp.to_json()) == pp
    assert res.history and res.evals <= BUDGET.max_evals
    assert [h[2] for h in res.history if h[0].startswith("II")] == sorted(
        (h[2] for h in res.history if h[0].startswith("II")), reverse=True
    )  # stage II only ever improves


def test_w4a8_raises_the_ceiling_and_the_searched_throughput():
    """W4A8 GEMMs run on int8 tensor cores: the optimal bound doubles and the compute-bound part of a step
    halves, so the searched W4A8 plan beats the W16 one (the memory-bound attention does not shrink)."""
    model, hw, tp, wl = CONFIGS["llama-3-8b/h200"]
    cost = CostModel(get_hardware(hw))
    out = {}
    for p in ("w16a16", "w4a8"):
        mo = model_ops(get_arch(model), get_precision(p), tp, model)
        out[p] = (optimal_tokens_per_s(mo, cost), search(mo, wl, cost, SearchConfig(max_evals=40)).estimate)
    assert out["w4a8"][0] == pytest.approx(2 * out["w16a16"][0])
    assert out["w4a8"][1].tokens_per_s > 1.2 * out["w16a16"][1].tokens_per_s


def test_budget_and_progress_are_honoured():
    model, hw, tp, wl = CONFIGS["llama-3-8b/h200"]
    mo, cost = model_ops(get_arch(model), None, tp, model), CostModel(get_hardware(hw))
    seen = []
    res = search(mo, wl, cost, SearchConfig(max_evals=12, progress=lambda st, n, t: seen.append((st, n, t))))
    assert res.evals <= 13  # the stage I plan is re-simulated with interference once
    for stage in ("I:", "II:"):  # each stage only reports improvements (stage I ignores interference)
        times = [t for st, _, t in seen if st.startswith(stage)]
        assert times and times == sorted(times, reverse=True)


def test_equal_cuts_and_research_trigger():
    assert equal_cuts(2048, 4, 128) == (512, 1024, 1536)
    assert equal_cuts(256, 8, 128) == (128,)  # too few tiles: fewer nano-batches
    model, _, tp, wl = CONFIGS["llama-3-8b/h200"]
    mo = model_ops(get_arch(model), None, tp, model)
    plan = split_plan(mo, wl)
    assert not needs_research(plan, wl)
    assert needs_research(plan, Workload(2048, 1900, 1024, 640, 0))  # mostly decode now
    assert needs_research(plan, Workload(2048, 768, 4096, 640, 0))  # contexts 4x longer


def test_tune_shares_keeps_the_structure_and_never_loses():
    """Stage II alone on the NanoFlow-like split: same cuts and units, overlaps that fit, and a step faster
    than with the fixed shares (0.75 / 0.15 for GEMMs / attention leave the GEMMs short while nothing overlaps)."""
    model, hw, tp, wl = CONFIGS["llama-3-8b/h200"]
    mo, cost = model_ops(get_arch(model), None, tp, model), CostModel(get_hardware(hw))
    plan = split_plan(mo, wl)
    res = tune_shares(mo, wl, cost, plan, SearchConfig(max_evals=30))
    assert res.stage1_plan == plan and res.evals <= 30
    assert res.estimate.seconds < simulate_step(mo, plan, wl, cost).seconds
    assert res.estimate.window.peak_share <= 1.0 + 1e-9
    for p, q in zip(res.plan.placements, plan.placements, strict=True):
        assert (p.op, p.fractions, p.units) == (q.op, q.fractions, q.units)


def _split_schedule():
    model, hw, tp, wl = CONFIGS["llama-2-70b/8xa100"]
    mo, cost = model_ops(get_arch(model), None, tp, model), CostModel(get_hardware(hw))
    plan = split_plan(mo, wl)  # NanoFlow-like: three units at 0.75 / 0.15 / 0.10
    return mo, wl, cost, plan, simulate_step(mo, plan, wl, cost).window


def test_overlap_shares_equal_a_scan_of_every_moment():
    """Oracle: at every task boundary inside a nano-op's run, the shares of the tasks running beside it; the
    largest over its layers is what overlap_shares gives."""
    _, _, _, _, res = _split_schedule()
    room = overlap_shares(res)
    want: dict[tuple[str, int], float] = {}
    moments = sorted({*res.start, *res.end})
    for t in res.tasks:
        a, b = res.start[t.index], res.end[t.index]
        sums = [sum(u.share for u in res.tasks if u.index != t.index and res.start[u.index] <= x < res.end[u.index])
                for x in moments if a <= x < b]  # fmt: skip
        want[(t.op, t.nano)] = max(want.get((t.op, t.nano), 0.0), max(sums, default=0.0))
    assert room.keys() == want.keys()
    for k, v in want.items():
        assert room[k] == pytest.approx(v, abs=1e-12), k


def test_fill_moves_raise_each_nano_op_into_the_room_beside_it():
    """The first fill candidate gives every nano-op the largest grid share that fits beside what overlapped it
    (never less than it had), so on the schedule it was read from no moment is oversubscribed; the squeezes
    lower a non-compute op one grid step."""
    _, _, cost, plan, res = _split_schedule()
    grid, room = cost.hw.share_grid(), overlap_shares(res)
    cands = _fill_moves(plan, res, grid)
    filled = cands[0]
    raised = 0
    for p, q in zip(plan.placements, filled.placements, strict=True):
        for k in range(p.num_nano):
            free = 1.0 - room[(p.op, k)]
            want = max([p.share_of(k), *(g for g in grid if g <= free + 1e-9)])
            assert q.share_of(k) == pytest.approx(want)
            raised += q.share_of(k) > p.share_of(k)
            assert q.share_of(k) <= max(p.share_of(k), free + 1e-9)
    assert raised  # the fixed 0.75 / 0.15 / 0.10 split leaves room beside some nano-ops
    lowered = [(p.op, c) for c in cands for p in plan.placements if c.placement(p.op).share_of(0) < p.share_of(0)]
    assert lowered and all(plan.placement(op).units[0] != "compute" for op, _ in lowered)

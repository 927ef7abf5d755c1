"""Search goals (issue 7) on the two configurations, with the simulator as the judge.

Llama-3-8B on one H200 (tp 1) at dense batch 2048: 768 decode rows over 1024 cached tokens + 1280 prefill rows
(NanoFlow's Llama-3-8B search config, 384/640 of 1024, doubled). Goal: >= 80% of optimal; met.
Llama-2-70B on 8xA100 (tp 8) at NanoFlow's batch (golden file): the issue's >= 80% is NOT reached under this
cost model: per device the replicated norms and two ring all-reduces per layer add ~45% of the optimal layer time
on top of the GEMMs, and the runtime's per-unit FIFO order exposes part of each nano-batch's all-reduce. The test
asserts what the search does reach (>= 62%, > 1.2x sequential, > the NanoFlow-like fixed split) so a regression
shows; NanoFlow measured 68.5% for its own MILP-ordered pipeline.
"""

from __future__ import annotations

import pytest

from lowbit.planner.cost import CostModel
from lowbit.planner.hardware import get_hardware
from lowbit.planner.models import get_arch
from lowbit.planner.ops import model_ops
from lowbit.planner.precision import get_precision
from lowbit.planner.schedules import split_plan, unsplit_plan
from lowbit.planner.search import SearchConfig, equal_cuts, needs_research, search, tune_shares
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

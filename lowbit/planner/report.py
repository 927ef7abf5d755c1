"""The planner's report for one model on one device: the optimal throughput bound, the reference schedules and
the searched plan as simulated tokens/s/device and % of optimal, measured figures beside them where there are
some, and the ceilings of the other precisions (W4A8's int8 GEMMs double the bf16 one).

    rep = plan_report(mo, wl, cost, SearchConfig(max_evals=400))
    print(format_report(rep)); json.dump(rep.to_dict(), f)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lowbit.models.arch import ArchConfig
from lowbit.planner.cost import CostModel
from lowbit.planner.nanoplan import NanoPlan
from lowbit.planner.ops import ModelOps, model_ops
from lowbit.planner.precision import PRECISIONS, Precision
from lowbit.planner.schedules import split_plan, unsplit_plan
from lowbit.planner.search import SearchConfig, SearchResult, search
from lowbit.planner.simulate import StepEstimate, optimal_tokens_per_s, simulate_step
from lowbit.planner.workload import Workload

SCHEDULES = ("unsplit", "split, no overlap", "NanoFlow-like split", "searched")


@dataclass(frozen=True)
class ScheduleRow:
    name: str
    plan: NanoPlan
    estimate: StepEstimate
    fraction: float  # of the optimal throughput
    measured_tokens_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tokens_per_s": self.estimate.tokens_per_s,
            "fraction_of_optimal": self.fraction,
            "step_ms": self.estimate.seconds * 1e3,
            "layer_ms": self.estimate.layer_period * 1e3,
            "peak_share": self.estimate.window.peak_share,
            "measured_tokens_per_s": self.measured_tokens_per_s,
        }


@dataclass(frozen=True)
class PlanReport:
    model: str
    hardware: str
    precision: str
    tp: int
    workload: Workload
    optimal_tokens_per_s: float
    rows: tuple[ScheduleRow, ...]
    search: SearchResult
    ceilings: tuple[tuple[str, str, float], ...]  # (precision, GEMM dtype, optimal tokens/s/device)
    notes: tuple[str, ...] = field(default=())

    def row(self, name: str) -> ScheduleRow:
        return next(r for r in self.rows if r.name == name)

    @property
    def plan(self) -> NanoPlan:
        return self.search.plan

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "hardware": self.hardware,
            "precision": self.precision,
            "tp": self.tp,
            "workload": self.workload.to_dict(),
            "optimal_tokens_per_s": self.optimal_tokens_per_s,
            "schedules": [r.to_dict() for r in self.rows],
            "search": {
                "evals": self.search.evals,
                "seconds": self.search.elapsed_s,
                "history": [list(h) for h in self.search.history],
            },
            "ceilings": [{"precision": p, "gemm_dtype": d, "optimal_tokens_per_s": v} for p, d, v in self.ceilings],
            "plan": self.plan.to_dict(),
            "notes": list(self.notes),
        }


def plan_report(
    mo: ModelOps,
    wl: Workload,
    cost: CostModel,
    cfg: SearchConfig | None = None,
    *,
    arch: ArchConfig | None = None,
    notes: tuple[str, ...] = (),
) -> PlanReport:
    """Simulate the reference schedules (SCHEDULES), search a plan, and collect the report; every schedule is
    simulated as the search judges plans (cfg.window, cfg.dispatch). `arch` (when given) adds the other
    precisions' ceilings. Measured figures go in afterwards (`ScheduleRow.measured_tokens_per_s`, the CLI's
    --measure), since they time the report's own plans."""
    cfg = cfg or SearchConfig()
    opt = optimal_tokens_per_s(mo, cost)
    hw = cost.hw.name
    res = search(mo, wl, cost, cfg)
    plans = {
        "unsplit": unsplit_plan(mo, wl, tile=cfg.tile, hardware=hw),
        "split, no overlap": split_plan(mo, wl, overlap=False, tile=cfg.tile, hardware=hw),
        "NanoFlow-like split": split_plan(mo, wl, tile=cfg.tile, hardware=hw),
        "searched": res.plan,
    }
    rows = []
    for name, plan in plans.items():
        est = res.estimate if name == "searched" else simulate_step(mo, plan, wl, cost, window=cfg.window,
                                                                     dispatch=cfg.dispatch)  # fmt: skip
        rows.append(ScheduleRow(name, plan, est, est.tokens_per_s / opt))
    ceilings = []
    for name in ("w16a16", "w4a16", "w4a8") if arch is not None else ():
        assert arch is not None
        p = Precision(name, PRECISIONS[name].linear, mo.precision.act_dtype, mo.precision.kv_dtype)
        if cost.hw.has_dtype(p.compute_dtype):
            ceilings.append((name, p.compute_dtype, optimal_tokens_per_s(model_ops(arch, p, mo.tp, mo.name), cost)))
    return PlanReport(mo.name, hw, mo.precision.name, mo.tp, wl, opt, tuple(rows), res, tuple(ceilings), notes)


def format_report(rep: PlanReport, *, plan_detail: bool = True) -> str:
    lines = [
        f"lowbit plan: {rep.model} on {rep.tp} x {rep.hardware} (tp {rep.tp}), precision {rep.precision}",
        f"workload: {rep.workload.describe()}",
        f"optimal throughput (NanoFlow: Compute / (2 * P_model)): {rep.optimal_tokens_per_s:,.1f} tokens/s/device",
        "",
        f"{'schedule':<24}{'tokens/s/dev':>14}{'% optimal':>11}{'step ms':>10}{'layer ms':>10}{'measured':>12}",
    ]
    base = rep.row("unsplit").estimate.tokens_per_s
    for r in rep.rows:
        meas = "" if r.measured_tokens_per_s is None else f"{r.measured_tokens_per_s:,.1f}"
        lines.append(
            f"{r.name:<24}{r.estimate.tokens_per_s:>14,.1f}{100 * r.fraction:>10.1f}%"
            f"{r.estimate.seconds * 1e3:>10.3f}{r.estimate.layer_period * 1e3:>10.4f}{meas:>12}"
        )
    s = rep.row("searched")
    stage1 = 100 * rep.search.stage1_estimate.tokens_per_s / rep.optimal_tokens_per_s
    lines.append(
        f"searched / unsplit: x{s.estimate.tokens_per_s / base:.2f} (simulated); search: {rep.search.evals} "
        f"simulations in {rep.search.elapsed_s:.1f} s (stage I alone: {stage1:.1f}% of optimal)"
    )
    if rep.ceilings:
        lines.append("ceilings: " + ", ".join(f"{p} {v:,.0f} ({d} GEMMs)" for p, d, v in rep.ceilings))
    if any(r.fraction > 1 for r in rep.rows):
        lines.append(
            "note: above 100%: the bound counts 2 * P_model FLOPs per row, but lm_head runs on the sampled rows "
            "only and the embedding is a gather (a visible share of P_model in small, large-vocabulary models)"
        )
    lines += [f"note: {n}" for n in rep.notes]
    if plan_detail:
        lines += ["", "searched plan (op: fraction@unit:share per nano-batch):", rep.plan.describe()]
    return "\n".join(lines)


__all__ = ["SCHEDULES", "PlanReport", "ScheduleRow", "format_report", "plan_report"]

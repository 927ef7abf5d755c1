"""The plan an artifact carries, searched at compile time, and its re-search when serving drifts from it.

    pp = search_for_artifact(arch, "cuda", budget_s=10, cfg=cfg)            # lowbit compile: plan.json
    sp = plan_for_artifact(arch, "cuda", cfg=cfg)                          # the same, with what it was for
    new = research_if_drifted(sp, observed_mix(recent_steps))               # the engine, every N steps
    if new is not None: engine.use(new.pipeline)

The search is the planner's (search.py) over the artifact's own model (its arch, the recipe's bit widths, its
tensor-parallel degree) on a hardware preset: the cpu-dev preset for a CPU target (or a probed / JSON
`Hardware`), on CUDA the preset of the GPU present (H200, H100, A100; A100-80G when none is visible).
A searched plan is kept only when it beats the unsplit schedule by `min_gain` in simulation — on the CPU 1.3x,
because splitting measured +31% slower on the 2-core dev VM than the model predicts (thread hand-offs,
smaller kernels; lowbit/planner/README.md), on a GPU 1.05x — otherwise the runtime's unsplit plan is returned.
On a GPU the search plans the queue order too (`SearchConfig(order=True)`: per-unit FIFO orders read off a
list schedule, which the nano executor runs as `OpRule.order`); on the CPU it does not (`order=` overrides).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from lowbit.models.arch import ArchConfig
from lowbit.planner.cost import CostModel, KernelProfile
from lowbit.planner.hardware import Hardware, get_hardware
from lowbit.planner.nanoplan import NanoPlan
from lowbit.planner.ops import ModelOps, model_ops
from lowbit.planner.precision import Precision
from lowbit.planner.schedules import unsplit_plan
from lowbit.planner.search import SearchConfig, needs_research, search
from lowbit.planner.simulate import simulate_step
from lowbit.planner.workload import CPU_WORKLOAD, GPU_WORKLOAD, Workload
from lowbit.runtime.plan import PipelinePlan

CPU_MIN_GAIN = 1.3  # measured split cost on the 2-core dev VM (+31%) that the cost model does not see
GPU_MIN_GAIN = 1.05
DRIFT_THRESHOLD = 0.25  # Workload.drift beyond which a plan is re-searched


@dataclass(frozen=True)
class Planner:
    """What a search for one artifact needs: its per-layer ops, the cost model of the device, the budget."""

    ops: ModelOps
    cost: CostModel
    config: SearchConfig
    min_gain: float

    def plan(self, wl: Workload) -> NanoPlan:
        """The searched plan for `wl`, or the unsplit one when the search does not win by `min_gain`."""
        base = unsplit_plan(self.ops, wl, tile=self.config.tile, hardware=self.cost.hw.name)
        if self.cost.hw.net_gbs <= 0 and any(o.kind == "collective" for o in self.ops.ops):
            return base  # a preset without an interconnect rate (the CPU's) cannot price the collectives
        res = search(self.ops, wl, self.cost, self.config)
        t_unsplit = simulate_step(self.ops, base, wl, self.cost, window=self.config.window).seconds
        return res.plan if t_unsplit >= self.min_gain * res.estimate.seconds else base


@dataclass(frozen=True)
class SearchedPlan:
    """A plan as the runtime runs it (`pipeline`), the planner's form with the workload it was searched for
    (`nanoplan`), and the planner that can search it again."""

    pipeline: PipelinePlan
    nanoplan: NanoPlan
    planner: Planner

    @property
    def workload(self) -> Workload:
        assert self.nanoplan.workload is not None
        return self.nanoplan.workload


def hardware_for(device: str) -> Hardware:
    """The preset for a target device: cpu-dev on "cpu"; on "cuda" the GPU present (by name), else A100-80G."""
    if device == "cpu":
        return get_hardware("cpu")
    if device != "cuda":
        raise ValueError(f"device {device!r}: the planner knows 'cpu' and 'cuda'")
    try:
        import torch

        name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    except Exception:  # a broken CUDA install reads as no GPU
        name = ""
    for key, preset in (("H200", "h200"), ("H100", "h100"), ("A100", "a100")):
        if key in name.upper():
            return get_hardware(preset)
    return get_hardware("a100")


def precision_of(cfg: Any, arch: ArchConfig) -> Precision:
    """The Precision of a parsed model config (lowbit.config): the first linear's spec stands for every linear
    (a mixed recipe is charged at that one), the model dtype, the KV cache dtype."""
    from lowbit.config.recipe import resolve_linear
    from lowbit.dtypes import dtype as as_dtype

    spec = resolve_linear(cfg, arch.layer_linears(0)[0].name)
    name = "w16a16" if spec is None else f"w{as_dtype(spec.weight_dtype).bits}{'a8' if spec.act_int8 else 'a16'}"
    return Precision(name, spec, str(cfg.model.dtype), str(cfg.quantization.kv_cache.dtype))


def default_workload(hw: Hardware) -> Workload:
    return CPU_WORKLOAD if hw.kind == "cpu" else GPU_WORKLOAD


def make_planner(
    arch: ArchConfig,
    device: str = "cpu",
    budget_s: float = 10.0,
    *,
    cfg: Any = None,
    hardware: Hardware | None = None,
    profile: KernelProfile | None = None,
    precision: Precision | None = None,
    tp: int | None = None,
    order: bool | None = None,
) -> Planner:
    """The planner of an artifact's model; `order` (default: on a GPU preset) searches planned queue orders."""
    hw = hardware or hardware_for(device)
    if precision is None:
        precision = precision_of(cfg, arch) if cfg is not None else Precision()
        if hw.kind == "cpu" and cfg is None:
            precision = replace(precision, act_dtype="float32")  # the CPU runtime computes in fp32
    degree = tp if tp is not None else int(getattr(getattr(cfg, "target", None), "tensor_parallel", 1) or 1)
    ordered = hw.kind != "cpu" if order is None else order
    # the descents until they converge or the time is up, as before stage III; no annealing (it would always
    # spend the whole budget: lowbit compile stays as fast as it was)
    config = SearchConfig(max_evals=10**6, time_budget_s=budget_s, tile=8 if hw.kind == "cpu" else 128, order=ordered,
                          descent_evals=10**6)  # fmt: skip
    gain = CPU_MIN_GAIN if hw.kind == "cpu" else GPU_MIN_GAIN
    return Planner(model_ops(arch, precision, degree), CostModel(hw, profile=profile), config, gain)


def plan_for_artifact(
    arch: ArchConfig, device: str = "cpu", budget_s: float = 10.0, *, workload: Workload | None = None, **kw: Any
) -> SearchedPlan:
    """The searched plan of an artifact's model (see the module docstring), with the workload it was for
    (default: the device kind's); `kw`: `make_planner`'s keywords (cfg, hardware, profile, precision, tp,
    order)."""
    planner = make_planner(arch, device, budget_s, **kw)
    return _searched(planner, workload or default_workload(planner.cost.hw))


def search_for_artifact(arch: ArchConfig, device: str = "cpu", budget_s: float = 10.0, **kw: Any) -> PipelinePlan:
    """The runtime plan `lowbit compile` writes into the artifact (plan.json): `plan_for_artifact(...).pipeline`."""
    return plan_for_artifact(arch, device, budget_s, **kw).pipeline


def research_if_drifted(
    plan: SearchedPlan, observed: Workload | None, *, threshold: float = DRIFT_THRESHOLD
) -> SearchedPlan | None:
    """A plan searched again for `observed` when that mix drifted from the one `plan` was searched for by more
    than `threshold` (Workload.drift); None when it did not (or nothing was observed)."""
    if observed is None or not needs_research(plan.nanoplan, observed, threshold):
        return None
    return _searched(plan.planner, observed)


def observed_mix(steps: Iterable[Sequence[tuple[int, int]]]) -> Workload | None:
    """The mean dense step of recent steps, each a sequence of (num_cached, num_new) per scheduled chunk (the
    scheduler's ScheduledChunk fields): decode rows = chunks of one new token after cached ones, their mean
    context; the rest prefill rows, their mean chunk and cached prefix. None when no step had rows."""
    steps = [list(s) for s in steps]
    rows = [sum(n for _, n in s) for s in steps]
    if not steps or sum(rows) == 0:
        return None
    dec = [(c, n) for s in steps for c, n in s if n == 1 and c > 0]
    pre = [(c, n) for s in steps for c, n in s if not (n == 1 and c > 0)]
    k = len(steps)
    dense = max(1, round(sum(rows) / k))
    decode = min(dense, round(len(dec) / k))
    ctx = round(sum(c + 1 for c, _ in dec) / len(dec)) if dec else 1
    chunk = max(1, round(sum(n for _, n in pre) / len(pre))) if pre else 1
    pctx = round(sum(c for c, _ in pre) / len(pre)) if pre else 0
    return Workload(dense, decode, ctx, chunk, pctx)


def _searched(planner: Planner, wl: Workload) -> SearchedPlan:
    nano = planner.plan(wl)
    return SearchedPlan(_runtime_form(nano.to_pipeline_plan(planner.ops)), nano, planner)


def _runtime_form(pp: PipelinePlan) -> PipelinePlan:
    """`pp`, or the runtime's `unsplit_plan()` when it splits nothing (one unit, every rule one whole range):
    the engine runs a plan with rules on the nano executor, and an all-[1.0] plan there only adds hand-offs."""
    from lowbit.runtime.plan import unsplit_plan as runtime_unsplit

    whole = all(list(r.fractions) == [1.0] for r in pp.rules)
    return runtime_unsplit() if len(pp.units) == 1 and whole else pp


__all__ = [
    "CPU_MIN_GAIN",
    "DRIFT_THRESHOLD",
    "GPU_MIN_GAIN",
    "Planner",
    "SearchedPlan",
    "default_workload",
    "hardware_for",
    "make_planner",
    "observed_mix",
    "plan_for_artifact",
    "precision_of",
    "research_if_drifted",
    "search_for_artifact",
]

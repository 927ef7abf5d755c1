"""The plan an artifact carries and its re-search: on the CPU preset the search does not win by the measured
split cost (1.3x) and the unsplit plan is kept; on a GPU preset a split plan with planned queue orders that
the runtime plan's JSON carries; re-searched only when the observed mix drifts, for that mix; the observed mix
of scheduler steps."""

from __future__ import annotations

import time

import pytest

from lowbit.models.arch import ArchConfig
from lowbit.planner.artifact import (
    CPU_MIN_GAIN,
    hardware_for,
    make_planner,
    observed_mix,
    plan_for_artifact,
    research_if_drifted,
    search_for_artifact,
)
from lowbit.planner.hardware import get_hardware
from lowbit.planner.models import get_arch
from lowbit.planner.workload import Workload
from lowbit.runtime.plan import PipelinePlan, unsplit_plan

TINY = ArchConfig("llama", 256, 128, 256, 2, 4, 2, 32, 1e-6, max_position_embeddings=512)


def test_cpu_artifact_keeps_the_unsplit_plan_unless_the_split_wins_by_the_measured_cost():
    pp = search_for_artifact(TINY, "cpu", 2.0)
    assert isinstance(pp, PipelinePlan) and PipelinePlan.from_json(pp.to_json()) == pp
    assert pp == unsplit_plan()  # the runtime's unsplit form: no rules, so the engine runs the plain executor
    assert CPU_MIN_GAIN == 1.3
    assert hardware_for("cpu").kind == "cpu"
    with pytest.raises(ValueError, match="device"):
        hardware_for("tpu")


@pytest.fixture(scope="module")
def gpu_plan():
    t0 = time.perf_counter()
    sp = plan_for_artifact(get_arch("llama-3-8b"), "cuda", 1.5, hardware=get_hardware("h200"), tp=1)
    return sp, time.perf_counter() - t0


def test_gpu_artifact_gets_a_split_plan_within_its_budget(gpu_plan):
    sp, elapsed = gpu_plan
    assert elapsed < 1.5 + 3.0  # the budget, plus the final simulations
    assert sp.workload == Workload(2048, 1408, 1024, 640, 0)  # the GPU default mix
    assert any(len(r.fractions) > 1 for r in sp.pipeline.rules)
    assert {u.name for u in sp.pipeline.units} >= {"compute", "memory"}
    assert PipelinePlan.from_json(sp.pipeline.to_json()) == sp.pipeline
    assert sp.pipeline == sp.nanoplan.to_pipeline_plan(sp.planner.ops)
    # on a GPU the search plans the queue order too, and the runtime plan carries it (the nano executor runs it)
    assert sp.planner.config.order and sp.nanoplan.ordered and sp.pipeline.ordered
    assert all(len(r.order) == r.num_nano for r in sp.pipeline.rules)
    assert not make_planner(TINY, "cpu").config.order  # the CPU keeps the runtime's own order (and unsplit)


def test_research_only_when_the_mix_drifts(gpu_plan):
    sp, _ = gpu_plan
    assert research_if_drifted(sp, sp.workload) is None
    assert research_if_drifted(sp, None) is None
    assert research_if_drifted(sp, Workload(2048, 1450, 1100, 598, 0)) is None  # within the threshold
    drifted = Workload(2048, 1900, 2048, 148, 0)
    new = research_if_drifted(sp, drifted)
    assert new is not None and new.workload == drifted and new.planner == sp.planner
    assert research_if_drifted(new, drifted) is None


def test_observed_mix_of_scheduler_steps():
    # two steps: 3 decode rows (cached 9, 19, 29) + a 5-row prefill chunk; 1 decode row (cached 99) + 7 prefill
    steps = [[(9, 1), (19, 1), (29, 1), (0, 5)], [(99, 1), (4, 7)]]
    wl = observed_mix(steps)
    assert wl == Workload(dense_batch=8, decode_tokens=2, decode_context=40, prefill_chunk=6, prefill_context=2)
    assert observed_mix([]) is None and observed_mix([[]]) is None

"""Measured step times of a compiled artifact under plans (the report's "measured" column): every schedule
runs the same synthetic dense step and returns positive per-step samples. Compiles the tiny model once per
session (the shared `tiny_artifact` fixture), hence `slow`."""

from __future__ import annotations

import pytest

from lowbit.planner.cli import _artifact_model
from lowbit.planner.measure import measure_schedules
from lowbit.planner.ops import model_ops
from lowbit.planner.schedules import split_plan
from lowbit.planner.workload import Workload


@pytest.mark.slow
def test_measure_schedules_on_the_tiny_artifact(tiny_artifact):
    arch, prec, device = _artifact_model(str(tiny_artifact))
    assert device == "cpu" and prec.linear is not None and prec.linear.weight_dtype == "int4"
    assert prec.kv_dtype == "int8" and prec.act_dtype == "float32"
    assert prec.name == "w4a16"  # named from the code dtype's bits
    wl = Workload(24, 16, 20, 8)
    mo = model_ops(arch, prec)
    plans = {"unsplit": None, "nano": split_plan(mo, wl, tile=8).to_pipeline_plan(mo)}
    times = measure_schedules(tiny_artifact, plans, wl, repeats=2, warmup=1, verify="none")
    assert set(times) == {"unsplit", "nano"}
    assert all(len(t.samples) == 2 and t.median_s > 0 and t.tokens_per_s > 0 for t in times.values())

"""Plans as data: NanoPlan / Hardware / KernelProfile JSON round trips, refusals that name the field, the
conversion to the runtime's PipelinePlan (valid, same fractions / units / shares, collectives dropped, one rule
per op matching the graph's node names), and calibration from a profile."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.graph.build import build_graph
from lowbit.models.arch import ArchConfig
from lowbit.planner.cost import CostModel, KernelProfile, ProfileRecord
from lowbit.planner.hardware import PRESETS, Hardware, HardwareError, get_hardware
from lowbit.planner.models import get_arch
from lowbit.planner.nanoplan import NanoPlan, Placement, fractions_of_cuts
from lowbit.planner.ops import model_ops, piece_work
from lowbit.planner.schedules import split_plan, units_for
from lowbit.planner.workload import Workload
from lowbit.runtime.plan import PipelinePlan, PlanError

MO = model_ops(get_arch("llama-2-70b"), None, 8, "llama-2-70b")
WL = Workload(2048, 1408, 1024, 640, 0)


@st.composite
def nanoplans(draw):
    units = units_for(MO)
    names = [u.name for u in units]
    placements = []
    ordered = draw(st.booleans())
    for o in draw(st.lists(st.sampled_from(MO.ops), unique_by=lambda o: o.name, max_size=len(MO.ops))):
        cuts = sorted(draw(st.sets(st.integers(1, 2047), max_size=3)))
        n = len(cuts) + 1
        us = tuple(draw(st.sampled_from(names)) for _ in range(draw(st.sampled_from([1, n]))))
        shares = tuple(draw(st.sampled_from([0.125, 0.5, 0.75, 1.0])) for _ in range(draw(st.sampled_from([1, n]))))
        kernels = tuple(draw(st.sampled_from(["", "tile 128x128 splitK 1"])) for _ in range(draw(st.integers(0, n))))
        order = tuple(draw(st.floats(-1, 3)) for _ in range(n)) if ordered else ()
        placements.append(Placement(o.name, fractions_of_cuts(cuts, 2048), us, shares, kernels,
                                    draw(st.sampled_from([0.0, 0.25, 2.0])), order))  # fmt: skip
    wl = draw(st.none() | st.just(WL))
    return NanoPlan(units, tuple(placements), draw(st.sampled_from([1, 8, 128])), draw(st.integers(0, 512)),
                    "llama-2-70b", "A100-80G", "w16a16", 8, wl)  # fmt: skip


@settings(max_examples=40)
@given(nanoplans())
def test_nanoplan_json_round_trip(plan):
    text = plan.to_json()
    back = NanoPlan.from_json(text)
    assert back == plan and back.to_json() == text
    assert NanoPlan.from_json(json.loads(text)) == plan


@settings(max_examples=40)
@given(nanoplans())
def test_conversion_to_the_runtime_plan(plan):
    if plan.ordered and len(plan.placements) < len([o for o in MO.ops if o.pattern is not None]):
        with pytest.raises(PlanError, match="no planned order"):  # an op left to the default has no order
            plan.to_pipeline_plan(MO)
        return
    if not plan.ordered and any(p.delay for p in plan.placements):
        with pytest.raises(PlanError, match="queue delays"):
            plan.to_pipeline_plan(MO)
        return
    pp = plan.to_pipeline_plan(MO)
    assert PipelinePlan.from_json(pp.to_json()) == pp  # a valid runtime plan, and its JSON round-trips
    assert [u.name for u in pp.units] == [u.name for u in plan.units] and pp.tile == plan.tile
    graph_ops = [o for o in MO.ops if o.pattern is not None]
    assert len(pp.rules) == len(graph_ops)  # one rule per op with a graph node; collectives dropped
    for o, rule in zip(graph_ops, pp.rules):
        p = plan.placement(o.name)
        assert (rule.pattern, rule.fractions, rule.units, rule.shares) == (o.pattern, p.fractions, p.units, p.shares)
        assert rule.order == p.order  # planned orders pass through (the nano executor keys its queues by them)


def test_every_layer_node_of_the_graph_has_its_rule():
    """The ops' name patterns cover every node of a decoder layer of the runtime's graph (unfused build)."""
    arch = ArchConfig("llama", 256, 64, 128, 2, 4, 2, 16)
    pp = split_plan(model_ops(arch), Workload(64, 32, 16, 16)).to_pipeline_plan(model_ops(arch))
    for node in build_graph(arch).nodes_in_order():
        rule = pp.rule_for(node.op, node.name)
        assert (rule is not None) == node.name.startswith("model.layers."), node.name


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.update(extra=1), r"unknown key\(s\) \['extra'\]"),
        (lambda d: d.update(version=9), "nano plan version 9"),
        (lambda d: d["placements"][0].update(fractions=[0.5, 0.6]), "sum to 1.1"),
        (lambda d: d["placements"][0].update(shares=[1.5]), r"shares \(1.5,\) must be"),
        (lambda d: d["placements"][0].update(units=["gpu9"]), "names unit 'gpu9'"),
        (lambda d: d["placements"][0].update(delay=-1), "delay -1 must be"),
        (lambda d: d["placements"][0].update(tiles=1), r"placements\[0\] has unknown key"),
    ],
)
def test_malformed_nanoplans_name_the_field(edit, match):
    d = json.loads(split_plan(MO, WL).to_json())
    edit(d)
    with pytest.raises(PlanError, match=match):
        NanoPlan.from_json(d)


def test_runtime_plan_shares_are_optional_and_checked():
    d = json.loads(split_plan(MO, WL).to_pipeline_plan(MO).to_json())
    assert all("shares" in r for r in d["rules"])
    old = json.loads(json.dumps(d))
    for r in old["rules"]:
        del r["shares"]
    assert all(r.shares == () for r in PipelinePlan.from_json(old).rules)  # plans without shares still load
    d["rules"][0]["shares"] = [0.0]
    with pytest.raises(PlanError, match=r"shares \(0.0,\) must be"):
        PipelinePlan.from_json(d)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_hardware_json_round_trip(name):
    hw = PRESETS[name]
    assert Hardware.from_json(hw.to_json()) == hw
    assert get_hardware(name.upper()) == hw


def test_hardware_errors_name_the_choices(tmp_path):
    with pytest.raises(HardwareError, match=r"is not a preset.*`lowbit plan --save-hardware`"):
        get_hardware("tpu-v5")
    with pytest.raises(HardwareError, match="unknown key"):
        Hardware.from_json({**json.loads(PRESETS["h200"].to_json()), "clock": 1})
    with pytest.raises(HardwareError, match=r"memory_knee 1\.5 must be in"):
        Hardware.from_json({**json.loads(PRESETS["h200"].to_json()), "memory_knee": 1.5})
    f = tmp_path / "hw.json"
    f.write_text(PRESETS["a100-80g"].to_json())
    assert get_hardware(str(f)) == PRESETS["a100-80g"]
    grid = PRESETS["a100-80g"].share_grid()
    assert grid[0] == pytest.approx(4 / 108) and grid[-1] == 1.0


def test_profile_calibrates_the_cost_model():
    """A measured time replaces the modelled one for that (op, share): the piece's work is scaled so its
    isolated time equals the measurement; rows between two measurements interpolate linearly, shares between
    two linearly in 1 / share (below the smallest: inversely to the share)."""
    hw = get_hardware("h200")
    op = MO.op("gate_up")
    w512, w1024 = piece_work(op, 0, 512, WL), piece_work(op, 0, 1024, WL)
    prof = KernelProfile("H200", (ProfileRecord("gate_up", 512, 1.0, 1e-3), ProfileRecord("gate_up", 1024, 1.0, 3e-3)))
    assert KernelProfile.from_json(prof.to_json()) == prof
    cm = CostModel(hw, profile=prof)
    assert cm.time(cm.calibrated("gate_up", w512, 1.0)) == pytest.approx(1e-3, rel=1e-9)
    assert cm.time(cm.calibrated("gate_up", w1024, 1.0)) == pytest.approx(3e-3, rel=1e-9)
    w768 = piece_work(op, 0, 768, WL)
    assert cm.time(cm.calibrated("gate_up", w768, 1.0)) == pytest.approx(2e-3, rel=1e-9)
    # a share below the measured ones: the same work on half the share takes twice the time
    assert cm.time(cm.calibrated("gate_up", w768, 0.5), 0.5) == pytest.approx(4e-3, rel=1e-9)
    assert cm.calibrated("qkv", w768, 1.0) is w768  # op not measured: the model stands
    two = KernelProfile("H200", (ProfileRecord("gate_up", 512, 1.0, 1e-3), ProfileRecord("gate_up", 512, 0.5, 3e-3)))
    assert two.lookup("gate_up", 512, 0.75) == pytest.approx(3e-3 + (1e-3 - 3e-3) * (1 / 0.75 - 2) / (1 - 2))
    assert two.lookup("gate_up", 512, 0.25) == pytest.approx(6e-3)
    with pytest.raises(ValueError, match=re.escape("profile record 0")):
        KernelProfile.from_json({"records": [["gate_up", 512, 0.0, 1.0]]})

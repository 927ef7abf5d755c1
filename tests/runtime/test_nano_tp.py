"""The nano executor under tensor parallelism, on a handmade op list with stand-in rules and a stand-in process
group (no processes, no kernels): the all_reduce nano-ops run on the plan's network unit, one per nano-batch,
issued by that unit's thread in the global task order (what every rank shares); with several network units
each issues on its own subgroup, only its own nano-ops, in that order; the default tp plan; a step stuck in a
nano-op fails after `step_timeout` instead of hanging (the deadlock guard). The real 2-process run is
tests/parallel/test_tp_equivalence.py."""

from __future__ import annotations

import dataclasses
import threading
import time
from types import SimpleNamespace

import pytest
import torch

import lowbit.parallel.collectives  # noqa: F401  (registers the real all_reduce rule before the tests patch it)
from lowbit.graph.graph import Node
from lowbit.runtime import executor as executor_mod
from lowbit.runtime.batch import Batch, SeqChunk
from lowbit.runtime.nano import NanoExecutor, NanoStepTimeout, collective_units
from lowbit.runtime.plan import OpRule, PipelinePlan, PlanError, Unit, default_plan

NODES = [
    Node.create("emb", "embedding", ["input_ids"], ["h"]),
    Node.create("l0.o_proj", "linear", ["h"], ["p0"]),
    Node.create("l0.o_proj.all_reduce", "all_reduce", ["p0"], ["y0"], world_size=2),
    Node.create("l0.down_proj", "linear", ["y0"], ["p1"]),
    Node.create("l0.down_proj.all_reduce", "all_reduce", ["p1"], ["y1"], world_size=2),
    Node.create("last", "last_token", ["y1"], ["hl"]),
    Node.create("head", "linear", ["hl"], ["logits"]),
]


class FakeGroup:
    """Records (tag, thread, node, rows) of every all_reduce; 'sums' two equal ranks (x * 2)."""

    def __init__(self, tag: str = "main", log: list | None = None) -> None:
        self.tag, self.world_size, self.rank = tag, 2, 0
        self.log = [] if log is None else log
        self.made: list[str] = []

    def subgroup(self, tag: str) -> FakeGroup:
        self.made.append(tag)
        return FakeGroup(tag, self.log)


def _rules(monkeypatch, gate: threading.Event | None = None) -> None:
    def embedding(ex, node, args):
        return (args[0].float()[:, None].repeat(1, 4),)

    def linear(ex, node, args):
        return (args[0] + 1.0,)

    def all_reduce(ex, node, args):
        if gate is not None:
            gate.wait()
        (x,) = args
        if ex.tp_group is None:
            return (x,)
        ex.tp_group.log.append((ex.tp_group.tag, threading.current_thread().name, node.name, x[:, 0].tolist()))
        return (x * 2,)

    def last_token(ex, node, args):
        return (args[0][ex.batch.last_index],)

    fakes = {"embedding": embedding, "linear": linear, "all_reduce": all_reduce, "last_token": last_token}
    for op, fn in fakes.items():
        monkeypatch.setitem(executor_mod.RULES, op, fn)


def fake_executor(group: FakeGroup | None) -> SimpleNamespace:
    return SimpleNamespace(nodes=NODES, params={}, tp_group=group, batch=None, all_logits=False)


def batch(rows: int) -> Batch:
    return Batch([SeqChunk(0, tuple(range(10, 10 + rows)), 0, (1,))], 16)


def expected_logits(rows: int) -> torch.Tensor:
    x = torch.arange(10, 10 + rows, dtype=torch.float32)
    return ((((x + 1) * 2) + 1) * 2 + 1)[-1:, None].repeat(1, 4)


def plan_with(network_units: int, num_nano: int = 2) -> PipelinePlan:
    plan = dataclasses.replace(default_plan(tensor_parallel=2, num_nano=num_nano), tile=1, min_tokens=0)
    if network_units == 1:
        return plan
    units = (*plan.units, Unit("network2", "network"))
    fr = plan.rules[0].fractions
    rule = OpRule(ops=("network",), fractions=fr, units=tuple(["network", "network2"][i % 2] for i in range(len(fr))))
    return dataclasses.replace(plan, units=units, rules=(rule, *plan.rules[1:]))


def test_default_tp_plan_puts_collectives_on_a_network_unit():
    plan = default_plan(tensor_parallel=2)
    assert [u.kind for u in plan.units] == ["compute", "memory", "network"]
    assert plan.rule_for("all_reduce", "l0.o_proj.all_reduce").units == ("network",)
    assert plan.rule_for("linear", "l0.o_proj").units == ("compute",)
    assert plan.rule_for("attention", "l0.attn").units == ("memory",)
    assert default_plan() == default_plan(tensor_parallel=1)  # tp 1: no network unit
    assert PipelinePlan.from_json(plan.to_json()) == plan
    with pytest.raises(PlanError, match="tensor_parallel 0"):
        default_plan(tensor_parallel=0)
    assert collective_units(NODES, plan) == (2,)
    assert collective_units(NODES, PipelinePlan((Unit("c"),))) == (0,)  # no rule: unit 0 runs them


@pytest.mark.parametrize("num_nano", [2, 3])
def test_collectives_run_on_the_network_unit_in_the_global_order(monkeypatch, num_nano):
    _rules(monkeypatch)
    group = FakeGroup()
    nano = NanoExecutor(fake_executor(group), plan_with(1, num_nano))
    try:
        assert nano.tp and nano.unit_executors == {} and group.made == []  # one unit: the group itself
        for rows in (6, 9):
            group.log.clear()
            out = nano.forward(batch(rows))
            assert torch.equal(out, expected_logits(rows))
            tasks = nano.tasks_for(batch(rows))
            want = [NODES[t.node].name for t in tasks if NODES[t.node].op == "all_reduce"]
            assert len(want) == 2 * num_nano  # one all_reduce nano-op per nano-batch
            assert [e[2] for e in group.log] == want  # issued in the global task order
            assert {e[1] for e in group.log} == {"lowbit-nano-network"}  # by the network unit's thread
            assert sorted(r for e in group.log if e[2] == "l0.o_proj.all_reduce" for r in e[3]) == [
                (x + 1.0) for x in range(10, 10 + rows)
            ]  # the nano-ops cover every row once
    finally:
        nano.close()


def test_each_network_unit_issues_on_its_own_subgroup(monkeypatch):
    _rules(monkeypatch)
    group = FakeGroup()
    plan = plan_with(2, num_nano=4)
    nano = NanoExecutor(fake_executor(group), plan)
    try:
        assert group.made == ["nano-network", "nano-network2"]
        assert nano.collective_units == (2, 3)
        out = nano.forward(batch(8))
        assert torch.equal(out, expected_logits(8))
        tasks = nano.tasks_for(batch(8))
        for unit, tag in ((2, "nano-network"), (3, "nano-network2")):
            want = [NODES[t.node].name for t in tasks if t.unit == unit and NODES[t.node].op == "all_reduce"]
            got = [e for e in group.log if e[0] == tag]
            assert len(want) == 4 and [e[2] for e in got] == want  # this unit's collectives, in the global order
            assert {e[1] for e in got} == {f"lowbit-nano-{plan.units[unit].name}"}
        assert not any(e[0] == "main" for e in group.log)
    finally:
        nano.close()


def test_a_stuck_step_fails_after_the_step_timeout(monkeypatch):
    gate = threading.Event()
    _rules(monkeypatch, gate)
    nano = NanoExecutor(fake_executor(FakeGroup()), plan_with(1), step_timeout=0.5)
    try:
        t0 = time.monotonic()
        stuck = r"did not finish within 0.5 s.*l0\.o_proj\.all_reduce\[0:3\]@network"
        with pytest.raises(NanoStepTimeout, match=stuck):
            nano.forward(batch(6))
        assert time.monotonic() - t0 < 10
        with pytest.raises(RuntimeError, match="closed"):
            nano.forward(batch(6))
    finally:
        gate.set()
        nano.close()


def test_step_timeout_defaults(monkeypatch):
    _rules(monkeypatch)
    monkeypatch.setenv("LOWBIT_TP_TIMEOUT", "7")
    with_tp = NanoExecutor(fake_executor(FakeGroup()), plan_with(1))
    without = NanoExecutor(fake_executor(None), plan_with(1))
    try:
        assert with_tp.step_timeout == 37.0  # after the collectives' own timeout
        assert without.step_timeout is None and not without.tp
        assert torch.equal(without.forward(batch(4)), torch.full((1, 4), 13.0 + 3))  # no group: no sum
    finally:
        with_tp.close()
        without.close()
    with pytest.raises(ValueError, match="step_timeout 0"):
        NanoExecutor(fake_executor(None), plan_with(1), step_timeout=0)


def test_the_engine_runs_nano_on_a_tp_artifact_with_the_network_plan():
    from lowbit.runtime.engine import LLMEngine

    def resolve(tp: int, schedule: str, plan=None):
        model = SimpleNamespace(tensor_parallel=tp, cfg=SimpleNamespace(target=SimpleNamespace(device="cpu")))
        stub = SimpleNamespace(model=model, arch=None, _artifact_plan=lambda: None)
        return LLMEngine._resolve_schedule(stub, schedule, plan)  # type: ignore[arg-type]

    assert resolve(2, "nano") == ("nano", default_plan(tensor_parallel=2))  # no longer refused
    assert resolve(1, "nano") == ("nano", default_plan())
    assert resolve(2, "artifact") == ("unsplit", None)  # the artifact ships no split
    mine = plan_with(2)
    assert resolve(2, "nano", mine) == ("nano", mine)

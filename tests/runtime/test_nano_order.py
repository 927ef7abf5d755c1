"""Planned queue orders in the nano executor (`OpRule.order`, the planner's `lowbit plan --order`): the
runtime's own queue rule written as orders derives the same task order on a real graph (a law: the orders are
a monotone transform of (stage, first row)); the planner's simulated order and the runtime's derived order
are the same sequence of (layer, op, nano-batch) on every unit; every order stays topological (dependencies
win over keys) and is a pure function of graph and plan (every tensor-parallel rank derives the same); a
planner-ordered plan's logits equal the unsplit executor's on the tiny artifact."""

from __future__ import annotations

import random
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.graph import PassContext, build_graph, optimize
from lowbit.models import ArchConfig
from lowbit.planner.anneal import random_move
from lowbit.planner.cost import CostModel
from lowbit.planner.hardware import get_hardware
from lowbit.planner.ops import model_ops
from lowbit.planner.schedules import split_plan
from lowbit.planner.search import orders_from_schedule
from lowbit.planner.tasks import derive_tasks as planner_tasks
from lowbit.planner.workload import Workload
from lowbit.runtime.batch import Batch, SeqChunk
from lowbit.runtime.nano import derive_tasks, node_layers, planned_keys
from lowbit.runtime.plan import OpRule, PipelinePlan, Unit

ARCH = ArchConfig(
    model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4,
    num_kv_heads=2, head_dim=16, max_position_embeddings=128,
)  # fmt: skip
UNITS = (Unit("compute", "compute"), Unit("memory", "memory"))


@pytest.fixture(scope="module")
def nodes():
    ctx = PassContext(arch=ARCH, resolve=lambda m: None, backend="reference", dtype="float32", kv_dtype="float32")
    return optimize(build_graph(ARCH), ctx).nodes


def generic(name: str) -> str:
    """The node name as a rule pattern that matches the same node of every layer."""
    return re.sub(r"model\\\.layers\\\.\d+", lambda _: r"model\.layers\.\d+", re.escape(name))


def per_node_plan(nodes, fractions_of, unit_of) -> PipelinePlan:
    """One rule per node kind (the same node of every layer), in the runtime's own queue rule (no orders)."""
    pats = list(dict.fromkeys(generic(n.name) for n in nodes))
    rules = tuple(OpRule(pattern=p, fractions=fractions_of(p), units=(unit_of(p),)) for p in pats)
    return PipelinePlan(UNITS, rules, tile=8)


def runtime_rule_as_orders(nodes, plan: PipelinePlan, num_tokens: int, bounds) -> PipelinePlan:
    """order[k] = (stage of the node + first row of nano-batch k / rows) / stages per layer - layer of the node:
    the runtime's key (stage, first row, position) divided by the stages per layer."""
    tasks = derive_tasks(nodes, plan, num_tokens, bounds)
    first_unit = {t.node: t.unit for t in tasks if t.rows[0] == 0}
    stage, last, stages = 0, None, []
    for i in range(len(nodes)):
        if first_unit[i] != last:
            stage, last = stage + (last is not None), first_unit[i]
        stages.append(stage)
    layer = node_layers(nodes)
    by_layer = {(layer[i], generic(n.name)): stages[i] for i, n in enumerate(nodes)}
    per_layer = {by_layer[(x + 1, p)] - s for (x, p), s in by_layer.items() if (x + 1, p) in by_layer and x >= 0}
    assert len(per_layer) == 1, f"the stages are not periodic over the layers: {per_layer}"
    (period,) = per_layer
    starts: dict[str, list[int]] = {}
    stage_of: dict[str, float] = {}
    for t in tasks:
        p = generic(nodes[t.node].name)
        if layer[t.node] in (-1, 0, ARCH.num_layers):  # the first node of each kind fixes the orders
            stage_of.setdefault(p, stages[t.node] - layer[t.node] * period)
            starts.setdefault(p, [])
            if t.rows[0] not in starts[p]:
                starts[p].append(t.rows[0])
    rules = []
    for r in plan.rules:
        assert r.pattern is not None
        keys = [(stage_of[r.pattern] + a / num_tokens) / period for a in sorted(starts[r.pattern])]
        keys += keys[-1:] * (r.num_nano - len(keys))  # a node run whole (last_token, lm_head): one piece
        rules.append(replace(r, order=tuple(keys)))
    return replace(plan, rules=tuple(rules))


ATTN = r"model\.layers\.\d+\.self_attn\.attn"
POST = r"model\.layers\.\d+\.post_attention_layernorm"
CASES = {  # (fractions per pattern, unit per pattern): 2 / 4 stages per layer, so the keys are exact in binary
    "two-even": (lambda p: (0.5, 0.5), lambda p: "memory" if p == ATTN else "compute"),
    "four-even": (lambda p: (0.25,) * 4, lambda p: "memory" if p == ATTN else "compute"),
    "mixed": (
        lambda p: (0.25,) * 4 if p == ATTN else (0.5, 0.5),
        lambda p: "memory" if p in (ATTN, POST) else "compute",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_runtime_rule_written_as_orders_is_the_same_schedule(nodes, case):
    plan = per_node_plan(nodes, *CASES[case])
    bounds = [0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 24, 32]  # 8 decode rows, then three 8-row prefill chunks
    ordered = runtime_rule_as_orders(nodes, plan, 32, bounds)
    assert ordered.ordered and not plan.ordered
    a, b = derive_tasks(nodes, plan, 32, bounds), derive_tasks(nodes, ordered, 32, bounds)
    assert len({t.node for t in a if t.rows[0] > 0}) > 10  # the nodes are split
    assert [(t.node, t.rows, t.unit) for t in a] == [(t.node, t.rows, t.unit) for t in b]
    assert a == b


def test_a_different_order_gives_a_different_schedule(nodes):
    """The comparison can fail: one rule's keys moved a layer later change the sequence (still topological)."""
    plan = per_node_plan(nodes, *CASES["two-even"])
    bounds = [0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 24, 32]
    ordered = runtime_rule_as_orders(nodes, plan, 32, bounds)
    rules = list(ordered.rules)
    i = next(i for i, r in enumerate(rules) if r.pattern == ATTN)
    rules[i] = replace(rules[i], order=tuple(k + 1.0 for k in rules[i].order))
    moved = replace(ordered, rules=tuple(rules))
    a, b = derive_tasks(nodes, ordered, 32, bounds), derive_tasks(nodes, moved, 32, bounds)
    assert [(t.node, t.rows) for t in a] != [(t.node, t.rows) for t in b]
    assert all(d < t.index for t in b for d in t.deps)


def test_node_layers_and_keys_outside_the_layers(nodes):
    layer = node_layers(nodes)
    names = [n.name for n in nodes]
    assert layer[names.index("model.embed_tokens")] == -1
    assert layer[names.index("model.layers.2.mlp.down_proj")] == 2
    assert layer[names.index("model.norm")] == layer[names.index("lm_head")] == ARCH.num_layers
    in_layers = [(x, int(n.split(".")[2])) for x, n in zip(layer, names, strict=True) if n.startswith("model.layers.")]
    assert len(in_layers) > 10 and all(x == want for x, want in in_layers)  # the fused nodes keep their layer
    # a plan whose rules name only the attention: the other nodes keep the documented keys
    plan = PipelinePlan(UNITS, (OpRule(pattern=ATTN, fractions=(0.5, 0.5), units=("memory",), order=(0.3, 0.6)),))
    pieces = [(i, 0) for i in range(len(nodes))]
    deps = [[i - 1] if i else [] for i in range(len(nodes))]
    keys = planned_keys(nodes, plan, pieces, deps)
    n = len(nodes)
    assert keys[0] == (-1 + 0 / n, 0)  # the embedding: before layer 0
    assert keys[names.index("lm_head")] == (ARCH.num_layers + names.index("lm_head") / n, names.index("lm_head"))
    attn1 = names.index("model.layers.1.self_attn.attn")
    assert keys[attn1] == (1.3, attn1)
    assert keys[attn1 + 1][0] == 1.3  # o_proj (no rule): right behind its latest-keyed producer


@st.composite
def ordered_plans(draw):
    pats = [r"model\.embed_tokens", r"model\.layers\.\d+\.self_attn\.(qkv_proj|rope)", ATTN,
            r"model\.layers\.\d+\.(mlp|self_attn)\..*", ".*"]  # fmt: skip
    rules = []
    for p in pats:
        n = draw(st.integers(1, 3))
        rules.append(OpRule(pattern=p, fractions=(1.0 / n,) * (n - 1) + (1.0 - (n - 1) / n,),
                            units=(draw(st.sampled_from(["compute", "memory"])),),
                            order=tuple(draw(st.floats(-2, 3)) for _ in range(n))))  # fmt: skip
    return PipelinePlan(UNITS, tuple(rules), tile=draw(st.sampled_from([1, 4])))


@settings(max_examples=30)
@given(ordered_plans(), st.sets(st.integers(1, 23), max_size=5))
def test_any_planned_order_is_topological_and_deterministic(nodes, plan, inner):
    """Dependencies win over keys (an order that puts a consumer before its producer still runs it after), and
    the same graph and plan give the same tasks every time (what every tensor-parallel rank relies on)."""
    bounds = [0, *sorted(inner), 24]
    tasks = derive_tasks(nodes, plan, 24, bounds)
    assert [t.index for t in tasks] == list(range(len(tasks)))
    assert all(d < t.index for t in tasks for d in t.deps)
    assert derive_tasks(list(nodes), PipelinePlan.from_json(plan.to_json()), 24, list(bounds)) == tasks
    unordered = replace(plan, rules=tuple(replace(r, order=()) for r in plan.rules))
    same = derive_tasks(nodes, unordered, 24, bounds)  # the same nano-ops, maybe in another order
    assert sorted((t.node, t.rows, t.unit) for t in same) == sorted((t.node, t.rows, t.unit) for t in tasks)


# -- the planner's simulated order = the runtime's derived order ------------------------------------------------
WL = Workload(dense_batch=64, decode_tokens=32, decode_context=40, prefill_chunk=16, prefill_context=0)


@pytest.fixture(scope="module", params=["list-scheduled", "annealed"])
def planned(request):
    """The list-scheduled orders of the split plan; "annealed": then 200 of stage III's random moves (anneal.py:
    per-op cuts, nano-batches split / merged, units per nano-batch, shares, queue keys)."""
    mo = model_ops(ARCH, None, 1, "tiny")
    cost = CostModel(get_hardware("h200"))
    plan = orders_from_schedule(mo, split_plan(mo, WL, tile=8), WL, cost)
    if request.param == "annealed":
        rng = random.Random(0)
        for _ in range(200):
            plan = random_move(plan, mo, WL.dense_batch, cost.hw.share_grid(), rng) or plan
        assert len({p.fractions for p in plan.placements}) > 2 and any(len(set(p.units)) > 1 for p in plan.placements)
    return mo, cost, plan


def test_the_planner_and_the_runtime_derive_the_same_order(nodes, planned):
    mo, cost, plan = planned
    assert plan.ordered
    pp = plan.to_pipeline_plan(mo)
    assert pp.ordered and all(len(r.order) == r.num_nano for r in pp.rules)
    sim = planner_tasks(mo, plan, WL, cost, ARCH.num_layers)
    run = derive_tasks(nodes, pp, WL.dense_batch, WL.seq_bounds())
    layer = node_layers(nodes)
    op_of = {}
    for i, n in enumerate(nodes):
        hits = [o.name for o in mo.ops if o.pattern is not None and re.fullmatch(o.pattern, n.name)]
        assert len(hits) <= 1
        if hits and 0 <= layer[i] < ARCH.num_layers:
            op_of[i] = hits[0]
    assert len(op_of) == len(mo.ops) * ARCH.num_layers  # every layer node is one of the planner's ops
    nano = {}
    for t in run:
        nano.setdefault(t.node, []).append(t.rows[0])
    seq_run: dict[int, list] = {}
    for t in run:
        if t.node in op_of:
            seq_run.setdefault(t.unit, []).append((layer[t.node], op_of[t.node], sorted(nano[t.node]).index(t.rows[0])))
    seq_sim: dict[int, list] = {}
    for s in sim:
        seq_sim.setdefault(s.unit, []).append((s.layer, s.op, s.nano))
    assert seq_run == seq_sim
    assert len(seq_run) == 2 and len(sim) > 2 * len(mo.ops) * ARCH.num_layers  # both units, split ops
    # and the planned order is not the runtime's default one here (the test would not see a key mix-up otherwise)
    default = derive_tasks(nodes, replace(pp, rules=tuple(replace(r, order=()) for r in pp.rules)),
                           WL.dense_batch, WL.seq_bounds())  # fmt: skip
    assert [(t.node, t.rows) for t in default] != [(t.node, t.rows) for t in run]


# -- logits on the tiny artifact -----------------------------------------------------------------------------
def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    err = float((a.double() - b.double()).norm() / b.double().norm())
    assert np.isfinite(err), "NaN or inf in the outputs"
    return err


@pytest.mark.parametrize("moves", [0, 120])
def test_an_ordered_plan_equals_the_unsplit_executor_on_the_tiny_artifact(tiny_artifact, moves):
    """The list-scheduled plan, and (moves > 0) that plan after stage III's random moves (anneal.py)."""
    from lowbit.compiler.load import load_compiled

    model = load_compiled(tiny_artifact, verify="none")
    mo = model_ops(model.arch, None, 1, "tiny-llama")
    wl = Workload(dense_batch=24, decode_tokens=6, decode_context=12, prefill_chunk=9, prefill_context=0)
    cost = CostModel(get_hardware("h200"))
    plan = orders_from_schedule(mo, split_plan(mo, wl, tile=2), wl, cost)
    rng = random.Random(0)
    for _ in range(moves):
        plan = random_move(plan, mo, wl.dense_batch, cost.hw.share_grid(), rng) or plan
    pp = plan.to_pipeline_plan(mo)
    assert pp.ordered and pp.min_tokens == 0
    plain = model.runner(max_num_seqs=8)
    nano = model.runner(max_num_seqs=8, schedule="nano", plan=pp)
    assert nano.nano is not None and nano.nano.plan == pp
    rng = np.random.default_rng(0)
    try:
        # 6 decode rows over cached histories, a fresh 9-row prefill, a 9-row chunk after a cached prefix
        hist = [tuple(int(x) for x in rng.integers(0, model.arch.vocab_size, n)) for n in (5, 7, 9, 11, 12, 13, 0, 6)]
        new = [(int(rng.integers(0, model.arch.vocab_size)),) for _ in range(6)]
        new += [tuple(int(x) for x in rng.integers(0, model.arch.vocab_size, 9)) for _ in range(2)]
        outs = []
        for r in (plain, nano):
            tables: list[list[int]] = []
            for h, x in zip(hist, new, strict=True):
                tables.append([])
                r.cache.grow(tables[-1], len(h) + len(x))
            prefill = [SeqChunk(i, h, 0, tuple(t)) for i, (h, t) in enumerate(zip(hist, tables, strict=True)) if h]
            r.executor.forward(Batch(prefill, r.cache.page_size))  # the histories, unsplit on both
            step = [SeqChunk(i, x, len(h), tuple(t)) for i, (h, x, t) in enumerate(zip(hist, new, tables, strict=True))]
            outs.append(r.step(step, all_logits=True))
            assert r.nano is None or len(r.nano._schedules) == 1  # the step ran on the nano schedule
            for t in tables:
                r.cache.free(t)
        assert outs[0].shape == (6 + 18, model.arch.vocab_size)
        assert rel(outs[1], outs[0]) <= 1e-5
        ids = [int(x) for x in rng.integers(0, model.arch.vocab_size, 40)]
        assert rel(nano.logits(ids, chunk=16), plain.logits(ids, chunk=16)) <= 1e-5
    finally:
        nano.nano.close()

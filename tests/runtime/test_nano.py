"""The nano-batch executor against the unsplit one (the oracle): equal logits and equal KV cache contents over
hypothesis batch compositions (decode rows first, then fresh prefills and later prefill chunks) and plans
(1..4 nano-batches, different splits per op kind, several units); dependencies of a handmade op list against
brute-force row intersection; errors from a worker reach the caller without a hang; the unit threads live
across steps and are pinned to the plan's cores; the ModelRunner switch."""

from __future__ import annotations

import itertools
import os
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.compiler.quantize import quantize_params
from lowbit.graph import PassContext, build_graph, optimize
from lowbit.graph.graph import Node, OpGraph
from lowbit.models import ArchConfig
from lowbit.models.synthetic import synthetic_weights
from lowbit.runtime import executor as executor_mod
from lowbit.runtime import nano as nano_mod
from lowbit.runtime.batch import Batch, SeqChunk
from lowbit.runtime.executor import Executor
from lowbit.runtime.kv_cache import PagedKVCache
from lowbit.runtime.nano import GRAPH_INPUT, NanoExecutor, derive_tasks
from lowbit.runtime.plan import OpRule, PipelinePlan, PlanError, Unit, default_plan, unsplit_plan
from lowbit.runtime.runner import ModelRunner
from lowbit.runtime.sampler import SamplingParams

ARCH = ArchConfig(
    model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=16, max_position_embeddings=128,
)  # fmt: skip
BACKEND = "tvm"  # compiled once per process (dynamic token count), then ~2 ms a step; "reference" is ~100 ms


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    err = float((a.double() - b.double()).norm() / b.double().norm())
    assert np.isfinite(err), "NaN or inf in the outputs"
    return err


@pytest.fixture(scope="module")
def model():
    weights = synthetic_weights(ARCH, 0)
    ctx = PassContext(arch=ARCH, resolve=lambda m: None, backend=BACKEND, dtype="float32", kv_dtype="float32")
    g = optimize(build_graph(ARCH), ctx)
    params = quantize_params(g, weights, tied=ARCH.tie_word_embeddings, dtype=torch.float32)
    pair = []
    for _ in range(2):  # the unsplit side and the nano side, each with its own cache
        cache = PagedKVCache("float32", ARCH.num_layers, ARCH.num_kv_heads, ARCH.head_dim, 48, 16)
        pair.append(Executor(g, params, cache, backend=BACKEND, max_positions=128))
    t: list[int] = []
    pair[0].cache.grow(t, 20)  # warm the kernels up (prefill, then decode over the cache)
    pair[0].forward(Batch([SeqChunk(0, tuple(range(19)), 0, tuple(t))], 16))
    pair[0].forward(Batch([SeqChunk(0, (3,), 19, tuple(t))], 16))
    pair[0].cache.free(t)
    return g, params, pair


# -- plans and batches -------------------------------------------------------------------------------------
UNITS = (Unit("c0", "compute"), Unit("m0", "memory"), Unit("c1", "compute"))
KINDS = [("attention",), ("linear",), ("norm",), ("rope",), ("silu_mul",), ("embedding",), ("add",)]


@st.composite
def plans(draw):
    rules = []
    for ops in draw(st.lists(st.sampled_from(KINDS), max_size=5, unique=True)):
        n = draw(st.integers(1, 4))
        w = draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
        fr = [x / sum(w) for x in w[:-1]]
        units = tuple(draw(st.sampled_from([u.name for u in UNITS])) for _ in range(draw(st.sampled_from([1, n]))))
        rules.append(OpRule(ops=ops, fractions=(*fr, 1.0 - sum(fr)), units=units))
    if draw(st.booleans()):
        n = draw(st.integers(1, 4))
        rules.append(OpRule(pattern=".*", fractions=(1.0 / n,) * (n - 1) + (1.0 - (n - 1) / n,), units=("c1",)))
    return PipelinePlan(UNITS, tuple(rules), tile=draw(st.sampled_from([1, 1, 2, 4])))


# a sequence of the step: ("decode", history), ("prefill", new tokens), ("chunk", history, new tokens)
SEQ = st.one_of(
    st.tuples(st.just("decode"), st.integers(1, 12)),
    st.tuples(st.just("prefill"), st.integers(1, 12)),
    st.tuples(st.just("chunk"), st.integers(1, 10), st.integers(2, 8)),
)


def compose(kinds, rng):
    """Histories (prefilled before the step) and the step's chunks, decode rows first."""
    order = sorted(range(len(kinds)), key=lambda i: kinds[i][0] != "decode")
    history, step = [], []
    for sid in order:
        k = kinds[sid]
        cached = {"decode": k[1], "prefill": 0, "chunk": k[1]}[k[0]]
        new = {"decode": 1, "prefill": k[1], "chunk": k[-1]}[k[0]]
        ids = tuple(int(x) for x in rng.integers(0, ARCH.vocab_size, cached + new))
        history.append((sid, ids[:cached]))
        step.append((sid, ids[cached:], cached))
    return history, step


def prefill(ex, history, tables):
    """Allocate pages for every sequence of the step and prefill the histories with the unsplit executor."""
    for sid, ids in history:
        tables[sid] = []
        ex.cache.grow(tables[sid], len(ids) + 12)
    hist = [SeqChunk(sid, ids, 0, tuple(tables[sid])) for sid, ids in history if ids]
    if hist:
        ex.forward(Batch(hist, 16))


def run_step(ex, nano, history, step, all_logits, tables):
    """The histories (unsplit), then the step through `nano` (or `ex` when None); its logits."""
    prefill(ex, history, tables)
    chunks = [SeqChunk(sid, ids, cached, tuple(tables[sid])) for sid, ids, cached in step]
    return (nano or ex).forward(Batch(chunks, 16), all_logits=all_logits)


def free(ex, tables):
    for t in tables.values():
        ex.cache.free(t)
    tables.clear()


def unsplit_and_nano(ex_a, ex_b, nano, history, step, all_logits):
    """The step's logits from the unsplit executor `ex_a` (the oracle) and through `nano` over `ex_b`; the pages
    both runs took are freed again."""
    ta: dict[int, list[int]] = {}
    tb: dict[int, list[int]] = {}
    try:
        return run_step(ex_a, None, history, step, all_logits, ta), run_step(ex_b, nano, history, step, all_logits, tb)
    finally:
        free(ex_a, ta)
        free(ex_b, tb)


def cache_rows(ex, tables, step):
    """The K/V of every position of the step's sequences, per layer: [layers, 2, tokens, heads, D]."""
    ps = ex.cache.page_size
    rows = []
    for layer in ex.cache.layers:
        for kv in (layer.k, layer.v):
            for sid, ids, cached in step:
                for p in range(cached + len(ids)):
                    rows.append(kv[tables[sid][p // ps], p % ps])
    return torch.stack(rows)


@settings(max_examples=25)
@given(st.lists(SEQ, min_size=1, max_size=6), plans(), st.booleans(), st.integers(0, 2**16))
def test_nano_equals_unsplit_logits_and_cache(model, kinds, plan, all_logits, seed):
    _, _, (ex_a, ex_b) = model
    history, step = compose(kinds, np.random.default_rng(seed))
    nano = NanoExecutor(ex_b, plan)
    ta: dict[int, list[int]] = {}
    tb: dict[int, list[int]] = {}
    try:
        want = run_step(ex_a, None, history, step, all_logits, ta)
        got = run_step(ex_b, nano, history, step, all_logits, tb)
        assert got.shape == want.shape and got.dtype == torch.float32
        assert rel(got, want) <= 1e-5
        assert rel(cache_rows(ex_b, tb, step), cache_rows(ex_a, ta, step)) <= 1e-6
    finally:
        nano.close()
        free(ex_a, ta)
        free(ex_b, tb)


def test_the_oracle_catches_a_misassembled_input(model, monkeypatch):
    """The comparison can fail: concatenating a reader's input pieces in the wrong order changes the logits."""
    _, _, (ex_a, ex_b) = model
    history, step = compose([("decode", 4), ("prefill", 9), ("prefill", 7)], np.random.default_rng(0))
    plan = PipelinePlan(UNITS, (OpRule(ops=("linear",), fractions=(0.5, 0.5), units=("c0", "c1")),))
    real = nano_mod._Step.arg
    monkeypatch.setattr(nano_mod._Step, "arg", lambda self, srcs: real(self, tuple(reversed(srcs))))
    nano = NanoExecutor(ex_b, plan)
    try:
        want, got = unsplit_and_nano(ex_a, ex_b, nano, history, step, True)
        assert got.shape == want.shape and rel(got, want) > 1e-2
    finally:
        nano.close()


# -- dependencies on a handmade op list ----------------------------------------------------------------------
def _chain():
    return [
        Node.create("emb", "embedding", ["input_ids"], ["h"]),
        Node.create("up", "linear", ["h"], ["u"]),
        Node.create("rope", "rope", ["u", "u", "positions"], ["q", "k"]),
        Node.create("attn", "attention", ["q", "k", "u"], ["o"]),
        Node.create("res", "add", ["o", "h"], ["r"]),
        Node.create("last", "last_token", ["r"], ["hl"]),
        Node.create("head", "linear", ["hl"], ["logits"]),
    ]


def test_dependencies_on_a_handmade_op_list():
    units = (Unit("c"), Unit("m", "memory"))
    plan = PipelinePlan(
        units,
        (
            OpRule(ops=("embedding",), fractions=(0.5, 0.5), units=("c",)),  # [0,4) [4,8)
            OpRule(ops=("linear",), fractions=(0.375, 0.375, 0.25), units=("c",)),  # [0,3) [3,6) [6,8)
            OpRule(ops=("attention",), fractions=(0.5, 0.5), units=("m",)),  # snapped to sequences: [0,5) [5,8)
        ),
    )
    tasks = derive_tasks(_chain(), plan, 8, [0, 2, 5, 8])
    by = {(t.node, t.rows): t for t in tasks}
    name = {(t.index): (["emb", "up", "rope", "attn", "res", "last", "head"][t.node], t.rows) for t in tasks}
    deps = {name[t.index]: sorted(name[d] for d in t.deps) for t in tasks}
    assert deps[("up", (0, 3))] == [("emb", (0, 4))]
    assert deps[("up", (3, 6))] == [("emb", (0, 4)), ("emb", (4, 8))]
    assert deps[("up", (6, 8))] == [("emb", (4, 8))]
    assert deps[("rope", (0, 8))] == [("up", (0, 3)), ("up", (3, 6)), ("up", (6, 8))]  # no rule: unsplit
    assert deps[("attn", (0, 5))] == [("rope", (0, 8)), ("up", (0, 3)), ("up", (3, 6))]
    assert deps[("attn", (5, 8))] == [("rope", (0, 8)), ("up", (3, 6)), ("up", (6, 8))]
    assert deps[("res", (0, 8))] == [("attn", (0, 5)), ("attn", (5, 8)), ("emb", (0, 4)), ("emb", (4, 8))]
    assert deps[("last", (0, 8))] == [("res", (0, 8))] and deps[("head", (0, 8))] == [("last", (0, 8))]
    assert by[(3, (0, 5))].seqs == (0, 2) and by[(3, (5, 8))].seqs == (2, 3)
    assert by[(5, (0, 8))].whole and by[(6, (0, 8))].whole and not by[(4, (0, 8))].whole
    assert [plan.units[t.unit].name for t in tasks if t.node == 3] == ["m", "m"]
    # up[3,6) reads h rows 3..6: emb piece [0,4) rows 3..4 then piece [4,8) rows 0..2
    src = by[(1, (3, 6))].inputs[0]
    assert [(name[s.task], s.lo, s.hi) for s in src] == [(("emb", (0, 4)), 3, 4), (("emb", (4, 8)), 0, 2)]
    assert by[(0, (0, 4))].inputs[0][0].task == GRAPH_INPUT


@st.composite
def handmade(draw):
    n_nodes = draw(st.integers(2, 6))
    nodes, tensors = [], ["input_ids"]
    for i in range(n_nodes):
        reads = draw(st.lists(st.sampled_from(tensors), min_size=1, max_size=2))
        op = draw(st.sampled_from(["linear", "add", "attention", "rms_norm"]))
        nodes.append(Node.create(f"n{i}", op, reads, [f"t{i}"]))
        tensors.append(f"t{i}")
    rules = []
    for i in range(n_nodes):
        k = draw(st.integers(1, 4))
        w = draw(st.lists(st.integers(1, 5), min_size=k, max_size=k))
        fr = [x / sum(w) for x in w[:-1]]
        rules.append(OpRule(pattern=f"n{i}", fractions=(*fr, 1.0 - sum(fr)), units=(draw(st.sampled_from("ab")),)))
    t = draw(st.integers(1, 30))
    inner = draw(st.sets(st.integers(1, t - 1), max_size=4)) if t > 1 else set()
    return nodes, PipelinePlan((Unit("a"), Unit("b")), tuple(rules)), t, [0, *sorted(inner), t]


@settings(max_examples=60)
@given(handmade())
def test_dependencies_are_exactly_the_intersecting_producers(case):
    nodes, plan, t, bounds = case
    tasks = derive_tasks(nodes, plan, t, bounds)
    assert [x.index for x in tasks] == list(range(len(tasks)))
    producer = {o: i for i, n in enumerate(nodes) for o in n.outputs}
    for node_i, node in enumerate(nodes):  # each node's ranges tile the rows
        rows = sorted(x.rows for x in tasks if x.node == node_i)
        assert rows[0][0] == 0 and rows[-1][1] == t and all(a[1] == b[0] for a, b in itertools.pairwise(rows))
        if node.op == "attention":
            assert all(a in bounds and b in bounds for a, b in rows)
    for x in tasks:
        a, b = x.rows
        want = {y.index for y in tasks for inp in nodes[x.node].inputs if inp in producer
                if y.node == producer[inp] and max(a, y.rows[0]) < min(b, y.rows[1])}  # fmt: skip
        assert set(x.deps) == want
        assert all(d < x.index for d in x.deps)  # the global order is topological
        for srcs in x.inputs:  # the pieces concatenate to exactly rows [a, b)
            covered = [(tasks[s.task].rows[0] + s.lo, tasks[s.task].rows[0] + s.hi) if s.task >= 0 else (s.lo, s.hi)
                       for s in srcs]  # fmt: skip
            assert covered[0][0] == a and covered[-1][1] == b
            assert all(p[1] == q[0] for p, q in itertools.pairwise(covered))


# -- execution: errors, threads, pinning ---------------------------------------------------------------------
MIXED = [("decode", 5), ("decode", 3), ("prefill", 9), ("chunk", 4, 5)]  # 16 token rows


def test_an_error_in_a_worker_reaches_the_caller(model, monkeypatch):
    _, _, (ex_a, ex_b) = model
    plan = PipelinePlan(UNITS, (
        OpRule(ops=("linear", "silu_mul"), fractions=(0.5, 0.5), units=("c0", "c1")),
        OpRule(ops=("attention",), fractions=(0.5, 0.5), units=("m0",)),
    ))  # fmt: skip
    nano = NanoExecutor(ex_b, plan)
    history, step = compose(MIXED, np.random.default_rng(7))
    calls = []
    real = executor_mod.RULES["silu_mul"]

    def failing(ex, node, args):
        calls.append(node.name)
        if len(calls) == 2:
            raise FloatingPointError(f"boom in {node.name}")
        return real(ex, node, args)

    tb: dict[int, list[int]] = {}
    try:
        prefill(ex_b, history, tb)
        chunks = [SeqChunk(sid, ids, cached, tuple(tb[sid])) for sid, ids, cached in step]
        result: dict[str, BaseException] = {}

        def call():
            try:
                nano.forward(Batch(chunks, 16))
            except BaseException as e:
                result["error"] = e

        monkeypatch.setitem(executor_mod.RULES, "silu_mul", failing)
        caller = threading.Thread(target=call)
        caller.start()
        caller.join(timeout=60)
        assert not caller.is_alive(), "forward hung after a worker failed"
        assert isinstance(result.get("error"), FloatingPointError) and "boom in model.layers" in str(result["error"])
        assert len(calls) == 2  # the step stopped: the later silu_mul pieces were skipped
        monkeypatch.setitem(executor_mod.RULES, "silu_mul", real)
        free(ex_b, tb)
        # the pool survives the error: the next step runs on the same threads and is right
        want, got = unsplit_and_nano(ex_a, ex_b, nano, history, step, False)
        assert rel(got, want) <= 1e-5
    finally:
        nano.close()
        free(ex_b, tb)


def test_the_unit_threads_live_across_steps(model):
    _, _, (_, ex_b) = model
    nano = NanoExecutor(ex_b, default_plan(ARCH, "cpu"))
    tables: dict[int, list[int]] = {}
    try:
        threads = list(nano.threads)
        count = threading.active_count()
        history, step = compose(MIXED, np.random.default_rng(8))
        assert sum(len(ids) for _, ids, _ in step) >= nano.plan.min_tokens  # the nano path runs
        for _ in range(3):
            run_step(ex_b, nano, history, step, False, tables)
            free(ex_b, tables)
        assert nano.threads == threads and all(t.is_alive() for t in threads)
        assert threading.active_count() == count
        assert len(nano._schedules) == 1  # the task list was derived once for this batch layout
    finally:
        nano.close()
        free(ex_b, tables)
    assert not any(t.is_alive() for t in threads)


def test_small_steps_run_unsplit(model):
    _, _, (_, ex_b) = model
    nano = NanoExecutor(ex_b, default_plan(ARCH, "cpu"))  # min_tokens 16
    tables: dict[int, list[int]] = {}
    try:
        history, step = compose([("decode", 4), ("prefill", 3)], np.random.default_rng(1))
        run_step(ex_b, nano, history, step, False, tables)
        assert not nano._schedules
    finally:
        nano.close()
        free(ex_b, tables)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="thread pinning needs Linux")
def test_units_are_pinned_to_their_cores(model):
    _, _, (ex_a, ex_b) = model
    core = min(os.sched_getaffinity(0))
    plan = PipelinePlan((Unit("c", cores=(core,)), Unit("m", "memory")),
                        (OpRule(ops=("attention",), fractions=(0.5, 0.5), units=("m",)),))  # fmt: skip
    nano = NanoExecutor(ex_b, plan)
    try:
        assert os.sched_getaffinity(nano.threads[0].native_id) == {core}
        assert os.sched_getaffinity(nano.threads[1].native_id) == os.sched_getaffinity(0)
        history, step = compose(MIXED, np.random.default_rng(9))
        want, got = unsplit_and_nano(ex_a, ex_b, nano, history, step, True)
        assert rel(got, want) <= 1e-5
    finally:
        nano.close()
    # every thread the units start (TVM's per-thread kernel pools, OpenMP teams) stays on the unit's cores
    before = set(os.listdir("/proc/self/task"))
    both = PipelinePlan((Unit("c", cores=(core,)), Unit("m", "memory", cores=(core,))), plan.rules)
    nano = NanoExecutor(ex_b, both)
    tb: dict[int, list[int]] = {}
    try:
        got = run_step(ex_b, nano, history, step, True, tb)
        assert rel(got, want) <= 1e-5
        new = set(os.listdir("/proc/self/task")) - before
        assert len(new) >= 2 and all(os.sched_getaffinity(int(t)) == {core} for t in new)
    finally:
        nano.close()
        free(ex_b, tb)
    with pytest.raises(PlanError, match=r"unit c is pinned to cores \[4096\]"):
        NanoExecutor(ex_b, PipelinePlan((Unit("c", cores=(4096,)),)))


# -- ModelRunner switch -------------------------------------------------------------------------------------
def test_model_runner_schedule_switch(model):
    g, params, _ = model
    kw = dict(kv_dtype="float32", backend=BACKEND, max_model_len=64, max_num_seqs=4)
    plain = ModelRunner(ARCH, g, params, **kw)
    nano = ModelRunner(ARCH, g, params, schedule="nano", plan=PipelinePlan(UNITS, (
        OpRule(ops=("attention",), fractions=(0.5, 0.5), units=("m0",)),
        OpRule(pattern=".*", fractions=(0.3, 0.7), units=("c0",)),
    )), **kw)  # fmt: skip
    assert plain.nano is None and nano.nano is not None and nano.schedule == "nano"
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7], [5] * 11]
    params_ = SamplingParams(max_tokens=6, ignore_eos=True)
    assert [c.token_ids for c in nano.generate(prompts, params_)] == [
        c.token_ids for c in plain.generate(prompts, params_)
    ]
    assert rel(nano.logits(list(range(20))), plain.logits(list(range(20)))) <= 1e-5
    default = ModelRunner(ARCH, g, params, schedule="nano", **kw)
    assert default.nano is not None and default.nano.plan == default_plan(ARCH, "cpu")
    with pytest.raises(ValueError, match="schedule 'split' is not known"):
        ModelRunner(ARCH, g, params, schedule="split")
    assert ModelRunner(ARCH, g, params, plan=unsplit_plan(), **kw).nano is None  # "unsplit" ignores the plan
    for r in (nano, default):
        assert r.nano is not None
        r.nano.close()


# -- CUDA streams (a graph of torch-only ops, so it needs no GPU kernels) ----------------------------------------
def _torch_only_model(device):
    d, v = 32, 50
    gen = torch.Generator().manual_seed(0)
    params = {n: torch.randn(shape, generator=gen).to(device) for n, shape in
              [("emb", (v, d)), ("w1", (2 * d, d)), ("w2", (d, d)), ("head", (v, d))]}  # fmt: skip
    nodes = [
        Node.create("emb", "embedding", ["input_ids"], ["h"], weight="emb"),
        Node.create("w1", "linear", ["h"], ["gu"], weight="w1", bias=None, splits=(2 * d,)),
        Node.create("act", "silu_mul", ["gu"], ["a"]),
        Node.create("w2", "linear", ["a"], ["o"], weight="w2", bias=None, splits=(d,)),
        Node.create("res", "add", ["o", "h"], ["r"]),
        Node.create("last", "last_token", ["r"], ["hl"]),
        Node.create("head", "linear", ["hl"], ["logits"], weight="head", bias=None, splits=(v,)),
    ]
    cache = PagedKVCache("float32", 1, 1, 16, 8, 16)
    return Executor(OpGraph.create(nodes), params, cache, backend="reference", max_positions=64), params


def _oracle(params, batch):
    h = params["emb"][batch.input_ids.to(params["emb"].device)]
    gate, up = (h @ params["w1"].T).chunk(2, dim=-1)
    return ((torch.nn.functional.silu(gate) * up) @ params["w2"].T + h) @ params["head"].T


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_streams_and_events_equal_the_unsplit_schedule(device):
    ex, params = _torch_only_model(device)
    batch = Batch([SeqChunk(i, tuple(range(i, i + 40)), 0, (1, 2, 3)) for i in range(3)], 16)
    plan = PipelinePlan(UNITS, (
        OpRule(ops=("linear",), fractions=(0.25, 0.25, 0.5), units=("c0", "c1", "c0")),
        OpRule(ops=("silu_mul", "add"), fractions=(0.6, 0.4), units=("m0",)),
    ))  # fmt: skip
    split, whole = NanoExecutor(ex, plan), NanoExecutor(ex, unsplit_plan())
    try:
        got = split.forward(batch, all_logits=True)
        want = whole.forward(batch, all_logits=True)
        oracle = _oracle(params, batch)
        assert rel(want, oracle) <= 1e-5 and rel(got, oracle) <= 1e-5
    finally:
        split.close()
        whole.close()


# -- resource shares: plan -> nano-op -> the thread's share that persistent launches size their grid by --------
def test_shares_reach_the_rules(model, monkeypatch):
    from lowbit.kernels.launch import current_share

    _, _, (ex_a, ex_b) = model
    plan = PipelinePlan(UNITS, (
        OpRule(ops=("linear",), fractions=(0.5, 0.5), units=("c0", "c1"), shares=(0.75, 0.25)),
        OpRule(ops=("attention",), fractions=(0.5, 0.5), units=("m0",), shares=(0.5,)),
    ))  # fmt: skip
    seen: list[tuple[str, int, float | None]] = []
    for op in ("linear", "attention", "silu_mul"):
        real = executor_mod.RULES[op]

        def spy(ex, node, args, real=real):
            seen.append((node.op, int(args[0].shape[0]), current_share()))
            return real(ex, node, args)

        monkeypatch.setitem(executor_mod.RULES, op, spy)
    history, step = compose([("decode", 5)] * 4, np.random.default_rng(3))
    nano = NanoExecutor(ex_b, plan)
    ta: dict[int, list[int]] = {}
    tb: dict[int, list[int]] = {}
    try:
        want = run_step(ex_a, None, history, step, False, ta)
        prefill(ex_b, history, tb)
        assert all(share is None for _, _, share in seen)  # unsplit runs: no share
        seen.clear()
        got = nano.forward(Batch([SeqChunk(sid, ids, c, tuple(tb[sid])) for sid, ids, c in step], 16))
    finally:
        nano.close()
        free(ex_a, ta)
        free(ex_b, tb)
    assert rel(got, want) <= 1e-5
    nano_seen = list(seen)
    lin = [(rows, share) for op, rows, share in nano_seen if op == "linear" and rows == 2]
    assert {share for _, share in lin} == {0.75, 0.25}  # the first nano-batch's share, then the second's
    assert {share for op, _, share in nano_seen if op == "attention"} == {0.5}
    assert {share for op, _, share in nano_seen if op == "silu_mul"} == {None}  # no rule: the whole device
    tasks = derive_tasks(ex_b.nodes, plan, 4, [0, 1, 2, 3, 4])
    assert {t.share for t in tasks if ex_b.nodes[t.node].op == "linear" and t.rows == (0, 2)} == {0.75}
    assert {t.share for t in tasks if ex_b.nodes[t.node].op == "linear" and t.rows == (2, 4)} == {0.25}


# -- CUDA graphs: a decode step captured once per bucket and replayed (torch-only graph: no GPU kernels needed) --
def _decode_batch(tokens, cached=5):
    return Batch([SeqChunk(i, (int(t),), cached, (1,)) for i, t in enumerate(tokens)], 16)


@pytest.mark.gpu
def test_cuda_graph_decode_steps_equal_eager():
    ex, params = _torch_only_model("cuda")
    plan = PipelinePlan(UNITS, (
        OpRule(ops=("linear",), fractions=(0.5, 0.5), units=("c0", "c1")),
        OpRule(ops=("silu_mul", "add"), fractions=(0.5, 0.5), units=("m0",)),
    ))  # fmt: skip
    nano = NanoExecutor(ex, plan, cuda_graphs=True)
    rng = np.random.default_rng(0)
    try:
        for n in (4, 4, 6, 4, 6):  # two buckets, each captured once and replayed with new tokens
            batch = _decode_batch(rng.integers(0, 50, n))
            got = nano.forward(batch)
            assert rel(got, _oracle(params, batch)) <= 1e-5
        assert not nano.graph_failures, nano.graph_failures
        assert sorted(nano.graphs) == [(4,), (6,)]
        held = nano.forward(_decode_batch([1, 2, 3, 4]))
        nano.forward(_decode_batch([5, 6, 7, 8]))  # a replay must not overwrite logits already returned
        assert rel(held, _oracle(params, _decode_batch([1, 2, 3, 4]))) <= 1e-5
    finally:
        nano.close()


@pytest.mark.gpu
def test_cuda_graphs_leave_other_steps_eager():
    ex, params = _torch_only_model("cuda")
    nano = NanoExecutor(ex, unsplit_plan(), cuda_graphs=True)
    try:
        prefill_batch = Batch([SeqChunk(0, (1, 2, 3), 0, (1,))], 16)
        assert nano.graph_key(prefill_batch) is None
        got = nano.forward(prefill_batch, all_logits=True)
        assert rel(got, _oracle(params, prefill_batch)) <= 1e-5
        assert not nano.graphs
    finally:
        nano.close()


def test_cuda_graphs_flag_is_ignored_on_the_cpu(model):
    _, _, (ex_a, ex_b) = model
    nano = NanoExecutor(ex_b, default_plan(ARCH, "cpu"), cuda_graphs=True)
    try:
        assert not nano.cuda_graphs
        history, step = compose([("decode", 5)] * 3, np.random.default_rng(5))
        want, got = unsplit_and_nano(ex_a, ex_b, nano, history, step, False)
        assert rel(got, want) <= 1e-5 and not nano.graphs
    finally:
        nano.close()


def test_graph_key_buckets_decode_steps_by_their_kv_splits(model):
    """graph_key needs no GPU: a decode step's (sequences, KV splits, tokens per split) cover its longest context
    in whole KV tiles; a prefill or a block table past the plan width has no bucket."""
    _, _, (_, ex_b) = model
    nano = NanoExecutor(ex_b, default_plan(ARCH, "cpu"))
    try:
        for seqs, longest in ((1, 5), (3, 40), (4, 100)):
            pages = tuple(range(1, -(-longest // 16) + 1))
            batch = Batch([SeqChunk(i, (7,), longest - 1 - i % 2, pages) for i in range(seqs)], 16)
            n, splits, tps = nano.graph_key(batch)
            assert n == seqs and (splits - 1) * tps < longest <= splits * tps, (longest, splits, tps)
            assert tps % nano._decode_geometry[2] == 0
        assert nano.graph_key(Batch([SeqChunk(0, (1, 2, 3), 0, (1,))], 16)) is None  # a prefill
        wide = tuple(range(1, ex_b.plan_pages + 2))
        assert nano.graph_key(Batch([SeqChunk(0, (1,), 5, wide)], 16)) is None
    finally:
        nano.close()


def test_kernel_threads_are_not_configured_while_tvm_is_still_importing(monkeypatch):
    # another thread's `import tvm` in progress leaves a half-initialized module in sys.modules (no
    # get_global_func yet): the worker must report "not yet" and retry later, not raise
    import importlib.machinery
    import sys
    import types

    from lowbit.runtime import nano

    half = types.ModuleType("tvm")
    half.__spec__ = importlib.machinery.ModuleSpec("tvm", None)
    half.__spec__._initializing = True  # what importlib sets while the module body runs
    monkeypatch.setitem(sys.modules, "tvm", half)
    assert nano._confine_kernel_threads((0,), 1) is False
    monkeypatch.delitem(sys.modules, "tvm")
    assert nano._confine_kernel_threads((0,), 1) is False

"""Laws of the discrete-event simulator (simulate.py), over hypothesis-drawn models, workloads and plans:
the sequential schedule takes the sum of its ops' isolated times; with perfect overlap and no interference a
two-op pipeline approaches max(compute, memory); more interference never speeds a plan up; shared bandwidth
is conserved (every byte moved once, never more than the device's bandwidth at any instant); water-filling is
max-min fair; derived dependencies equal brute-force row intersection; nano-batch cuts are the runtime's."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.models.arch import ArchConfig
from lowbit.planner.cost import CostModel
from lowbit.planner.hardware import Hardware, get_hardware
from lowbit.planner.nanoplan import NanoPlan, Placement, fractions_of_cuts
from lowbit.planner.ops import PREV, Work, model_ops, piece_work
from lowbit.planner.schedules import KIND_UNIT, units_for, unsplit_plan
from lowbit.planner.simulate import simulate, simulate_step, waterfill
from lowbit.planner.tasks import SimTask, derive_tasks, op_cuts
from lowbit.planner.workload import Workload
from lowbit.runtime.plan import nano_ranges

HW = ("a100", "h200", "cpu")


@st.composite
def models(draw):
    heads = draw(st.sampled_from([4, 8]))
    kv = draw(st.sampled_from([h for h in (1, 2, 4, 8) if heads % h == 0]))
    hd = draw(st.sampled_from([32, 64]))
    arch = ArchConfig("llama", 512, heads * hd, draw(st.sampled_from([256, 512, 1024])), 4, heads, kv, hd)
    tp = draw(st.sampled_from([t for t in (1, 2, 4) if heads % t == 0]))
    return model_ops(arch, None, tp, "m")


@st.composite
def workloads(draw):
    dense = draw(st.integers(16, 256))
    decode = draw(st.integers(0, dense))
    return Workload(dense, decode, draw(st.integers(1, 512)), draw(st.integers(1, 128)), draw(st.integers(0, 64)))


@st.composite
def plans(draw, mo, wl):
    units = units_for(mo)
    names = [u.name for u in units]
    placements = []
    for o in mo.ops:
        n = draw(st.integers(1, 3))
        cuts = sorted(draw(st.sets(st.integers(1, wl.dense_batch - 1), max_size=n - 1))) if wl.dense_batch > 1 else []
        unit = draw(st.sampled_from(names)) if o.kind == "elementwise" else KIND_UNIT[o.kind]
        share = draw(st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0]))
        placements.append(Placement(o.name, fractions_of_cuts(cuts, wl.dense_batch), (unit,), (share,)))
    return NanoPlan(units, tuple(placements), tile=draw(st.sampled_from([1, 8])))


@settings(max_examples=25)
@given(models(), workloads(), st.sampled_from(HW))
def test_sequential_time_is_the_sum_of_op_times(mo, wl, hw):
    cost = CostModel(get_hardware(hw))
    tasks = derive_tasks(mo, unsplit_plan(mo, wl, tile=1), wl, cost, 2)
    if cost.hw.net_gbs == 0 and mo.tp > 1:
        with pytest.raises(ValueError, match="collectives need an interconnect"):
            simulate(tasks, 1, cost)
        return
    res = simulate(tasks, 1, cost)
    assert res.makespan == pytest.approx(sum(cost.time(t.work) for t in tasks), rel=1e-9)


def _quiet(hw: Hardware, knee: float = 0.5) -> Hardware:
    return replace(hw, interference=(), launch_us=0.0, compute_knee=knee, memory_knee=knee, network_knee=knee,
                   gemm_tile=(1, 1))  # fmt: skip


@settings(max_examples=20)
@given(st.floats(1e9, 1e12), st.floats(1e6, 1e9), st.integers(8, 32))
def test_two_op_pipeline_approaches_max_of_compute_and_memory(flops, nbytes, n):
    """A compute-bound op and a memory-bound op on two units with half the device each (where both already
    run at full rate), no interference, no launch gaps: nano-batch k's memory op after its compute op. The
    makespan lies between max(Tc, Tm) and max(Tc, Tm) + one nano-batch of the other op."""
    hw = _quiet(get_hardware("a100"))
    cost = CostModel(hw)
    comp, mem = Work("gemm", 1, flops / n, 0.0, dtype="bfloat16", gemm_n=1), Work("elementwise", 1, 0.0, nbytes / n)
    tasks = []
    for k in range(n):
        tasks.append(SimTask(2 * k, 0, "c", k, (k, k + 1), 0, 0.5, (2 * (k - 1),) if k else (), comp, "compute"))
        tasks.append(SimTask(2 * k + 1, 0, "m", k, (k, k + 1), 1, 0.5, (2 * k,), mem, "memory"))
    res = simulate(tuple(tasks), 2, cost)
    tc, tm = n * cost.time(comp, 0.5), n * cost.time(mem, 0.5)
    assert max(tc, tm) * (1 - 1e-9) <= res.makespan <= max(tc, tm) + max(tc, tm) / n + min(tc, tm) / n + 1e-12
    sequential = simulate(tuple(replace(t, unit=0) for t in tasks), 2, cost).makespan
    assert sequential == pytest.approx(tc + tm, rel=1e-9)


@settings(max_examples=25)
@given(st.data(), models(), workloads(), st.sampled_from(["a100", "h200"]), st.floats(0.0, 1.0), st.floats(1.0, 4.0))
def test_more_interference_never_speeds_a_plan_up(data, mo, wl, hw, k, factor):
    plan = data.draw(plans(mo, wl))
    base = get_hardware(hw)
    low, high = CostModel(base.scaled_interference(k)), CostModel(base.scaled_interference(k * factor + 0.1))
    t_low = simulate_step(mo, plan, wl, low, window=2).seconds
    t_high = simulate_step(mo, plan, wl, high, window=2).seconds
    # a task completes once its remaining work is <= 1e-9 of it (simulate), so a chain of tasks carries errors of
    # ~1e-9 each: a hypothesis example measured 1.3e-8 relative; 1e-7 is far below any real effect of interference
    assert t_high >= t_low * (1 - 1e-7)


@settings(max_examples=25)
@given(st.data(), models(), workloads(), st.sampled_from(["a100", "h200"]))
def test_bandwidth_sharing_conserves_bytes(data, mo, wl, hw):
    plan = data.draw(plans(mo, wl))
    cost = CostModel(get_hardware(hw))
    res = simulate(derive_tasks(mo, plan, wl, cost, 2), len(plan.units), cost, trace=True)
    moved = [0.0] * len(res.tasks)
    cap_hbm, cap_net = cost.hw.hbm_gbs * 1e9, cost.hw.net_gbs * 1e9
    for seg in res.segments:
        assert sum(seg.hbm) <= cap_hbm * (1 + 1e-9)
        assert sum(seg.net) <= cap_net * (1 + 1e-9) + 1e-6
        for i, b in zip(seg.running, seg.hbm):
            moved[i] += b * (seg.t1 - seg.t0)
    for t in res.tasks:
        if res.end[t.index] - res.start[t.index] > cost.hw.launch_us * 1e-6 + 1e-15:  # not an instant task
            assert moved[t.index] == pytest.approx(t.work.hbm_bytes, rel=1e-6)


@settings(max_examples=50)
@given(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=6), st.floats(0.0, 300.0))
def test_waterfill_is_max_min_fair(demands, cap):
    alloc = waterfill(demands, cap)
    assert sum(alloc) <= cap * (1 + 1e-12) + 1e-12
    assert all(0 <= a <= d * (1 + 1e-12) + 1e-12 for a, d in zip(alloc, demands))
    if sum(demands) <= cap:
        assert alloc == pytest.approx(demands)
    else:
        assert sum(alloc) == pytest.approx(cap)
        short = [a for a, d in zip(alloc, demands) if a < d * (1 - 1e-9)]
        assert short and max(short) - min(short) <= 1e-9 and all(a <= max(short) + 1e-9 for a in alloc)


@settings(max_examples=50)
@given(workloads(), st.lists(st.integers(1, 9), min_size=1, max_size=5), st.sampled_from([1, 8, 32]))
def test_op_cuts_equal_the_runtimes(wl, weights, tile):
    """Attention is cut at sequence boundaries (every decode row, then the prefill chunks), every other op at
    multiples of the tile: exactly the runtime's nano_ranges calls (lowbit.runtime.nano.derive_tasks)."""
    total = sum(weights)
    fr = [w / total for w in weights[:-1]]
    fractions = (*fr, 1.0 - sum(fr))
    mo = model_ops(ArchConfig("llama", 512, 256, 512, 4, 4, 2, 64))
    plan = NanoPlan(units_for(mo), tuple(Placement(o.name, fractions) for o in mo.ops), tile=tile)
    bounds = wl.seq_bounds()
    attn = op_cuts(plan, "attn", "attention", wl)
    assert attn == nano_ranges(wl.dense_batch, fractions, 1, bounds)
    assert set(attn) <= set(bounds)
    assert op_cuts(plan, "qkv", "gemm", wl) == nano_ranges(wl.dense_batch, fractions, tile)


@settings(max_examples=25)
@given(st.data(), models(), workloads())
def test_dependencies_are_row_intersections(data, mo, wl):
    plan = data.draw(plans(mo, wl))
    cost = CostModel(get_hardware("a100"))
    tasks = derive_tasks(mo, plan, wl, cost, 2)
    names = mo.names
    for t in tasks:
        want = set()
        for src in mo.op(t.op).inputs:
            layer, op = (t.layer - 1, src[len(PREV) :]) if src.startswith(PREV) else (t.layer, src)
            if op not in names:
                continue
            for u in tasks:
                if u.layer == layer and u.op == op and max(u.rows[0], t.rows[0]) < min(u.rows[1], t.rows[1]):
                    want.add(u.index)
        assert set(t.deps) == want
        assert all(d < t.index for d in t.deps)  # a topological order: no unit queue waits on a later task


@settings(max_examples=25)
@given(models(), workloads(), st.integers(0, 256), st.integers(0, 256), st.integers(0, 256))
def test_piece_work_adds_up_over_cuts(mo, wl, a, b, c):
    a, b, c = sorted(min(x, wl.dense_batch) for x in (a, b, c))
    for o in mo.ops:
        whole, left, right = piece_work(o, a, c, wl), piece_work(o, a, b, wl), piece_work(o, b, c, wl)
        assert left.flops + right.flops == pytest.approx(whole.flops, rel=1e-12, abs=1e-6)
        extra = o.weight_bytes if a < b < c else 0  # a second piece reads the weights again
        assert left.hbm_bytes + right.hbm_bytes == pytest.approx(whole.hbm_bytes + extra, rel=1e-12, abs=1e-6)


def test_deadlock_is_reported_not_hung():
    cost = CostModel(get_hardware("a100"))
    w = Work("elementwise", 1, 0.0, 1e6)
    tasks = (
        SimTask(0, 0, "a", 0, (0, 1), 0, 1.0, (1,), w, "memory"),  # waits on the task queued behind it
        SimTask(1, 0, "b", 0, (0, 1), 0, 1.0, (), w, "memory"),
    )
    with pytest.raises(RuntimeError, match="deadlock"):
        simulate(tasks, 1, cost)


def test_interference_slows_overlapping_ops():
    """Two overlapping ops of different categories each take longer with the table than without it."""
    hw = _quiet(get_hardware("a100"))
    comp, mem = Work("gemm", 1, 1e12, 0.0, gemm_n=1), Work("elementwise", 1, 0.0, 1e9)
    tasks = (
        SimTask(0, 0, "c", 0, (0, 1), 0, 0.5, (), comp, "compute"),
        SimTask(1, 0, "m", 0, (0, 1), 1, 0.5, (), mem, "memory"),
    )
    free = simulate(tasks, 2, CostModel(hw))
    slow = simulate(tasks, 2, CostModel(hw.with_interference({("compute", "memory"): 1.2, ("memory", "compute"): 1.5})))
    assert all(s > f for s, f in zip(slow.end, free.end))

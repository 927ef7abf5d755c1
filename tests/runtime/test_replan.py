"""Re-search of the artifact's plan while serving (runtime/replan.py): the window of steps becomes the observed
mix, the search runs off the step loop, a found plan is switched to between steps without changing the
tokens, a failing search keeps the running plan; the engine re-searches only its artifact's own split plan."""

from __future__ import annotations

import threading
from concurrent.futures import wait
from types import SimpleNamespace

import pytest

from lowbit.compiler import load_compiled
from lowbit.planner.workload import Workload
from lowbit.runtime.engine import LLMEngine
from lowbit.runtime.plan import default_plan, unsplit_plan
from lowbit.runtime.replan import Replanner
from lowbit.runtime.sampler import SamplingParams

PROMPTS = [[5, 17, 99, 3], [200, 201, 7, 7, 7, 9, 11, 400, 13], [42]]


def drain(r: Replanner) -> None:
    if r._pending is not None:
        wait([r._pending], timeout=30)


def test_the_window_becomes_the_observed_mix_and_a_found_plan_is_returned_once():
    seen: list[Workload | None] = []
    new = default_plan(num_nano=3)

    def research(searched, observed):
        seen.append(observed)
        return SimpleNamespace(pipeline=new, workload=observed)

    r = Replanner(lambda: "searched", every=3, research=research)
    steps = [[(0, 8)], [(8, 1), (0, 4)], [(9, 1), (4, 1)]]
    assert [r.observe(s) for s in steps] == [None, None, None]  # the third step starts the search
    drain(r)
    # 15 rows / 3 steps; decode chunks (cached > 0, one new): 3 -> 1 per step, mean context (9+10+5)/3 = 8;
    # prefill chunks (0, 8), (0, 4): mean 6 after 0 cached
    assert seen == [Workload(5, 1, 8, 6, 0)]
    assert r.observe([(10, 1)]) is new and r.switches == 1
    assert r.observe([(11, 1)]) is None  # returned once


def test_no_drift_keeps_the_plan_and_a_failing_search_stops_re_searching(caplog):
    r = Replanner(lambda: "searched", every=1, research=lambda s, o: None)
    r.observe([(0, 4)])
    drain(r)
    assert r.observe([(4, 1)]) is None and r.switches == 0 and r.failed is None

    def boom(searched, observed):
        raise RuntimeError("no preset")

    r = Replanner(lambda: "searched", every=1, research=boom)
    r.observe([(0, 4)])
    drain(r)
    assert r.observe([(4, 1)]) is None
    assert r.failed == "RuntimeError: no preset" and "keeping the running plan" in caplog.text
    assert r._pending is None  # not searched again
    with pytest.raises(ValueError, match="research_every"):
        Replanner(lambda: None, every=0)


def test_the_search_runs_off_the_step_loop():
    gate = threading.Event()

    def slow(searched, observed):
        gate.wait(30)
        return SimpleNamespace(pipeline=unsplit_plan(), workload=observed)

    r = Replanner(lambda: "searched", every=1, research=slow)
    assert r.observe([(0, 4)]) is None
    assert r.observe([(4, 1)]) is None  # the step does not wait for the running search
    gate.set()
    drain(r)
    assert r.observe([(5, 1)]) == unsplit_plan()
    r.close()


def serve(engine: LLMEngine, params: SamplingParams) -> list[list[int]]:
    """Every prompt's tokens, stepping the engine and letting each background search finish between steps
    (so a switch happens at a known step)."""
    for i, p in enumerate(PROMPTS):
        engine.add_request(str(i), p, params)
    got: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                got[out.request_id] = list(out.token_ids)
        drain(engine.replanner)
    return [got[str(i)] for i in range(len(PROMPTS))]


@pytest.fixture(scope="module")
def exact(tiny_exact_artifact):
    return load_compiled(tiny_exact_artifact)


def test_engine_switches_plans_between_steps_without_changing_tokens(exact, monkeypatch):
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    want = [o.token_ids for o in exact.runner(max_num_seqs=3).generate(PROMPTS, params)]
    split = default_plan(exact.arch, num_nano=2)
    monkeypatch.setattr(LLMEngine, "_artifact_plan", lambda self: split)  # an artifact whose plan splits
    engine = LLMEngine(exact, max_num_seqs=3, verify="none")
    assert engine.schedule_mode == "nano" and isinstance(engine.replanner, Replanner)
    new = default_plan(exact.arch, num_nano=3)
    engine.replanner = Replanner(
        lambda: "searched", every=2, research=lambda s, o: SimpleNamespace(pipeline=new, workload=o)
    )
    assert serve(engine, params) == want
    assert engine.replanner.switches >= 1 and engine.runner.plan is new and engine.plan is new
    engine.close()
    # only the artifact's own plan is re-searched
    assert LLMEngine(exact, max_num_seqs=3, verify="none", schedule="unsplit").replanner is None
    assert LLMEngine(exact, max_num_seqs=3, verify="none", plan=split).replanner is None
    assert LLMEngine(exact, max_num_seqs=3, verify="none", research_every=0).replanner is None


def test_engine_re_search_through_the_planner_runs_clean(exact, monkeypatch):
    """The real path: the planner's search for the artifact's model on its device, then research_if_drifted on
    the served mix (on the CPU preset it keeps or returns the unsplit form); the tokens stay the runner's."""
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    want = [o.token_ids for o in exact.runner(max_num_seqs=3).generate(PROMPTS, params)]
    monkeypatch.setattr(LLMEngine, "_artifact_plan", lambda self: default_plan(exact.arch, num_nano=2))
    engine = LLMEngine(exact, max_num_seqs=3, verify="none", research_every=2)
    assert serve(engine, params) == want
    assert engine.replanner.failed is None and engine.replanner._searched is not None
    engine.close()

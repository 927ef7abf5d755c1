"""The TP equivalence run: the tiny example compiled with tensor_parallel 2 and served by 2 CPU processes (gloo)
gives the same greedy tokens as the tensor_parallel 1 artifact, and logits within 1e-4 relative error (fp32:
the shards are exact blocks of the same quantized weights, only the summation order differs), on the unsplit
schedule and on the nano-batch schedule (all_reduce nano-ops on network units, overlapping the other
nano-batch's compute; every step split, decode included), each under a watchdog so a collective deadlock
fails instead of hanging. Then the failure paths: a worker that cannot load its shard, a worker killed
mid-life; no process is left behind."""

from __future__ import annotations

import dataclasses
import shutil
import threading

import pytest
import torch

from lowbit import LLM, SamplingParams
from lowbit.artifact import open_artifact
from lowbit.compiler import load_compiled
from lowbit.parallel import TensorParallelError
from lowbit.runtime.batch import Batch, SeqChunk
from lowbit.runtime.plan import OpRule, PipelinePlan, Unit, default_plan

PROMPTS = [[1, 2, 3, 4, 5], [7], [100, 200, 300, 400, 500, 17, 18, 19, 20, 21, 22]]


@pytest.fixture(scope="module")
def tp2_artifact(tmp_path_factory, tiny_compiler):
    # the recipe of the session's tiny_artifact (tensor_parallel 1) with the model split over 2 ranks
    out = tmp_path_factory.mktemp("tp2") / "tiny-tp2"
    return tiny_compiler(out, "target.max_model_len=256", "target.tensor_parallel=2")


@pytest.fixture(scope="module")
def tp2_llm(tp2_artifact):
    # rank 1 is a fresh process: with the disk kernel cache on (a temp dir here) it loads the artifact's kernels
    # instead of building each one again while rank 0 waits in the first all_reduce
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOWBIT_KERNEL_CACHE", "1")
        llm = LLM(tp2_artifact)
    procs = list(llm.engine.runner.workers.procs)
    assert len(procs) == 1 and procs[0].is_alive()
    yield llm
    llm.close()
    assert not any(p.is_alive() for p in procs)  # no orphans


def nano_plan(network_units: int) -> PipelinePlan:
    """default_plan for tp 2 with every step split (tile 1, decode steps too); with 2 network units, each
    nano-batch's all_reduce on its own (each unit then issues its collectives on its own subgroup)."""
    plan = dataclasses.replace(default_plan(device="cpu", tensor_parallel=2), tile=1, min_tokens=0)
    if network_units == 1:
        return plan
    units = (*plan.units, Unit("network2", "network"))
    rule = OpRule(ops=("network",), fractions=(0.5, 0.5), units=("network", "network2"))
    return dataclasses.replace(plan, units=units, rules=(rule, *plan.rules[1:]))


@pytest.fixture(scope="module", params=[1, 2], ids=["one-network-unit", "two-network-units"])
def tp2_nano_llm(request, tp2_artifact):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOWBIT_KERNEL_CACHE", "1")
        mp.setenv("LOWBIT_TP_TIMEOUT", "60")  # a collective that no peer matches fails after 60 s (rank 1 too)
        llm = LLM(tp2_artifact, schedule="nano", plan=nano_plan(request.param))
    procs = list(llm.engine.runner.workers.procs)
    yield llm
    llm.close()
    assert not any(p.is_alive() for p in procs)


def within(seconds: float, fn):
    """fn() on a thread; fails (instead of hanging the run) if it has not returned after `seconds`."""
    box: dict = {}

    def body() -> None:
        try:
            box["out"] = fn()
        except BaseException as e:
            box["err"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} did not return within {seconds} s: deadlock"
    if "err" in box:
        raise box["err"]
    return box["out"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return float((a - b).norm() / b.norm())


def test_the_artifact_records_tp_and_hashes_every_rank_file(tp2_artifact):
    art = open_artifact(tp2_artifact, verify="full")
    meta = art.manifest.meta
    assert meta["tensor_parallel"] == 2
    assert meta["rank_weights"] == ["weights/rank0.safetensors", "weights/rank1.safetensors"]
    assert all(f in art.manifest.files for f in meta["rank_weights"])
    assert "weights/model.safetensors" not in art.manifest.files
    assert art.read_json("report.json")["tensor_parallel"] == 2


@pytest.fixture(scope="module")
def tp1_reference(tiny_artifact):
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    with LLM(tiny_artifact) as ref:
        tokens = [o.token_ids for o in ref.generate(PROMPTS, params)]
    ids = PROMPTS[2] + tokens[2]
    return tokens, ids, load_compiled(tiny_artifact).runner().logits(ids, chunk=4)


def test_tp2_gives_the_tokens_and_logits_of_tp1(tp2_llm, tp1_reference):
    want, ids, ref_logits = tp1_reference
    got = [o.token_ids for o in tp2_llm.generate(PROMPTS, SamplingParams(max_tokens=8, ignore_eos=True))]
    assert got == want
    assert len({tuple(t) for t in want}) > 1  # the prompts lead somewhere different: the check can fail
    tp_logits = tp2_llm.engine.runner.logits(ids, chunk=4)  # chunks after the first read the cache
    assert tp_logits.shape == ref_logits.shape == (len(ids), 512)
    assert rel(tp_logits, ref_logits) < 1e-4


def test_nano_tp2_gives_the_tokens_and_logits_of_tp1(tp2_nano_llm, tp1_reference):
    want, ids, ref_logits = tp1_reference
    runner = tp2_nano_llm.engine.runner
    assert runner.nano is not None and runner.nano.tp
    net = [i for i, u in enumerate(runner.nano.plan.units) if u.kind == "network"]
    assert runner.nano.collective_units == tuple(net)  # the all_reduce nano-ops run on the network unit(s)
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    got = within(120, lambda: [o.token_ids for o in tp2_nano_llm.generate(PROMPTS, params)])
    assert got == want
    tp_logits = within(120, lambda: runner.logits(ids, chunk=4))  # 4-row chunks: two nano-batches of 2 rows
    assert tp_logits.shape == ref_logits.shape
    assert rel(tp_logits, ref_logits) < 1e-4
    # a 4-row step's all_reduce nano-ops: two per node (one per nano-batch), on the network unit(s) only
    tasks = runner.nano.tasks_for(Batch([SeqChunk(0, tuple(ids[:4]), 0, (1,))], runner.cache.page_size))
    ar = [t for t in tasks if runner.nano.nodes[t.node].op == "all_reduce"]
    assert ar and {t.unit for t in ar} == set(net) and len(ar) == 2 * len({t.node for t in ar})


def test_a_killed_rank_surfaces_in_rank_0(tp2_llm):
    runner = tp2_llm.engine.runner
    (proc,) = runner.workers.procs
    proc.kill()
    proc.join(timeout=10)
    with pytest.raises(TensorParallelError, match=r"tensor-parallel rank 1 exited \(code -9\)"):
        tp2_llm.generate([[1, 2, 3]], SamplingParams(max_tokens=2))
    with pytest.raises(TensorParallelError, match=r"the tensor-parallel group is down"):
        runner.step([])


def test_a_rank_that_fails_to_load_reports_its_traceback(tp2_artifact, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tp2_artifact, broken)
    (broken / "weights" / "rank1.safetensors").unlink()
    with pytest.raises(TensorParallelError, match=r"(?s)tensor-parallel rank 1 failed:.*rank1\.safetensors"):
        LLM(broken, verify="none")  # rank 0 loads its own shard; rank 1 cannot

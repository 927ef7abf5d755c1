"""`target.tuning.policy` in `lowbit compile`: tuning per (kernel, shape, token bucket), resume through the
persistent cache, the records shipped in tuning.json and used at load without tuning.

The tuner runs with a fake `measure` and a fake clock (one tick per call), so trial counts are exact and no
candidate is compiled: the default config costs 2 ms everywhere, and in the M = 1 (decode) bucket every
other config costs 1 ms, so the first non-default candidate measured wins there and the default elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowbit.codegen.backend import Config
from lowbit.codegen.tune.cache import TuningCache
from lowbit.codegen.tune.records import attached
from lowbit.compiler import compile_model, load_compiled
from lowbit.compiler import tuning as tuning_mod
from lowbit.config import load_config
from lowbit.kernels.spaces import default_config

# int5 weights: a dtype the x16 plan does not run (`lowbit.ops.x16`: no search space, so no tuning job)
SETS = ["model.architecture.num_layers=1", "target.max_model_len=64", "target.tuning.policy=tune",
        "target.tuning.budget_s=60", "quantization.weights.dtype=int5"]  # fmt: skip
JOBS = 12  # 4 weight shapes (qkv, o, gate_up, down) x buckets (0, 1], (1, 16], (16, 64]


class FakeTuner:
    """measure(job, config) -> ms, counting calls; optionally interrupted (like Ctrl-C) at call `stop_at`.
    Its clock is the number of measurements so far: every measurement takes one second, nothing else does."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple[str, Config]] = []
        self.stop_at = stop_at

    def clock(self) -> float:
        return float(len(self.calls))

    def measure(self, job: tuning_mod.TuningJob, config: Config) -> float:
        if self.stop_at is not None and len(self.calls) + 1 == self.stop_at:
            raise KeyboardInterrupt
        self.calls.append((job.describe(), config))
        problem = {"M": job.m, "N": job.n, "K": job.k, "G": 32, "wdtype": "int5", "adtype": "float32"}
        if config == default_config(job.kernel, "tvm", problem):  # the runtime's default (tried first)
            return 2.0
        return 1.0 if job.m == 1 else 3.0


def compile_tiny(out: Path, fake: FakeTuner, *sets: str) -> dict:
    cfg = load_config("examples/tiny-llama.yaml", [*SETS, *sets])
    compile_model(cfg, out, quiet=True, eval_tokens=0, tuning_measure=fake.measure, tuning_clock=fake.clock)
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An interrupted tuning compile, the compile that resumes it, and one more (nothing left to tune)."""
    root = tmp_path_factory.mktemp("tuning")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOWBIT_CACHE_DIR", str(root / "cache"))
        first = FakeTuner(stop_at=8)
        with pytest.raises(KeyboardInterrupt):
            compile_tiny(root / "a0", first)
        assert not (root / "a0").exists()
        second, third = FakeTuner(), FakeTuner()
        report2 = compile_tiny(root / "a1", second)
        report3 = compile_tiny(root / "a2", third)
        entries = TuningCache(root / "cache" / "tuning.json").load()
    return {"first": first, "second": second, "third": third, "report2": report2, "report3": report3,
            "artifact": root / "a2", "entries": entries}  # fmt: skip


def test_an_interrupted_compile_resumes_without_measuring_twice(runs) -> None:
    first, second, third = runs["first"].calls, runs["second"].calls, runs["third"].calls
    assert len(first) == 7  # the 8th measurement was interrupted (it is measured again by the resume)
    assert not set(first) & set(second)  # nothing measured before is measured again
    assert len(set(second)) == len(second)
    assert third == []  # every entry complete: no measurement at all
    t2, t3 = runs["report2"]["tuning"], runs["report3"]["tuning"]
    assert t2["jobs"] == t3["jobs"] == JOBS and t2["measured"] == len(second)
    # jobs the interrupted run finished come from the cache in the resume; all do in the run after it
    finished_first = {j for j, _ in first} - {first[-1][0]}
    assert {k["kernel"] + f" N={k['N']} K={k['K']} M={k['M']}" for k in t2["kernels"] if k["source"] == "cache"} == (
        finished_first
    )
    assert t3["cache"] == JOBS and t3["measured"] == 0
    assert len(runs["entries"]) == JOBS and all(e["complete"] for e in runs["entries"].values())


def test_report_lists_chosen_and_default_configs(runs) -> None:
    rows = runs["report3"]["tuning"]["kernels"]
    assert {(r["kernel"], r["M"]) for r in rows} == {
        ("quantized_gemv", 1), ("quantized_gemv", 16), ("quantized_gemm", 64)}  # fmt: skip
    for r in rows:
        assert r["default_ms"] == 2.0 and r["m_range"][1] == r["M"]
        if r["M"] == 1:  # a non-default config wins the decode bucket, at half the default's time
            assert r["config"] != r["default_config"] and r["ms"] == 1.0 and r["speedup"] == 2.0
        else:
            assert r["config"] == r["default_config"] and r["ms"] == 2.0 and r["speedup"] == 1.0


def test_artifact_ships_the_records_and_load_uses_them_without_tuning(runs, tmp_path, monkeypatch) -> None:
    art = runs["artifact"]
    manifest = json.loads((art / "manifest.json").read_text())
    assert "tuning.json" in manifest["files"]  # hashed like every file
    shipped = json.loads((art / "tuning.json").read_text())
    assert shipped["policy"] == "tune" and len(shipped["records"]) == JOBS
    assert len(TuningCache(art / "tuning.json").load()) == JOBS  # also a tuning-cache file

    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "clean"))  # no tuning cache at all

    def no_tuning(*a: object, **k: object) -> None:
        raise AssertionError("the runtime tuned")

    monkeypatch.setattr("lowbit.codegen.tune.tune", no_tuning)
    monkeypatch.setattr("lowbit.codegen.tune.tuner.tune", no_tuning)
    import lowbit.ops.linear as linear

    used: list[tuple[str, int, Config]] = []
    choose = linear._choose_config

    def spy(kernel, fixed, args, backend, tune, m, weight=None):  # type: ignore[no-untyped-def]
        cfg = choose(kernel, fixed, args, backend, tune, m, weight)
        used.append((kernel.name, m, cfg))
        return cfg

    monkeypatch.setattr(linear, "_choose_config", spy)
    model = load_compiled(art)
    down = model.params["model.layers.0.mlp.down_proj.weight"]
    assert {r.m_range for r in attached(down)} == {(0, 1), (1, 16), (16, 64)}
    decode = next(r for r in shipped["records"] if r["m_range"] == [0, 1] and "model.layers.0.mlp.down_proj.weight"
                  in r["weights"])  # fmt: skip
    from lowbit.codegen.tune.cache import config_from_json

    tuned = config_from_json(decode["config"])
    assert tuned != config_from_json(decode["default"])
    # the compile's warm-up ran the tuned config too (its executor's re-tiled weights got the records), so the
    # artifact ships that kernel: a GEMV with the tuned tile and options
    tile = ", ".join(f"{k}={tuned.constant_dict[k]}" for k in ("BM", "BN", "BK"))
    shipped_kernels = [json.loads(f.read_text()) for f in (art / "kernels").glob("*.json")]
    assert any(
        k["name"] == "quantized_gemv" and tile in k["program"] and tuned.option_dict.items() <= k["options"].items()
        for k in shipped_kernels
    ), f"no shipped quantized_gemv with {tile} {tuned.option_dict}"

    from lowbit.runtime.sampler import SamplingParams

    model.runner(max_num_seqs=1).generate([[1, 2, 3]], SamplingParams(max_tokens=2, ignore_eos=True))
    assert (("quantized_gemv", 1, tuned) in used) and len(TuningCache().load()) == 0
    assert not (tmp_path / "clean" / "tuning.json").exists()


def test_cached_and_off_policies(runs, tmp_path, monkeypatch) -> None:
    """cached: the entries only (nothing measured; an empty cache gives defaults); off: defaults."""
    model = load_compiled(runs["artifact"])
    jobs = tuning_mod.tuning_jobs(model.graph, model.params, "tvm", "float32", 64)
    assert len(jobs) == JOBS

    def never(job: object, config: object) -> float:
        raise AssertionError("measured")

    kw = {"backend": "tvm", "dtype": "float32", "budget_s": 60.0, "measure": never}
    cache = TuningCache(runs["artifact"] / "tuning.json")
    cached = tuning_mod.run_tuning(jobs, model.params, policy="cached", cache=cache, **kw)
    assert [r.source for r in cached] == ["cache"] * JOBS and sum(r.measured for r in cached) == 0
    assert sum(r.config != r.default for r in cached) == 4  # the decode bucket of the 4 shapes
    empty = tuning_mod.run_tuning(jobs, model.params, policy="cached", cache=TuningCache(tmp_path / "t.json"), **kw)
    assert all(r.config is None and r.reason == "no cache entry" for r in empty)
    off = tuning_mod.run_tuning(jobs, model.params, policy="off", cache=cache, **kw)
    assert all(r.config is None and r.reason == "policy off" for r in off)
    assert tuning_mod.tuning_json(off, policy="off", budget_s=0.0, backend="tvm", cache=cache)["records"] == []


def test_inspect_shows_the_tuning(runs, capsys) -> None:
    from lowbit.cli import main

    assert main(["inspect", str(runs["artifact"])]) == 0
    text = capsys.readouterr().out
    assert "tuning (policy tune, budget 60 s, backend tvm" in text and f"{JOBS} tuned configs pinned" in text
    assert "quantized_gemv  128x128  (0, 1]" in text and "2.00x  cache" in text


def one_linear_graph(kernels: tuple[tuple[int, str], ...]) -> object:
    """A graph of one linear node (weight "w") whose token buckets select `kernels`, for `tuning_jobs`."""

    class Node:
        op = "linear"
        attrs = (("weight", "w"), ("kernels", kernels))

    class Graph:
        def nodes_in_order(self) -> list:
            return [Node()]

    return Graph()


def test_w4a8_weights_on_tvm_are_not_tuned_as_the_gemm_they_no_longer_run() -> None:
    """A W4A8 weight the a8 GEMV takes runs it on TVM at every M (`w4a8_runs_a8`): no job tunes the W4A8 GEMM
    the graph selected; elsewhere (the reference backend, a weight the GEMV cannot take) the jobs stay."""
    import numpy as np

    from lowbit.ops import quantize

    graph = one_linear_graph(((16, "w4a8_gemm_per_group"), (256, "w4a8_gemm_per_group")))

    rng = np.random.default_rng(0)
    w = quantize(rng.standard_normal((64, 256)).astype(np.float32), "uint4", 128, scheme="w4a8_group")
    assert tuning_mod.tuning_jobs(graph, {"w": w}, "tvm", "float32", 256) == []
    jobs = tuning_mod.tuning_jobs(graph, {"w": w}, "reference", "float32", 256)
    assert [(j.kernel, j.m) for j in jobs] == [("w4a8_gemm_per_group", 16), ("w4a8_gemm_per_group", 256)]


def test_a_gpu_does_not_tune_the_gemv_at_the_one_row_it_no_longer_runs(monkeypatch) -> None:
    """On native Triton one row of a w_a16 weight runs the dot-free GEMV (`ops.linear.FMA_GPU_MAX_M`): no job
    tunes the GEMV the graph selected for the 1-row bucket; the 16-row bucket's job stays, and the interpreter
    keeps both."""
    import numpy as np

    import lowbit.ops.linear as linear
    from lowbit.ops import quantize

    graph = one_linear_graph(((1, "quantized_gemv"), (16, "quantized_gemv")))

    w = quantize(np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32), "int4", 128)
    jobs = tuning_mod.tuning_jobs(graph, {"w": w}, "triton", "float16", 16)
    assert [(j.kernel, j.m) for j in jobs] == [("quantized_gemv", 1), ("quantized_gemv", 16)]
    monkeypatch.setattr(linear, "native_triton", lambda: True)
    jobs = tuning_mod.tuning_jobs(graph, {"w": w}, "triton", "float16", 16)
    assert [(j.kernel, j.m) for j in jobs] == [("quantized_gemv", 16)]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_no_job_tunes_a_linear_the_x16_plan_runs(monkeypatch, dtype) -> None:
    """Where the x16 plan runs a linear (`lowbit.ops.x16.x16_serves`: its two kernels at their defaults), no job
    tunes the GEMV the graph selected; an int5 weight (not an x16 dtype) and a CPU without VNNI keep their jobs."""
    import numpy as np

    import lowbit.ops.linear as linear
    from lowbit.ops import quantize

    graph = one_linear_graph(((1, "quantized_gemv"), (16, "quantized_gemv")))

    rng = np.random.default_rng(0)
    int2 = quantize(rng.standard_normal((64, 256)).astype(np.float32), "int2", 128)
    int5 = quantize(rng.standard_normal((64, 256)).astype(np.float32), "int5", 128)
    monkeypatch.setattr(linear, "tvm_int8_dot", lambda: "vnni")
    assert tuning_mod.tuning_jobs(graph, {"w": int2}, "tvm", dtype, 16) == []
    kept = [(j.kernel, j.m) for j in tuning_mod.tuning_jobs(graph, {"w": int5}, "tvm", dtype, 16)]
    assert kept == [("quantized_gemv", 1), ("quantized_gemv", 16)]
    monkeypatch.setattr(linear, "tvm_int8_dot", lambda: "none")
    jobs = tuning_mod.tuning_jobs(graph, {"w": int2}, "tvm", dtype, 16)
    assert [(j.kernel, j.m) for j in jobs] == [("quantized_gemv", 1), ("quantized_gemv", 16)]

"""tuner.py with fake `measure` callables and an injectable clock: pruning, failures, budget, cache
warm/resume, disabled and interpreter paths; plus one real tuning run of quantized_gemm."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lowbit.lang as T
from lowbit.codegen.backend import Config
from lowbit.codegen.tune import cache as cache_mod
from lowbit.codegen.tune import tuner as tuner_mod
from lowbit.codegen.tune.cache import TuningCache
from lowbit.codegen.tune.space import SearchSpace
from lowbit.codegen.tune.tuner import (
    BUDGET_REASON,
    DISABLED_REASON,
    INTERPRETER_REASON,
    Trial,
    TuningError,
    tune,
)


@T.kernel
def scale(
    x: T.Tensor("float32", ("N",)),
    y: T.Tensor("float32", ("N",)),
    N: T.int32,
    F: T.constexpr = 2.0,
    B: T.constexpr = 64,
):
    (pid,) = T.grid(T.cdiv(N, B))
    T.store(y, (pid * B,), T.load(x, (pid * B,), (B,)) * F)


N = 256
ARGS = {"x": np.ones(N, np.float32), "y": np.zeros(N, np.float32)}


def divides_n(config: Config, problem: dict[str, Any]) -> str | None:
    b = config.constant_dict["B"]
    return None if problem["N"] % b == 0 else f"B={b} does not divide N={problem['N']}"


SPACE = SearchSpace.make({"B": (64, 32, 128, 96, 256, 512)}, constraints=(divides_n,))  # 96, 512 are pruned
VALID = (64, 32, 128, 256)
ORDER = [b for c in tuner_mod.candidates(SPACE) if (b := c.constant_dict["B"]) in VALID]  # as tried


class Counting:
    """A fake measure: time = table[B] ms (default: B / 100), counting calls; may raise on a given call."""

    def __init__(
        self, table: dict[int, float] | None = None, fail: Callable[[int], BaseException | None] = lambda b: None
    ):
        self.table = table or {}
        self.fail = fail
        self.calls: list[int] = []

    def __call__(self, config: Config) -> float:
        b = config.constant_dict["B"]
        err = self.fail(b)
        if err is not None:
            raise err
        self.calls.append(b)
        return self.table.get(b, b / 100)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TuningCache:
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "home-cache"))
    monkeypatch.delenv("LOWBIT_TUNE", raising=False)
    return TuningCache(tmp_path / "tuning.json")


def run(cache: TuningCache | bool, measure: Callable[[Config], float], **kw: Any) -> tuner_mod.TuneResult:
    kw.setdefault("fixed", {"F": 2.0})
    kw.setdefault("space", SPACE)
    kw.setdefault("backend", "reference")
    return tune(scale, kw.pop("fixed"), ARGS, kw.pop("backend"), kw.pop("space"), cache=cache, measure=measure,
                progress=False, **kw)  # fmt: skip


# pruning and failures


def test_picks_fastest_and_records_pruning_reasons(cache: TuningCache) -> None:
    m = Counting({64: 3.0, 32: 2.0, 128: 1.0, 256: 4.0})
    r = run(cache, m)
    assert r.best == Config.make({"B": 128}) and r.best_ms == 1.0 and not r.from_cache
    assert m.calls == ORDER and ORDER[0] == 64 and sorted(ORDER) == sorted(VALID)  # default first; no pruned
    reasons = {t.config.constant_dict["B"]: t.reason for t in r.trials}
    assert reasons[96] == "B=96 does not divide N=256" and reasons[512] == "B=512 does not divide N=256"
    assert all(reasons[b] is None for b in VALID)


def test_failing_candidate_is_recorded_and_tuning_goes_on(cache: TuningCache) -> None:
    m = Counting(fail=lambda b: ValueError("boom") if b == 32 else None)
    r = run(cache, m)
    failed = [t for t in r.trials if t.config.constant_dict["B"] == 32]
    assert failed == [Trial(Config.make({"B": 32}), None, "failed: ValueError: boom")]
    assert r.best == Config.make({"B": 64})


def test_all_failing_raises_clear_error_and_leaves_no_entry(cache: TuningCache) -> None:
    m = Counting(fail=lambda b: RuntimeError(f"no compile for {b}"))
    with pytest.raises(TuningError, match="no candidate could be measured") as e:
        run(cache, m)
    assert "failed: RuntimeError: no compile for 64" in str(e.value) and "does not divide" in str(e.value)
    assert len(cache) == 0


def test_fixed_and_tunable_overlap_is_an_error(cache: TuningCache) -> None:
    with pytest.raises(ValueError, match=r"\['B'\] are both fixed and tunable"):
        run(cache, Counting(), fixed={"F": 2.0, "B": 64})


# budget


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_stops_starting_candidates(cache: TuningCache) -> None:
    clock = FakeClock()
    m = Counting()

    def slow(config: Config) -> float:
        clock.now += 1.0  # every measurement takes one second
        return m(config)

    r = run(cache, slow, budget_s=1.5, clock=clock)
    assert m.calls == ORDER[:2]  # started at t=0 and t=1; t=2 >= 1.5 stops
    skipped = [t for t in r.trials if t.reason and t.reason.startswith(BUDGET_REASON)]
    assert [t.config.constant_dict["B"] for t in skipped] == ORDER[2:]
    assert r.best == Config.make({"B": min(ORDER[:2])})


def test_zero_budget_still_measures_the_default(cache: TuningCache) -> None:
    m = Counting()
    r = run(cache, m, budget_s=0)
    assert m.calls == [64] and r.best == SPACE.default and r.best_ms == 0.64


# cache: warm, resume, corrupt


def test_warm_cache_does_no_measuring(cache: TuningCache) -> None:
    first, second = Counting(), Counting()
    r1 = run(cache, first)
    r2 = run(TuningCache(cache.path), second)  # a fresh object: read from disk
    assert len(first.calls) == 4 and second.calls == []
    assert r2.from_cache and r2.best == r1.best and r2.key == r1.key and r2.best_ms == r1.best_ms
    entry = cache.get(r1.key)
    assert entry is not None and entry["complete"] and entry["num_trials"] == 4
    assert entry["parts"]["backend"] == "reference" and entry["parts"]["problem"] == {"N": N}
    assert "timestamp" in entry and entry["best"] == {"constants": {"B": 32}, "options": {}}


def test_interrupted_tuning_resumes_measuring_only_the_rest(cache: TuningCache) -> None:
    m = Counting(fail=lambda b: KeyboardInterrupt() if b == ORDER[2] else None)
    with pytest.raises(KeyboardInterrupt):
        run(cache, m)
    assert m.calls == ORDER[:2]
    (entry,) = cache.load().values()
    assert not entry["complete"] and entry["num_trials"] == 2
    assert entry["best"]["constants"] == {"B": min(ORDER[:2])}

    rest = Counting({ORDER[2]: 9.0, ORDER[3]: 0.1})
    r = run(cache, rest)
    assert rest.calls == ORDER[2:] and not r.from_cache
    assert r.best == Config.make({"B": ORDER[3]})
    expected = [ORDER[0] / 100, ORDER[1] / 100, 9.0, 0.1]  # resumed trials keep their times
    assert [t.time_ms for t in r.measured] == expected
    assert cache.get(r.key)["complete"]  # type: ignore[index]


def test_corrupt_cache_file_is_recovered(cache: TuningCache) -> None:
    cache.path.write_text("{ not json")
    with pytest.warns(UserWarning, match="corrupt"):
        r = run(cache, Counting())
    assert json.loads(cache.path.read_text())["entries"][r.key]["complete"]


def test_cache_none_uses_lowbit_cache_dir(cache: TuningCache, tmp_path: Path) -> None:
    run(None, Counting())  # type: ignore[arg-type]
    assert (tmp_path / "home-cache" / "tuning.json").exists()


def test_cache_false_writes_nothing(cache: TuningCache, tmp_path: Path) -> None:
    m = Counting()
    run(False, m)
    run(False, m)
    assert len(m.calls) == 8 and not (tmp_path / "home-cache").exists() and not cache.path.exists()


# disabled and interpreter


@pytest.mark.parametrize("env", ["0", "off", "false", "OFF"])
def test_disabled_by_env_returns_default_unmeasured(
    cache: TuningCache, monkeypatch: pytest.MonkeyPatch, env: str
) -> None:
    monkeypatch.setenv("LOWBIT_TUNE", env)
    m = Counting()
    r = run(cache, m)
    assert r.best == SPACE.default and m.calls == [] and r.trials[0].reason == DISABLED_REASON
    assert not cache.path.exists()


def test_enabled_argument_overrides_env(cache: TuningCache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOWBIT_TUNE", "0")
    m = Counting()
    run(cache, m, enabled=True)
    assert len(m.calls) == 4
    assert run(cache, Counting(), enabled=False).best == SPACE.default


def test_triton_interpreter_is_not_measured(cache: TuningCache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuner_mod, "_cuda_available", lambda: False)
    m = Counting()
    r = run(cache, m, backend="triton")
    assert r.best == SPACE.default and m.calls == [] and r.trials == (Trial(SPACE.default, None, INTERPRETER_REASON),)
    assert not cache.path.exists()


# the cache key


def key_of(cache: TuningCache, **kw: Any) -> str:
    args = kw.pop("args", ARGS)
    return tune(scale, kw.pop("fixed", {"F": 2.0}), args, kw.pop("backend", "reference"), kw.pop("space", SPACE),
                enabled=False, cache=cache, progress=False).key  # fmt: skip


def test_key_is_stable_and_changes_with_ir_backend_device_version_toolchain_space(
    cache: TuningCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = key_of(cache)
    with monkeypatch.context() as mp:
        mp.setenv("TVM_NUM_THREADS", "1")
        tvm1 = key_of(cache, backend="tvm")
        mp.setenv("TVM_NUM_THREADS", "2")
        assert key_of(cache, backend="tvm") != tvm1
        assert key_of(cache) == base  # the reference backend ignores threads
    assert key_of(cache) == base
    assert key_of(cache, fixed={"F": 3.0}) != base  # different IR
    assert key_of(cache, backend="tvm") != base
    assert key_of(cache, space=SearchSpace.make({"B": (64, 32)}, constraints=(divides_n,))) != base
    longer = {"x": np.ones(512, np.float32), "y": np.zeros(512, np.float32)}
    assert key_of(cache, args=longer) != base  # N is not bucketed
    with monkeypatch.context() as mp:
        mp.setattr(tuner_mod, "device_name", lambda device="cpu": "Other CPU (64 cores)")
        assert key_of(cache) != base
    with monkeypatch.context() as mp:
        mp.setattr(cache_mod, "CODEGEN_VERSION", cache_mod.CODEGEN_VERSION + 1)
        assert key_of(cache) != base
    with monkeypatch.context() as mp:
        mp.setattr(cache_mod, "toolchain_versions", lambda: {"lowbit": "9.9", "numpy": "1.0"})
        assert key_of(cache) != base
    assert key_of(cache) == base


# end to end


def test_tunes_quantized_gemm_on_reference_and_chosen_config_is_correct(cache: TuningCache) -> None:
    from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem, relative_error

    p = random_problem(M=4, N=64, K=128, wdtype="int4", G=32)
    space = SearchSpace.make({"BM": (16,), "BN": (32, 64), "BK": (64,)})
    r = tune(
        quantized_gemm, p.constants, p.args, "reference", space, repeats=1, flush=False, cache=cache, progress=True
    )
    assert len(r.measured) == 2 and r.best in {t.config for t in r.measured}
    y = np.zeros((4, 64), np.float16)
    quantized_gemm.run(**{**p.args, "y": y}, **p.constants, **r.best.constant_dict)
    assert relative_error(y, p.expected) <= 2e-3
    again = tune(quantized_gemm, p.constants, p.args, "reference", space, repeats=1, cache=TuningCache(cache.path))
    assert again.from_cache and again.best == r.best


def test_warm_entry_from_another_m_of_the_bucket_skips_configs_invalid_here(cache: TuningCache) -> None:
    @T.kernel
    def rows(x: T.Tensor("float32", ("M",)), y: T.Tensor("float32", ("M",)), M: T.int32, B: T.constexpr = 1):
        (pid,) = T.grid(T.cdiv(M, B))
        T.store(y, (pid * B,), T.load(x, (pid * B,), (B,)))

    def fits(config: Config, problem: dict[str, Any]) -> str | None:
        b = config.constant_dict["B"]
        return None if problem["M"] % b == 0 else f"B={b} does not divide M={problem['M']}"

    space = SearchSpace.make({"B": (1, 2, 4)}, constraints=(fits,))
    arrays = {m: {"x": np.ones(m, np.float32), "y": np.zeros(m, np.float32)} for m in (3, 4)}
    times = {1: 3.0, 2: 2.0, 4: 1.0}

    def measure(config: Config) -> float:
        return times[config.constant_dict["B"]]

    r4 = tune(rows, {}, arrays[4], "reference", space, cache=cache, measure=measure, progress=False)
    assert r4.best == Config.make({"B": 4})
    m = Counting()
    r3 = tune(rows, {}, arrays[3], "reference", space, cache=cache, measure=m, progress=False)
    assert r3.key == r4.key and r3.from_cache and m.calls == []
    assert r3.best == Config.make({"B": 1})  # B=4 and B=2 do not divide M=3


def test_cached_result_answers_from_complete_entries_only(cache: TuningCache) -> None:
    """policy `cached`: what tune would answer from the cache, never a measurement or a write."""
    from lowbit.codegen.tune.tuner import cached_result

    table = {64: 3.0, 32: 2.0, 128: 1.0, 256: 4.0}

    def ask() -> tuner_mod.TuneResult | None:
        return cached_result(scale, {"F": 2.0}, ARGS, "reference", SPACE, cache=cache)

    assert ask() is None and not cache.path.exists()
    with pytest.raises(KeyboardInterrupt):  # an interrupted run leaves an incomplete entry: not an answer
        run(cache, Counting(table, fail=lambda b: KeyboardInterrupt() if b == ORDER[2] else None))
    assert ask() is None
    r = run(cache, Counting(table))
    hit = ask()
    assert hit is not None and hit.from_cache and hit.best == r.best == Config.make({"B": 128}) and hit.key == r.key

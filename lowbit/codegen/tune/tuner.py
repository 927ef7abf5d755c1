"""The tuner: time every valid point of a search space on the real problem and keep the fastest.

    result = tune(quantized_gemm, {"wdtype": "int4", "G": 128}, args, "tvm", space, budget_s=30)
    quantized_gemm.run(backend="tvm", options=result.best.option_dict, **result.best.constant_dict, ...)

Per candidate config: check the space's constraints (a failing one prunes it, with the reason recorded),
trace `kernel` with the fixed constants and the config's constants, compile with the config's options,
call once untimed (compile + warmup), then take the median of `repeats` cache-flushed samples. A candidate
whose trace, compile or run raises is recorded as failed and tuning goes on; only if every one fails is
it an error. The default config is tried first, so a budget cut still leaves a measured result; the rest
follow in a fixed shuffled order (`candidates`), so a cut samples the whole space.

Not measured, returning the space's default: when tuning is disabled (`enabled=False`, or env
LOWBIT_TUNE=0/off/false/no), and in the Triton interpreter (backend "triton" without CUDA, or
TRITON_INTERPRET=1), whose timings say nothing about a GPU (it walks the grid in Python and ignores
num_warps/num_stages). No cost model is used there: the default is the kernel author's choice for GPUs.
Neither case writes to the cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import operator
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lowbit.codegen.backend import BackendError, Config, compile_program, get_compiler
from lowbit.codegen.tune.cache import (
    TuningCache,
    config_from_json,
    config_to_json,
    digest,
    key_parts,
)
from lowbit.codegen.tune.space import SearchSpace
from lowbit.codegen.tune.timing import benchmark, device_name
from lowbit.lang.kernel import Kernel, infer_scalars

INTERPRETER_REASON = "interpreter: not measured"
DISABLED_REASON = "disabled: not measured"
BUDGET_REASON = "budget: not measured"
_OFF = ("0", "off", "false", "no")


class TuningError(RuntimeError):
    """No candidate of a search space could be measured."""


@dataclass(frozen=True)
class Trial:
    """One candidate: its median time in ms, or why it has none (pruned, failed, skipped)."""

    config: Config
    time_ms: float | None
    reason: str | None = None  # None iff measured

    def to_json(self) -> dict[str, Any]:
        return {"config": config_to_json(self.config), "time_ms": self.time_ms, "reason": self.reason}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Trial:
        return cls(config_from_json(d["config"]), d.get("time_ms"), d.get("reason"))


@dataclass(frozen=True)
class TuneResult:
    best: Config
    trials: tuple[Trial, ...]
    from_cache: bool
    key: str

    @property
    def best_ms(self) -> float | None:
        """The best config's median time (None when it was not measured: disabled or interpreter)."""
        times = [t.time_ms for t in self.trials if t.config == self.best and t.time_ms is not None]
        return min(times) if times else None

    @property
    def measured(self) -> tuple[Trial, ...]:
        return tuple(t for t in self.trials if t.time_ms is not None)


def tuning_enabled() -> bool:
    """False when env LOWBIT_TUNE is 0, off, false or no."""
    return os.environ.get("LOWBIT_TUNE", "1").strip().lower() not in _OFF


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def interpreted(backend: str) -> bool:
    """Whether `backend` would run in the Triton interpreter here."""
    if backend != "triton":
        return False
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") or not _cuda_available()


def timing_device(backend: str) -> str:
    """Where a backend's kernels run: "cuda" for Triton with a GPU, else "cpu"."""
    return "cuda" if backend == "triton" and _cuda_available() else "cpu"


def cpu_threads(backend: str) -> str | None:
    """The thread count TVM kernels run with (its pool reads TVM_NUM_THREADS, then OMP_NUM_THREADS, else
    half the cores); None for backends whose speed it does not set."""
    if backend != "tvm":
        return None
    # the backend sets TVM_NUM_THREADS when it is imported: read it after that, or the keys made before and
    # after a process's first TVM kernel would differ
    with contextlib.suppress(BackendError):
        get_compiler("tvm")
    return os.environ.get("TVM_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default"


def space_description(space: SearchSpace) -> str:
    """The space's axes, default and constraint names, stably printed (for the cache key)."""
    names = [getattr(c, "__qualname__", type(c).__name__) for c in space.constraints]
    return repr((space.constants, space.options, space.default.constants, space.default.options, names))


def problem_sizes(program: Any, args: Mapping[str, Any]) -> dict[str, int]:
    """The integer scalar parameters (M, N, K, ...) given in or inferred from `args`."""
    full = infer_scalars(program, dict(args))
    sizes = {}
    for p in program.scalar_params:
        v = full.get(p.name)
        if v is not None and not isinstance(v, bool):
            try:
                sizes[p.name] = operator.index(v)
            except TypeError:
                continue
    return sizes


def tune(
    kernel: Kernel,
    fixed: Mapping[str, Any],
    args: Mapping[str, Any],
    backend: str,
    space: SearchSpace,
    *,
    budget_s: float = 60.0,
    repeats: int = 5,
    cache: TuningCache | bool | None = None,
    enabled: bool | None = None,
    progress: bool = True,
    measure: Callable[[Config], float] | None = None,
    flush: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> TuneResult:
    """The fastest config of `space` for `kernel` with constants `fixed` on `args` (arrays/tensors and
    scalars as `Kernel.run` takes them) with `backend`. `cache`: None uses `TuningCache()` (at
    $LOWBIT_CACHE_DIR), False none. `measure(config) -> ms` replaces the default timing (tests, custom
    harnesses). Stops starting candidates after `budget_s` seconds by `clock`. Raises TuningError if
    every candidate is pruned or fails."""
    parts, problem = _key_parts(kernel, fixed, args, backend, space)
    key = digest(parts)

    if not (tuning_enabled() if enabled is None else enabled):
        return TuneResult(space.default, (Trial(space.default, None, DISABLED_REASON),), False, key)
    if interpreted(backend):
        return TuneResult(space.default, (Trial(space.default, None, INTERPRETER_REASON),), False, key)

    store = _store(cache)
    entry = store.get(key) if store is not None else None
    if entry and entry.get("complete"):
        hit = _from_entry(entry, space, problem, key)
        if hit is not None:
            return hit
        store = None  # nothing usable: measure this problem without overwriting the bucket's entry
        entry = None
    done = {t.config: t for t in (Trial.from_json(d) for d in (entry or {}).get("trials", ()))}

    if measure is None:
        measure = _timer(kernel, fixed, args, backend, repeats, flush, timing_device(backend))
    run = _Run(kernel.name, backend, candidates(space), progress)
    attempted: list[Trial] = []  # measured or failed: what a resumed run need not redo

    def save(complete: bool) -> None:
        if store is None:
            return
        ok = [t for t in attempted if t.time_ms is not None]
        best = min(ok, key=lambda t: t.time_ms or 0.0) if ok else None
        store.put(
            key,
            {
                "parts": parts,
                "best": config_to_json(best.config) if best else None,
                "best_ms": best.time_ms if best else None,
                "num_trials": len(attempted),
                "trials": [t.to_json() for t in attempted],
                "complete": complete,
            },
        )

    start = clock()
    trials: list[Trial] = []
    try:
        for config in run:
            reason = space.check(config, problem)
            if reason:
                trial = Trial(config, None, reason)
            elif config in done:
                trial = done[config]
                attempted.append(trial)
            elif clock() - start >= budget_s and any(t.time_ms is not None for t in attempted):
                trial = Trial(config, None, f"{BUDGET_REASON} (budget_s={budget_s:g} spent)")
            else:
                trial = _attempt(measure, config)
                attempted.append(trial)
                save(complete=False)
            trials.append(trial)
            run.report(trial)
    finally:
        run.close()

    ok = [t for t in trials if t.time_ms is not None]
    if not ok:
        if store is not None:
            store.remove(key)  # failures may be transient or fixed next time: start fresh
        raise TuningError(_all_failed(kernel.name, backend, trials))
    save(complete=True)
    best = min(ok, key=lambda t: t.time_ms or 0.0)
    return TuneResult(best.config, tuple(trials), False, key)


def cached_result(
    kernel: Kernel,
    fixed: Mapping[str, Any],
    args: Mapping[str, Any],
    backend: str,
    space: SearchSpace,
    *,
    cache: TuningCache | bool | None = None,
) -> TuneResult | None:
    """What `tune` would answer from the cache alone: the stored best for this key (a complete entry with a
    config valid for this problem), else None. Never measures, compiles or writes (tuning policy `cached`)."""
    parts, problem = _key_parts(kernel, fixed, args, backend, space)
    key = digest(parts)
    store = _store(cache)
    entry = store.get(key) if store is not None else None
    if not entry or not entry.get("complete"):
        return None
    return _from_entry(entry, space, problem, key)


def _key_parts(
    kernel: Kernel, fixed: Mapping[str, Any], args: Mapping[str, Any], backend: str, space: SearchSpace
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the cache key's readable parts, the problem constraints are checked against)."""
    overlap = set(fixed) & {n for n, _ in space.constants}
    if overlap:
        raise ValueError(
            f"tune {kernel.name}: {sorted(overlap)} are both fixed and tunable; drop them from `fixed` "
            f"or from the search space"
        )
    program = kernel.trace(**fixed, **space.default.constant_dict)
    sizes = problem_sizes(program, args)
    tunables = {n for n, _ in space.constants}
    problem = {**{k: v for k, v in program.constants if k not in tunables}, **fixed, **sizes}
    device = timing_device(backend)
    parts = key_parts(
        str(program), backend, sizes, device_name(device), space_description(space), threads=cpu_threads(backend)
    )
    return parts, problem


def _store(cache: TuningCache | bool | None) -> TuningCache | None:
    return TuningCache() if cache is None or cache is True else (None if cache is False else cache)


def _from_entry(
    entry: Mapping[str, Any], space: SearchSpace, problem: Mapping[str, Any], key: str
) -> TuneResult | None:
    # M is bucketed, so the entry may come from another M of the bucket: take the fastest trial that is also
    # valid for this problem (normally the stored best)
    cached = tuple(Trial.from_json(t) for t in entry.get("trials", ()))
    usable = [t for t in cached if t.time_ms is not None and not space.check(t.config, problem)]
    usable.sort(key=lambda t: t.time_ms or 0.0)
    return TuneResult(usable[0].config, cached, True, key) if usable else None


def candidates(space: SearchSpace, seed: int = 0) -> list[Config]:
    """The order configs are tried in: the default, then the rest in a fixed shuffled order, so that a
    budget cut leaves a sample of the whole space rather than one corner of the cross product."""
    configs = list(space)
    rest = configs[1:]
    random.Random(seed).shuffle(rest)
    return configs[:1] + rest


def _attempt(measure: Callable[[Config], float], config: Config) -> Trial:
    try:
        return Trial(config, float(measure(config)), None)
    except Exception as e:  # a failing candidate never kills tuning
        return Trial(config, None, f"failed: {type(e).__name__}: {e}")


def default_measure(
    kernel: Kernel,
    fixed: Mapping[str, Any],
    args: Mapping[str, Any],
    backend: str,
    *,
    repeats: int = 5,
    flush: bool = True,
) -> Callable[[Config], float]:
    """The `measure` `tune` uses when given none (trace, compile, warm up, median of flushed samples), for
    callers that wrap it (e.g. to count the trials a run measures)."""
    return _timer(kernel, fixed, args, backend, repeats, flush, timing_device(backend))


def _timer(
    kernel: Kernel,
    fixed: Mapping[str, Any],
    args: Mapping[str, Any],
    backend: str,
    repeats: int,
    flush: bool,
    device: str,
) -> Callable[[Config], float]:
    """The default `measure`: trace, compile, one untimed call (compile/JIT + warmup), then the median of
    `repeats` samples with the caches flushed before each."""

    def measure(config: Config) -> float:
        program = kernel.trace(**fixed, **config.constant_dict)
        compiled = compile_program(program, backend, config.option_dict)
        call_args = infer_scalars(program, dict(args))
        compiled(call_args)
        return benchmark(lambda: compiled(call_args), repeats=repeats, warmup=0, flush=flush, device=device).median

    return measure


def _all_failed(name: str, backend: str, trials: Iterable[Trial]) -> str:
    lines = [f"  {t.config}: {t.reason}" for t in trials]
    shown = "\n".join(lines[:10]) + (f"\n  ... and {len(lines) - 10} more" if len(lines) > 10 else "")
    return (
        f"tuning {name} on backend {backend!r}: no candidate could be measured (all pruned or failed):\n{shown}\n"
        f"widen the search space, or fix the failing compile/run"
    )


class _Run:
    """Iterates the candidates, with a tqdm bar on stderr (config and best so far) when `progress`."""

    def __init__(self, name: str, backend: str, configs: list[Config], progress: bool):
        self.configs = configs
        self.best: Trial | None = None
        self.bar: Any = None
        if progress:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is optional: no bar
                return
            self.bar = tqdm(total=len(configs), desc=f"tune {name} [{backend}]", file=sys.stderr, leave=False)

    def __iter__(self) -> Any:
        return iter(self.configs)

    def report(self, trial: Trial) -> None:
        if trial.time_ms is not None and (self.best is None or trial.time_ms < (self.best.time_ms or 0.0)):
            self.best = trial
        if self.bar is not None:
            best = f"best {self.best.time_ms:.4g} ms {self.best.config}" if self.best else "best -"
            self.bar.set_postfix_str(f"{trial.config} | {best}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = [
    "Trial",
    "TuneResult",
    "TuningError",
    "cached_result",
    "candidates",
    "default_measure",
    "interpreted",
    "timing_device",
    "tune",
    "tuning_enabled",
]

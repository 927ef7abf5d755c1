"""Kernel tuning in the kernels phase (`target.tuning.policy`) and the artifact's tuning.json.

One job per distinct (kernel, fixed constants, N, K, token-count bucket) the optimized graph selected for a
quantized linear (node attr `kernels`: ((bucket, kernel), ...); bucket b serves previous bucket < M <= b),
tuned at M = min(b, the most tokens one step carries), buckets wholly above that skipped; only the library
kernels with a search space (`lowbit.kernels.spaces.KERNELS`) that `quantized_linear` picks by itself (not a
W4A8 weight's on TVM: it runs the a8 GEMV, `lowbit.ops.linear.w4a8_runs_a8`; nor one the x16 plan runs on TVM,
`lowbit.ops.x16.x16_serves`). Per policy:

    tune     `lowbit.codegen.tune.tune` on the real backend, the job's share of what is left of
             `target.tuning.budget_s`; the runtime's default config is the first candidate (so "time vs the
             default" is always measured). Records go to the persistent tuning cache after every trial, so an
             interrupted compile resumes: complete entries answer from the cache, partial ones skip the
             configs already measured.
    cached   complete cache entries only (`cached_result`), never a measurement; the rest run the default.
    off      defaults, nothing read.
Not tuned whatever the policy: the reference backend (NumPy interpreter) and, inside `tune`, the Triton
interpreter (its timings say nothing about a GPU) and LOWBIT_TUNE=0; those jobs run the default config.

The chosen configs are pinned to the weights (`lowbit.codegen.tune.records.attach`) before the kernels are
built, and written to the artifact's tuning.json, which `load_compiled` pins again: a loaded model runs its
tuned kernels without tuning. tuning.json is also a `TuningCache` file (its `entries`), so it can seed the
cache of another machine of the same kind.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from lowbit.codegen.backend import Config
from lowbit.codegen.tune.cache import TuningCache, config_to_json
from lowbit.codegen.tune.records import TunedConfig, attach, fixed_key
from lowbit.ops.weight import QuantizedWeight

TUNING_FILE = "tuning.json"
TUNING_FORMAT = 1
Measure = Callable[["TuningJob", Config], float]  # a fake or custom timer (tests): job, config -> ms


@dataclass(frozen=True)
class TuningJob:
    kernel: str
    n: int
    k: int
    m: int  # the token count it is tuned at
    m_range: tuple[int, int]  # (lo, hi]: the token counts the result serves
    fixed: tuple[tuple[str, Any], ...]  # records.fixed_key of the kernel's fixed constants
    weights: tuple[str, ...]  # the graph params it serves (all share the problem)

    def describe(self) -> str:
        return f"{self.kernel} N={self.n} K={self.k} M={self.m}"


@dataclass(frozen=True)
class JobResult:
    job: TuningJob
    default: Config  # what the runtime runs without tuning
    config: Config | None  # the chosen config; None: the default (not tuned, see reason)
    best_ms: float | None = None
    default_ms: float | None = None
    source: str = "default"  # tuned | cache | default
    reason: str | None = None
    key: str | None = None  # the tuning cache key
    measured: int = 0  # trials measured by this compile

    @property
    def chosen(self) -> Config:
        return self.config if self.config is not None else self.default


def tuning_jobs(graph: Any, params: Mapping[str, Any], backend: str, dtype: str, max_tokens: int) -> list[TuningJob]:
    """The jobs of the graph's quantized linears (see the module docstring), in graph order."""
    from lowbit.kernels.spaces import KERNELS
    from lowbit.ops.linear import select_kernel, tvm_int8_dot, w4a8_runs_a8
    from lowbit.ops.x16 import x16_serves

    jobs: dict[tuple[Any, ...], list[str]] = {}
    for node in graph.nodes_in_order():
        if node.op != "linear":
            continue
        attrs = dict(node.attrs)
        name = str(attrs.get("weight"))
        qw = params.get(name)
        if not isinstance(qw, QuantizedWeight):
            continue
        lo = 0
        for bucket, kernel in attrs.get("kernels") or ():
            rng, lo = (lo, int(bucket)), int(bucket)
            if kernel == "dense" or rng[0] >= max_tokens:
                continue
            m = min(int(bucket), max_tokens)
            if kernel not in KERNELS or select_kernel(qw, m, backend=backend).name != kernel:
                # a kernel with no search space, one the executor asks for by name, or one the backend replaces
                # (a GPU's M = 1 runs the dot-free GEMV, `ops.linear.FMA_GPU_MAX_M`): its default
                continue
            if w4a8_runs_a8(qw, m, backend):
                continue  # a W4A8 weight on TVM runs the a8 GEMV at its default, not the W4A8 GEMM selected
            if backend == "tvm" and x16_serves(qw, m, dtype, tvm_int8_dot()):
                continue  # the x16 plan runs it (`lowbit.ops.x16`): two kernels at their defaults, no search space
            fixed, _ = _problem(qw, 1, backend, dtype)
            key = (kernel, fixed_key(fixed), qw.shape[0], qw.shape[1], m, rng)
            jobs.setdefault(key, []).append(name)
    return [TuningJob(k[0], k[2], k[3], k[4], k[5], k[1], tuple(w)) for k, w in jobs.items()]


def _problem(qw: QuantizedWeight, m: int, backend: str, dtype: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed constants, call arguments) exactly as `quantized_linear` builds them for M = m rows of random
    activations in the compute dtype (torch, as the executor passes them)."""
    import torch

    from lowbit.ops.linear import linear_problem  # the same arguments the runtime passes
    from lowbit.runtime.runner import TORCH_DTYPES

    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, qw.shape[1], generator=g).to(TORCH_DTYPES[dtype])
    _, fixed, args = linear_problem(qw, x, backend)
    return fixed, args


def run_tuning(
    jobs: Sequence[TuningJob],
    params: Mapping[str, Any],
    *,
    policy: str,
    backend: str,
    dtype: str,
    budget_s: float,
    cache: TuningCache | None = None,
    measure: Measure | None = None,
    progress: Any = None,
    verbose: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> list[JobResult]:
    """Run every job under `policy` (module docstring). `progress`: a tqdm-like bar updated once per job
    (its ETA is the phase's); `verbose` shows the tuner's own per-job bar; `clock` measures the budget (the
    tuner's too: tests pass a fake one with a fake `measure`)."""
    from lowbit.codegen.tune import TuningError, cached_result, tune
    from lowbit.codegen.tune.tuner import default_measure
    from lowbit.kernels.spaces import space
    from lowbit.ops.linear import default_linear_config, select_kernel

    cache = cache if cache is not None else TuningCache()
    start = clock()
    results = []
    for i, job in enumerate(jobs):
        if progress is not None:
            progress.set_postfix_str(job.describe(), refresh=False)
        qw = params[job.weights[0]]
        kernel = select_kernel(qw, job.m)
        fixed, args = _problem(qw, job.m, backend, dtype)
        default = default_linear_config(kernel, fixed, args, backend)  # no weight: nothing pinned
        sp = dataclasses.replace(space(kernel.name, backend), default=default)
        if policy == "off":
            result = JobResult(job, default, None, reason="policy off")
        elif backend == "reference":
            result = JobResult(job, default, None, reason="reference interpreter: not tuned")
        elif policy == "cached":
            hit = cached_result(kernel, fixed, args, backend, sp, cache=cache)
            result = _result(job, default, hit, 0) if hit else JobResult(job, default, None, reason="no cache entry")
        else:
            share = max(0.0, budget_s - (clock() - start)) / (len(jobs) - i)
            base = default_measure(kernel, fixed, args, backend) if measure is None else partial(measure, job)
            counted: list[Config] = []  # what this compile measured (a resumed entry skips its earlier trials)
            try:
                r = tune(kernel, fixed, args, backend, sp, budget_s=share, cache=cache, progress=verbose,
                         measure=partial(_counting, base, counted), clock=clock)  # fmt: skip
            except TuningError as e:
                result = JobResult(job, default, None, reason=f"tuning failed: {str(e).splitlines()[0]}")
            else:
                result = _result(job, default, r, len(counted))
        results.append(result)
        if progress is not None:
            progress.update(1)
    return results


def _counting(measure: Callable[[Config], float], counted: list[Config], config: Config) -> float:
    counted.append(config)
    return float(measure(config))


def _result(job: TuningJob, default: Config, r: Any, measured: int) -> JobResult:
    from lowbit.codegen.tune.tuner import DISABLED_REASON, INTERPRETER_REASON

    times = [t.time_ms for t in r.trials if t.config == default and t.time_ms is not None]
    if r.best_ms is None:  # disabled or interpreter: nothing measured, the default runs
        reason = next((t.reason for t in r.trials if t.reason in (DISABLED_REASON, INTERPRETER_REASON)), None)
        return JobResult(job, default, None, reason=reason or "not measured", key=r.key)
    return JobResult(
        job, default, r.best, r.best_ms, min(times) if times else None, "cache" if r.from_cache else "tuned",
        None, r.key, measured,
    )  # fmt: skip


def records(result: JobResult, backend: str) -> list[TunedConfig]:
    if result.config is None:
        return []
    j = result.job
    return [TunedConfig(j.kernel, backend, j.fixed, j.m_range, result.config, j.m)]


def attach_results(params: Mapping[str, Any], results: Sequence[JobResult], backend: str) -> int:
    """Pin the chosen configs to their weights; returns how many weights got records."""
    per_weight: dict[str, list[TunedConfig]] = {}
    for r in results:
        for name in r.job.weights:
            per_weight.setdefault(name, []).extend(records(r, backend))
    for name, recs in per_weight.items():
        if recs:
            attach(params[name], recs)
    return sum(1 for recs in per_weight.values() if recs)


def tuning_json(
    results: Sequence[JobResult], *, policy: str, budget_s: float, backend: str, cache: TuningCache | None
) -> dict[str, Any]:
    """The artifact's tuning.json: the policy, one record per tuned job (the config, the bucket it serves, the
    weights it is pinned to, its time and the default's), and the tuning-cache entries they came from."""
    from lowbit.codegen.tune.timing import device_name
    from lowbit.codegen.tune.tuner import timing_device

    recs, entries = [], {}
    stored = cache.load() if cache is not None else {}
    for r in results:
        for rec in records(r, backend):
            recs.append({
                **rec.to_json(), "weights": list(r.job.weights), "N": r.job.n, "K": r.job.k,
                "best_ms": r.best_ms, "default": config_to_json(r.default), "default_ms": r.default_ms,
                "source": r.source, "key": r.key,
            })  # fmt: skip
            if r.key is not None and r.key in stored:
                entries[r.key] = stored[r.key]
    return {
        "format": TUNING_FORMAT,
        "policy": policy,
        "budget_s": budget_s,
        "backend": backend,
        "device": device_name(timing_device(backend)),
        "records": recs,
        "entries": entries,
    }


def attach_tuning(params: Mapping[str, Any], tuning: Mapping[str, Any]) -> int:
    """Pin the records of an artifact's tuning.json to the loaded weights; returns how many weights got some.
    A record naming a weight that is not a QuantizedWeight of `params` is an inconsistent artifact."""
    per_weight: dict[str, list[TunedConfig]] = {}
    for d in tuning.get("records", ()):
        rec = TunedConfig.from_json(d)
        for name in d.get("weights", ()):
            if not isinstance(params.get(name), QuantizedWeight):
                raise ValueError(
                    f"{TUNING_FILE}: a record is pinned to {name!r}, which is not a quantized weight of this "
                    f"artifact; the artifact is inconsistent: re-run lowbit compile"
                )
            per_weight.setdefault(name, []).append(rec)
    for name, recs in per_weight.items():
        attach(params[name], recs)
    return len(per_weight)


def report_rows(results: Sequence[JobResult]) -> list[dict[str, Any]]:
    """Per job: the chosen config and its time vs the default config's (the compile report's tuning table)."""
    rows = []
    for r in results:
        j = r.job
        speedup = r.default_ms / r.best_ms if r.best_ms and r.default_ms else None
        rows.append({
            "kernel": j.kernel, "N": j.n, "K": j.k, "M": j.m, "m_range": list(j.m_range), "weights": len(j.weights),
            "config": str(r.chosen), "ms": r.best_ms, "default_config": str(r.default), "default_ms": r.default_ms,
            "speedup": None if speedup is None else round(float(speedup), 3), "source": r.source,
            "measured": r.measured, **({"reason": r.reason} if r.reason else {}),
        })  # fmt: skip
    return rows


def used_kernel_keys(params: Mapping[str, Any]) -> set[str]:
    """Disk-cache keys of the kernels the runtime compiled for the weights (lowbit.ops.linear keeps them on
    each weight), so tuning trials that lost are not shipped."""
    keys = set()
    for p in params.values():
        for plan in getattr(p, "__dict__", {}).get("_plans", {}).values():
            key = getattr(plan, "key", None)
            if key is not None:
                keys.add(str(key))
    return keys


def summary(results: Sequence[JobResult]) -> dict[str, Any]:
    """Counts for the report: jobs, how many tuned now / from the cache / default, trials measured."""
    by = {s: sum(1 for r in results if r.source == s) for s in ("tuned", "cache", "default")}
    gains = [r.default_ms / r.best_ms for r in results if r.best_ms and r.default_ms]
    return {
        "jobs": len(results),
        **by,
        "measured": sum(r.measured for r in results),
        "geomean_speedup": round(float(np.exp(np.mean(np.log(gains)))), 3) if gains else None,
    }


__all__ = [
    "TUNING_FILE",
    "JobResult",
    "Measure",
    "TuningJob",
    "attach_results",
    "attach_tuning",
    "report_rows",
    "run_tuning",
    "summary",
    "tuning_jobs",
    "tuning_json",
    "used_kernel_keys",
]

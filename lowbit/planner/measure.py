"""Measured step times of an artifact under pipeline plans, on the machine it runs on, for the report's
"measured" column: one synthetic dense step of a `Workload` (decode rows attending to `decode_context` cached
tokens each, then prefill chunks), run by `ModelRunner` unsplit or with the nano executor and a plan.

    times = measure_schedules("artifacts/tiny-llama", {"unsplit": None, "searched": plan}, wl, repeats=5)
    times["searched"].tokens_per_s

The cache pages hold whatever the pool was initialised with (the step's attention reads them all the same);
the same positions are rewritten every repeat. Timing: every runner is built first, then `warmup` untimed rounds
(kernels load or build there, thread pools start), then `repeats` rounds that time one step of every runner in
a rotating order (so the load of a shared machine drifts alike for all); the median per runner.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbit.planner.workload import Workload
from lowbit.runtime.plan import PipelinePlan


@dataclass(frozen=True)
class StepTiming:
    name: str
    samples: tuple[float, ...]  # seconds per step
    rows: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples)

    @property
    def tokens_per_s(self) -> float:
        return self.rows / self.median_s


def _chunks(runner: Any, wl: Workload, vocab: int) -> list[Any]:
    from lowbit.runtime.batch import SeqChunk

    chunks = []
    for i in range(wl.decode_tokens):
        table: list[int] = []
        runner.cache.grow(table, wl.decode_context)
        chunks.append(SeqChunk(i, ((7 * i + 1) % vocab,), wl.decode_context - 1, tuple(table)))
    for j, a in enumerate(range(wl.decode_tokens, wl.dense_batch, wl.prefill_chunk)):
        n = min(wl.prefill_chunk, wl.dense_batch - a)
        table = []
        runner.cache.grow(table, wl.prefill_context + n)
        tokens = tuple((5 * (a + k) + 3) % vocab for k in range(n))
        chunks.append(SeqChunk(wl.decode_tokens + j, tokens, wl.prefill_context, tuple(table)))
    return chunks


def step_runner(model: Any, wl: Workload, plan: PipelinePlan | None = None) -> tuple[Any, list[Any]]:
    """A `ModelRunner` of a loaded artifact (`load_compiled`) sized for one dense step of `wl` (unsplit, or the
    nano executor with `plan`), and that step's chunks, their cache pages grown."""
    from lowbit.runtime.runner import ModelRunner

    cfg, arch = model.cfg, model.arch
    page = cfg.target.page_size
    longest = max(wl.decode_context, wl.prefill_context + min(wl.prefill_chunk, max(1, wl.prefill_tokens)))
    if longest > arch.max_position_embeddings:
        raise ValueError(
            f"workload context {longest} > the model's max_position_embeddings {arch.max_position_embeddings}; "
            "lower --decode-context / --prefill-chunk"
        )
    pages = (
        wl.decode_tokens * -(-wl.decode_context // page)
        + wl.num_prefill_seqs * -(-(wl.prefill_context + wl.prefill_chunk) // page)
        + 1
    )
    runner = ModelRunner(
        arch, model.graph, model.params, kv_dtype=cfg.quantization.kv_cache.dtype, dtype=cfg.model.dtype,
        backend=cfg.target.effective_backend, max_model_len=longest, num_pages=pages, page_size=page,
        max_num_seqs=wl.num_seqs, kv_layer_scales=model.kv_scales,
        schedule="unsplit" if plan is None else "nano", plan=plan,
    )  # fmt: skip
    return runner, _chunks(runner, wl, arch.vocab_size)


def measure_schedules(
    artifact: str | Path,
    plans: Mapping[str, PipelinePlan | None],
    wl: Workload,
    *,
    repeats: int = 5,
    warmup: int = 2,
    verify: str = "quick",
) -> dict[str, StepTiming]:
    """Median wall time of one dense step of `wl` per plan (None: the unsplit executor)."""
    from lowbit.compiler.load import load_compiled

    model = load_compiled(artifact, verify=verify)  # type: ignore[arg-type]
    runners, chunks = {}, {}
    for name, plan in plans.items():
        runners[name], chunks[name] = step_runner(model, wl, plan)
    for _ in range(warmup):
        for name, runner in runners.items():
            runner.step(chunks[name])
    samples: dict[str, list[float]] = {name: [] for name in plans}
    names = list(plans)
    for r in range(repeats):  # round robin, rotating the order: a busy shared machine drifts alike for all
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            runners[name].step(chunks[name])
            samples[name].append(time.perf_counter() - t0)
    out = {name: StepTiming(name, tuple(v), wl.dense_batch) for name, v in samples.items()}
    del runners
    gc.collect()
    return out


__all__ = ["StepTiming", "measure_schedules", "step_runner"]

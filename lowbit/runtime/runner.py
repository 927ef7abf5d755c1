"""`ModelRunner`: a compiled model (graph + parameters + KV cache) that runs steps and simple generation.

`generate` is the straightforward loop used by `lowbit generate` (all prompts prefilled in one step, then one
decode step per new token for the unfinished sequences); the serving engine schedules steps itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lowbit.models.arch import ArchConfig
from lowbit.runtime.batch import Batch, SeqChunk
from lowbit.runtime.executor import Executor
from lowbit.runtime.kv_cache import PagedKVCache
from lowbit.runtime.nano import NanoExecutor
from lowbit.runtime.plan import PipelinePlan, default_plan
from lowbit.runtime.sampler import SamplingParams, make_generator, sample

SCHEDULES = ("unsplit", "nano")  # the whole batch op by op | nano-batches on the plan's units (nano.py)
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (eos / stop token) | "length"


class ModelRunner:
    """graph + params + a paged KV cache for `arch` (a tensor-parallel rank passes its local arch and shard,
    and `tp_group`, the `lowbit.parallel.TPGroup` its all_reduce nodes sum over)."""

    def __init__(
        self,
        arch: ArchConfig,
        graph: Any,
        params: Mapping[str, Any],
        *,
        kv_dtype: str = "float16",
        dtype: str = "float32",
        backend: str = "auto",
        max_model_len: int = 512,
        num_pages: int | None = None,
        page_size: int = 16,
        max_num_seqs: int = 8,
        kv_layer_scales: Sequence[tuple[float, float]] | None = None,
        schedule: str = "unsplit",
        plan: PipelinePlan | None = None,
        tp_group: Any = None,
    ) -> None:
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"dtype {dtype!r} is not a compute dtype; use one of {list(TORCH_DTYPES)}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule {schedule!r} is not known; use one of {list(SCHEDULES)}")
        self.arch = arch
        self.max_model_len = max_model_len
        pages = num_pages or max_num_seqs * -(-max_model_len // page_size) + 1
        self.cache = PagedKVCache(
            kv_dtype, arch.num_layers, arch.num_kv_heads, arch.head_dim, pages, page_size, kv_layer_scales
        )
        self.executor = Executor(
            graph, params, self.cache, backend=backend, dtype=TORCH_DTYPES[dtype], max_positions=max_model_len
        )
        self.executor.tp_group = tp_group  # a tensor-parallel rank (lowbit.parallel): its all_reduce nodes sum over it
        self.schedule = schedule
        self.plan = plan  # kept with schedule="unsplit" too, so the two schedules can be compared on one plan
        self.nano: NanoExecutor | None = None
        if schedule == "nano":
            device = "cuda" if any(isinstance(p, torch.Tensor) and p.is_cuda for p in params.values()) else "cpu"
            self.nano = NanoExecutor(self.executor, plan or default_plan(arch, device))

    def use_plan(self, plan: PipelinePlan) -> None:
        """Run the nano schedule under `plan` from the next step on (a plan re-searched while serving); the old
        plan's worker threads stop. Only between steps, and only on the nano schedule."""
        if self.nano is None:
            raise ValueError(f"use_plan: this runner runs schedule {self.schedule!r}; plans apply to schedule 'nano'")
        old, self.nano = self.nano, NanoExecutor(self.executor, plan)
        self.plan = plan
        old.close()

    def step(self, chunks: Sequence[SeqChunk], *, all_logits: bool = False) -> torch.Tensor:
        """Run one forward step; logits [num_seqs, V] (or [tokens, V]) float32."""
        run = self.nano if self.nano is not None else self.executor
        return run.forward(Batch(chunks, self.cache.page_size), all_logits=all_logits)

    def logits(self, token_ids: Sequence[int], *, chunk: int | None = None) -> torch.Tensor:
        """Logits [T, V] of every position of one prompt (the pages are freed afterwards). One prefill by
        default; with `chunk`, a chunked prefill: the first chunk attends to its own fresh K/V, every later chunk
        to the paged cache, so the KV cache's storage format (int8 / int4 / fp8 rounding) is in the logits of
        every position after the first chunk, as it is in serving."""
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk = {chunk}: give a positive token count (or None for one prefill)")
        ids = tuple(int(t) for t in token_ids)
        step = chunk or len(ids)
        table: list[int] = []
        self.cache.grow(table, len(ids))
        try:
            rows = [
                self.step([SeqChunk(0, ids[s : s + step], s, tuple(table))], all_logits=True)
                for s in range(0, len(ids), step)
            ]
            return torch.cat(rows) if len(rows) > 1 else rows[0]
        finally:
            self.cache.free(table)

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, eos_token_ids: Sequence[int] = ()
    ) -> list[Completion]:
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty; give at least one token")
            if len(p) + params.max_tokens > self.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens + max_tokens {params.max_tokens} > max_model_len "
                    f"{self.max_model_len}; shorten it or raise target.max_model_len"
                )
        stops = params.stop_ids(eos_token_ids)
        gen = make_generator(params.seed)
        done = [Completion(list(p)) for p in prompts]
        tables: list[list[int]] = [[] for _ in prompts]
        try:
            chunks = []
            for i, p in enumerate(prompts):
                self.cache.grow(tables[i], len(p))
                chunks.append(SeqChunk(i, tuple(p), 0, tuple(tables[i])))
            live = list(range(len(prompts)))
            while live:
                logits = self.step(chunks)
                nxt = []
                for row, i in enumerate(live):
                    tok = sample(logits[row], params, gen)
                    c = done[i]
                    c.token_ids.append(tok)
                    if tok in stops:
                        c.finish_reason = "stop"
                    elif len(c.token_ids) >= params.max_tokens:
                        c.finish_reason = "length"
                    else:
                        nxt.append(i)
                live = nxt
                chunks = []
                for i in live:
                    c = done[i]
                    cached = len(c.prompt_ids) + len(c.token_ids) - 1
                    self.cache.grow(tables[i], cached + 1)
                    chunks.append(SeqChunk(i, (c.token_ids[-1],), cached, tuple(tables[i])))
        finally:
            for t in tables:
                self.cache.free(t)
        return done


__all__ = ["SCHEDULES", "TORCH_DTYPES", "Completion", "ModelRunner"]

"""`LLMEngine`: a compiled artifact served step by step — the scheduler decides which token rows run, the model
runner runs them (unsplit or as nano-batches), the engine samples, detokenizes incrementally and applies the
stop rules (EOS, stop token ids, stop strings, min_tokens, max_tokens).

One `step()` = one forward pass over the scheduler's batch (decode rows first, then prefill chunks, within the
token budget); it returns a `RequestOutput` for every request that produced a token or finished. The engine is
single-threaded; `AsyncLLMEngine` drives it from a background thread for the server.

Plans: schedule "artifact" runs the artifact's plan.json (the planner's search at compile time); when it splits,
a `Replanner` searches it again in the background once the served mix drifts from the one it was searched for
and the runner switches plans between steps (`research_every` steps between checks, 0: never).

KV cache sizing: the pages come from a memory budget (`kv_cache_bytes`; by default enough for `max_num_seqs`
sequences of `max_model_len` tokens, capped by a fraction of the memory the machine has free) at the artifact's
KV dtype, so an int4 KV cache holds ~4x the tokens of fp16 in the same bytes. The capacity is logged.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lowbit.graph.stats import kv_bytes_per_token
from lowbit.models.arch import ArchConfig
from lowbit.models.tokenizer import IncrementalDecoder, TextTokenizer
from lowbit.runtime.block_manager import BlockManager
from lowbit.runtime.outputs import EngineStats, RequestMetrics, RequestOutput
from lowbit.runtime.runner import ModelRunner
from lowbit.runtime.sampler import SamplingParams, make_generator, sample
from lowbit.runtime.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from lowbit.runtime.sequence import Sequence

log = logging.getLogger("lowbit.engine")

Schedule = Literal["artifact", "unsplit", "nano"]
DEFAULT_MEMORY_FRACTION = 0.25  # of the memory free at start, at most, for the KV cache when no budget is given


@dataclass(frozen=True)
class KVPlan:
    """How many KV pages the engine allocates and what they hold."""

    num_pages: int  # including the scratch page 0
    page_size: int
    bytes_per_token: int
    max_model_len: int

    @property
    def capacity_tokens(self) -> int:
        return (self.num_pages - 1) * self.page_size

    @property
    def bytes(self) -> int:
        return self.num_pages * self.page_size * self.bytes_per_token

    @property
    def max_concurrency(self) -> float:
        """Sequences of max_model_len tokens that fit at once."""
        return self.capacity_tokens / self.max_model_len

    def describe(self, kv_dtype: str) -> str:
        return (
            f"KV cache: {self.num_pages - 1} pages x {self.page_size} tokens ({kv_dtype}, "
            f"{self.bytes_per_token} B/token) = {self.capacity_tokens:,} tokens, {self.bytes / 2**20:.1f} MiB; "
            f"max concurrency at {self.max_model_len} tokens: {self.max_concurrency:.1f}x"
        )


def free_memory_bytes(device: str) -> int:
    """Memory free now on `device` (CUDA: mem_get_info; CPU: MemAvailable of /proc/meminfo, else 4 GiB)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def plan_kv_cache(
    arch: ArchConfig,
    kv_dtype: str,
    *,
    page_size: int,
    max_model_len: int,
    max_num_seqs: int,
    kv_cache_bytes: int | None = None,
    device: str = "cpu",
) -> KVPlan:
    """Pages for a budget. Without one: room for max_num_seqs full-length sequences, capped at
    DEFAULT_MEMORY_FRACTION of the free memory. The cache must hold at least one max_model_len sequence."""
    per_token = kv_bytes_per_token(arch, kv_dtype)
    page_bytes = per_token * page_size
    pages_per_seq = math.ceil(max_model_len / page_size)
    if kv_cache_bytes is None:
        want = max_num_seqs * pages_per_seq
        cap = int(free_memory_bytes(device) * DEFAULT_MEMORY_FRACTION) // page_bytes
        usable = max(min(want, cap), pages_per_seq)
    else:
        if kv_cache_bytes <= 0:
            raise ValueError(f"kv_cache_bytes = {kv_cache_bytes}: give a positive byte count")
        usable = kv_cache_bytes // page_bytes - 1
        if usable < pages_per_seq:
            need = (pages_per_seq + 1) * page_bytes
            raise ValueError(
                f"kv_cache_bytes = {kv_cache_bytes:,} holds {max(usable, 0)} pages of {page_size} tokens, but one "
                f"sequence of max_model_len {max_model_len} needs {pages_per_seq}; give at least {need:,} bytes or "
                "lower max_model_len"
            )
    return KVPlan(usable + 1, page_size, per_token, max_model_len)


@dataclass
class _Request:
    request_id: str
    seq: Sequence
    params: SamplingParams
    decoder: IncrementalDecoder | None
    generator: torch.Generator | None
    metrics: RequestMetrics
    stops: frozenset[int]  # EOS + stop_token_ids (empty when ignore_eos and no stop ids)
    banned: frozenset[int]  # sampled never while fewer than min_tokens outputs: stops and EOS in the vocabulary
    text: str = ""  # decoded output so far (stop string handling trims it)
    sent_tokens: int = 0
    sent_chars: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    hold: int = 0  # chars held back while they could still start a stop string


class LLMEngine:
    """Serve a compiled artifact (a path or a `CompiledModel`). See the module docstring."""

    def __init__(
        self,
        artifact: str | Path | Any,
        *,
        backend: str | None = None,
        max_num_seqs: int | None = None,
        max_model_len: int | None = None,
        max_num_batched_tokens: int | None = None,
        kv_cache_bytes: int | None = None,
        schedule: Schedule = "artifact",
        plan: Any = None,
        policy: Literal["fcfs", "priority"] = "fcfs",
        chunked_prefill: bool = True,
        verify: Literal["full", "quick", "none"] = "full",
        seed: int = 0,
        research_every: int | None = None,
    ) -> None:
        from lowbit.compiler.load import CompiledModel, load_compiled

        t0 = time.perf_counter()
        model = artifact if isinstance(artifact, CompiledModel) else load_compiled(artifact, verify=verify)
        self.model = model
        cfg, arch = model.cfg, model.arch
        self.arch = arch
        self.model_name = model.name
        self.max_model_len = int(max_model_len or cfg.target.max_model_len)
        limit = arch.max_position_embeddings
        if arch.sliding_window is not None:
            limit = min(limit, arch.sliding_window)
        if not 1 <= self.max_model_len <= limit:
            raise ValueError(
                f"max_model_len = {self.max_model_len}: the model supports 1..{limit} tokens "
                "(max_position_embeddings / sliding window); lower it"
            )
        self.max_num_seqs = int(max_num_seqs or cfg.target.max_num_seqs)
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs = {self.max_num_seqs}: must be >= 1")
        default_budget = 512 if chunked_prefill else self.max_model_len  # chunked: bounded step latency
        budget = int(max_num_batched_tokens or max(default_budget, self.max_num_seqs))
        if budget < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens = {budget} < max_num_seqs {self.max_num_seqs}: every running sequence needs a "
                "decode row per step; raise it"
            )
        self.kv_dtype = cfg.quantization.kv_cache.dtype
        self.backend = backend or cfg.target.effective_backend
        device = cfg.target.device
        self.kv_plan = plan_kv_cache(
            arch, self.kv_dtype, page_size=cfg.target.page_size, max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs, kv_cache_bytes=kv_cache_bytes, device=device,
        )  # fmt: skip
        self.schedule_mode, self.plan = self._resolve_schedule(schedule, plan)
        runner_kw: dict[str, Any] = {}
        if self.schedule_mode == "nano":
            runner_kw = {"schedule": "nano", "plan": self.plan}
        self.runner: ModelRunner
        if model.tensor_parallel > 1:  # rank 0 here, ranks 1..tp-1 spawned (lowbit.parallel): same pages on each
            from lowbit.parallel.runner import TPRunner

            self.runner = TPRunner(
                model, backend=self.backend, max_model_len=self.max_model_len, num_pages=self.kv_plan.num_pages,
                page_size=cfg.target.page_size, max_num_seqs=self.max_num_seqs, **runner_kw,
            )  # fmt: skip
        else:
            self.runner = ModelRunner(
                arch, model.graph, model.params, kv_dtype=self.kv_dtype, dtype=cfg.model.dtype, backend=self.backend,
                max_model_len=self.max_model_len, num_pages=self.kv_plan.num_pages, page_size=cfg.target.page_size,
                max_num_seqs=self.max_num_seqs, kv_layer_scales=model.kv_scales, **runner_kw,
            )  # fmt: skip
        self.replanner = self._make_replanner(schedule, plan, research_every)
        cache = self.runner.cache
        self.blocks: BlockManager = cache.blocks
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=self.max_num_seqs, max_num_batched_tokens=budget, max_model_len=self.max_model_len,
                chunked_prefill=chunked_prefill, policy=policy,
            ),
            self.blocks,
        )  # fmt: skip
        tok = model.tokenizer
        self.eos_token_ids: tuple[int, ...] = tuple(model.eos_token_ids)
        bos = model.generation_config.get("bos_token_id", arch.bos_token_id)
        self.tokenizer = (
            None if tok is None else TextTokenizer(tok, None if bos is None else int(bos), self.eos_token_ids)
        )
        self.vocab_size = arch.vocab_size
        self._requests: dict[str, _Request] = {}
        self._by_seq: dict[int, _Request] = {}
        self._seq_ids = itertools.count()
        self._generator = make_generator(seed)
        self._prompt_tokens = 0
        self._generation_tokens = 0
        self._steps = 0
        self._aborted: list[RequestOutput] = []
        log.info("%s", self.kv_plan.describe(self.kv_dtype))
        log.info(
            "engine ready in %.1f s: %s, backend %s, schedule %s, max_num_seqs %d, max_model_len %d, token budget %d",
            time.perf_counter() - t0, self.model_name, self.backend, self.schedule_mode, self.max_num_seqs,
            self.max_model_len, budget,
        )  # fmt: skip

    # -- configuration helpers ----------------------------------------------------------------------------
    def _resolve_schedule(self, schedule: str, plan: Any) -> tuple[str, Any]:
        """(schedule, plan) to run: "artifact" runs the artifact's plan (unsplit when it has no splits);
        "nano" runs `plan`, else the artifact's plan if it splits, else the NanoFlow-like default."""
        from lowbit.runtime.plan import default_plan

        if schedule not in ("artifact", "unsplit", "nano"):
            raise ValueError(f"schedule = {schedule!r}: use 'artifact' (the artifact's plan), 'unsplit' or 'nano'")
        shipped = plan if plan is not None else self._artifact_plan()
        splits = shipped is not None and bool(shipped.rules)
        if schedule == "unsplit" or (schedule == "artifact" and not splits):
            return "unsplit", None
        if schedule == "nano" and not splits:  # tensor parallel: its all_reduce nano-ops on a network unit
            tp = self.model.tensor_parallel
            shipped = default_plan(self.arch, self.model.cfg.target.device, tensor_parallel=tp)
        return "nano", shipped

    def _make_replanner(self, schedule: str, plan: Any, every: int | None) -> Any:
        """A `Replanner` when the engine runs the artifact's own split plan (schedule "artifact", no plan given,
        one process): that plan was searched for one decode/prefill mix, and is searched again in the
        background when the served mix drifts from it. `every` steps between checks (0: never)."""
        from lowbit.runtime.replan import RESEARCH_EVERY, Replanner

        every = RESEARCH_EVERY if every is None else int(every)
        if every < 0:
            raise ValueError(f"research_every = {every}: give a number of steps >= 0 (0 turns re-search off)")
        own_plan = schedule == "artifact" and plan is None and self.schedule_mode == "nano"
        if every == 0 or not own_plan or self.model.tensor_parallel > 1:  # tp ranks would need the plan too
            return None
        from lowbit.planner.artifact import plan_for_artifact

        model, device = self.model, self.model.cfg.target.device
        return Replanner(lambda: plan_for_artifact(model.arch, device, cfg=model.cfg), every=every)

    def _artifact_plan(self) -> Any:
        """The pipeline plan shipped in the artifact (plan.json), or None (artifacts from before plans)."""
        path = Path(self.model.path) / "plan.json"
        if not path.is_file():
            return None
        from lowbit.runtime.plan import PipelinePlan

        return PipelinePlan.from_json(path.read_text())

    def close(self) -> None:
        """Release what the engine holds outside this process (a tensor-parallel artifact's other ranks);
        idempotent. The engine cannot step afterwards when it had other ranks."""
        if self.replanner is not None:
            self.replanner.close()
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    # -- requests -----------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | Seq[int]) -> list[int]:
        """Token ids of a prompt (text through the tokenizer, or ids checked against the vocabulary)."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this artifact has no tokenizer.json: send the prompt as token ids")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        if not ids:
            raise ValueError("the prompt is empty (0 tokens); give at least one token")
        return ids

    def check_request(self, prompt_ids: Seq[int], params: SamplingParams) -> None:
        """Raise ValueError (a 400 for the server) when the request can never run."""
        n = len(prompt_ids)
        if n + params.max_tokens > self.max_model_len:
            raise ValueError(
                f"this model's maximum context length is {self.max_model_len} tokens; the request has {n} prompt "
                f"tokens + max_tokens {params.max_tokens} = {n + params.max_tokens}; shorten the prompt or lower "
                "max_tokens"
            )

    def add_request(
        self,
        request_id: str,
        prompt: str | Seq[int],
        params: SamplingParams | None = None,
        *,
        priority: int = 0,
        arrival_time: float | None = None,
    ) -> list[int]:
        """Queue a request; returns its prompt token ids. Raises ValueError for a request that cannot run."""
        params = params or SamplingParams()
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use; give each request a unique id")
        ids = self.encode_prompt(prompt)
        self.check_request(ids, params)
        now = time.monotonic() if arrival_time is None else arrival_time
        seq = Sequence(next(self._seq_ids), list(ids), params.max_tokens, priority=priority, arrival_time=now)
        stops = params.stop_ids(self.eos_token_ids)
        banned = frozenset(t for t in stops | set(self.eos_token_ids) if 0 <= t < self.vocab_size)
        decoder = None
        if self.tokenizer is not None:
            decoder = IncrementalDecoder(self.tokenizer.tokenizer, skip_special_tokens=params.skip_special_tokens)
        try:
            generator = make_generator(params.seed) if params.seed is not None else self._generator
        except (ValueError, RuntimeError, OverflowError, TypeError) as e:
            raise ValueError(f"seed = {params.seed!r} is not usable ({e}); give an integer in [0, 2**63)") from None
        req = _Request(
            request_id, seq, params, decoder, generator, RequestMetrics(now), stops, banned,
            hold=0 if params.include_stop_str_in_output else max((len(s) for s in params.stop), default=1) - 1,
        )  # fmt: skip
        self.scheduler.add(seq)  # the last thing that may refuse: nothing is registered before it succeeds
        self._requests[request_id] = req
        self._by_seq[seq.seq_id] = req
        return ids

    def abort_request(self, request_id: str) -> bool:
        """Stop a request now (its pages are freed); its final output (finish_reason "abort") comes from the
        next `step()`. False if it is unknown or already finished."""
        req = self._requests.get(request_id)
        if req is None:
            return False
        self.scheduler.abort(req.seq.seq_id)
        req.finish_reason = "abort"
        self._aborted.append(self._output(req, finished=True))
        self._forget(req)
        return True

    def abort_all(self) -> list[RequestOutput]:
        """Abort every request now; returns their final outputs (finish_reason "abort")."""
        for rid in list(self._requests):
            self.abort_request(rid)
        outs, self._aborted = self._aborted, []
        return outs

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests) or bool(self._aborted)

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    def stats(self) -> EngineStats:
        s = self.scheduler
        return EngineStats(
            num_running=s.num_running, num_waiting=s.num_waiting, kv_usage=self.blocks.usage,
            num_preemptions=s.num_preemptions, prompt_tokens=self._prompt_tokens,
            generation_tokens=self._generation_tokens, num_pages=self.kv_plan.num_pages,
            page_size=self.kv_plan.page_size, kv_capacity_tokens=self.kv_plan.capacity_tokens,
            max_model_len=self.max_model_len, max_num_seqs=self.max_num_seqs, steps=self._steps,
        )  # fmt: skip

    # -- the step -----------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        outputs, self._aborted = self._aborted, []
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return outputs
        now = time.monotonic()
        for c in sched.chunks:
            r = self._by_seq[c.seq.seq_id]
            if r.metrics.first_scheduled_time is None:
                r.metrics.first_scheduled_time = now
            if c.seq.num_preemptions == 0 and c.num_cached < c.seq.num_prompt_tokens:
                self._prompt_tokens += min(c.num_new, c.seq.num_prompt_tokens - c.num_cached)
        logits = self.runner.step([c.to_seq_chunk() for c in sched.chunks])
        if self.replanner is not None:
            new_plan = self.replanner.observe((c.num_cached, c.num_new) for c in sched.chunks)
            if new_plan is not None:
                self.runner.use_plan(new_plan)
                self.plan = new_plan
        sampled = self._sample(sched, logits)
        self._steps += 1
        self.scheduler.update(sched, sampled)
        now = time.monotonic()
        for c in sched.chunks:
            if c.seq.seq_id not in sampled:
                continue
            req = self._by_seq[c.seq.seq_id]
            self._generation_tokens += 1
            if req.metrics.first_token_time is None:
                req.metrics.first_token_time = now
            req.metrics.last_token_time = now
            self._after_token(req, sampled[c.seq.seq_id])
            if req.seq.is_finished and req.finish_reason is None:
                req.finish_reason = req.seq.finish_reason or "length"
            finished = req.finish_reason is not None
            if finished and not req.seq.is_finished:
                self.scheduler.finish(req.seq, req.finish_reason or "stop")
            out = self._output(req, finished=finished)
            if finished:
                req.metrics.finished_time = now
                self._forget(req)
            outputs.append(out)
        return outputs

    def _sample(self, sched: SchedulerOutput, logits: torch.Tensor) -> dict[int, int]:
        rows = [(i, self._by_seq[c.seq.seq_id]) for i, c in enumerate(sched.chunks) if c.samples]
        out: dict[int, int] = {}
        if not rows:
            return out
        if not torch.isfinite(logits).any(dim=-1).all():
            raise FloatingPointError("the model produced a row with no finite logit; the weights or kernels are broken")
        greedy = [(i, r) for i, r in rows if r.params.greedy and not self._banned(r)]
        if greedy:  # one argmax over the plain greedy rows
            idx = torch.tensor([i for i, _ in greedy])
            for (_, r), t in zip(greedy, logits.index_select(0, idx).argmax(-1).tolist(), strict=True):
                out[r.seq.seq_id] = int(t)
        for i, r in rows:
            if r.seq.seq_id in out:
                continue
            row = logits[i]
            banned = self._banned(r)
            if banned:
                row = row.clone()
                row[list(banned)] = -torch.inf
            out[r.seq.seq_id] = sample(row, r.params, r.generator)
        return out

    @staticmethod
    def _banned(req: _Request) -> frozenset[int]:
        """Token ids this request may not sample now: its stop ids and EOS before min_tokens."""
        return req.banned if req.seq.num_output_tokens < req.params.min_tokens else frozenset()

    def _after_token(self, req: _Request, tok: int) -> None:
        p = req.params
        n_out = req.seq.num_output_tokens
        if tok in req.stops:  # (banned by _banned before min_tokens)
            req.finish_reason = "stop"
            req.stop_reason = tok if tok in p.stop_token_ids else None
            if req.decoder is not None:
                req.text += req.decoder.flush()
            return
        if req.decoder is None:
            return
        before = len(req.text)
        req.text += req.decoder.push(tok)
        if p.stop and n_out >= p.min_tokens:
            longest = max(len(s) for s in p.stop)
            start = max(0, before - longest + 1)
            hit: tuple[int, str] | None = None
            for s in p.stop:
                j = req.text.find(s, start)
                if j >= 0 and (hit is None or j < hit[0]):
                    hit = (j, s)
            if hit is not None:
                j, s = hit
                req.text = req.text[: j + len(s)] if p.include_stop_str_in_output else req.text[:j]
                req.finish_reason = "stop"
                req.stop_reason = s
                return
        if req.seq.is_finished:  # length: flush characters held back for an incomplete UTF-8 sequence
            req.text += req.decoder.flush()

    def _output(self, req: _Request, *, finished: bool) -> RequestOutput:
        ids = list(req.seq.output_ids)
        visible = len(req.text) if finished else max(len(req.text) - req.hold, req.sent_chars)
        out = RequestOutput(
            request_id=req.request_id, prompt_token_ids=list(req.seq.prompt_ids), token_ids=ids,
            text=req.text[:visible], delta_token_ids=ids[req.sent_tokens :],
            delta_text=req.text[req.sent_chars : visible],
            finished=finished, finish_reason=req.finish_reason if finished else None,
            stop_reason=req.stop_reason, metrics=req.metrics,
        )  # fmt: skip
        req.sent_tokens, req.sent_chars = len(ids), visible
        return out

    def _forget(self, req: _Request) -> None:
        self._requests.pop(req.request_id, None)
        self._by_seq.pop(req.seq.seq_id, None)


__all__ = ["KVPlan", "LLMEngine", "free_memory_bytes", "plan_kv_cache"]

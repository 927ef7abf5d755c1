"""`Scheduler`: continuous batching with chunked prefill and preemption by recompute (pure Python).

Each step (`schedule`) spends a token budget of `max_num_batched_tokens` over at most `max_num_seqs` running
sequences, in this order:

1. decode rows: running sequences with exactly one uncomputed token, one row each;
2. continuing prefills: running sequences part-way through a (chunked) prefill, as many tokens as the budget
   and the free pages allow;
3. admission: waiting sequences, in policy order, while a seat, budget and pages for the chunk are there.

Policy order ("key"): fcfs serves by (arrival_time, order of `add`); priority by (priority, arrival_time,
order of `add`), lower priority value first. Both queues are kept in key order.

Head of line: admission stops at the first waiting sequence that does not fit (pages, or a whole prompt
under `chunked_prefill=False`); later ones are never admitted past it. That keeps the policy's promise — a
small late request cannot overtake a large early one forever — at the cost of some idle capacity.

Pages are taken at schedule time (the block table is grown for the scheduled chunk). When a running
sequence needs a page and none is free, the running sequence served last under the policy (the largest key;
possibly the one asking) is preempted by recompute: its pages are freed, `num_computed` goes back to 0 and it
returns to the waiting queue in its key order (the front, for fcfs). Its recompute prefills prompt + outputs
and then samples the next token, so its outputs continue as if nothing happened. A step that preempted to
grow a running sequence admits nobody; a sequence preempted in a step is not readmitted in that step.

Under the priority policy a waiting head that does not fit (seat or pages) may displace running sequences
served after it (worst first, their rows this step dropped), but only when displacing all of them would make
it fit; the head never waits behind worse-priority work that holds the cache.

`add` rejects a sequence that could not run even alone in an empty cache, so the best-keyed unfinished
sequence always gets to run and every trace terminates.

Not thread-safe: one thread calls add / schedule / update / finish / abort (the engine's step loop).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from lowbit.runtime.block_manager import BlockManager
from lowbit.runtime.sequence import SeqStatus, Sequence

if TYPE_CHECKING:
    from lowbit.runtime.batch import SeqChunk

POLICIES = ("fcfs", "priority")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 8  # running sequences (seats)
    max_num_batched_tokens: int = 512  # tokens per step
    max_model_len: int = 512  # prompt + outputs of one sequence
    chunked_prefill: bool = True  # split a prefill longer than the step's remaining budget
    policy: Literal["fcfs", "priority"] = "fcfs"

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"SchedulerConfig.{name} {v!r}: must be a positive integer")
        if self.policy not in POLICIES:
            raise ValueError(f"SchedulerConfig.policy {self.policy!r}: use one of {list(POLICIES)}")


@dataclass(frozen=True)
class ScheduledChunk:
    """Tokens num_cached .. num_cached + num_new − 1 of `seq`, computed in this step."""

    seq: Sequence
    num_cached: int
    num_new: int
    samples: bool = field(init=False)  # the chunk reaches the newest token: the step emits one for `seq`

    def __post_init__(self) -> None:
        object.__setattr__(self, "samples", self.num_cached + self.num_new == self.seq.num_tokens)

    @property
    def is_decode(self) -> bool:
        return self.num_new == 1 and self.samples and self.num_cached > 0

    @property
    def token_ids(self) -> tuple[int, ...]:
        return tuple(self.seq.token_slice(self.num_cached, self.num_cached + self.num_new))

    def to_seq_chunk(self) -> SeqChunk:
        """The runner's view of this chunk (call it before `Scheduler.update`, which may free the pages)."""
        from lowbit.runtime.batch import SeqChunk

        return SeqChunk(self.seq.seq_id, self.token_ids, self.num_cached, tuple(self.seq.block_table))


@dataclass(frozen=True)
class SchedulerOutput:
    chunks: tuple[ScheduledChunk, ...]  # decode rows first, then prefill chunks
    preempted: tuple[Sequence, ...] = ()  # sent back to waiting in this step (their pages are free)
    num_batched_tokens: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.chunks

    @property
    def num_decodes(self) -> int:
        return sum(1 for c in self.chunks if c.is_decode)


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager) -> None:
        self.config = config
        self.blocks = blocks
        self.waiting: list[Sequence] = []  # key order
        self.running: list[Sequence] = []  # key order
        self.num_preemptions = 0
        self._seqs: dict[int, Sequence] = {}  # unfinished, by id
        self._order: dict[int, int] = {}  # seq_id -> position in add order (the tie break of equal arrivals)
        self._next = 0

    # ---- requests -------------------------------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence; ValueError (naming the value and the fix) if it could never run."""
        self._check(seq)
        self._seqs[seq.seq_id] = seq
        self._order[seq.seq_id] = self._next
        self._next += 1
        bisect.insort(self.waiting, seq, key=self._key)

    def _check(self, seq: Sequence) -> None:
        cfg, sid = self.config, seq.seq_id
        if sid in self._seqs:
            raise ValueError(f"sequence id {sid} is already scheduled; give every request its own id")
        if seq.status is not SeqStatus.WAITING or seq.num_computed or seq.block_table or seq.output_ids:
            raise ValueError(f"sequence {sid} is not new (status {seq.status.name}); add a fresh Sequence")
        p, m = seq.num_prompt_tokens, seq.max_tokens
        if p == 0:
            raise ValueError(f"sequence {sid} has an empty prompt; give at least one token")
        if m < 1:
            raise ValueError(f"sequence {sid}: max_tokens {m} must be at least 1")
        if p + m > cfg.max_model_len:
            raise ValueError(
                f"sequence {sid}: prompt of {p} tokens + max_tokens {m} = {p + m} > max_model_len "
                f"{cfg.max_model_len}; shorten the prompt, lower max_tokens or raise max_model_len"
            )
        # the last sampled token is never computed: at most p + m − 1 tokens are in the cache at once
        need = self.blocks.pages_for(p + m - 1)
        if need > self.blocks.num_usable:
            raise ValueError(
                f"sequence {sid} needs {need} KV pages ({p} prompt + {m} max_tokens at page_size "
                f"{self.blocks.page_size}) but the whole cache has {self.blocks.num_usable}; raise the KV cache "
                f"budget (kv_cache_bytes / num_pages) or lower max_model_len / max_tokens"
            )
        if not cfg.chunked_prefill and p > cfg.max_num_batched_tokens:
            raise ValueError(
                f"sequence {sid}: prompt of {p} tokens > max_num_batched_tokens {cfg.max_num_batched_tokens} "
                f"with chunked_prefill off; enable chunked_prefill or raise max_num_batched_tokens"
            )

    def finish(self, seq: Sequence, reason: str) -> None:
        """Stop `seq` ("stop" | "length" | "abort"): free its pages, take it off both queues.

        On a finished sequence this does nothing, except that "stop" overrides "length": a stop token that
        is also the max_tokens-th token finished the sequence in `update` already, and it reads "stop"."""
        if seq.is_finished:
            if reason == "stop" and seq.finish_reason == "length":
                seq.finish_reason = "stop"
            return
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.blocks.free(seq.block_table)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason
        del self._seqs[seq.seq_id]
        del self._order[seq.seq_id]

    def abort(self, seq_id: int) -> Sequence | None:
        seq = self._seqs.get(seq_id)
        if seq is not None:
            self.finish(seq, "abort")
        return seq

    def has_unfinished(self) -> bool:
        return bool(self._seqs)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    # ---- one step -------------------------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        step = _Step(self.config.max_num_batched_tokens)
        # decode rows, best key first (a victim always has a larger key, so it is not yet scheduled)
        for seq in [s for s in self.running if s.num_remaining == 1]:
            if step.budget == 0:
                break
            if seq.status is SeqStatus.RUNNING and self._make_room(seq, seq.num_computed + 1, step):
                step.add(seq, 1)
        # continuing prefills: as many tokens as the budget and the free pages allow
        for seq in [s for s in self.running if s.num_remaining > 1]:
            if step.budget == 0:
                break
            if seq.status is not SeqStatus.RUNNING:
                continue  # preempted above
            if self.blocks.max_fill(seq.block_table) <= seq.num_computed and not self._make_room(
                seq, seq.num_computed + 1, step
            ):
                continue
            n = min(seq.num_remaining, step.budget, self.blocks.max_fill(seq.block_table) - seq.num_computed)
            self.blocks.grow(seq.block_table, seq.num_computed + n)
            step.add(seq, n)
        # admission, head of line: stop at the first waiting sequence that does not fit
        while self.waiting and not step.preempted_to_grow:
            seq = self.waiting[0]
            n = min(seq.num_remaining, step.budget)
            if seq in step.preempted or n == 0 or (n < seq.num_remaining and not self._may_chunk(seq)):
                break
            if not self._fits(seq, n) and not (self.config.policy == "priority" and self._displace(seq, n, step)):
                break
            self.waiting.pop(0)
            self.blocks.grow(seq.block_table, n)
            seq.status = SeqStatus.RUNNING
            bisect.insort(self.running, seq, key=self._key)
            step.add(seq, n)
        return step.output()

    def update(self, out: SchedulerOutput, sampled: Mapping[int, int]) -> list[Sequence]:
        """Account a finished step: advance num_computed, append the sampled token of every chunk that samples,
        finish on length. Returns the sequences that got a new token (possibly finished now)."""
        grew: list[Sequence] = []
        for c in out.chunks:
            seq = c.seq
            if seq.status is not SeqStatus.RUNNING or seq.num_computed != c.num_cached:
                continue  # aborted or preempted since the step was scheduled: its result is void
            seq.num_computed += c.num_new
            if not c.samples:
                continue
            if seq.seq_id not in sampled:
                raise KeyError(f"no sampled token for sequence {seq.seq_id}, whose chunk samples in this step")
            seq.append_token(sampled[seq.seq_id])
            grew.append(seq)
            if seq.num_output_tokens >= seq.max_tokens:  # (add: prompt + max_tokens <= max_model_len)
                self.finish(seq, "length")
        return grew

    # ---- rules ----------------------------------------------------------------------------------------------

    def _key(self, seq: Sequence) -> tuple[float, ...]:
        order = self._order[seq.seq_id]
        if self.config.policy == "priority":
            return (seq.priority, seq.arrival_time, order)
        return (seq.arrival_time, order)

    def _may_chunk(self, seq: Sequence) -> bool:
        # without chunked prefill only a preempted sequence longer than a whole step is recomputed in chunks
        return self.config.chunked_prefill or seq.num_remaining > self.config.max_num_batched_tokens

    def _make_room(self, seq: Sequence, num_tokens: int, step: _Step) -> bool:
        """Preempt the worst running sequences until `seq` can hold `num_tokens`; False if `seq` went itself."""
        while not self.blocks.can_grow(seq.block_table, num_tokens):
            victim = self.running[-1]
            self._preempt(victim, step)
            step.preempted_to_grow = True
            if victim is seq:
                return False
        self.blocks.grow(seq.block_table, num_tokens)
        return True

    def _fits(self, seq: Sequence, n: int) -> bool:
        """A seat and the pages for a first chunk of `n` tokens of waiting `seq` are free."""
        return len(self.running) < self.config.max_num_seqs and self.blocks.can_grow(seq.block_table, n)

    def _displace(self, seq: Sequence, n: int, step: _Step) -> bool:
        """Priority policy: preempt running sequences served after waiting `seq` (worst first) until `seq`'s
        first chunk of `n` tokens fits — only when preempting them all would make it fit. False if not."""
        key = self._key(seq)
        worse = [r for r in self.running if self._key(r) > key]  # a suffix of running
        seats = len(self.running) - len(worse) < self.config.max_num_seqs
        pages = self.blocks.num_free + sum(len(r.block_table) for r in worse)
        if not worse or not seats or pages < self.blocks.pages_for(n) - len(seq.block_table):
            return False
        while not self._fits(seq, n):
            self._preempt(self.running[-1], step)
        return True

    def _preempt(self, seq: Sequence, step: _Step) -> None:
        self.running.remove(seq)
        step.drop(seq)
        self.blocks.free(seq.block_table)
        seq.num_computed = 0
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        bisect.insort(self.waiting, seq, key=self._key)
        step.preempted.append(seq)


class _Step:
    """What one `schedule` call has handed out so far."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.chunks: list[ScheduledChunk] = []
        self.preempted: list[Sequence] = []
        self.preempted_to_grow = False  # a running sequence needed a page: the cache is full, admit nobody

    def add(self, seq: Sequence, n: int) -> None:
        self.chunks.append(ScheduledChunk(seq, seq.num_computed, n))
        self.budget -= n

    def drop(self, seq: Sequence) -> None:
        for c in self.chunks:
            if c.seq is seq:
                self.chunks.remove(c)
                self.budget += c.num_new
                return

    def output(self) -> SchedulerOutput:
        decodes = [c for c in self.chunks if c.is_decode]
        rest = [c for c in self.chunks if not c.is_decode]
        return SchedulerOutput(tuple(decodes + rest), tuple(self.preempted), sum(c.num_new for c in self.chunks))


__all__ = ["POLICIES", "ScheduledChunk", "Scheduler", "SchedulerConfig", "SchedulerOutput"]

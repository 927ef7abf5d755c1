"""`Sequence`: one request's tokens and its place in the KV cache, as the scheduler sees it.

A sequence holds `num_tokens` = prompt + outputs so far; the first `num_computed` of them have their K/V in
the cache (in the pages of `block_table`). The step that computes the last uncomputed token also samples the
next one, so a running sequence in its decode phase has exactly one uncomputed token (the newest output).
Preemption by recompute sets `num_computed` back to 0 and keeps `output_ids`: the recompute prefills prompt
and outputs together and then samples the next token, so the outputs continue as if nothing happened.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field


class SeqStatus(enum.Enum):
    WAITING = "waiting"  # not in the cache (new, or preempted): no pages, num_computed == 0
    RUNNING = "running"  # has a seat and pages
    FINISHED = "finished"  # done ("stop" | "length" | "abort"); pages freed


@dataclass(eq=False)  # compared by identity: two requests with the same tokens are different sequences
class Sequence:
    seq_id: int
    prompt_ids: list[int]
    max_tokens: int
    priority: int = 0  # lower value = served first (policy "priority")
    arrival_time: float = field(default_factory=time.monotonic)
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache
    block_table: list[int] = field(default_factory=list)
    status: SeqStatus = SeqStatus.WAITING
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    num_preemptions: int = 0

    def __post_init__(self) -> None:
        self.prompt_ids = list(self.prompt_ids)
        self.output_ids = list(self.output_ids)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def token_slice(self, start: int, stop: int) -> list[int]:
        """all_ids[start:stop] for 0 <= start <= stop <= num_tokens, without building all_ids (a decode row
        reads one token of a long sequence)."""
        p = len(self.prompt_ids)
        if start >= p:
            return self.output_ids[start - p : stop - p]
        if stop <= p:
            return self.prompt_ids[start:stop]
        return self.prompt_ids[start:] + self.output_ids[: stop - p]

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_remaining(self) -> int:
        """Tokens still to compute before the next token can be sampled (1 in the decode phase)."""
        return self.num_tokens - self.num_computed

    @property
    def is_finished(self) -> bool:
        return self.status is SeqStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.output_ids.append(int(token_id))


__all__ = ["SeqStatus", "Sequence"]

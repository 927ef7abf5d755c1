"""`Workload`: the dense batch of one serving step that a plan is searched for — how many token rows, how
many of them decode (first, one row per running request, each attending to `decode_context` cached tokens)
and how the rest are chunked prefill (sequences of `prefill_chunk` rows after `prefill_context` cached ones).

The steady state of a request stream with input length I and output length O has decode : prefill rows =
O : I (every request contributes I prefill rows and O decode rows over its life), and a decode row's mean
context is I + O/2 (`Workload.from_lengths`). A plan searched for one mix is re-searched when the mix moves far
from it (`drift`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


class WorkloadError(ValueError):
    """A workload field out of range; the message names it and the fix."""


@dataclass(frozen=True)
class Workload:
    dense_batch: int  # token rows of one step
    decode_tokens: int  # the first rows: one decode token per running request
    decode_context: int  # mean tokens a decode row attends to (its cached context, itself included)
    prefill_chunk: int = 512  # rows per prefill sequence chunk (the last chunk may be shorter)
    prefill_context: int = 0  # tokens cached before each prefill chunk

    def __post_init__(self) -> None:
        if self.dense_batch < 1:
            raise WorkloadError(f"dense_batch {self.dense_batch} must be >= 1 token row")
        if not 0 <= self.decode_tokens <= self.dense_batch:
            raise WorkloadError(f"decode_tokens {self.decode_tokens} must be in 0..dense_batch {self.dense_batch}")
        if self.decode_tokens and self.decode_context < 1:
            raise WorkloadError(f"decode_context {self.decode_context} must be >= 1 when there are decode rows")
        if self.prefill_chunk < 1 or self.prefill_context < 0:
            raise WorkloadError(
                f"prefill_chunk {self.prefill_chunk} must be >= 1 and prefill_context {self.prefill_context} >= 0"
            )

    @property
    def prefill_tokens(self) -> int:
        return self.dense_batch - self.decode_tokens

    @property
    def num_prefill_seqs(self) -> int:
        return math.ceil(self.prefill_tokens / self.prefill_chunk)

    @property
    def num_seqs(self) -> int:
        """Sequences in the step: the rows that sample a token (lm_head runs on these)."""
        return self.decode_tokens + self.num_prefill_seqs

    @property
    def decode_fraction(self) -> float:
        return self.decode_tokens / self.dense_batch

    def seq_bounds(self) -> list[int]:
        """Row offsets where sequences start, 0 and dense_batch included: every decode row, then the chunks."""
        bounds = list(range(self.decode_tokens))
        bounds += list(range(self.decode_tokens, self.dense_batch, self.prefill_chunk))
        return [*bounds, self.dense_batch]

    def prefill_mean_context(self) -> float:
        """Mean tokens a prefill row attends to: the cached prefix plus its causal position in the chunk."""
        if not self.prefill_tokens:
            return 0.0
        total, rows = 0.0, 0
        for a in range(self.decode_tokens, self.dense_batch, self.prefill_chunk):
            n = min(self.prefill_chunk, self.dense_batch - a)
            total += n * self.prefill_context + n * (n + 1) / 2
            rows += n
        return total / rows

    def drift(self, other: Workload) -> float:
        """How far `other` is from this mix: the largest relative change of decode fraction, decode context and
        dense batch (0: the same). A plan is re-searched when the drift passes its threshold (0.25 default)."""

        def rel(a: float, b: float) -> float:
            return abs(a - b) / max(abs(a), abs(b), 1e-9)

        return max(
            abs(self.decode_fraction - other.decode_fraction),
            rel(self.decode_context, other.decode_context) if self.decode_tokens and other.decode_tokens else 0.0,
            rel(self.dense_batch, other.dense_batch),
        )

    def describe(self) -> str:
        return (
            f"dense batch {self.dense_batch}: {self.decode_tokens} decode rows (context {self.decode_context}), "
            f"{self.prefill_tokens} prefill rows (chunks of {self.prefill_chunk} after {self.prefill_context})"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Workload:
        known = set(Workload.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise WorkloadError(f"workload has unknown key(s) {unknown}; the known keys are {sorted(known)}")
        return Workload(**d)

    @staticmethod
    def from_lengths(dense_batch: int, input_len: int, output_len: int) -> Workload:
        """The steady-state step of a stream of requests with `input_len` prompt and `output_len` output tokens."""
        if input_len < 1 or output_len < 1:
            raise WorkloadError(f"input_len {input_len} and output_len {output_len} must be >= 1")
        decode = round(dense_batch * output_len / (input_len + output_len))
        return Workload(dense_batch, decode, input_len + output_len // 2, min(input_len, max(1, dense_batch - decode)))


GPU_WORKLOAD = Workload(2048, 1408, 1024, 640, 0)  # NanoFlow's Llama-2-70B split: 1408 decode + 640 prefill rows
CPU_WORKLOAD = Workload(64, 32, 128, 32, 0)  # the default step on a CPU device (lowbit plan, tune, compile)

__all__ = ["CPU_WORKLOAD", "GPU_WORKLOAD", "Workload", "WorkloadError"]

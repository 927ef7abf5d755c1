"""What the engine hands back: per-request outputs (with streaming deltas and timing) and engine-wide stats.

Times are `time.monotonic()` seconds. A server turns them into TTFT (first_token_time - arrival_time), inter-token
latencies and end-to-end latency; the Prometheus metrics and the benchmarks use the same definitions (vLLM's).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def queue_time(self) -> float | None:
        return None if self.first_scheduled_time is None else self.first_scheduled_time - self.arrival_time

    @property
    def e2e(self) -> float | None:
        return None if self.finished_time is None else self.finished_time - self.arrival_time


@dataclass
class RequestOutput:
    """One request's state after a step. `token_ids` / `text` hold everything generated so far; `delta_*` what
    this step added (what a stream sends). The last output of a request has `finished=True`."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
    delta_text: str = ""
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(0.0))

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class EngineStats:
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0  # fraction of usable KV pages in use
    num_preemptions: int = 0  # total since start
    prompt_tokens: int = 0  # total prefilled (recomputation after preemption not counted)
    generation_tokens: int = 0  # total sampled
    num_pages: int = 0
    page_size: int = 16
    kv_capacity_tokens: int = 0
    max_model_len: int = 0
    max_num_seqs: int = 0
    steps: int = 0


class QueueFull(RuntimeError):
    """The engine's waiting queue is at its limit: the server answers 429 / 503 with Retry-After."""


class EngineDead(RuntimeError):
    """The engine's step loop stopped (shut down or failed); no request can be served."""


__all__ = ["EngineDead", "EngineStats", "QueueFull", "RequestMetrics", "RequestOutput"]

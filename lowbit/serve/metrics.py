"""Prometheus metrics with vLLM's names under `lowbit:` (label `model_name`), in a per-app registry.

Engine state (read from `engine.stats()` at scrape time): lowbit:num_requests_running, lowbit:num_requests_waiting,
lowbit:kv_cache_usage_perc (0..1, as vLLM), lowbit:num_preemptions_total, lowbit:prompt_tokens_total,
lowbit:generation_tokens_total.
Per request (observed by the server when a request ends): lowbit:request_success_total{finished_reason},
lowbit:time_to_first_token_seconds, lowbit:inter_token_latency_seconds, lowbit:e2e_request_latency_seconds,
lowbit:request_queue_time_seconds, lowbit:request_prompt_tokens, lowbit:request_generation_tokens.
TTFT, queue and end-to-end times come from the engine's RequestMetrics (vLLM's definitions); inter-token latency
is measured where the server receives the tokens (a delta of k tokens after a gap t counts k gaps of t/k).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lowbit.runtime.outputs import RequestOutput

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                   120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


class _EngineCollector(Collector):
    """Gauges and totals the engine keeps, read at scrape time."""

    def __init__(self, engine: Any, model_name: str) -> None:
        self.engine, self.model_name = engine, model_name

    def collect(self) -> Iterator[Metric]:
        try:
            s = self.engine.stats()
        except Exception:  # a dead engine still lets /metrics answer (with the server-side metrics)
            return
        G, C = GaugeMetricFamily, CounterMetricFamily
        families = [
            (G, "lowbit:num_requests_running", "Requests being computed (holding a seat in the batch).", s.num_running),
            (G, "lowbit:num_requests_waiting", "Requests waiting for a seat.", s.num_waiting),
            (G, "lowbit:kv_cache_usage_perc", "Fraction of KV cache pages in use (1 = full).", s.kv_usage),
            (C, "lowbit:num_preemptions", "Preemptions (recompute) since start.", s.num_preemptions),
            (C, "lowbit:prompt_tokens", "Prompt tokens prefilled since start.", s.prompt_tokens),
            (C, "lowbit:generation_tokens", "Tokens generated since start.", s.generation_tokens),
        ]
        for family, name, doc, value in families:
            m = family(name, doc, labels=["model_name"])
            m.add_metric([self.model_name], float(value))
            yield m


class ServerMetrics:
    def __init__(self, engine: Any, model_name: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.model_name = model_name
        self.registry.register(_EngineCollector(engine, model_name))
        r, labels = self.registry, ["model_name"]
        self.success = Counter("lowbit:request_success", "Finished requests by finish reason.",
                               [*labels, "finished_reason"], registry=r)  # fmt: skip
        self.ttft = Histogram("lowbit:time_to_first_token_seconds", "Time to first token (arrival to first token).",
                              labels, buckets=TTFT_BUCKETS, registry=r)  # fmt: skip
        self.itl = Histogram("lowbit:inter_token_latency_seconds", "Time between consecutive output tokens.",
                             labels, buckets=ITL_BUCKETS, registry=r)  # fmt: skip
        self.e2e = Histogram("lowbit:e2e_request_latency_seconds", "Arrival to last token.",
                             labels, buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.queue = Histogram("lowbit:request_queue_time_seconds", "Arrival to first scheduled.",
                               labels, buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.prompt_len = Histogram("lowbit:request_prompt_tokens", "Prompt length of finished requests.",
                                    labels, buckets=TOKEN_BUCKETS, registry=r)  # fmt: skip
        self.output_len = Histogram("lowbit:request_generation_tokens", "Output length of finished requests.",
                                    labels, buckets=TOKEN_BUCKETS, registry=r)  # fmt: skip

    def aborted(self, count: int) -> None:
        """Requests the server aborted (client gone, shutdown): their last output never reaches a tracker."""
        if count:
            self.success.labels(self.model_name, "abort").inc(count)

    def tracker(self) -> RequestTracker:
        return RequestTracker(self)


class RequestTracker:
    """Follows one engine request's outputs; records its histograms once it finishes."""

    def __init__(self, m: ServerMetrics) -> None:
        self.m = m
        self.last_token_at: float | None = None

    def on_output(self, out: RequestOutput) -> None:
        k = len(out.delta_token_ids)
        if k:
            now = time.monotonic()
            if self.last_token_at is not None:
                gap = (now - self.last_token_at) / k
                for _ in range(k):
                    self.m.itl.labels(self.m.model_name).observe(gap)
            self.last_token_at = now
        if out.finished:
            self._finish(out)

    def _finish(self, out: RequestOutput) -> None:
        name = self.m.model_name
        self.m.success.labels(name, out.finish_reason or "unknown").inc()
        met = out.metrics
        for hist, value in ((self.m.ttft, met.ttft), (self.m.e2e, met.e2e), (self.m.queue, met.queue_time)):
            if value is not None and value >= 0:
                hist.labels(name).observe(value)
        self.m.prompt_len.labels(name).observe(out.num_prompt_tokens)
        self.m.output_len.labels(name).observe(out.num_output_tokens)


__all__ = ["RequestTracker", "ServerMetrics"]

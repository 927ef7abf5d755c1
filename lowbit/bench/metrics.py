"""Serving metrics exactly as vLLM's `benchmarks/benchmark_serving.py` defines them, from per-request timings.

Per request (client side, `time.perf_counter()` seconds from sending the request):
    ttft     first streamed chunk that carries text            TTFT
    itl      every gap between consecutive text chunks         ITL (one entry per gap, all requests pooled)
    latency  last text chunk - send                            E2EL
    tpot     (latency - ttft) / (output_tokens - 1)            TPOT, only for requests with > 1 output token
Run-wide, over the `duration` of the whole run (first send to last completion):
    request_throughput = completed / duration; output_throughput = output tokens / duration;
    total_token_throughput = (input + output tokens of completed requests) / duration.
Each latency metric gets mean, median, std and the selected percentiles (numpy's linear interpolation), in ms,
under vLLM's key names (`mean_ttft_ms`, `median_tpot_ms`, `p99_itl_ms`, `std_e2el_ms`, ...). An empty list
counts as [0] (vLLM's `np.mean(ttfts or 0)`), so a run where everything failed still has every key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)


@dataclass(frozen=True)
class RequestResult:
    """What the client saw of one request (times in seconds, relative to its own send time)."""

    prompt_len: int
    output_len: int = 0  # tokens generated (server usage, else counted by the client)
    success: bool = False
    ttft: float = 0.0
    itl: tuple[float, ...] = ()
    latency: float = 0.0
    error: str = ""
    start_time: float = 0.0  # perf_counter() at send (for the timeline; not used by the metrics)
    generated_text: str = ""
    prompt_len_source: str = "client"  # "server" when the server's usage reported it


@dataclass(frozen=True)
class Summary:
    mean: float
    median: float
    std: float
    percentiles: tuple[tuple[float, float], ...] = field(default_factory=tuple)  # (p, value)


def summarize(values_s: Sequence[float], percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> Summary:
    """Mean / median / std / percentiles of `values_s` (seconds) in milliseconds; [] counts as [0]."""
    a = np.asarray(list(values_s) or [0.0], dtype=np.float64) * 1000.0
    return Summary(
        float(np.mean(a)),
        float(np.median(a)),
        float(np.std(a)),
        tuple((float(p), float(np.percentile(a, p))) for p in percentiles),
    )


def percentile_key(p: float) -> str:
    """vLLM's spelling: 99 -> "p99", 99.9 -> "p99.9"."""
    return f"p{int(p)}" if int(p) == p else f"p{p}"


def tpot(r: RequestResult) -> float | None:
    """(E2E latency - TTFT) / (output tokens - 1), or None with fewer than two output tokens."""
    if not r.success or r.output_len <= 1:
        return None
    return (r.latency - r.ttft) / (r.output_len - 1)


def serving_metrics(
    results: Sequence[RequestResult], duration: float, percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> dict[str, Any]:
    """vLLM's result dict for one run: counts, throughputs and every latency metric's summary (see module doc)."""
    if not duration > 0:
        raise ValueError(f"duration {duration!r} s must be positive; time the run with perf_counter()")
    ok = [r for r in results if r.success]
    total_input = sum(r.prompt_len for r in ok)
    total_output = sum(r.output_len for r in ok)
    series = {
        "ttft": [r.ttft for r in ok],
        "tpot": [t for t in map(tpot, ok) if t is not None],
        "itl": [g for r in ok for g in r.itl],
        "e2el": [r.latency for r in ok],
    }
    out: dict[str, Any] = {
        "duration": duration,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(ok) / duration,
        "output_throughput": total_output / duration,
        "total_token_throughput": (total_input + total_output) / duration,
    }
    for name in LATENCY_METRICS:
        s = summarize(series[name], percentiles)
        out[f"mean_{name}_ms"] = s.mean
        out[f"median_{name}_ms"] = s.median
        out[f"std_{name}_ms"] = s.std
        for p, v in s.percentiles:
            out[f"{percentile_key(p)}_{name}_ms"] = v
    return out


def per_request_lists(results: Sequence[RequestResult]) -> dict[str, list[Any]]:
    """vLLM's detailed per-request lists (`--save-detailed`): output_lens is 0 for a failed request."""
    return {
        "input_lens": [r.prompt_len for r in results],
        "output_lens": [r.output_len if r.success else 0 for r in results],
        "ttfts": [r.ttft for r in results],
        "itls": [list(r.itl) for r in results],
        "generated_texts": [r.generated_text for r in results],
        "errors": [r.error for r in results],
    }


def error_samples(results: Sequence[RequestResult], limit: int = 5) -> list[str]:
    """Up to `limit` distinct error messages of failed requests, in order of first appearance."""
    seen: list[str] = []
    for r in results:
        if not r.success and r.error not in seen:
            seen.append(r.error)
            if len(seen) == limit:
                break
    return seen


__all__ = [
    "DEFAULT_PERCENTILES",
    "LATENCY_METRICS",
    "RequestResult",
    "Summary",
    "error_samples",
    "per_request_lists",
    "percentile_key",
    "serving_metrics",
    "summarize",
    "tpot",
]

"""The load generator's client: streamed `/v1/completions` requests sent on an arrival schedule, timed the way
vLLM's `async_request_openai_completions` times them.

    results, duration = asyncio.run(run_load("http://127.0.0.1:8000", "tiny-llama", requests, offsets))

Per request: `st = perf_counter()` just before the POST; every SSE `data:` chunk with a non-empty `choices`
list is a text chunk (its text may be empty); the first sets TTFT = t − st, each later one appends an ITL gap
t − previous; E2E latency = last text chunk − st. The final `usage` chunk (`stream_options.include_usage`) gives
the output token count (else the tokenizer re-counts the text, else the text chunks are counted) and the
server's prompt token count. A request fails on a non-200 status, an `error` event, a transport error or a
stream without any text chunk; the error text is kept.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from lowbit.bench.datasets import SampleRequest
from lowbit.bench.metrics import RequestResult

ERROR_CHARS = 400  # of an error body kept per failed request


@dataclass(frozen=True)
class RequestOptions:
    """What every request of a run asks for besides its prompt and max_tokens."""

    model: str
    ignore_eos: bool = True
    temperature: float = 0.0
    extra_body: tuple[tuple[str, Any], ...] = ()  # more JSON fields, e.g. (("top_k", 1),)

    def payload(self, req: SampleRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": req.payload_prompt,
            "max_tokens": req.output_len,
            "temperature": self.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        body.update(dict(self.extra_body))
        return body


def _error_text(obj: Any) -> str:
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err if err is not None else obj)


async def send_completion(
    client: httpx.AsyncClient, req: SampleRequest, opts: RequestOptions, *, count_tokens: Callable[[str], int] | None
) -> RequestResult:
    """One streamed completion (see module doc). Never raises for a server or transport failure."""
    st = time.perf_counter()
    ttft, last, itl, text, chunks = 0.0, st, [], [], 0
    usage_out: int | None = None
    usage_in: int | None = None
    error = ""
    try:
        async with client.stream("POST", "/v1/completions", json=opts.payload(req)) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")
                try:
                    msg = _error_text(json.loads(body))
                except ValueError:
                    msg = body
                error = f"HTTP {resp.status_code}: {msg[:ERROR_CHARS]}"
            else:
                async for line in resp.aiter_lines():
                    line = line.strip()
                    if not line.startswith("data:"):
                        continue  # blank separators, SSE comments (": ping"), event:/id: fields
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        continue
                    obj = json.loads(data)
                    if "error" in obj:
                        error = f"stream error: {_error_text(obj)[:ERROR_CHARS]}"
                        break
                    if choices := obj.get("choices"):
                        t = time.perf_counter()
                        if chunks == 0:
                            ttft = t - st
                        else:
                            itl.append(t - last)
                        last = t
                        chunks += 1
                        text.append(choices[0].get("text") or "")
                    if usage := obj.get("usage"):
                        usage_out = usage.get("completion_tokens", usage_out)
                        usage_in = usage.get("prompt_tokens", usage_in)
    except (httpx.HTTPError, OSError, ValueError) as e:
        error = f"{type(e).__name__}: {e}"[:ERROR_CHARS]
    generated = "".join(text)
    if not error and chunks == 0:
        error = "never received a text chunk to time TTFT from; the request counts as failed"
    if usage_out is not None:
        output_len = int(usage_out)
    elif count_tokens is not None:
        output_len = count_tokens(generated)
    else:
        output_len = chunks
    return RequestResult(
        prompt_len=int(usage_in) if usage_in is not None else req.prompt_len,
        output_len=output_len,
        success=not error,
        ttft=ttft,
        itl=tuple(itl),
        latency=last - st,
        error=error,
        start_time=st,
        generated_text=generated,
        prompt_len_source="server" if usage_in is not None else "client",
    )


async def run_load(
    base_url: str,
    requests: Sequence[SampleRequest],
    offsets: Sequence[float],
    opts: RequestOptions,
    *,
    max_concurrency: int | None = None,
    timeout_s: float = 3600.0,
    count_tokens: Callable[[str], int] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[list[RequestResult], float]:
    """Send `requests[i]` at `start + offsets[i]` (at most `max_concurrency` in flight); (results in request
    order, duration from the start to the last completion in seconds)."""
    if len(offsets) != len(requests):
        raise ValueError(f"{len(offsets)} arrival offsets for {len(requests)} requests; give one each")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"--max-concurrency {max_concurrency} must be >= 1 (or omitted: no limit)")
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=max_concurrency or len(requests))
    async with httpx.AsyncClient(
        base_url=base_url, timeout=httpx.Timeout(timeout_s), limits=limits, transport=transport, trust_env=False
    ) as client:
        start = time.perf_counter()

        async def one(req: SampleRequest, offset: float) -> RequestResult:
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if gate is None:
                return await send_completion(client, req, opts, count_tokens=count_tokens)
            async with gate:
                return await send_completion(client, req, opts, count_tokens=count_tokens)

        results = await asyncio.gather(*(one(r, o) for r, o in zip(requests, offsets)))
        duration = time.perf_counter() - start
    return list(results), duration


async def served_model(base_url: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """The first entry of GET /v1/models (`id`, and `max_model_len` where the server reports it)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, trust_env=False) as client:
        r = await client.get("/v1/models")
        r.raise_for_status()
        data = r.json().get("data") or []
        if not data:
            raise RuntimeError(f"{base_url}/v1/models lists no model; pass --model")
        return dict(data[0])


__all__ = ["RequestOptions", "run_load", "send_completion", "served_model"]

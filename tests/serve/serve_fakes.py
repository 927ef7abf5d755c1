"""A fake of AsyncLLMEngine's surface for server tests (no model): deterministic tokens, page accounting,
a queue limit, seats, a per-token delay, failure injection; and a real uvicorn server on loopback in a thread."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import uvicorn

from lowbit.bench.server_process import free_port
from lowbit.models.synthetic import synthetic_tokenizer
from lowbit.models.tokenizer import TextTokenizer
from lowbit.runtime.outputs import EngineDead, EngineStats, QueueFull, RequestMetrics, RequestOutput
from lowbit.runtime.sampler import SamplingParams

VOCAB = 512
_TOKENIZER = synthetic_tokenizer(VOCAB)


FAKE_TEXT = " the quick brown fox jumps over the lazy dog."
FAKE_IDS = _TOKENIZER.encode(FAKE_TEXT, add_special_tokens=False).ids  # the fake model says this, over and over


def fake_completion(n: int) -> str:
    """The text of the fake model's first n tokens."""
    return str(_TOKENIZER.decode([FAKE_IDS[k % len(FAKE_IDS)] for k in range(n)]))


class FakeEngine:
    def __init__(self, *, max_model_len: int = 128, max_num_seqs: int = 4, max_waiting: int = 8, page_size: int = 4,
                 num_pages: int = 256, step_s: float = 0.002, model_name: str = "fake-model") -> None:  # fmt: skip
        self.tokenizer = TextTokenizer(_TOKENIZER, 1, (2,))
        self.model_name, self.max_model_len, self.vocab_size = model_name, max_model_len, VOCAB
        self.max_num_seqs, self.max_waiting = max_num_seqs, max_waiting
        self.page_size, self.num_pages = page_size, num_pages
        self.step_s = step_s
        self.pages: dict[str, int] = {}  # running request -> pages held
        self.waiting = 0
        self.aborted: set[str] = set()
        self.finished: dict[str, str] = {}  # request id -> finish reason
        self.seen: list[tuple[str, list[int], SamplingParams, int]] = []  # (id, prompt ids, params, priority)
        self.fail: str | None = None  # "start" | "mid": raise RuntimeError there
        self.dead = False
        self.started = self.shut_down = False
        self.prompt_tokens = self.generation_tokens = self.preemptions = 0

    # -- AsyncLLMEngine surface --------------------------------------------------------------------------------
    def start(self) -> FakeEngine:
        self.started = True
        return self

    def stats(self) -> EngineStats:
        used = sum(self.pages.values())
        return EngineStats(
            num_running=len(self.pages), num_waiting=self.waiting, kv_usage=used / self.num_pages,
            num_preemptions=self.preemptions, prompt_tokens=self.prompt_tokens,
            generation_tokens=self.generation_tokens, num_pages=self.num_pages, page_size=self.page_size,
            kv_capacity_tokens=self.num_pages * self.page_size, max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
        )  # fmt: skip

    async def abort(self, request_id: str) -> None:
        if request_id in self.pages or request_id not in self.finished:
            self.aborted.add(request_id)

    async def shutdown(self, timeout: float = 30.0) -> None:
        self.dead = self.shut_down = True

    async def generate(
        self, prompt: str | Sequence[int], params: SamplingParams | None = None, request_id: str | None = None,
        *, priority: int = 0,
    ) -> AsyncIterator[RequestOutput]:  # fmt: skip
        params = params or SamplingParams()
        rid = request_id or f"fake-{len(self.seen)}"
        if self.dead:
            raise EngineDead("the fake engine is shut down")
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if any(not 0 <= t < VOCAB for t in ids):
            raise ValueError(f"prompt token id out of the vocabulary [0, {VOCAB})")
        if len(ids) + params.max_tokens > self.max_model_len:
            raise ValueError(f"prompt + max_tokens > max_model_len {self.max_model_len}")
        if self.fail == "start":
            raise RuntimeError("injected failure at start (secret internals)")
        if self.waiting >= self.max_waiting:
            raise QueueFull("fake queue full")
        self.seen.append((rid, ids, params, priority))
        metrics = RequestMetrics(time.monotonic())
        out = RequestOutput(rid, ids, metrics=metrics)
        decoder = self.tokenizer.incremental_decoder(params.skip_special_tokens)
        self.waiting += 1
        finished = False
        try:
            while len(self.pages) >= self.max_num_seqs:
                await asyncio.sleep(self.step_s)
            self.waiting -= 1
            self.pages[rid] = math.ceil(len(ids) / self.page_size)
            metrics.first_scheduled_time = time.monotonic()
            self.prompt_tokens += len(ids)
            while not finished:
                await asyncio.sleep(self.step_s)
                if rid in self.aborted:  # the real engine answers an abort with a last "abort" output
                    finished = True
                    yield RequestOutput(rid, ids, list(out.token_ids), out.text, [], "", True, "abort", None, metrics)
                    return
                tok = FAKE_IDS[len(out.token_ids) % len(FAKE_IDS)]
                self.generation_tokens += 1
                out.token_ids.append(tok)
                self.pages[rid] = math.ceil((len(ids) + len(out.token_ids)) / self.page_size)
                delta = decoder.push(tok)
                text = out.text + delta
                reason, stop = None, None
                hit = next((s for s in params.stop if s in text), None)
                if len(out.token_ids) < params.min_tokens:
                    hit = None
                if hit is not None:
                    cut = text.index(hit) + (len(hit) if params.include_stop_str_in_output else 0)
                    delta, text, reason, stop = delta[: max(0, len(delta) - (len(text) - cut))], text[:cut], "stop", hit
                elif len(out.token_ids) >= params.max_tokens:
                    delta += decoder.flush()
                    text, reason = out.text + delta, "length"
                now = time.monotonic()
                metrics.first_token_time = metrics.first_token_time or now
                metrics.last_token_time = now
                finished = reason is not None
                if finished:
                    metrics.finished_time = now
                    self.finished[rid] = reason or ""
                out = RequestOutput(rid, ids, list(out.token_ids), text, [tok], delta, finished, reason, stop, metrics)
                if self.fail == "mid" and len(out.token_ids) == 2:
                    raise RuntimeError("injected failure mid-stream (secret internals)")
                yield out
        finally:
            if rid not in self.pages:
                self.waiting -= 1
            self.pages.pop(rid, None)
            if not finished:
                self.aborted.add(rid)

    @property
    def pages_in_use(self) -> int:
        return sum(self.pages.values())


class ServerThread:
    """A real uvicorn on 127.0.0.1 (a free port) in a thread: `with ServerThread(app) as srv: srv.url ...`."""

    def __init__(self, app: Any, timeout_graceful_shutdown: int = 5) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=timeout_graceful_shutdown)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self, wait: bool = True) -> None:
        """What SIGTERM does: uvicorn stops accepting, drains, then runs the app's shutdown."""
        self.server.should_exit = True
        if wait:
            self.thread.join(60)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(cond: Any, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())

"""`AsyncLLMEngine`: the engine driven by one background thread, for asyncio callers (the HTTP server).

Requests and aborts are commands queued to the engine thread (the engine itself is never touched from two
threads); outputs come back to each request's asyncio queue with `call_soon_threadsafe`. The thread sleeps when
there is no work. A step that raises (a kernel failure) fails the requests in flight with the error, frees their pages,
and the engine goes on serving new ones: the server survives.

Backpressure: `generate` raises `QueueFull` when `max_waiting` requests are already queued (the server answers
429 with Retry-After). Leaving the async iterator early (client disconnect → CancelledError, or `aclose`) aborts
the request, which frees its KV pages at the next step. `shutdown(timeout)` stops admission, lets the in-flight
requests finish until the timeout, then aborts the rest and stops the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from lowbit.runtime.engine import LLMEngine
from lowbit.runtime.outputs import EngineDead, EngineStats, QueueFull, RequestOutput
from lowbit.runtime.sampler import SamplingParams

log = logging.getLogger("lowbit.engine")


@dataclass
class _Sink:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]

    def put(self, item: RequestOutput | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # the client's event loop is closed: nobody listens any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine, *, max_waiting: int = 1024, idle_wait_s: float = 0.05) -> None:
        if max_waiting < 1:
            raise ValueError(f"max_waiting = {max_waiting}: must be >= 1")
        self.engine = engine
        self.max_waiting = max_waiting
        self.idle_wait_s = idle_wait_s
        self._cmds: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._sinks: dict[str, _Sink] = {}
        self._pending = 0  # adds queued but not yet applied by the engine thread
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._ids = itertools.count()
        self._stats = engine.stats()
        self.errors = 0

    # -- the surface the server uses --------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def vocab_size(self) -> int:
        return self.engine.vocab_size

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def stats(self) -> EngineStats:
        """The latest snapshot (refreshed by the engine thread after every step)."""
        return self._stats

    def start(self) -> AsyncLLMEngine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lowbit-engine", daemon=True)
            self._thread.start()
        return self

    async def generate(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        priority: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs (deltas; the last has finished=True). Raises ValueError for a request that
        can never run, QueueFull under backpressure, EngineDead after shutdown."""
        params = params or SamplingParams()
        if self._closing or not self.is_running:
            raise EngineDead("the engine is shutting down or stopped; no new requests are accepted")
        ids = self.engine.encode_prompt(prompt)  # tokenizers are thread-safe; the checks raise ValueError
        self.engine.check_request(ids, params)
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        with self._lock:
            if self._stats.num_waiting + self._pending >= self.max_waiting:
                raise QueueFull(f"{self.max_waiting} requests are already waiting; retry later")
            if rid in self._sinks:
                raise ValueError(f"request id {rid!r} is already in use; give each request a unique id")
            sink = _Sink(asyncio.get_running_loop(), asyncio.Queue())
            self._sinks[rid] = sink
            self._pending += 1
        self._cmds.put(("add", rid, ids, params, priority, time.monotonic()))
        self._wake.set()
        finished = False
        try:
            while True:
                item = await sink.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self._abort(rid)

    async def abort(self, request_id: str) -> None:
        self._abort(request_id)

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Stop admitting; wait up to `timeout` s for in-flight requests, abort the rest, stop the thread."""
        self._closing = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self._sinks or self._pending):
            await asyncio.sleep(0.02)
        for rid in list(self._sinks):
            self._abort(rid)
        await asyncio.sleep(0)
        end = time.monotonic() + 5.0
        while self._sinks and time.monotonic() < end:
            await asyncio.sleep(0.01)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10.0)

    # -- the engine thread --------------------------------------------------------------------------------
    def _abort(self, rid: str) -> None:
        self._cmds.put(("abort", rid))
        self._wake.set()

    def _deliver(self, out: RequestOutput) -> None:
        sink = self._sinks.get(out.request_id)
        if sink is None:
            return
        if out.finished:
            with self._lock:
                self._sinks.pop(out.request_id, None)
        sink.put(out)

    def _fail(self, rid: str, err: BaseException) -> None:
        with self._lock:
            sink = self._sinks.pop(rid, None)
        if sink is not None:
            sink.put(err)

    def _apply_commands(self) -> int:
        """Apply queued adds / aborts; returns the number of adds taken off the queue (the caller lowers
        `_pending` by it only after refreshing the stats, so waiting + pending never undercounts)."""
        eng = self.engine
        adds = 0
        while True:
            try:
                cmd = self._cmds.get_nowait()
            except queue.Empty:
                return adds
            if cmd[0] == "add":
                _, rid, ids, params, priority, arrival = cmd
                adds += 1
                with self._lock:
                    alive = rid in self._sinks
                if not alive:  # failed with the others (a step error, the stop) before it was applied
                    continue
                try:
                    eng.add_request(rid, ids, params, priority=priority, arrival_time=arrival)
                except Exception as e:  # a request the scheduler refuses: the caller gets the error
                    self._fail(rid, e)
            elif cmd[0] == "abort":  # an add queued before it is applied by now; a failed add was answered
                eng.abort_request(cmd[1])  # False: finished, failed, or aborted already (its output is on the way)

    def _run(self) -> None:
        eng = self.engine
        while not self._stop.is_set():
            adds = self._apply_commands()
            self._stats = eng.stats()
            if adds:
                with self._lock:
                    self._pending -= adds
            if not eng.has_unfinished_requests():
                self._wake.wait(self.idle_wait_s)
                self._wake.clear()
                continue
            try:
                outs = eng.step()
            except Exception as e:  # keep serving: fail what was in flight, free its pages
                self.errors += 1
                log.exception("engine step failed; aborting the requests in flight")
                self._fail_all(e)
                continue
            self._stats = eng.stats()
            for out in outs:
                self._deliver(out)
        self._fail_all(EngineDead("the engine stopped"))
        self.engine.close()  # a tensor-parallel engine's other ranks stop with the engine thread

    def _fail_all(self, err: BaseException) -> None:
        self.engine.abort_all()
        with self._lock:
            sinks, self._sinks = self._sinks, {}
        for sink in sinks.values():
            sink.put(err)
        self._stats = self.engine.stats()


__all__ = ["AsyncLLMEngine", "EngineDead", "QueueFull"]

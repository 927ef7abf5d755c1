"""One API request as a set of engine requests (prompts × n) whose outputs arrive through one queue.

`Generation.start()` submits them (one task each, iterating `engine.generate`); `next()` hands back
`(choice_index, RequestOutput)` in arrival order and `None` once every engine request ended; an engine error
(QueueFull, EngineDead, a refused prompt) surfaces from `next()` as an `APIError`. `close()` aborts whatever has
not finished — call it in a `finally`, so a client that disconnects (or a server that cancels the handler on
shutdown) frees its KV pages.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from lowbit.runtime.outputs import EngineDead, QueueFull, RequestOutput
from lowbit.runtime.sampler import SamplingParams
from lowbit.serve.errors import APIError, bad_request, internal_error, overloaded, unavailable
from lowbit.serve.metrics import ServerMetrics

log = logging.getLogger("lowbit.serve")


@dataclass(frozen=True)
class SubRequest:
    index: int  # the choice index: prompt_index * n + sample_index
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    priority: int = 0


def engine_error(e: BaseException, retry_after: int = 1) -> APIError:
    """What an exception from the engine means for the client."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, QueueFull):
        return overloaded(retry_after)
    if isinstance(e, EngineDead):
        return unavailable("The engine is not running (shut down or failed).", retry_after)
    if isinstance(e, ValueError):  # the engine refused the request (it can never fit, ...)
        return bad_request(str(e))
    log.error("engine request failed", exc_info=e)
    return internal_error()


_DONE = object()


class Generation:
    def __init__(self, engine: Any, subs: list[SubRequest], metrics: ServerMetrics, retry_after: int = 1,
                 open_set: set[Generation] | None = None) -> None:  # fmt: skip
        self.engine, self.subs, self.metrics, self.retry_after = engine, subs, metrics, retry_after
        self.open_set = open_set if open_set is not None else set()  # the server's unclosed generations
        self.queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []
        self.finished: set[int] = set()  # choice indices whose last output arrived
        self.open = len(subs)

    def start(self) -> Generation:
        self.tasks = [asyncio.create_task(self._pump(s)) for s in self.subs]
        self.open_set.add(self)
        return self

    async def _pump(self, sub: SubRequest) -> None:
        tracker = self.metrics.tracker()
        try:
            stream = self.engine.generate(
                prompt=sub.prompt_ids, params=sub.params, request_id=sub.request_id, priority=sub.priority
            )
            async for out in stream:
                tracker.on_output(out)
                self.queue.put_nowait((sub.index, out))
            self.queue.put_nowait((sub.index, _DONE))
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self.queue.put_nowait((sub.index, e))

    async def next(self) -> tuple[int, RequestOutput] | None:
        while self.open:
            index, item = await self.queue.get()
            if item is _DONE:
                self.open -= 1
                continue
            if isinstance(item, BaseException):
                raise engine_error(item, self.retry_after)
            if item.finished:
                self.finished.add(index)
            return index, item
        return None

    async def close(self) -> None:
        """Abort every engine request that has not finished. Idempotent. The work runs in its own task, so it
        completes even when the caller is being cancelled (client disconnect, server shutdown)."""
        self.open_set.discard(self)
        for t in self.tasks:
            t.cancel()
        unfinished = [s.request_id for s in self.subs if s.index not in self.finished]
        self.metrics.aborted(len(unfinished))
        tasks, self.tasks, self.finished = self.tasks, [], {s.index for s in self.subs}
        if not tasks and not unfinished:
            return
        cleanup = asyncio.ensure_future(self._abort(tasks, unfinished))
        _CLEANUPS.add(cleanup)
        cleanup.add_done_callback(_CLEANUPS.discard)
        await asyncio.shield(cleanup)

    async def _abort(self, tasks: list[asyncio.Task[None]], request_ids: list[str]) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        for rid in request_ids:
            try:
                await self.engine.abort(rid)
            except Exception:  # already gone: nothing to free
                log.debug("abort of %s failed", rid, exc_info=True)


_CLEANUPS: set[asyncio.Future[None]] = set()  # running cleanups (the loop keeps only weak references to tasks)

__all__ = ["Generation", "SubRequest", "engine_error"]

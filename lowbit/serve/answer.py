"""A `Generation` as an HTTP response: an SSE stream or one JSON body, watching for the client going away.

A whole-answer request waits for its outputs and for `http.disconnect` at once (`until_disconnect`); a stream
is cancelled by starlette when the client goes. Either way the generation is closed, which aborts the engine
requests that have not finished and so frees their KV pages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lowbit.serve.errors import APIError, internal_error, unavailable
from lowbit.serve.generation import Generation
from lowbit.serve.responses import DONE, Shape, sse

log = logging.getLogger("lowbit.serve")
T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """`await work`, unless the client disconnects first (then ClientGone)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise ClientGone
    finally:
        for t in (task, watcher):
            t.cancel()


async def _collect(gen: Generation) -> dict[int, Any]:
    last: dict[int, Any] = {}
    while (item := await gen.next()) is not None:
        last[item[0]] = item[1]
    return last


async def _stream(gen: Generation, first: tuple[int, Any] | None, shape: Shape, openings: dict[int, str],
                  include_usage: bool, prompt_tokens: int) -> AsyncIterator[str]:  # fmt: skip
    """SSE body: opening chunks (chat role / echoed prompt), one chunk per delta, usage, [DONE]. Closing the
    generation (abort what is unfinished) happens however the stream ends, a client disconnect included."""
    try:
        for index, text in openings.items():
            yield sse(shape.chunk(index, text, role=shape.chat))
        tokens: dict[int, int] = {}
        item = first
        while item is not None:
            index, out = item
            tokens[index] = out.num_output_tokens
            if out.finished:
                yield sse(shape.chunk(index, out.delta_text if out.delta_text or not shape.chat else None,
                                      out.finish_reason, out.stop_reason))  # fmt: skip
            elif out.delta_text:
                yield sse(shape.chunk(index, out.delta_text))
            item = await gen.next()
        if include_usage:
            yield sse(shape.usage_chunk(prompt_tokens, sum(tokens.values())))
        yield DONE
    except APIError as e:
        yield sse(e.body())
        yield DONE
    except Exception:
        log.exception("stream %s failed", shape.id)
        yield sse(internal_error().body())
        yield DONE
    finally:
        await gen.close()


class _EventStream(StreamingResponse):
    """An SSE response that closes its generation however the response ends, even when the body iterator
    never started (a client gone before the first byte: an unstarted async generator runs no `finally`)."""

    def __init__(self, body: AsyncIterator[str], gen: Generation) -> None:
        super().__init__(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.gen = gen

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.gen.close()


async def answer(request: Request, gen: Generation, *, stream: bool, shape: Shape, include_usage: bool,
                 prompt_tokens: int, openings: dict[int, str]) -> Response:  # fmt: skip
    """Start `gen`, then stream it (headers go out with the first output, so a full queue is still a 429) or
    collect it into one body. The generation is closed (its unfinished engine requests aborted) however this ends."""
    gen.start()
    streaming = False
    try:
        if stream:
            first = await until_disconnect(request, gen.next())
            body = _stream(gen, first, shape, openings, include_usage, prompt_tokens)
            streaming = True  # the response closes the generation from here on
            return _EventStream(body, gen)
        try:
            outputs = await until_disconnect(request, _collect(gen))
        except asyncio.CancelledError:  # only a server shutdown cancels a whole-answer request
            if (task := asyncio.current_task()) is not None:
                task.uncancel()
            await gen.close()
            raise unavailable("The server is shutting down; the request was aborted.", gen.retry_after) from None
        return JSONResponse(shape.response(outputs, openings, prompt_tokens))
    finally:
        if not streaming:
            await gen.close()


__all__ = ["ClientGone", "answer", "until_disconnect"]

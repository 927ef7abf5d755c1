"""The OpenAI-compatible FastAPI app over an `AsyncLLMEngine` (or anything with its surface: `generate`, `abort`,
`stats`, `tokenizer`, `model_name`, `max_model_len`, `vocab_size`; `start` / `shutdown` when the app manages its life).

Routes: POST /v1/completions, /v1/chat/completions, /tokenize, /detokenize; GET /v1/models, /health, /metrics,
/version. With an API key, /v1/*, /tokenize and /detokenize need `Authorization: Bearer <key>`.
Status codes: 400 invalid request (unknown field, bad value, bad JSON, too long for max_model_len), 401 bad API key,
404 unknown model or route, 429 queue full (Retry-After), 503 draining or engine down (Retry-After), 500 anything
unforeseen (logged; the body names no internals). A request whose client disconnects is aborted in the engine.
`n` > 1 submits n engine requests (sample i of a seeded request uses seed + i).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lowbit.serve.answer import ClientGone, answer
from lowbit.serve.chat import ChatTemplate, load_chat_template
from lowbit.serve.errors import (
    APIError,
    bad_request,
    from_validation,
    internal_error,
    model_not_found,
    unauthorized,
    unavailable,
)
from lowbit.serve.generation import Generation, SubRequest
from lowbit.serve.metrics import ServerMetrics
from lowbit.serve.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    sampling_params,
)
from lowbit.serve.responses import Shape

log = logging.getLogger("lowbit.serve")
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]


def _lowbit_version() -> str:
    try:
        return version("lowbit")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class ServerState:
    engine: Any
    model_name: str
    metrics: ServerMetrics
    chat: ChatTemplate
    api_key: str | None = None
    retry_after: int = 1
    shutdown_timeout: float = 30.0
    draining: bool = False
    generations: set[Generation] = field(default_factory=set)  # not closed yet (may hold engine requests)
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return int(self.engine.max_model_len)

    @property
    def vocab_size(self) -> int:
        return int(self.engine.vocab_size)

    # -- checks shared by the routes ------------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise unauthorized()

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise model_not_found(name, self.model_name)

    def check_open(self) -> None:
        if self.draining:
            raise unavailable("The server is shutting down.", self.retry_after)

    def encode(self, text: str, add_special_tokens: bool, param: str) -> list[int]:
        if self.tokenizer is None:
            raise bad_request(f"{self.model_name} has no tokenizer; send token ids instead of text", param=param)
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: list[int], param: str) -> str:
        if self.tokenizer is None:
            raise bad_request(f"{self.model_name} has no tokenizer; token ids cannot be turned into text", param=param)
        return str(self.tokenizer.decode(ids))

    def check_ids(self, ids: list[int], param: str) -> list[int]:
        if not ids:
            raise bad_request("The prompt is empty (it encodes to no tokens).", param=param)
        vocab = self.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise bad_request(f"Token id {bad[0]} is out of the vocabulary [0, {vocab}).", param=param)
        return ids

    def completion_budget(self, n_prompt: int, requested: int | None, param: str) -> int:
        """max_tokens for a prompt of n_prompt tokens: the requested count (default: what fits), checked against
        max_model_len (vLLM's message)."""
        limit = self.max_model_len
        if n_prompt >= limit:
            raise APIError(
                400, f"This model's maximum context length is {limit} tokens. However, the {param} has {n_prompt} "
                f"tokens, which leaves no room for a completion. Please reduce the length of the {param}.",
                param=param, code="context_length_exceeded",
            )  # fmt: skip
        max_tokens = requested if requested is not None else limit - n_prompt
        if n_prompt + max_tokens > limit:
            raise APIError(
                400, f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in the {param}, {max_tokens} in the completion). "
                f"Please reduce the length of the {param} or completion.",
                param="max_tokens", code="context_length_exceeded",
            )  # fmt: skip
        return max_tokens

    def render_chat(self, messages: list[ChatMessage], add_generation_prompt: bool, continue_final: bool,
                    kwargs: dict[str, Any] | None) -> str:  # fmt: skip
        return self.chat.render([m.template_dict() for m in messages], add_generation_prompt=add_generation_prompt,
                                continue_final_message=continue_final, extra=kwargs)  # fmt: skip


def parse(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise from_validation(e) from None


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def guarded(fn: Handler) -> Handler:
    """APIError -> its error object; anything else -> a logged 500 that leaks nothing."""

    @functools.wraps(fn)
    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except APIError as e:
            return error_response(e)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it (nginx's "client closed request")
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return error_response(internal_error())

    return wrapper


def build_app(
    engine: Any,
    served_model_name: str | None = None,
    *,
    api_key: str | None = None,
    chat_template: ChatTemplate | None = None,
    artifact: str | None = None,
    registry: CollectorRegistry | None = None,
    manage_engine: bool = False,
    shutdown_timeout: float = 30.0,
    retry_after: int = 1,
) -> FastAPI:
    """The app. `manage_engine`: start the engine at startup and shut it down (finishing in-flight requests
    for up to `shutdown_timeout` s, then aborting them) at shutdown. `chat_template` defaults to the artifact's."""
    name = served_model_name or str(engine.model_name)
    metrics = ServerMetrics(engine, name, registry)
    chat = chat_template if chat_template is not None else load_chat_template(artifact)
    state = ServerState(engine, name, metrics, chat, api_key, retry_after, shutdown_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_engine and hasattr(engine, "start"):
            engine.start()
        try:
            yield
        finally:  # uvicorn has stopped accepting and waited for (or cancelled) the requests in flight
            state.draining = True
            deadline = time.monotonic() + 5.0
            while state.generations and time.monotonic() < deadline:  # let cancelled handlers abort and answer
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            if manage_engine:
                await engine.shutdown(shutdown_timeout)

    app = FastAPI(title="lowbit", version=_lowbit_version(), lifespan=lifespan)
    app.state.lowbit = state

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if e.status_code == 404 else None
        return error_response(APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", code=kind))

    @app.get("/health")
    async def health() -> Response:
        try:
            state.check_open()
            if getattr(state.engine, "is_running", True) is False:
                raise unavailable("The engine is not running.", retry_after)
            state.engine.stats()
        except APIError as e:
            return error_response(e)
        except Exception:
            return error_response(unavailable("The engine is not running.", retry_after))
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/version")
    async def lowbit_version() -> JSONResponse:
        return JSONResponse({"version": _lowbit_version()})

    @app.get("/v1/models")
    @guarded
    async def models(request: Request) -> Response:
        state.authorize(request)
        card = {"id": name, "object": "model", "created": state.created, "owned_by": "lowbit", "root": name,
                "parent": None, "max_model_len": state.max_model_len, "permission": []}  # fmt: skip
        return JSONResponse({"object": "list", "data": [card]})

    async def respond(request: Request, req: CompletionRequest | ChatCompletionRequest, subs: list[SubRequest],
                      shape: Shape, prompt_tokens: int, openings: dict[int, str]) -> Response:  # fmt: skip
        """Submit `subs` as one generation; its SSE stream or its whole body."""
        gen = Generation(state.engine, subs, state.metrics, state.retry_after, state.generations)
        return await answer(request, gen, stream=req.stream, shape=shape, include_usage=req.include_usage,
                            prompt_tokens=prompt_tokens, openings=openings)  # fmt: skip

    @app.post("/v1/completions")
    @guarded
    async def completions(request: Request) -> Response:
        state.authorize(request)
        req = parse(CompletionRequest, await request.body())
        state.check_model(req.model)
        state.check_open()
        rid = f"cmpl-{uuid.uuid4().hex}"
        subs, openings, prompt_tokens = [], {}, 0
        for p, prompt in enumerate(req.prompts):
            ids = prompt if isinstance(prompt, list) else state.encode(prompt, req.add_special_tokens, "prompt")
            state.check_ids(ids, "prompt")
            prompt_tokens += len(ids)
            budget = state.completion_budget(len(ids), req.max_tokens if req.max_tokens is not None else 16, "prompt")
            for s in range(req.n):
                index = p * req.n + s
                subs.append(SubRequest(index, f"{rid}-{index}", ids, sampling_params(req, budget, s), req.priority))
                if req.echo:
                    openings[index] = prompt if isinstance(prompt, str) else state.decode(ids, "echo")
        return await respond(request, req, subs, Shape(rid, name, chat=False), prompt_tokens, openings)

    @app.post("/v1/chat/completions")
    @guarded
    async def chat_completions(request: Request) -> Response:
        state.authorize(request)
        req = parse(ChatCompletionRequest, await request.body())
        state.check_model(req.model)
        state.check_open()
        text = state.render_chat(req.messages, req.add_generation_prompt, req.continue_final_message,
                                 req.chat_template_kwargs)  # fmt: skip
        ids = state.check_ids(state.encode(text, state.chat.add_special_tokens, "messages"), "messages")
        budget = state.completion_budget(len(ids), req.completion_limit, "messages")
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        subs = [SubRequest(s, f"{rid}-{s}", ids, sampling_params(req, budget, s), req.priority) for s in range(req.n)]
        openings = {s: "" for s in range(req.n)} if req.stream else {}
        return await respond(request, req, subs, Shape(rid, name, chat=True), len(ids), openings)

    @app.post("/tokenize")
    @guarded
    async def tokenize(request: Request) -> Response:
        state.authorize(request)
        req = parse(TokenizeRequest, await request.body())
        state.check_model(req.model)
        if req.messages is not None:
            text = state.render_chat(req.messages, req.add_generation_prompt, req.continue_final_message,
                                     req.chat_template_kwargs)  # fmt: skip
            special = state.chat.add_special_tokens if req.add_special_tokens is None else req.add_special_tokens
        else:
            text, special = str(req.prompt), req.add_special_tokens is not False
        ids = state.encode(text, special, "messages" if req.messages is not None else "prompt")
        strs = [state.tokenizer.tokenizer.id_to_token(t) for t in ids] if req.return_token_strs else None
        return JSONResponse({"count": len(ids), "max_model_len": state.max_model_len, "tokens": ids,
                             "token_strs": strs})  # fmt: skip

    @app.post("/detokenize")
    @guarded
    async def detokenize(request: Request) -> Response:
        state.authorize(request)
        req = parse(DetokenizeRequest, await request.body())
        state.check_model(req.model)
        if req.tokens:
            state.check_ids(req.tokens, "tokens")
        return JSONResponse({"prompt": state.decode(req.tokens, "tokens")})

    return app


__all__ = ["ServerState", "build_app"]

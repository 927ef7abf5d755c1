"""Request bodies of the OpenAI-compatible API as strict pydantic models.

Unknown fields are refused (400 naming the field). Accepted and ignored OpenAI fields: `user`, `metadata`,
`store`, `service_tier`, `parallel_tool_calls`, and on chat messages `refusal`, `annotations`, `audio`,
`function_call` (what the openai client echoes back from an earlier reply). Accepted only at their neutral
value (anything else is a 400 that says so): `logprobs` / `top_logprobs`, `presence_penalty` /
`frequency_penalty` (0), `logit_bias` (empty), `best_of` (1), `suffix` (null), `tools` (empty),
`tool_choice` ("none" / "auto"), `response_format` ({"type": "text"}).
vLLM extensions: `top_k`, `min_tokens`, `ignore_eos`, `stop_token_ids`, `priority`, `include_stop_str_in_output`,
`skip_special_tokens`, `add_special_tokens`, `add_generation_prompt`, `continue_final_message`,
`chat_template_kwargs`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lowbit.runtime.sampler import SamplingParams
from lowbit.serve.errors import bad_request

MAX_N = 16  # completions per prompt (n); each is one engine request


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # a torch generator seed (int64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    priority: int = 0
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    user: str | None = None  # ignored
    metadata: dict[str, str] | None = None  # ignored
    store: bool | None = None  # ignored
    service_tier: str | None = None  # ignored

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if v is not None and any(s == "" for s in ([v] if isinstance(v, str) else v)):
            raise ValueError("stop strings must be non-empty")
        return v

    @model_validator(mode="after")
    def _neutral(self) -> _Sampling:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0.0:
                raise ValueError(f"{name} is not supported by lowbit; leave it at 0")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported by lowbit; leave it empty")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options can only be given when stream is true")
        return self

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def sampling_params(req: _Sampling, max_tokens: int, sample: int = 0) -> SamplingParams:
    """The engine's SamplingParams for sample `sample` of a request (a seeded request's sample i uses seed + i)."""
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_k=req.top_k or 0,
            top_p=1.0 if req.top_p is None else req.top_p,
            seed=None if req.seed is None else (req.seed + sample + 2**63) % 2**64 - 2**63,  # stays int64
            stop_token_ids=tuple(req.stop_token_ids or ()),
            ignore_eos=req.ignore_eos,
            stop=req.stop_strings,
            include_stop_str_in_output=req.include_stop_str_in_output,
            skip_special_tokens=req.skip_special_tokens,
            min_tokens=req.min_tokens,
        )
    except ValueError as e:
        raise bad_request(str(e)) from None


class CompletionRequest(_Sampling):
    prompt: Any
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None
    add_special_tokens: bool = True

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> list[str | list[int]]:
        """str | list[str] | list[int] | list[list[int]] -> a list of prompts (text or token ids)."""
        shapes = "a string, a list of strings, a list of token ids, or a list of lists of token ids"
        if isinstance(v, str):
            return [v]
        if not isinstance(v, list) or not v:
            raise ValueError(f"prompt must be {shapes} (non-empty)")
        if all(isinstance(t, int) and not isinstance(t, bool) for t in v):
            return [list(v)]
        out: list[str | list[int]] = []
        for p in v:
            if isinstance(p, str):
                out.append(p)
            elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
                out.append(list(p))
            else:
                raise ValueError(f"prompt must be {shapes}; got an element {str(p)[:40]!r}")
        return out

    @model_validator(mode="after")
    def _refused(self) -> CompletionRequest:
        if self.logprobs is not None:
            raise ValueError("logprobs is not supported by lowbit; omit it")
        if self.best_of not in (None, 1):
            raise ValueError("best_of is not supported by lowbit; use n for several completions")
        if self.suffix is not None:
            raise ValueError("suffix (insertion) is not supported by lowbit; omit it")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        return list(self.prompt)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # passed to the template as given
    refusal: Any = None  # ignored
    annotations: Any = None  # ignored
    audio: Any = None  # ignored
    function_call: Any = None  # ignored

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, v: Any) -> Any:
        if isinstance(v, list):
            for part in v:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise ValueError(f"only text content parts are supported (got type {kind!r})")
        return v

    def template_dict(self) -> dict[str, Any]:
        """The message as chat templates expect it: content as one string (text parts joined by newlines)."""
        content = self.content
        if isinstance(content, list):
            content = "\n".join(p.text for p in content)
        d: dict[str, Any] = {"role": self.role, "content": content if content is not None else ""}
        for key in ("name", "tool_call_id", "tool_calls"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None  # ignored
    response_format: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _refused(self) -> ChatCompletionRequest:
        if self.logprobs or self.top_logprobs is not None:
            raise ValueError("logprobs / top_logprobs are not supported by lowbit; omit them")
        if self.tools:
            raise ValueError("tools (function calling) are not supported by lowbit; omit them")
        if self.tool_choice not in (None, "none", "auto"):
            raise ValueError("tool_choice other than 'none' / 'auto' is not supported by lowbit")
        if self.response_format is not None and self.response_format != {"type": "text"}:
            raise ValueError('response_format other than {"type": "text"} is not supported by lowbit')
        if self.continue_final_message and (self.add_generation_prompt or self.messages[-1].role != "assistant"):
            raise ValueError("continue_final_message needs add_generation_prompt=false and a final assistant message")
        return self

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class TokenizeRequest(_Strict):
    """vLLM's /tokenize: either `prompt` (with add_special_tokens, default true) or chat `messages` (rendered
    with the chat template; add_special_tokens default false)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class DetokenizeRequest(_Strict):
    model: str | None = None
    tokens: list[int]


__all__ = [
    "MAX_N",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "DetokenizeRequest",
    "StreamOptions",
    "TextPart",
    "TokenizeRequest",
    "sampling_params",
]

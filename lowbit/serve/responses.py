"""OpenAI response bodies (plain dicts, serialized once) and the SSE framing.

Shapes follow the OpenAI API and vLLM: `text_completion` / `chat.completion` objects with `usage`;
stream chunks (`text_completion` / `chat.completion.chunk`) carry one choice each; a chat stream opens each
choice with `delta: {"role": "assistant", "content": ""}`; with `stream_options.include_usage` a last chunk
has empty `choices` and the `usage`; the stream ends with `data: [DONE]`. `stop_reason` (vLLM) names the stop
token id or stop string that ended a choice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from lowbit.runtime.outputs import RequestOutput

DONE = "data: [DONE]\n\n"


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass(frozen=True)
class Shape:
    """One API's response shape: completions (`chat=False`) or chat completions (`chat=True`)."""

    id: str
    model: str
    chat: bool
    created: int = field(default_factory=lambda: int(time.time()))

    def _envelope(self, obj: str, **rest: Any) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, **rest}

    def chunk(self, index: int, text: str | None, finish_reason: str | None = None, stop_reason: Any = None,
              role: bool = False) -> dict[str, Any]:  # fmt: skip
        """A stream chunk with one choice: `text` is the new text (chat: `None` leaves content out)."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            obj = "text_completion"
        if finish_reason is not None:
            choice["stop_reason"] = stop_reason
        return self._envelope(obj, choices=[choice])

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return self._envelope(obj, choices=[], usage=usage(prompt_tokens, completion_tokens))

    def response(self, outputs: dict[int, RequestOutput], prefixes: dict[int, str], prompt_tokens: int) -> dict:
        """The non-streaming body from each choice's last output (`prefixes`: echoed prompt text)."""
        choices = []
        for index in sorted(outputs):
            out = outputs[index]
            text = prefixes.get(index, "") + out.text
            c: dict[str, Any] = {"index": index}
            if self.chat:
                c["message"] = {"role": "assistant", "content": text}
            else:
                c["text"] = text
            c.update(logprobs=None, finish_reason=out.finish_reason, stop_reason=out.stop_reason)
            choices.append(c)
        completion_tokens = sum(o.num_output_tokens for o in outputs.values())
        obj = "chat.completion" if self.chat else "text_completion"
        return self._envelope(obj, choices=choices, usage=usage(prompt_tokens, completion_tokens))


__all__ = ["DONE", "Shape", "sse", "usage"]

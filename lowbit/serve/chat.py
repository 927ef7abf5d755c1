"""Chat templates: messages -> prompt text.

The template is the `chat_template` of the artifact's tokenizer_config.json (HF convention; a `--chat-template`
file overrides it), rendered with jinja2 in an immutable sandbox the way transformers does (trim_blocks,
lstrip_blocks, `raise_exception`, `strftime_now`, `tojson`). Such templates write the BOS token themselves, so
their text is encoded without special tokens.

Without one, `PLAIN_TEMPLATE` is used (a warning is logged once): one `role: content` line per message and
`assistant:` when a generation prompt is asked for; its text is encoded *with* the tokenizer's special tokens
(e.g. the BOS the tokenizer's post-processor adds).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lowbit.serve.errors import bad_request

log = logging.getLogger("lowbit.serve")

PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _raise(message: str) -> None:
    raise TemplateError(message)


def _token_text(v: Any) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...} (AddedToken)."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


@dataclass
class ChatTemplate:
    source: str
    add_special_tokens: bool  # encode the rendered text with the tokenizer's special tokens?
    special_tokens: dict[str, str | None] = field(default_factory=dict)  # bos_token, eos_token, ...

    def __post_init__(self) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
        self._template = env.from_string(self.source)

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """The prompt text; a template error (e.g. the template's own raise_exception) is a 400."""
        try:
            text = self._template.render(
                **{**(extra or {}), **self.special_tokens},
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                tools=None,
            )
        except TemplateError as e:
            raise bad_request(f"the chat template refused the messages: {e}", param="messages") from e
        if continue_final_message:  # leave the last assistant message open: cut what the template put after it
            last = str(messages[-1]["content"])
            at = text.rfind(last) if last else -1
            if at >= 0:
                text = text[: at + len(last)]
        return text


def load_chat_template(artifact: str | Path | None, override: str | Path | None = None) -> ChatTemplate:
    """`override` (a file), else tokenizer_config.json's chat_template in `artifact`, else PLAIN_TEMPLATE."""
    config: dict[str, Any] = {}
    if artifact is not None and (Path(artifact) / "tokenizer_config.json").is_file():
        config = json.loads((Path(artifact) / "tokenizer_config.json").read_text())
    specials = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    source = Path(override).read_text() if override is not None else config.get("chat_template")
    if isinstance(source, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        by_name = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = by_name.get("default") or next(iter(by_name.values()), None)
    if isinstance(source, str) and source.strip():
        return ChatTemplate(source, add_special_tokens=False, special_tokens=specials)
    log.warning(
        "%s has no chat_template (tokenizer_config.json); chat requests use the plain 'role: content' template "
        "(give one with --chat-template FILE)", artifact or "the model",
    )  # fmt: skip
    return ChatTemplate(PLAIN_TEMPLATE, add_special_tokens=True, special_tokens=specials)


__all__ = ["PLAIN_TEMPLATE", "ChatTemplate", "load_chat_template"]

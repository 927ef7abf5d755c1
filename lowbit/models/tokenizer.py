"""Tokenizers: a thin wrapper over a `tokenizers.Tokenizer` (tokenizer.json) with the model's bos/eos, and
incremental detokenization for streaming.

`IncrementalDecoder` emits text deltas as tokens arrive, never splitting a multi-byte UTF-8 character and
keeping the spacing decoders such as SentencePiece's Metaspace apply in context. It decodes a sliding window
of tokens (the vLLM / TGI scheme): `prefix` = decode(ids[prefix_offset:read_offset]) was already emitted,
`full` = decode(ids[prefix_offset:]); when `full` is longer and does not end in U+FFFD (an incomplete
character), `full[len(prefix):]` is new text and the window moves up. The deltas concatenate to the full
decode.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbit.models.arch import eos_ids

REPLACEMENT_CHAR = "\ufffd"


@dataclass(frozen=True)
class TextTokenizer:
    """A `tokenizers.Tokenizer` with the model's special ids. `encode` adds what the tokenizer's own
    post-processor adds (HF fast-tokenizer behaviour, e.g. <s> for Llama 2, nothing for Qwen2)."""

    tokenizer: Any = field(compare=False)  # tokenizers.Tokenizer
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def incremental_decoder(self, skip_special_tokens: bool = True) -> IncrementalDecoder:
        return IncrementalDecoder(self.tokenizer, skip_special_tokens=skip_special_tokens)


def load_tokenizer(
    path: Path | str,
    bos_token_id: int | None = None,
    eos_token_ids: Iterable[int] | int | None = None,
    generation_config: Mapping[str, Any] | None = None,
) -> TextTokenizer:
    """Read tokenizer.json (or the directory holding it). bos / eos come from the arguments, else
    `generation_config`, else generation_config.json / config.json next to the file."""
    import json

    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"no tokenizer at {file}; lowbit reads a fast-tokenizer tokenizer.json (convert a SentencePiece "
            "tokenizer.model once with transformers: AutoTokenizer.from_pretrained(dir).save_pretrained(dir))"
        )
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust side raises a bare Exception with its parse error
        raise ValueError(f"{file} is not a valid tokenizer.json: {e}") from e
    cfg: dict[str, Any] = {}
    for name in ("config.json", "generation_config.json"):  # the generation config wins, as in HF generate
        if (file.parent / name).is_file():
            cfg.update({k: v for k, v in json.loads((file.parent / name).read_text()).items() if v is not None})
    cfg.update({k: v for k, v in (generation_config or {}).items() if v is not None})
    bos = bos_token_id if bos_token_id is not None else cfg.get("bos_token_id")
    eos = eos_ids(eos_token_ids if eos_token_ids is not None else cfg.get("eos_token_id"))
    return TextTokenizer(tok, None if bos is None else int(bos), eos)


class IncrementalDecoder:
    """Streaming detokenizer: `push(ids)` returns the text the new tokens complete (maybe ""), `flush()` the
    rest. "".join of every delta plus flush() equals tokenizer.decode(all ids)."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # window start: context tokens whose text was already emitted
        self.read_offset = 0  # tokens before this are emitted

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens))

    def push(self, ids: Iterable[int] | int) -> str:
        self.ids.extend([ids] if isinstance(ids, int) else ids)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT_CHAR) and full.startswith(prefix):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Text of tokens held back (an incomplete character at the end decodes as U+FFFD, as in decode)."""
        if self.read_offset == len(self.ids):
            return ""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :]


__all__ = ["IncrementalDecoder", "TextTokenizer", "load_tokenizer"]

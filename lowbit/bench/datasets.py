"""The requests of a benchmark: synthetic random-token prompts or a local ShareGPT file (never downloaded).

    reqs = synthetic_requests(16, input_len=32, output_len=128, vocab_size=32000, seed=0)
    reqs = sharegpt_requests("sharegpt.json", 100, tokenizer, seed=0, max_model_len=2048)

Synthetic (vLLM's "random" dataset): lengths uniform in [L·(1 − r), L·(1 + r)] for `range_ratio` r in [0, 1)
(r = 0: every request exactly L), token ids uniform over the vocabulary minus the tokenizer's special ids,
seeded. `prompt_format="ids"` sends the ids as the prompt (exact lengths); "text" decodes them to a string, whose
length is then re-counted by encoding it again (the server's own count wins when it reports usage).

ShareGPT (vLLM's `sample_sharegpt_requests`): a JSON list of `{"conversations": [{"from": "human", "value": ...},
{"from": "gpt", "value": ...}, ...]}`; the first turn is the prompt, the second turn's token count the output
length. Entries with fewer than two turns are skipped; the rest are shuffled (seeded) and taken in order,
skipping prompts or completions under 4 tokens and pairs longer than `max_model_len`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

PromptFormat = Literal["ids", "text"]
MIN_SHAREGPT_TOKENS = 4  # vLLM prunes shorter prompts / completions


@dataclass(frozen=True)
class SampleRequest:
    prompt: str | tuple[int, ...]  # text, or token ids sent as an OpenAI token-array prompt
    prompt_len: int
    output_len: int

    @property
    def payload_prompt(self) -> str | list[int]:
        return self.prompt if isinstance(self.prompt, str) else list(self.prompt)


def special_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokenizer's special added tokens (bos, eos, unk, pad...): never put in a random prompt."""
    if tokenizer is None:
        return frozenset()
    return frozenset(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)


def random_lengths(rng: np.random.Generator, n: int, length: int, range_ratio: float, name: str) -> np.ndarray:
    """n lengths uniform over the integers of [length·(1 − r), length·(1 + r)], at least 1."""
    if length < 1:
        raise ValueError(f"--{name} {length} must be >= 1 token")
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"--range-ratio {range_ratio!r} must be in [0, 1) (0: every request exactly --{name})")
    low, high = max(1, int(length * (1 - range_ratio))), int(length * (1 + range_ratio))
    return rng.integers(low, max(low, high) + 1, size=n)


def synthetic_requests(
    num: int,
    input_len: int,
    output_len: int,
    *,
    vocab_size: int,
    range_ratio: float = 0.0,
    seed: int = 0,
    tokenizer: Any = None,
    prompt_format: PromptFormat = "ids",
) -> list[SampleRequest]:
    """`num` random-token prompts (see module doc); the same seed gives the same requests."""
    if num < 1:
        raise ValueError(f"--num-prompts {num} must be >= 1")
    if prompt_format == "text" and tokenizer is None:
        raise ValueError("--prompt-format text needs a tokenizer: give --tokenizer (or an artifact), or use ids")
    rng = np.random.Generator(np.random.PCG64(seed))
    in_lens = random_lengths(rng, num, input_len, range_ratio, "input-len")
    out_lens = random_lengths(rng, num, output_len, range_ratio, "output-len")
    allowed = np.setdiff1d(np.arange(vocab_size), np.fromiter(special_token_ids(tokenizer), dtype=np.int64))
    if allowed.size == 0:
        raise ValueError(f"vocab_size {vocab_size}: no non-special token id to draw prompts from")
    out = []
    for n_in, n_out in zip(in_lens, out_lens):
        ids = tuple(int(t) for t in rng.choice(allowed, size=int(n_in)))
        if prompt_format == "ids":
            out.append(SampleRequest(ids, len(ids), int(n_out)))
        else:
            text = tokenizer.decode(list(ids))
            out.append(SampleRequest(text, len(tokenizer.encode(text).ids), int(n_out)))
    return out


def read_sharegpt(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, completion) of every entry with at least two turns, in file order."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--dataset {path}: no such file (a local ShareGPT JSON; nothing is downloaded)")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--dataset {path}: not JSON ({e}); expected a ShareGPT list of conversations") from None
    if not isinstance(data, list):
        raise ValueError(f"--dataset {path}: the top level is a {type(data).__name__}; expected a list of entries")
    pairs = []
    for i, entry in enumerate(data):
        conv = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(conv, list) or len(conv) < 2:
            continue
        turns = [t.get("value") if isinstance(t, dict) else None for t in conv[:2]]
        if not all(isinstance(t, str) for t in turns):
            raise ValueError(
                f"--dataset {path}: entry {i} has a turn without a string 'value'; each turn is "
                '{"from": "human" | "gpt", "value": "..."}'
            )
        pairs.append((str(turns[0]), str(turns[1])))
    return pairs


def sharegpt_requests(
    path: str | Path,
    num: int,
    tokenizer: Any,
    *,
    seed: int = 0,
    max_model_len: int = 2048,
    fixed_output_len: int | None = None,
) -> list[SampleRequest]:
    """Up to `num` ShareGPT requests (see module doc); fewer when the file has fewer usable entries."""
    if tokenizer is None:
        raise ValueError("--dataset needs a tokenizer to count tokens: give --tokenizer (or an artifact)")
    pairs = read_sharegpt(path)
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(pairs))
    out: list[SampleRequest] = []
    for k in order:
        if len(out) == num:
            break
        prompt, completion = pairs[int(k)]
        prompt_len = len(tokenizer.encode(prompt).ids)
        output_len = fixed_output_len or len(tokenizer.encode(completion, add_special_tokens=False).ids)
        if fixed_output_len is None and (prompt_len < MIN_SHAREGPT_TOKENS or output_len < MIN_SHAREGPT_TOKENS):
            continue
        if prompt_len + output_len > max_model_len:
            continue
        out.append(SampleRequest(prompt, prompt_len, output_len))
    if not out:
        raise ValueError(
            f"--dataset {path}: none of its {len(pairs)} conversations fits (prompt and completion >= "
            f"{MIN_SHAREGPT_TOKENS} tokens, together <= max_model_len {max_model_len}); use a larger "
            "--max-model-len or another file"
        )
    return out


def total_tokens(reqs: Sequence[SampleRequest]) -> tuple[int, int]:
    """(prompt tokens, output tokens) the requests ask for."""
    return sum(r.prompt_len for r in reqs), sum(r.output_len for r in reqs)


__all__ = [
    "PromptFormat",
    "SampleRequest",
    "random_lengths",
    "read_sharegpt",
    "sharegpt_requests",
    "special_token_ids",
    "synthetic_requests",
    "total_tokens",
]

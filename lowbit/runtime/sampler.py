"""Token sampling: greedy, temperature, top-k, top-p (nucleus), seeded per request.

Conventions follow the OpenAI / vLLM parameters: temperature 0 is greedy; top_k 0 (or -1) and top_p 1 disable
their filters; the filters apply to the temperature-scaled distribution (top-k first, then top-p).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()  # stop strings: generation ends when the text contains one (trimmed from it)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    min_tokens: int = 0  # EOS / stop tokens / stop strings are ignored before this many tokens

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens = {self.max_tokens!r}: must be an integer >= 1")
        if not (self.temperature >= 0.0 and self.temperature == self.temperature):
            raise ValueError(f"temperature = {self.temperature!r}: must be >= 0 (0 = greedy)")
        if self.top_k < -1:
            raise ValueError(f"top_k = {self.top_k}: use 0 or -1 to disable, or a positive count")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p = {self.top_p!r}: must be in (0, 1]; 1 disables nucleus sampling")
        if not isinstance(self.min_tokens, int) or not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens = {self.min_tokens!r}: must be an integer in [0, max_tokens]")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop = {self.stop!r}: give a tuple of non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def stop_ids(self, eos_token_ids: Iterable[int]) -> frozenset[int]:
        """The token ids that end generation: stop_token_ids, and the model's EOS unless ignore_eos."""
        return frozenset(self.stop_token_ids) | (frozenset() if self.ignore_eos else frozenset(eos_token_ids))


def filtered_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """log-probabilities [V] after temperature, top-k and top-p (filtered tokens get -inf)."""
    x = logits.float() / params.temperature
    if params.top_k > 0 and params.top_k < x.numel():
        kth = torch.topk(x, params.top_k).values[-1]
        x = torch.where(x < kth, torch.full_like(x, -torch.inf), x)
    if params.top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass strictly before each token
        drop = before >= params.top_p  # keep the smallest prefix whose mass reaches top_p (always the first)
        sorted_x = sorted_x.masked_fill(drop, -torch.inf)
        x = torch.empty_like(x).scatter_(0, order, sorted_x)
    return torch.log_softmax(x, dim=-1)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """One token id from logits [V] (float)."""
    if not torch.isfinite(logits).any():
        raise FloatingPointError("the model produced no finite logit; the weights or kernels are broken")
    if params.greedy:
        return int(torch.argmax(logits))
    probs = filtered_logprobs(logits, params).exp()
    return int(torch.multinomial(probs, 1, generator=generator))


def make_generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


__all__ = ["SamplingParams", "filtered_logprobs", "make_generator", "sample"]

"""`lowbit.LLM`: offline generation over a compiled artifact (the engine's continuous batching, no server).

from lowbit import LLM, SamplingParams
llm = LLM("artifacts/tiny-llama")
for out in llm.generate(["Hello", "The capital of"], SamplingParams(max_tokens=32)):
    print(out.text)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from lowbit.runtime.engine import LLMEngine
from lowbit.runtime.outputs import RequestOutput
from lowbit.runtime.sampler import SamplingParams


class LLM:
    def __init__(self, artifact: str | Path | Any, **engine_kw: Any) -> None:
        self.engine = LLMEngine(artifact, **engine_kw)
        self._ids = itertools.count()

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def close(self) -> None:
        """Stop a tensor-parallel artifact's other ranks (also at exit); a no-op otherwise."""
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def generate(
        self,
        prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        priorities: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """Final outputs, in the order of `prompts` (one prompt: a str or a list of token ids; or a list of
        those). `params` may be one SamplingParams for all or one per prompt. Every prompt is checked before
        any is queued."""
        plist: list[str | Sequence[int]]
        if isinstance(prompts, str) or (len(prompts) and isinstance(prompts[0], int)):
            plist = [cast("str | Sequence[int]", prompts)]
        else:
            plist = list(cast("Sequence[str | Sequence[int]]", prompts))
        if params is None or isinstance(params, SamplingParams):
            params_list = [params or SamplingParams()] * len(plist)
        else:
            params_list = list(params)
            if len(params_list) != len(plist):
                raise ValueError(f"{len(params_list)} SamplingParams for {len(plist)} prompts; give one or one each")
        eng = self.engine
        prompt_ids = []
        for i, (p, sp) in enumerate(zip(plist, params_list, strict=True)):
            try:
                prompt_ids.append(eng.encode_prompt(p))
                eng.check_request(prompt_ids[-1], sp)
            except ValueError as e:
                raise ValueError(f"prompt {i}: {e}") from None
        ids = []
        for i, (p_ids, sp) in enumerate(zip(prompt_ids, params_list, strict=True)):
            rid = f"llm-{next(self._ids)}"
            eng.add_request(rid, p_ids, sp, priority=priorities[i] if priorities else 0)
            ids.append(rid)
        done: dict[str, RequestOutput] = {}
        try:
            while len(done) < len(ids):
                for out in eng.step():
                    if out.finished:
                        done[out.request_id] = out
        except BaseException:
            eng.abort_all()
            raise
        return [done[r] for r in ids]


__all__ = ["LLM", "SamplingParams"]

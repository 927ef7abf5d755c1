"""lowbit: a compiler-style framework for low-bit LLM inference."""

from lowbit.dtypes import *  # noqa: F403


def __getattr__(name: str) -> object:
    """`lowbit.LLM` / `lowbit.SamplingParams` load the runtime (torch) only when asked for."""
    if name in ("LLM", "SamplingParams"):
        from lowbit import llm

        return getattr(llm, name)
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")

"""lowbit: a compiler-style framework for low-bit LLM inference."""

import os as _os

# torch's OpenMP workers spin (busy-wait) for a while after every parallel region; the TVM kernels run on their
# own thread pool, so on a small CPU the spinning workers take the cores from them. Measured on the 2-core VM:
# the tiny model's offline generate took 12.7 s from the main thread vs 0.69 s with passive waiting. libgomp
# reads this when torch loads it, so it only takes effect when lowbit is imported before torch (the CLI is);
# set OMP_WAIT_POLICY yourself to override.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lowbit.dtypes import *  # noqa: F403


def __getattr__(name: str) -> object:
    """`lowbit.LLM` / `lowbit.SamplingParams` load the runtime (torch) only when asked for."""
    if name in ("LLM", "SamplingParams"):
        from lowbit import llm

        return getattr(llm, name)
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")

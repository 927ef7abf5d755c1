"""lowbit: a compiler-style framework for low-bit LLM inference."""

from lowbit.dtypes import *  # noqa: F403

"""lowbit: a compiler-style framework for low-bit LLM inference."""

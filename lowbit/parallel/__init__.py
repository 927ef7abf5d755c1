"""Tensor parallelism (Megatron-style): compile-time sharding of the quantized weights, the `all_reduce` rule,
and rank 0's runner that drives the other ranks. See lowbit/parallel/README.md."""

from __future__ import annotations

from typing import Any

_LAZY = {
    "TPRunner": "lowbit.parallel.runner",
    "TensorParallelError": "lowbit.parallel.runner",
    "TPGroup": "lowbit.parallel.collectives",
    "local_arch": "lowbit.parallel.shard",
    "shard_params": "lowbit.parallel.shard",
    "slice_quantized": "lowbit.parallel.shard",
}


def __getattr__(name: str) -> Any:
    """Loaded on first use: lowbit.runtime imports lowbit.parallel.collectives, which must not pull the runner."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lowbit.parallel' has no attribute {name!r}")


__all__ = sorted(_LAZY)

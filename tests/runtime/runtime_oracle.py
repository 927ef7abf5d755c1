"""Shared by the runtime tests: the reference model's weight overrides for a quantized graph."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lowbit.models import ArchConfig
from lowbit.ops.weight import QuantizedWeight


def dequantized_overrides(
    arch: ArchConfig, weights: Mapping[str, np.ndarray], graph: Any, params: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """The dequantized weight of every quantized param, split back into the checkpoint tensors it was fused from
    (the graph's `fused_params`): what `reference_logits(..., overrides=)` evaluates the model with."""
    fused = dict(graph.meta.get("fused_params", {}))
    overrides = {}
    for name, p in params.items():
        if isinstance(p, QuantizedWeight):
            srcs = fused.get(name, (name,))
            sizes = [weights[s].shape[0] if s in weights else arch.vocab_size for s in srcs]
            for s, part in zip(srcs, np.split(p.dequantize(), np.cumsum(sizes)[:-1]), strict=True):
                overrides[s] = part
    return overrides

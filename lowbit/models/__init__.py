"""Model families (Llama, Mistral, Qwen2): architecture config, HF / synthetic loading, float references.

`reference` (the torch float oracle) is imported on first use, so `import lowbit.models` needs no torch.
"""

from __future__ import annotations

from typing import Any

from lowbit.models.arch import ArchConfig, ConfigError, LinearShape
from lowbit.models.hf import LoadedModel, load_hf_dir, save_hf_dir
from lowbit.models.synthetic import synthetic_tokenizer, synthetic_weights
from lowbit.models.tokenizer import IncrementalDecoder, TextTokenizer, load_tokenizer
from lowbit.models.weights import (
    ArrayWeights,
    LazyWeights,
    SafetensorsWeights,
    WeightError,
    WeightStore,
    check_weights,
)

_REFERENCE = ("capture_linear_inputs", "decoder_layer", "embed", "final_logits", "reference_logits")


def __getattr__(name: str) -> Any:
    if name in _REFERENCE:
        from lowbit.models import reference

        return getattr(reference, name)
    raise AttributeError(f"module 'lowbit.models' has no attribute {name!r}")


__all__ = [
    "ArchConfig",
    "ArrayWeights",
    "ConfigError",
    "IncrementalDecoder",
    "LazyWeights",
    "LinearShape",
    "LoadedModel",
    "SafetensorsWeights",
    "TextTokenizer",
    "WeightError",
    "WeightStore",
    "capture_linear_inputs",
    "check_weights",
    "decoder_layer",
    "embed",
    "final_logits",
    "load_hf_dir",
    "load_tokenizer",
    "reference_logits",
    "save_hf_dir",
    "synthetic_tokenizer",
    "synthetic_weights",
]

"""Tiny random HF transformers models: the oracle the lowbit float reference is compared against.

HF's own init (std 0.02) makes attention nearly uniform and the residual stream nearly the embedding, so a
wrong RoPE or mask would go unnoticed; `randomize_` draws weights that make every part matter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

FAMILIES: dict[str, tuple[type, type]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}
TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

# name -> (family, config kwargs beyond TINY): the configurations the reference must reproduce
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama_gqa_llama3_rope": ("llama", {"rope_parameters": LLAMA3_ROPE}),
    "llama_bias": ("llama", {"attention_bias": True, "mlp_bias": True, "num_key_value_heads": 4}),
    "llama_linear_rope_mqa": (
        "llama",
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 500.0, "factor": 4.0}, "num_key_value_heads": 1},
    ),
    "llama_tied_head_dim": ("llama", {"tie_word_embeddings": True, "head_dim": 24}),
    "qwen2_tied_window": (
        "qwen2",
        {"tie_word_embeddings": True, "use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1},
    ),
    "qwen2_untied": ("qwen2", {"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}),
    "mistral_window_head_dim": ("mistral", {"sliding_window": 6, "head_dim": 24}),
}


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights that make attention peaked and every layer matter: linears N(0, 1/K), embeddings N(0, 1),
    norms U(0.5, 1.5), biases N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif p.ndim == 1:
                p.normal_(0, 0.1, generator=g)
            elif "embed" in name:
                p.normal_(0, 1.0, generator=g)
            else:
                p.normal_(0, p.shape[1] ** -0.5, generator=g)
    return model


def tiny_model(family: str, seed: int = 0, **kw: Any) -> torch.nn.Module:
    config_cls, model_cls = FAMILIES[family]
    torch.manual_seed(seed)
    return randomize_(model_cls(config_cls(**{**TINY, **kw})).eval(), seed)


def save(model: torch.nn.Module, path: Path, **kw: Any) -> Path:
    model.save_pretrained(path, safe_serialization=True, **kw)
    return path


def hf_logits(model: torch.nn.Module, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.float().numpy()


def random_ids(vocab: int, batch: int, length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, length))


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖ / ‖b‖ in float64; NaN anywhere gives inf (never passes)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
        return float("inf")
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))

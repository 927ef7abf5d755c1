"""Architectures the planner knows by name (HF config.json values), so a plan can be simulated for a model that
is not compiled here: `get_arch("llama-2-70b")`. An artifact's own config.json is read by the CLI instead."""

from __future__ import annotations

from lowbit.models.arch import ArchConfig

MODELS: dict[str, ArchConfig] = {
    # meta-llama/Llama-2-70b-hf
    "llama-2-70b": ArchConfig("llama", 32000, 8192, 28672, 80, 64, 8, 128, 1e-5, max_position_embeddings=4096),
    # meta-llama/Llama-2-7b-hf
    "llama-2-7b": ArchConfig("llama", 32000, 4096, 11008, 32, 32, 32, 128, 1e-5, max_position_embeddings=4096),
    # meta-llama/Meta-Llama-3-8B
    "llama-3-8b": ArchConfig("llama", 128256, 4096, 14336, 32, 32, 8, 128, 1e-5, 5e5, max_position_embeddings=8192),
    # meta-llama/Meta-Llama-3-70B
    "llama-3-70b": ArchConfig("llama", 128256, 8192, 28672, 80, 64, 8, 128, 1e-5, 5e5, max_position_embeddings=8192),
}  # fmt: skip


def get_arch(name: str) -> ArchConfig:
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"model {name!r} is not known; use one of {sorted(MODELS)} or give an artifact") from None


__all__ = ["MODELS", "get_arch"]

"""Model families (Llama, Mistral, Qwen2): architecture config, HF / synthetic loading, float references."""

from lowbit.models.arch import ArchConfig, ConfigError, LinearShape

__all__ = ["ArchConfig", "ConfigError", "LinearShape"]

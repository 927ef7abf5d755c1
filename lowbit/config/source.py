"""The model a recipe describes: `arch_config` (synthetic) and `model_arch` (synthetic, or an HF dir's
config.json), both as `lowbit.models.ArchConfig`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lowbit.config.errors import FieldProblem, RecipeError
from lowbit.config.schema import Architecture, ModelYaml
from lowbit.models import ArchConfig, ConfigError


def arch_config(cfg: ModelYaml) -> ArchConfig | None:
    """The architecture of a synthetic model (None for hf_dir: the loader reads config.json)."""
    if cfg.model.source != "synthetic":
        return None
    return build_arch(cfg.model.architecture or Architecture(), cfg.model.dtype)


def build_arch(a: Architecture, dtype: str = "float32") -> ArchConfig:
    """ArchConfig from the schema's architecture section; ConfigError (from ArchConfig) if inconsistent."""
    head_dim = a.head_dim if a.head_dim is not None else a.hidden_size // a.num_heads
    return ArchConfig(
        model_type=a.model_type,
        vocab_size=a.vocab_size,
        hidden_size=a.hidden_size,
        intermediate_size=a.intermediate_size,
        num_layers=a.num_layers,
        num_heads=a.num_heads,
        num_kv_heads=a.num_kv_heads,
        head_dim=head_dim,
        rms_norm_eps=a.rms_norm_eps,
        rope_theta=a.rope_theta,
        rope_scaling=tuple(sorted(_rope(a.rope_scaling).items())),
        max_position_embeddings=a.max_position_embeddings,
        tie_word_embeddings=a.tie_word_embeddings,
        qkv_bias=a.qkv_bias,
        o_bias=a.o_bias,
        mlp_bias=a.mlp_bias,
        hidden_act=a.hidden_act,
        sliding_window=a.sliding_window,
        bos_token_id=a.bos_token_id,
        eos_token_id=tuple(a.eos_token_id),
        torch_dtype=dtype,
    )


def _rope(scaling: dict[str, Any] | None) -> dict[str, Any]:
    # HF rope_scaling as ArchConfig keeps it: "type" spelled rope_type, the default type dropped
    rope = dict(scaling or {})
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope.pop("type")
    rope.pop("rope_theta", None)
    return {} if rope.get("rope_type", "default") == "default" else rope


def model_arch(cfg: ModelYaml) -> ArchConfig:
    """The architecture of the recipe's model: synthetic, or read from `model.path`/config.json (no weights).
    Raises RecipeError naming model.path or model.architecture."""
    if cfg.model.source == "synthetic":
        try:
            arch = arch_config(cfg)
        except ConfigError as e:
            err = FieldProblem(str(e), "fix the architecture", value=cfg.model.architecture)
            raise RecipeError([cfg.origins.problem(err, ("model", "architecture"))]) from None
        assert arch is not None
        return arch
    path = Path(cfg.model.path or ".") / "config.json"
    try:
        return ArchConfig.from_hf_config(json.loads(path.read_text()))
    except OSError as e:
        err = FieldProblem(f"cannot read {path} ({e.strerror})", "point model.path at an HF checkpoint directory")
    except json.JSONDecodeError as e:
        err = FieldProblem(f"{path} is not valid JSON ({e.msg}, line {e.lineno})", "restore the config.json")
    except ConfigError as e:
        err = FieldProblem(str(e), "lowbit loads Llama, Mistral and Qwen2 checkpoints")
    raise RecipeError([cfg.origins.problem(err, ("model", "path"), cfg.model.path)])


__all__ = ["arch_config", "build_arch", "model_arch"]

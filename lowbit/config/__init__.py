"""`model.yaml`: schema, validation, overrides; `LinearSpec`, the per-module quantization decision.

    cfg = load_config("model.yaml", sets=["quantization.weights.group_size=64"])   # RecipeError lists problems
    arch = model_arch(cfg)                   # ArchConfig: synthetic, or the hf dir's config.json
    check_against_model(cfg, arch)           # group sizes, regexes, lengths -- before any weight is loaded
    spec = resolve_linear(cfg, "model.layers.0.mlp.down_proj")   # LinearSpec, or None = dense
    cfg.to_yaml()                            # the fully resolved file, for the artifact

See lowbit/config/README.md for the schema.
"""

from lowbit.config.check import RecipeWarning
from lowbit.config.check_model import check_against_model, valid_group_sizes
from lowbit.config.errors import Problem, RecipeError
from lowbit.config.load import load_config, parse_config
from lowbit.config.recipe import resolve_linear
from lowbit.config.schema import SCHEMA_VERSION, ModelYaml
from lowbit.config.source import arch_config, model_arch
from lowbit.config.spec import ALGORITHMS, SCHEMES, LinearSpec

__all__ = [
    "ALGORITHMS",
    "SCHEMA_VERSION",
    "SCHEMES",
    "LinearSpec",
    "ModelYaml",
    "Problem",
    "RecipeError",
    "RecipeWarning",
    "arch_config",
    "check_against_model",
    "load_config",
    "model_arch",
    "parse_config",
    "resolve_linear",
    "valid_group_sizes",
]

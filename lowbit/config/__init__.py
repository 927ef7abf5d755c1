"""`model.yaml`: schema, validation, overrides; `LinearSpec`, the per-module quantization decision."""

from lowbit.config.spec import ALGORITHMS, SCHEMES, LinearSpec

__all__ = ["ALGORITHMS", "SCHEMES", "LinearSpec"]

"""Quantization algorithms and their NumPy reference numerics (see README.md in this folder).

The reference numerics are imported eagerly. The algorithms (RTN/QoQ under a LinearSpec, AWQ, GPTQ,
rotation, smoothing, checkpoint import) load on first use: they build `lowbit.ops.QuantizedWeight`, and
`lowbit.ops` itself imports the reference numerics from this package.
"""

from importlib import import_module
from typing import Any

from lowbit.quant import reference
from lowbit.quant.reference import *  # noqa: F403 — the reference API is the package API
from lowbit.quant.reference import __all__ as _reference_all

_ALGORITHMS = {
    "lowbit.quant.rtn": ("SpecQuantizer", "fake_quantize", "qoq_quantize", "rtn_quantize"),
    "lowbit.quant.awq": (
        "AwqScale",
        "apply_clip",
        "awq_quantize",
        "awq_search_clip",
        "awq_search_scales",
    ),
    "lowbit.quant.gptq": ("GptqResult", "Hessian", "gptq_decide", "gptq_quantize"),
    "lowbit.quant.rotation": (
        "fold_rmsnorm",
        "hadamard",
        "random_orthogonal_hadamard",
        "rotate_embedding",
        "rotate_input",
        "rotate_model",
        "rotate_output",
    ),
    "lowbit.quant.smoothing": (
        "Smoothed",
        "apply_smoothing",
        "fold_scales_into_linear_rows",
        "fold_scales_into_norm",
        "scale_input_columns",
        "smooth_scales",
        "tie_gqa_scales",
        "weight_absmax",
    ),
    "lowbit.quant.checkpoint_import": (
        "export_awq",
        "export_gptq",
        "import_awq",
        "import_gptq",
        "import_hf_quantized",
    ),
}
_LAZY = {name: module for module, names in _ALGORITHMS.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lowbit.quant' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["reference", *_reference_all, *_LAZY]

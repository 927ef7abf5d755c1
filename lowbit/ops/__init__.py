"""User-facing quantized ops: `quantize` a linear weight, run `quantized_linear` on it (see README.md)."""

from lowbit.ops.linear import GEMV_MAX_M, quantized_linear, select_backend, select_kernel
from lowbit.ops.weight import SCHEMES, ZERO_MODES, QuantizedWeight, quantize

__all__ = [
    "GEMV_MAX_M",
    "SCHEMES",
    "ZERO_MODES",
    "QuantizedWeight",
    "quantize",
    "quantized_linear",
    "select_backend",
    "select_kernel",
]

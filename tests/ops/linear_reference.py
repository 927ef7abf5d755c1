"""The independent NumPy oracle for quantized_linear and its error bounds (shared by the ops tests)."""

from __future__ import annotations

import numpy as np

from lowbit.dtypes import dtype
from lowbit.ops import GEMV_MAX_M
from lowbit.quant import quantize_per_token_int8

HOST = {"float16": np.float16, "bfloat16": dtype("bfloat16").host_dtype, "float32": np.float32}
# relative Frobenius bounds against float64 x @ Ŵᵀ. GEMV (M <= 16): output rounding only (2× 2^-11 fp16,
# 2× 2^-8 bf16) plus fp32 accumulation; GEMM (M > 16) also rounds each dequantized weight to the activation
# dtype; W4A8: the int32 main loop is exact, the fp32 epilogue and the output rounding remain.
GEMV_BOUND = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2e-5}
GEMM_BOUND = {"float16": 2.5e-3, "bfloat16": 2.0**-6, "float32": 4e-5}
W4A8_BOUND = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 1e-5}


def reference(x: np.ndarray, qw) -> np.ndarray:
    """float64 x[..., K] @ Ŵ[N, K]ᵀ; W4A8 schemes see the per-token int8 activations, as the kernels do."""
    x64 = np.asarray(x).astype(np.float64)
    if qw.scheme != "w_a16":
        qa, sa = quantize_per_token_int8(np.asarray(x).astype(np.float32))
        x64 = qa.astype(np.float64) * sa.astype(np.float64)[..., None]
    return x64 @ qw.dequantize().astype(np.float64).T


def bound(qw, m: int, adtype: str) -> float:
    if qw.scheme != "w_a16":
        return W4A8_BOUND[adtype]
    return (GEMV_BOUND if m <= GEMV_MAX_M else GEMM_BOUND)[adtype]


def relative_error(out, ref) -> float:
    """‖out − ref‖ / ‖ref‖; NaN (never passes a bound) when out has NaN."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref)) / max(float(np.linalg.norm(ref)), 1e-30)

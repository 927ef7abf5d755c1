"""Per-token symmetric INT8 activation quantization (the A8 of W4A8; ANCHORS, QoQ / QServe).

    sa = fp16(amax / 127)             one scale per token (row), stored in float16
    qa = sat(rint(x / sa), −127, 127)

ANCHORS writes qa = sat(rne(x·127/amax)), i.e. divides by the *unrounded* scale. We divide by the stored
fp16 scale instead so that qa·sa is the reconstruction a kernel actually computes; the two differ by at
most one code where x/sa sits near a rounding boundary. Because fp16(amax/127) may round down, |x/sa|
can exceed 127 by a hair, hence the saturation; we saturate to ±127 (not −128) to stay symmetric.
Guard (`storage_scale`): an all-zero row (amax = 0) gets sa = 1 and codes 0; a row whose scale
underflows fp16 gets the smallest fp16 subnormal; no NaN or inf.
"""

from __future__ import annotations

import numpy as np

from lowbit.quant.grid import check_finite, storage_scale

INT8_SYM_MAX = 127


def quantize_per_token_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize activations x[..., K] per token (last axis) to symmetric INT8.

    Returns (qa, sa): qa [..., K] int8 in [−127, 127], sa [...] float16 with x ≈ qa · sa[..., None].
    Raises ValueError on NaN/inf input.
    """
    x = np.asarray(x, dtype=np.float32)  # x: [..., K]
    check_finite(x, "x")
    amax = np.abs(x).max(axis=-1).astype(np.float64)  # amax: [...]
    sa = storage_scale(amax / INT8_SYM_MAX, np.float16)  # sa: [...]
    with np.errstate(over="ignore"):
        qa = np.clip(np.rint(x / sa[..., None].astype(np.float32)), -INT8_SYM_MAX, INT8_SYM_MAX)
    return qa.astype(np.int8), sa


def dequantize_per_token(qa: np.ndarray, sa: np.ndarray) -> np.ndarray:
    """x̂[..., K] = qa[..., K] · sa[...] in float32."""
    return np.asarray(qa).astype(np.float32) * np.asarray(sa).astype(np.float32)[..., None]

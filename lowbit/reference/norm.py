"""RMSNorm in float64 (HF LlamaRMSNorm; vLLM's rms_norm and fused_add_rms_norm).

rms_norm(x)          = x / sqrt(mean(x², over D) + eps) · weight
add_rms_norm(x, r)   = (rms_norm(x + r), x + r)       the sum becomes the next residual
"""

from __future__ import annotations

import numpy as np


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Normalize x [..., D] by its root mean square over D, times weight [D]; float64 [..., D].

    Raises ValueError when weight is not [D] or eps is negative."""
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"weight has shape {weight.shape}; expected [D] = [{x.shape[-1]}] to match x {x.shape}")
    if not eps >= 0:
        raise ValueError(f"eps {eps!r} must be >= 0 (1e-5 or 1e-6 in most checkpoints)")
    inv_rms = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)  # inv_rms: [..., 1]
    return x * inv_rms * weight


def add_rms_norm(
    x: np.ndarray, residual: np.ndarray, weight: np.ndarray, eps: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Fused residual add + RMSNorm: returns (rms_norm(x + residual), x + residual), both [..., D] float64."""
    x = np.asarray(x, dtype=np.float64)
    residual = np.asarray(residual, dtype=np.float64)
    if x.shape != residual.shape:
        raise ValueError(f"x {x.shape} and residual {residual.shape} must have the same shape")
    new_residual = x + residual  # [..., D]
    return rms_norm(new_residual, weight, eps), new_residual

"""KV cache quantization: per token, per KV head, asymmetric uint{4, 8} (ANCHORS, QoQ / QServe KV4/KV8).

For each vector x[..., :] over the head dimension D (x: [T, H, D] → one (scale, zero) per [t, h]):
    scale = fp16((max − min) / (2^b − 1))        zero = −min / scale     (real-valued, float32)
    q     = clip(rint(x / scale + zero), 0, 2^b − 1)
    x̂     = (q − zero)·scale
ANCHORS writes zero = −(2^b − 1)·min / (max − min), i.e. with the unrounded scale; we divide by the stored
fp16 scale so the row minimum reconstructs exactly ((0 − zero)·scale = min up to float32 rounding).
The zero stays float32: a row that does not straddle 0 has |zero| > 2^b − 1, possibly beyond fp16's range.

Zero-range guard: QServe divides by (max − min) and yields NaN for a constant row. Here, whenever the fp16
scale would be 0 (max == min, or a range so small it underflows fp16), scale = 1 and zero = −min, so every
code is 0 and x̂ = min: a constant row reconstructs exactly, a near-constant one within its range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.quant.grid import IntGrid, check_finite

FP16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True, eq=False)
class KVQuant:
    """Quantized K or V vectors. codes: [..., D] uint8; scales: [...] float16; zeros: [...] float32."""

    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    bits: int

    def dequantize(self) -> np.ndarray:
        """x̂[..., D] in float32."""
        return dequantize_kv(self.codes, self.scales, self.zeros)


def quantize_kv(x: np.ndarray, *, bits: int = 4) -> KVQuant:
    """Quantize K/V x[..., D] per vector over the last axis to uint{bits} (4: KV4, 8: KV8; any 1..8 works).

    Raises ValueError for bits outside 1..8 or NaN/inf input.
    """
    grid = IntGrid(bits, signed=False)
    x = np.asarray(x, dtype=np.float32)  # x: [..., D]
    check_finite(x, "x")
    lo = x.min(axis=-1).astype(np.float64)  # lo, hi: [...]
    hi = x.max(axis=-1).astype(np.float64)
    scale = np.minimum((hi - lo) / grid.steps, FP16_MAX).astype(np.float16)
    flat = scale == 0  # max == min, or a range that underflows fp16
    scale = np.where(flat, np.float16(1), scale)
    zero = np.where(flat, -lo, -lo / scale.astype(np.float64)).astype(np.float32)
    q = np.rint(x / scale.astype(np.float32)[..., None] + zero[..., None])
    return KVQuant(np.clip(q, 0, grid.qmax).astype(np.uint8), scale, zero, grid.bits)


def dequantize_kv(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray) -> np.ndarray:
    """x̂[..., D] = (codes[..., D] − zeros[...])·scales[...] in float32."""
    s = np.asarray(scales).astype(np.float32)[..., None]
    z = np.asarray(zeros).astype(np.float32)[..., None]
    return (np.asarray(codes).astype(np.float32) - z) * s

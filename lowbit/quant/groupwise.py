"""Round-to-nearest with group-wise min-max parameters: the RTN / AWQ reference quantizer.

A weight W[..., K] is cut into groups of G consecutive elements along K (G = -1 or K: per channel).
Per group (ANCHORS, AWQ/GPTQ/Marlin):
  symmetric:   s = amax / qmax on a signed grid, no zero                 x̂ = q·s
  asymmetric:  s = (max − min).clip(1e-5) / (2^b − 1)
               POST_SCALE  z  = clip(qmin − rint(min / s), qmin, qmax)    x̂ = (q − z)·s   (AWQ; qmin = 0 on uint)
                           with min = min(w, 0), max = max(w, 0)          (GPTQ's range: it holds 0)
               PRE_SCALE   z' = qmin·s − min                              x̂ = q·s − z'   (covers [min, max])
Options: `integer_scales` rounds s to an integer ≥ 1 (QoQ level 2 style); `scale_dtype` float16 rounds s
to fp16 like real checkpoints, and a PRE_SCALE float zero z' with it. Zeros and codes are always computed
from the *stored* scale (and codes from the stored z'), so the stored (codes, scales, zeros) reproduce
`dequantize()` exactly and every code is round-to-nearest for them: within s/2 inside the grid, whose ends
an fp16 z' moves by at most |z'|·2^-11 (what a value past them is clipped by).

An integer zero puts 0 on the grid, so the post-scale range is widened to hold 0 (GPTQ's rule). On a group
that straddles 0, as real weight groups do, this is AWQ's formula exactly. AWQ's own min-max instead
clips the zero, which loses a one-sided group: a constant group of 0.7 came back as 1e-5, and a group of
0.70 and 0.75 came back as 0.05 throughout. The pre-scale convention covers [min, max] as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lowbit.quant.affine import ZeroConvention, dequantize, quantize, resolve_group_size
from lowbit.quant.grid import IntGrid, check_finite, storage_scale

AWQ_MIN_RANGE = 1e-5  # AWQ clamps (max − min) before dividing, so a constant group gets a tiny scale


@dataclass(frozen=True, eq=False)
class GroupQuant:
    """Codes and group parameters of a weight W[..., K] quantized in groups of `group_size` along K.

    codes: [..., K] int8/uint8; scales: [..., K // G] float16/float32; zeros: [..., K // G] int32
    (POST_SCALE), float32 (PRE_SCALE) or None (symmetric, zero_convention None).
    """

    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray | None
    group_size: int
    bits: int
    signed: bool
    zero_convention: ZeroConvention | None

    @property
    def grid(self) -> IntGrid:
        return IntGrid(self.bits, self.signed)

    def dequantize(self) -> np.ndarray:
        """Ŵ[..., K] in float32."""
        return dequantize(
            self.codes,
            self.scales,
            self.zeros,
            convention=self.zero_convention or ZeroConvention.POST_SCALE,
            group_size=self.group_size,
        )


def quantize_groupwise(
    w: np.ndarray,
    *,
    bits: int | Any,
    group_size: int = -1,
    symmetric: bool = False,
    signed: bool | None = None,
    zero_convention: ZeroConvention = ZeroConvention.POST_SCALE,
    integer_scales: bool = False,
    scale_dtype: Any = np.float32,
) -> GroupQuant:
    """Quantize W[..., K] round-to-nearest with min-max parameters per group of `group_size` along K.

    bits: 1..8, or a dtype-like with `.bits`/`.is_signed` (then `signed` comes from it). signed defaults to
    True for symmetric and False for asymmetric. symmetric needs a signed grid with qmax ≥ 1 (bits ≥ 2).
    Errors: group_size not dividing K, symmetric on an unsigned or 1-bit grid, non-finite weights.
    """
    if signed is None and not hasattr(bits, "is_signed"):
        signed = symmetric
    grid = IntGrid.of(bits, signed)
    w = np.asarray(w, dtype=np.float32)
    if w.ndim == 0:
        raise ValueError("w is a scalar; pass a weight of shape [..., K]")
    check_finite(w, "w")
    k = w.shape[-1]
    g = resolve_group_size(group_size, k)
    wg = w.reshape(*w.shape[:-1], k // g, g)  # wg: [..., K // G, G]

    if symmetric:
        if not grid.signed or grid.qmax < 1:
            raise ValueError(
                f"symmetric quantization needs a signed grid with qmax >= 1, got bits={grid.bits} "
                f"signed={grid.signed}; use signed=True with bits >= 2, or symmetric=False"
            )
        raw = np.abs(wg).max(axis=-1).astype(np.float64) / grid.qmax  # raw: [..., K // G]
        scales = _finish_scales(raw, integer_scales, scale_dtype)
        codes = quantize(w, scales, None, bits=grid.bits, signed=grid.signed, group_size=g)
        return GroupQuant(codes, scales, None, g, grid.bits, grid.signed, None)

    lo = wg.min(axis=-1).astype(np.float64)  # lo, hi: [..., K // G]
    hi = wg.max(axis=-1).astype(np.float64)
    if zero_convention == ZeroConvention.POST_SCALE:  # an integer zero: the range holds 0 (GPTQ's rule)
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    raw = np.clip(hi - lo, AWQ_MIN_RANGE, None) / grid.steps
    scales = _finish_scales(raw, integer_scales, scale_dtype)
    s = scales.astype(np.float64)
    if zero_convention == ZeroConvention.POST_SCALE:
        zeros = np.clip(grid.qmin - np.rint(lo / s), grid.qmin, grid.qmax).astype(np.int32)
    elif zero_convention == ZeroConvention.PRE_SCALE:
        # the zero in its storage dtype before the codes are taken: they are then round-to-nearest for the
        # stored (s, z'), not for a float32 z' that a float16 weight never holds
        # (a z' past the storage dtype's range stays float32: `lowbit.ops.quantize` refuses to store it so)
        z = (grid.qmin * s - lo).astype(np.float32)
        with np.errstate(over="ignore"):
            stored = z.astype(scale_dtype).astype(np.float32)
        zeros = np.where(np.isfinite(stored), stored, z)
    else:
        raise ValueError(f"zero_convention {zero_convention!r} is not a ZeroConvention; use POST_SCALE or PRE_SCALE")
    codes = quantize(w, scales, zeros, bits=grid.bits, signed=grid.signed, convention=zero_convention, group_size=g)
    return GroupQuant(codes, scales, zeros, g, grid.bits, grid.signed, zero_convention)


def _finish_scales(raw: np.ndarray, integer_scales: bool, scale_dtype: Any) -> np.ndarray:
    if integer_scales:
        raw = np.maximum(np.rint(raw), 1)  # integer scales ≥ 1 (QoQ level 2); zero-range groups get 1
    return storage_scale(raw, scale_dtype)

"""KV cache formats: float16/bfloat16, KV8/KV4 (per token, per KV head, asymmetric uint8/uint4 with fp16
scale and fp16 zero; ANCHORS, QoQ / QServe KV4/KV8) and fp8_e4m3 with a per-layer scale (vLLM k_scale).

KV8 / KV4 (`quantize_kv`, kv_dtype "int8" / "int4"): for each vector x[..., :] over the head dimension D
(x: [T, H, D] -> one (scale, zero) per [t, h]), with steps = 2^b − 1 and all arithmetic in float64:

    scale = ceil16(max(range / steps, 2^⌈log2(|min|·2^-11)⌉))        range = max − min
    zero  = rne16(−min / scale)                                        real-valued, |zero| <= 2^11
    q     = clip(rint(x / scale + zero), 0, steps)                     with the *stored* scale and zero
    x̂     = (q − zero)·scale                                           exact in float64

ceil16 rounds up to float16 (saturating at 65504), rne16 to nearest-even. Why each piece:
* The scale rounds *up*, so range / scale <= steps: the row fits the grid without clipping.
* Zero bound (the second term of the max): fp16 spaces numbers of magnitude <= 2^11 at most 1 apart, so
  the stored zero is within half a code of −min/scale, and because the codes are computed from the
  stored zero they absorb that half code (x/scale + zero stays in [−1/2, steps + 1/2]). A row far from 0
  with a tiny range (values in [1000, 1000.01]) would need |zero| ≈ 10^6, beyond fp16; its scale is
  raised to a power of two >= |min|·2^-11 instead, i.e. the step becomes the fp16 precision of the row.
  (2^14, as the issue first suggested, leaves the zero up to 4 codes off, which clips on a 16-code grid.)
* Error bound, every element of every row: |x̂ − x| <= scale/2, where
      scale <= max(range/steps·(1 + 2^-10) + 2^-24, |min|·2^-10).
  So KV4 is off by at most ~range/30, and never by more than |min|·2^-11 (fp16's own precision of the
  row) because of the zero bound. Holds while range <= steps·65504 and |min| <= 2^11·65504; beyond that
  the scale saturates at 65504, codes clip and the zero is clipped to ±65504 (still finite).
* Zero-range guard: a constant row needs no special case: its range term is 0 and the zero term makes
  scale a power of two with −c/scale exact in fp16 whenever c is, so an fp16 constant reconstructs
  exactly (all codes 0). Only an all-zero row has both terms 0: scale = 1, zero = 0, codes 0 (exact).
  QServe divides by (max − min) and yields NaN there.

ANCHORS writes zero = −15·min/(max − min), i.e. with the unrounded scale and no zero bound; the codes
differ by at most one where x/scale + zero sits near a rounding boundary.

fp8_e4m3 (`quantize_kv_fp8`): codes = e4m3(x / layer_scale), round to nearest even, saturating at ±448
(lowbit.dtypes' "fn" convention; ml_dtypes would give NaN), x̂ = e4m3 value · layer_scale. Relative error
<= 2^-4 while |x/layer_scale| in [2^-6, 448]; absolute <= 2^-10·layer_scale below that.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
from numpy.typing import DTypeLike

from lowbit.dtypes import decode, encode
from lowbit.quant.grid import IntGrid, check_finite

FP16_MAX = float(np.finfo(np.float16).max)
ZERO_BOUND = 2.0**11  # |zero| <= this keeps the fp16 zero within half a code of −min / scale
FP8_E4M3_MAX = 448.0
KV_DTYPES = ("float16", "bfloat16", "float32", "int8", "int4", "fp8_e4m3")  # every KV cache format
KV_BITS = {"int8": 8, "int4": 4}  # KV8 / KV4: asymmetric uint8 / uint4 codes


@dataclass(frozen=True, eq=False)
class KVQuant:
    """KV8/KV4 vectors. codes: [..., D] uint8 in [0, 2^bits); scales, zeros: [...] float16."""

    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    bits: int

    def dequantize(self, dtype: DTypeLike = np.float64) -> np.ndarray:
        """x̂[..., D] = (codes − zeros)·scales (exact in float64; `dtype` rounds it once)."""
        return dequantize_kv(self.codes, self.scales, self.zeros, dtype)


def quantize_kv(x: np.ndarray, *, bits: int = 4) -> KVQuant:
    """Quantize K/V x[..., D] per vector over the last axis to uint{bits} with fp16 scale and zero
    (bits 4: KV4, 8: KV8; any 1..8 works). See the module docstring for the formulas and error bound.

    Raises ValueError for bits outside 1..8 or NaN/inf input.
    """
    grid = IntGrid(bits, signed=False)
    x = np.asarray(x, dtype=np.float64)  # x: [..., D]
    check_finite(x, "x")
    lo, hi = x.min(axis=-1), x.max(axis=-1)  # lo, hi: [...]
    mant, expo = np.frexp(np.abs(lo) / ZERO_BOUND)  # |lo|/2^11 = mant·2^expo, mant in [0.5, 1)
    zero_term = np.where(mant == 0.5, np.ldexp(1.0, expo - 1), np.ldexp(1.0, expo))  # 2^⌈log2⌉; 0 -> 0
    zero_term = np.where(lo == 0, 0.0, zero_term)
    raw = np.maximum((hi - lo) / grid.steps, zero_term)  # raw: [...]
    scale = np.where(raw == 0, np.float16(1), _ceil_fp16(raw))  # all-zero rows: scale 1, zero 0
    s = scale.astype(np.float64)
    zero = (np.clip(-lo / s, -FP16_MAX, FP16_MAX) + 0.0).astype(np.float16)  # <= 2^11 unless saturated; no −0
    q = np.rint(x / s[..., None] + zero.astype(np.float64)[..., None])
    return KVQuant(np.clip(q, 0, grid.qmax).astype(np.uint8), scale, zero, grid.bits)


def dequantize_kv(
    codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, dtype: DTypeLike = np.float64
) -> np.ndarray:
    """x̂[..., D] = (codes[..., D] − zeros[...])·scales[...].

    Exact in float64 (the default): an integer code minus an fp16 zero needs at most 41 bits, times an
    fp16 scale 52. Pass dtype=np.float32 for one rounding to float32.
    """
    s = np.asarray(scales).astype(np.float64)[..., None]
    z = np.asarray(zeros).astype(np.float64)[..., None]
    return ((np.asarray(codes).astype(np.float64) - z) * s).astype(dtype)


def quantize_kv_fp8(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """fp8_e4m3 codes [..., D] uint8 of x / scale: round to nearest even, saturate at ±448.

    `scale` is one float per layer and tensor (vLLM's k_scale / v_scale, e.g. from `fp8_kv_scale`),
    stored as float32. Raises ValueError for NaN/inf x or a scale that is not finite and positive.
    """
    layer_scale = _check_layer_scale(scale)
    x = np.asarray(x, dtype=np.float64)  # x: [..., D]
    check_finite(x, "x")
    return encode("fp8_e4m3", x / layer_scale)


def dequantize_kv_fp8(codes: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """x̂[..., D] = e4m3(codes)·scale in float64 (exact)."""
    return decode("fp8_e4m3", codes).astype(np.float64) * _check_layer_scale(scale)


def fp8_kv_scale(x: np.ndarray) -> float:
    """A per-layer fp8 scale that maps max|x| to 448 (float32; 1.0 for an all-zero x)."""
    amax = float(np.max(np.abs(np.asarray(x, dtype=np.float64)), initial=0.0))
    return float(np.float32(amax / FP8_E4M3_MAX)) if amax > 0 else 1.0


@dataclass(frozen=True, eq=False)
class KVCacheQuant:
    """K or V in one of the KV cache formats (`kv_dtype` in KV_DTYPES).

    codes [..., D]: float16 values, ml_dtypes.bfloat16 values, uint8 KV8/KV4 codes (KV4 unpacked, one
    code per byte) or uint8 fp8_e4m3 bit patterns. scales, zeros [...]: float16 for int8/int4, else None.
    layer_scale: the fp8 per-layer scale (1.0 for the other formats).
    """

    kv_dtype: str
    codes: np.ndarray
    scales: np.ndarray | None = None
    zeros: np.ndarray | None = None
    layer_scale: float = 1.0

    def dequantize(self) -> np.ndarray:
        """x̂[..., D] in float64 (exact)."""
        return dequantize_kv_cache(self.codes, self.kv_dtype, self.scales, self.zeros, self.layer_scale)


def quantize_kv_cache(x: np.ndarray, kv_dtype: str, *, fp8_scale: float = 1.0) -> KVCacheQuant:
    """Store K or V x[..., D] (after RoPE) in the KV cache format `kv_dtype`.

    float16/bfloat16/float32: round to nearest even (ValueError if a value overflows the format);
    int8/int4: KV8/KV4 `quantize_kv`; fp8_e4m3: `quantize_kv_fp8` with layer scale `fp8_scale`.
    """
    kv_dtype = check_kv_dtype(kv_dtype)
    x = np.asarray(x, dtype=np.float64)  # x: [..., D]
    check_finite(x, "x")
    if kv_dtype in KV_BITS:
        kv = quantize_kv(x, bits=KV_BITS[kv_dtype])
        return KVCacheQuant(kv_dtype, kv.codes, kv.scales, kv.zeros)
    if kv_dtype == "fp8_e4m3":
        return KVCacheQuant(kv_dtype, quantize_kv_fp8(x, fp8_scale), layer_scale=_check_layer_scale(fp8_scale))
    host = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}[kv_dtype]
    values = encode(kv_dtype, x).view(host)  # rounded once from float64 (ml_dtypes' cast goes via float32)
    if not np.all(np.isfinite(values.astype(np.float64))):
        big = float(np.abs(x).max())
        raise ValueError(
            f"x has values up to {big:g}, beyond {kv_dtype}'s largest finite value; use kv_dtype "
            f"'bfloat16' or a quantized format (int8, int4, fp8_e4m3 with a layer scale)"
        )
    return KVCacheQuant(kv_dtype, values)


def dequantize_kv_cache(
    codes: np.ndarray,
    kv_dtype: str,
    scales: np.ndarray | None = None,
    zeros: np.ndarray | None = None,
    layer_scale: float = 1.0,
) -> np.ndarray:
    """Values [..., D] float64 of KV cache `codes` [..., D] in format `kv_dtype` (exact).

    int8/int4 need `scales` and `zeros` [...] (float16); fp8_e4m3 uses `layer_scale`.
    """
    kv_dtype = check_kv_dtype(kv_dtype)
    if kv_dtype in KV_BITS:
        if scales is None or zeros is None:
            raise ValueError(f"kv_dtype {kv_dtype!r} needs scales and zeros (float16, one per token and head)")
        return dequantize_kv(codes, scales, zeros)
    if kv_dtype == "fp8_e4m3":
        return dequantize_kv_fp8(codes, layer_scale)
    return np.asarray(codes).astype(np.float64)


def check_kv_dtype(kv_dtype: str) -> str:
    """Return `kv_dtype` if it is one of KV_DTYPES, else raise ValueError naming the choices."""
    if kv_dtype not in KV_DTYPES:
        raise ValueError(
            f"kv_dtype {kv_dtype!r} is not a KV cache format; use one of {', '.join(KV_DTYPES)} "
            f"(int8/int4 are the asymmetric KV8/KV4 formats)"
        )
    return kv_dtype


def _ceil_fp16(raw: np.ndarray) -> np.ndarray:
    """The smallest float16 >= raw (raw >= 0, float64), saturating at 65504."""
    s = np.minimum(raw, FP16_MAX).astype(np.float16)  # nearest even, may be below raw
    up = np.nextafter(s, np.float16(FP16_MAX))  # the next float16 up (65504 stays: saturation)
    return np.where(s.astype(np.float64) < raw, up, s).astype(np.float16)


def _check_layer_scale(scale: float) -> float:
    s = float(np.float32(scale))
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"fp8 layer scale {scale!r} must be a finite positive float (e.g. fp8_kv_scale(x))")
    return s

"""Integer code grids and the scale guard shared by every quantizer in this package.

A grid is just `bits` and signedness; its bounds are *derived* (ANCHORS, Data types: intN is
[-2^(N-1), 2^(N-1)-1], uintN is [0, 2^N-1]), never tabulated. This module does not import
`lowbit.dtypes` so the two layers stay independent; `IntGrid.of` accepts any dtype-like value with
`bits` and `is_signed` attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_BITS, MAX_BITS = 1, 8


@dataclass(frozen=True)
class IntGrid:
    """The integer code grid of a `bits`-wide signed (two's complement) or unsigned integer."""

    bits: int
    signed: bool

    def __post_init__(self) -> None:
        if not (isinstance(self.bits, (int, np.integer)) and MIN_BITS <= self.bits <= MAX_BITS):
            raise ValueError(
                f"bits {self.bits!r} is not an integer width in [{MIN_BITS}, {MAX_BITS}]; "
                f"reference quantizers cover 1..8-bit integer grids"
            )

    @classmethod
    def of(cls, bits: Any, signed: bool | None = None) -> IntGrid:
        """Build a grid from `bits` and `signed`, or from a dtype-like with `.bits` and `.is_signed`."""
        if isinstance(bits, IntGrid):
            return bits
        if hasattr(bits, "bits") and hasattr(bits, "is_signed"):
            return cls(int(bits.bits), bool(bits.is_signed))
        if signed is None:
            raise ValueError(f"signed is None for bits={bits!r}; pass signed=True or signed=False")
        return cls(int(bits), bool(signed))

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def steps(self) -> int:
        """Number of steps between qmin and qmax (2^bits - 1): the divisor of an asymmetric range."""
        return self.qmax - self.qmin

    @property
    def code_dtype(self) -> np.dtype:
        """The smallest NumPy integer dtype that holds every code (int8 or uint8 for 1..8 bits)."""
        return np.dtype(np.int8 if self.signed else np.uint8)

    def codes(self) -> np.ndarray:
        """Every code of the grid, ascending (cheap to enumerate for <= 8 bits)."""
        return np.arange(self.qmin, self.qmax + 1).astype(self.code_dtype)


def storage_scale(raw: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """Round raw (non-negative) scales to their storage `dtype` and make them safe to divide by.

    Guard, applied identically everywhere in `lowbit.quant`:
      * raw == 0 (an all-zero group or row)     -> 1.0, so codes are 0 and reconstruct exactly;
      * raw > 0 that rounds to 0 in `dtype`       -> the dtype's smallest positive subnormal;
      * raw that overflows `dtype` (or is inf)    -> the dtype's largest finite value (codes saturate).
    A NaN raw scale means the input had NaN; it is rejected by the callers before this point.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
        raise ValueError(f"scale_dtype {dtype} is not supported; use numpy.float16 or numpy.float32")
    raw = np.asarray(raw, dtype=np.float64)
    finfo = np.finfo(dtype)
    with np.errstate(over="ignore"):
        s = raw.astype(dtype)
    s = np.where(raw == 0, dtype.type(1), s)
    s = np.where(s == 0, finfo.smallest_subnormal, s)
    return np.minimum(s, finfo.max).astype(dtype)


def format_scale(amax: np.ndarray, largest: float, dtype: Any = np.float32) -> np.ndarray:
    """Stored symmetric scales of a float code format whose largest value is `largest`: amax / largest through
    `storage_scale`, then stepped up one unit of `dtype` at a time (at most 8) wherever the stored scale sits
    below the raw one far enough that amax / s passes `largest` (rounded to nearest, or floored at a subnormal:
    an fp8_e5m2 group of |w| <= 0.0048 with float16 scales stores 8.4e-8 as 6e-8, and its extreme then
    encoded as inf). Codes taken with these scales saturate at most by a rounding of the last step."""
    amax = np.asarray(amax, np.float64)
    dtype = np.dtype(dtype)
    s = storage_scale(amax / largest, dtype)
    for _ in range(8):
        over = amax / s.astype(np.float64) > largest
        if not over.any():
            break
        s = np.where(over, np.nextafter(s, dtype.type(np.inf)), s).astype(dtype)
    return s


def check_finite(x: np.ndarray, name: str) -> None:
    """Reject NaN/inf inputs up front: a quantizer cannot give them a meaningful code."""
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or inf); clean the tensor before quantizing")

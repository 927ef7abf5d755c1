"""NumPy reference numerics: `encode` values to codes, `decode` codes to values, `round_to`, `wrap`,
`holds_exactly`.

Vectorised over arrays of any shape; no Python loop touches an element. Conventions (README.md):

* floats: round to nearest, ties to even (guard + sticky bits on the float64 significand, so float32
  and float64 inputs are rounded once). Overflow saturates to ±max for "fn" types (±inf in, too) and
  goes to ±inf for "ieee" types exactly as IEEE round-to-nearest does (|x| >= max + ulp/2). Underflow
  gives subnormals, then ±0. The sign of -0.0 and of values that round to zero is kept. NaN becomes the
  type's canonical NaN with the input's sign where the type has NaN, else +0 (code 0).
* integers: round half to even, saturate to [min, max], NaN -> 0; codes are two's complement.
* boolean: nonzero (NaN included) -> 1.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import ArrayLike

from lowbit.dtypes.datatype import DataType
from lowbit.dtypes.names import dtype

_F64_MANTISSA = 52
_F64_BIAS = 1023
_F64_EXP_ALL_ONES = 0x7FF


def encode(dt: str | DataType, x: ArrayLike) -> np.ndarray:
    """Encode values `x` (any shape; floats, ints or bools) as codes of `dt`.

    Returns codes of the same shape in `dt.code_dtype` (uint8 for <= 8 bits, uint16, uint32, uint64).
    Floats round to nearest-even with saturation ("fn") or overflow to inf ("ieee"); integers round
    half-even and saturate; see the module docstring for NaN and -0.0."""
    dt = dtype(dt)
    if dt.is_float:
        with np.errstate(invalid="ignore"):  # a signalling NaN input is still just NaN
            x64 = np.asarray(x, dtype=np.float64, order="C")
        return _encode_float(dt, x64)
    if dt.is_bool:
        return (np.asarray(x) != 0).astype(np.uint8)
    return _encode_int(dt, np.asarray(x))


def decode(dt: str | DataType, codes: ArrayLike) -> np.ndarray:
    """Decode codes of `dt` (any shape, integers in [0, 2^bits)) exactly.

    Returns float32 for float types, int64 for integer types, bool for boolean. Raises ValueError
    naming the first code out of range."""
    dt = dtype(dt)
    c = _codes_as_int64(dt, codes)  # same shape, two's-complement bit pattern of each code
    if dt.is_float:
        return _decode_float(dt, c)
    if dt.is_bool:
        return c != 0
    return _sign_extend(c, dt.bits) if dt.kind == "int" else c


def round_to(dt: str | DataType, x: ArrayLike) -> np.ndarray:
    """The value of `dt` nearest to `x` under `encode`'s rules: decode(encode(x)).

    float32 for floats, int64 for integers (saturating round half-even), bool for boolean."""
    dt = dtype(dt)
    return decode(dt, encode(dt, x))


def holds_exactly(container: str | DataType, dt: str | DataType) -> bool:
    """Whether every value of `dt` (at most 16 bits; NaN aside) is also a value of `container`: e.g. every
    int8 or fp8_e4m3 value is a float16 value, but fp8_e6m1's 2^32 and fp7_e5m1's 98304 are not.
    Decided by decoding all of `dt`'s codes and rounding them to `container`."""
    return _holds_exactly(dtype(container), dtype(dt))


@functools.lru_cache(maxsize=256)
def _holds_exactly(container: DataType, dt: DataType) -> bool:
    if dt.bits > 16:
        raise ValueError(f"holds_exactly enumerates the codes of dt; {dt.name} has {dt.bits} > 16 bits")
    values = decode(dt, np.arange(1 << dt.bits, dtype=np.int64)).astype(np.float64)
    values = values[~np.isnan(values)]
    if container.is_integer:
        return bool(np.all((values >= container.min) & (values <= container.max) & (values == np.round(values))))
    return bool(np.array_equal(round_to(container, values).astype(np.float64), values))


def wrap(dt: str | DataType, ints: ArrayLike) -> np.ndarray:
    """Wrap integers to `dt`'s width in two's complement (what a `bits`-wide register holds after
    overflow): int5 wraps 17 to -15, uint4 wraps -1 to 15. Returns int64.

    Raises ValueError for float types or non-integer input (use `round_to` to round first)."""
    dt = dtype(dt)
    if dt.is_float:
        raise ValueError(f"wrap() is for integer types; {dt.name} is a float type: use round_to({dt.name}, x)")
    a = np.asarray(ints)
    if a.dtype.kind not in "biu":
        raise ValueError(
            f"wrap({dt.name}, ...) takes integers, got a {a.dtype} array; round first with "
            f"round_to('int64', x) or np.rint(x).astype(np.int64)"
        )
    v = a.astype(np.int64)
    if dt.bits >= 64:
        return v
    if dt.is_bool:
        return v & 1
    u = v & dt.code_mask
    return _sign_extend(u, dt.bits) if dt.kind == "int" else u


# --- floats ------------------------------------------------------------------------------------------
def _encode_float(dt: DataType, x: np.ndarray) -> np.ndarray:
    x_bits = x.view(np.uint64)  # [...] float64 bit patterns (x is C-contiguous)
    y, emin = dt.mantissa_bits, dt.min_exponent
    sign = x_bits >> np.uint64(63)
    e64 = ((x_bits >> np.uint64(_F64_MANTISSA)) & np.uint64(_F64_EXP_ALL_ONES)).astype(np.int64)
    m64 = x_bits & np.uint64((1 << _F64_MANTISSA) - 1)
    # |x| = sig · 2^(e − 52) with a 53-bit significand (no hidden bit for float64 subnormals)
    sig = m64 | ((e64 != 0).astype(np.uint64) << np.uint64(_F64_MANTISSA))
    e = np.maximum(e64, 1) - _F64_BIAS
    # target grid at this magnitude: step 2^(e_eff − Y), with e_eff clamped up to emin for subnormals
    e_eff = np.maximum(e, emin)
    # shift >= 52 − 23 > 0; beyond 60 the value is < 2^-7 of a step and rounds to 0 either way
    shift = np.minimum(_F64_MANTISSA - y + (e_eff - e), 60).astype(np.uint64)
    kept = (sig >> shift).astype(np.int64)  # whole grid steps, truncated
    guard = (sig >> (shift - np.uint64(1))) & np.uint64(1)  # first dropped bit (the "round" bit)
    sticky = (sig & ((np.uint64(1) << (shift - np.uint64(1))) - np.uint64(1))) != 0  # any bit below
    # code of the truncated magnitude: kept is 2^Y + m for normals, so ((e_eff − emin) << Y) + kept is
    # exponent field << Y | mantissa; a carry out of the mantissa on rounding moves into the exponent
    truncated = ((e_eff - emin) << y) + kept
    odd = (truncated & 1) == 1  # "even" is the code's last bit (the exponent's when Y == 0)
    mag = truncated + ((guard == 1) & (sticky | odd))  # round to nearest, ties to even
    # overflow (and ±inf in): ieee -> ±inf, as IEEE round-to-nearest does; fn -> saturate at ±max
    finite = e64 != _F64_EXP_ALL_ONES
    top = dt.inf_code if dt.inf_code is not None else dt.max_code
    mag = np.where(finite, np.minimum(mag, top), top)
    sign_bit = sign << np.uint64(dt.bits - 1)
    codes = mag.astype(np.uint64) | sign_bit
    # NaN: the canonical NaN with the input's sign where the type has one, else +0
    nan_codes = np.uint64(dt.nan_code) | sign_bit if dt.nan_code is not None else np.uint64(0)
    codes = np.where(~finite & (m64 != 0), nan_codes, codes)
    return codes.astype(dt.code_dtype)


def _decode_float(dt: DataType, c: np.ndarray) -> np.ndarray:
    y = dt.mantissa_bits
    negative = (c >> (dt.bits - 1)) & 1 == 1
    mag = c & (dt.sign_mask - 1)
    e, m = mag >> y, mag & dt.mantissa_mask
    # value = sig · 2^(max(e,1) − bias − Y): sig = 2^Y + m for normals, m for subnormals (exact in f64)
    sig = np.where(e > 0, m + (1 << y), m)
    value = np.ldexp(sig.astype(np.float64), (np.maximum(e, 1) - dt.bias - y).astype(np.int32))
    if dt.has_inf:
        special = mag >= dt.exponent_mask  # all-ones exponent
        value = np.where(special, np.where(m == 0, np.inf, np.nan), value)
    elif dt.has_nan:
        value = np.where(mag == dt.nan_code, np.nan, value)
    return np.where(negative, -value, value).astype(np.float32)


# --- integers ----------------------------------------------------------------------------------------
def _encode_int(dt: DataType, a: np.ndarray) -> np.ndarray:
    lo, hi = int(dt.min), int(dt.max)
    if a.dtype.kind in "biu":
        if a.dtype == np.uint64:
            a = np.minimum(a, np.uint64(hi))  # would wrap in int64
        v = np.clip(a.astype(np.int64), lo, hi)
    else:
        f = np.rint(a.astype(np.float64))  # round half to even
        above, below = f >= float(hi) + 1.0, f < float(lo)  # exact comparisons: bounds are 2^k − 1, −2^k
        inside = np.where(above | below | np.isnan(f), 0.0, f).astype(np.int64)
        v = np.where(above, hi, np.where(below, lo, inside))
    if dt.bits >= 64:
        return v.astype(np.int64).view(np.uint64)
    return (v & dt.code_mask).astype(dt.code_dtype)


def _sign_extend(u: np.ndarray, bits: int) -> np.ndarray:
    # u in [0, 2^bits) -> [-2^(bits-1), 2^(bits-1)): subtract 2^bits where the sign bit is set
    return u - (((u >> (bits - 1)) & 1) << bits)


def _codes_as_int64(dt: DataType, codes: ArrayLike) -> np.ndarray:
    a = np.asarray(codes)
    if a.dtype.kind not in "biu":
        raise ValueError(f"decode({dt.name}, codes) takes integer codes, got a {a.dtype} array; use encode() first")
    if dt.bits >= 64:
        return a.astype(np.uint64).view(np.int64) if a.dtype.kind == "u" else a.astype(np.int64)
    c = a.astype(np.int64)
    bad = (c < 0) | (c > dt.code_mask)
    if bad.any():
        first = c[bad].flat[0]
        raise ValueError(
            f"code {first} is not a {dt.bits}-bit {dt.name} code (valid: 0..{dt.code_mask}); codes are "
            f"unsigned bit patterns, e.g. encode({dt.name}, x) or x & {dt.code_mask}"
        )
    return c

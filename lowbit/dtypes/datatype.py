"""`DataType`: every lowbit data type as a frozen value whose numbers are derived from its bit fields.

A data type stores only what its bits mean: `kind`, `bits`, and for floats `exponent_bits`,
`mantissa_bits` and a `convention` for the special values. Everything else (bounds, bias, masks,
special codes, canonical name, host dtype) is computed from those fields, never tabulated.

Float conventions (see README.md in this folder):

* ``"fn"`` (finite): no infinity. Below 8 bits there is no NaN either and the all-ones exponent holds
  ordinary numbers (OCP MX fp4/fp6, ml_dtypes ``float4_e2m1fn``/``float6_*fn``). From 8 bits up the
  all-ones magnitude ``S.1111.111`` is the one NaN per sign (ml_dtypes ``float8_e4m3fn``: max 448).
* ``"ieee"``: the all-ones exponent is reserved, mantissa 0 is ±inf, anything else NaN (fp8_e5m2,
  float16, bfloat16, float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np

KINDS = ("int", "uint", "float", "bool")
CONVENTIONS = ("fn", "ieee")
INT_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64)
UINT_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)  # no uint64: decode returns int64 values
MAX_EXPONENT_BITS = 8  # the float32 exponent; encode/decode go through float64/float32
MAX_MANTISSA_BITS = 23

# Standard IEEE formats keep their familiar names instead of fp{bits}_e{X}m{Y}.
_IEEE_NAMES = {(5, 10): "float16", (8, 7): "bfloat16", (8, 23): "float32"}
# Floats with a bit-exact NumPy / ml_dtypes twin (same codes, same specials).
_HOST_FLOATS = {
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float32": np.float32,
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "fp8_e4m3_ieee": ml_dtypes.float8_e4m3,
    "fp8_e3m4_ieee": ml_dtypes.float8_e3m4,
}


def default_convention(exponent_bits: int, mantissa_bits: int) -> str:
    """The convention a float gets when none is named: "ieee" for fp8_e5m2 and anything wider than
    8 bits (float16, bfloat16, float32), "fn" for every other format of at most 8 bits."""
    bits = 1 + exponent_bits + mantissa_bits
    return "ieee" if bits > 8 or (exponent_bits, mantissa_bits) == (5, 2) else "fn"


def code_dtype_for_bits(bits: int) -> np.dtype:
    """The unsigned NumPy dtype that holds one `bits`-wide code: uint8 up to 8 bits, then 16/32/64."""
    for width, np_type in ((8, np.uint8), (16, np.uint16), (32, np.uint32), (64, np.uint64)):
        if bits <= width:
            return np.dtype(np_type)
    raise ValueError(f"no code dtype holds {bits}-bit codes; lowbit types are at most 64 bits wide")


@dataclass(frozen=True)
class DataType:
    """A scalar data type. Compare and hash structurally; build with `int_type`, `uint_type`,
    `float_type` or look one up by name with `lowbit.dtypes.dtype`."""

    kind: str  # "int" | "uint" | "float" | "bool"
    bits: int
    exponent_bits: int = 0
    mantissa_bits: int = 0
    convention: str = ""  # floats: "fn" | "ieee"; empty for the other kinds

    def __post_init__(self) -> None:
        _validate(self)

    def __repr__(self) -> str:
        return self.name

    # --- classification --------------------------------------------------------------------------
    @property
    def is_integer(self) -> bool:
        return self.kind in ("int", "uint")

    @property
    def is_signed(self) -> bool:
        return self.kind in ("int", "float")

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def is_bool(self) -> bool:
        return self.kind == "bool"

    @property
    def is_subbyte(self) -> bool:
        return self.bits < 8

    # --- name and host storage -------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Canonical name: int3, uint4, fp6_e3m2, fp8_e4m3, float16, bfloat16, float32, boolean.
        A float whose convention is not its default carries a suffix: fp8_e4m3_ieee, fp8_e5m2fn."""
        if self.kind == "bool":
            return "boolean"
        if self.kind in ("int", "uint"):
            return f"{self.kind}{self.bits}"
        x, y = self.exponent_bits, self.mantissa_bits
        if self.convention == "ieee" and (x, y) in _IEEE_NAMES:
            return _IEEE_NAMES[(x, y)]
        base = f"fp{self.bits}_e{x}m{y}"
        if self.convention == default_convention(x, y):
            return base
        return base + ("fn" if self.convention == "fn" else "_ieee")

    @property
    def code_dtype(self) -> np.dtype:
        """Unsigned NumPy dtype of `encode`'s codes: uint8 (<= 8 bits), uint16, uint32, uint64."""
        return code_dtype_for_bits(self.bits)

    @property
    def host_dtype(self) -> np.dtype | None:
        """NumPy dtype holding this type's values in host memory, or None.

        None for sub-byte types (they live packed, see `packing`) and for 8-bit floats that NumPy and
        ml_dtypes have no bit-exact equivalent of (e.g. fp8_e3m4, whose ml_dtypes namesake is IEEE):
        keep their `encode`d uint8 codes instead."""
        if self.is_subbyte:
            return None
        if self.kind == "bool":
            return np.dtype(np.bool_)
        if self.kind in ("int", "uint"):
            return np.dtype(f"{self.kind}{self.bits}")
        host = _HOST_FLOATS.get(self.name)
        return None if host is None else np.dtype(host)

    # --- bit fields ------------------------------------------------------------------------------
    @property
    def num_codes(self) -> int:
        return 1 << self.bits

    @property
    def code_mask(self) -> int:
        return (1 << self.bits) - 1

    @property
    def sign_mask(self) -> int:
        """The sign bit (top bit) for int and float types; 0 for uint and bool."""
        return 1 << (self.bits - 1) if self.is_signed else 0

    @property
    def exponent_mask(self) -> int:
        return ((1 << self.exponent_bits) - 1) << self.mantissa_bits

    @property
    def mantissa_mask(self) -> int:
        return (1 << self.mantissa_bits) - 1

    # --- float numerics (bias 0, no inf/NaN for non-floats) -------------------------------------
    @property
    def bias(self) -> int:
        """Exponent bias 2^(X-1) - 1 (OCP MX, IEEE); 0 for e1mY floats and for non-floats."""
        return (1 << (self.exponent_bits - 1)) - 1 if self.is_float else 0

    @property
    def min_exponent(self) -> int:
        """Exponent of the smallest normal number: 1 - bias (subnormals share it)."""
        return 1 - self.bias

    @property
    def max_exponent(self) -> int:
        """Exponent of the largest finite number (the exponent field of `max_code`, unbiased)."""
        return (self.max_code >> self.mantissa_bits) - self.bias

    @property
    def has_inf(self) -> bool:
        return self.convention == "ieee"

    @property
    def has_nan(self) -> bool:
        # fn keeps one NaN per sign (S.1..1) only from 8 bits up; below that every code is a number.
        return self.convention == "ieee" or (self.convention == "fn" and self.bits >= 8)

    @property
    def inf_code(self) -> int | None:
        """Code of +inf (all-ones exponent, zero mantissa), or None."""
        return self.exponent_mask if self.has_inf else None

    @property
    def nan_code(self) -> int | None:
        """Code of the canonical positive NaN (what `encode` writes for NaN), or None.
        ieee: all-ones exponent with the top mantissa bit (quiet NaN); fn: all-ones magnitude."""
        if not self.has_nan:
            return None
        if self.convention == "ieee":
            return self.exponent_mask | (1 << (self.mantissa_bits - 1))
        return self.code_mask & ~self.sign_mask

    @property
    def max_code(self) -> int:
        """Code of the largest finite value."""
        if self.kind == "bool":
            return 1
        if self.kind == "uint":
            return self.code_mask
        if self.kind == "int":
            return self.sign_mask - 1
        if self.convention == "ieee":
            return self.exponent_mask - 1  # exponent all-ones minus one, mantissa all ones
        all_ones = self.sign_mask - 1  # every magnitude bit set
        return all_ones - 1 if self.has_nan else all_ones

    @property
    def max(self) -> int | float:
        """Largest finite value: a Python int for integers/bool, a float for floats."""
        if not self.is_float:
            return self.max_code
        return _magnitude_value(self, self.max_code)

    @property
    def min(self) -> int | float:
        """Smallest (most negative) finite value: -max for floats, -2^(bits-1) for int, 0 otherwise."""
        if self.is_float:
            return -self.max
        return -self.sign_mask if self.kind == "int" else 0

    @property
    def smallest_normal(self) -> float:
        """2^(1 - bias)."""
        return math.ldexp(1.0, self.min_exponent)

    @property
    def smallest_subnormal(self) -> float:
        """2^(1 - bias - Y); equals `smallest_normal` when Y == 0 (no subnormals besides zero)."""
        return math.ldexp(1.0, self.min_exponent - self.mantissa_bits)

    @property
    def eps(self) -> float:
        """2^-Y: the gap between 1.0 and the next larger value."""
        return math.ldexp(1.0, -self.mantissa_bits)


def _magnitude_value(dt: DataType, code: int) -> float:
    # sign·2^(e−bias)·(1 + m/2^Y) for e > 0, 2^(1−bias)·(m/2^Y) for e == 0 (sign not included)
    e, m = code >> dt.mantissa_bits, code & dt.mantissa_mask
    significand = m + (1 << dt.mantissa_bits) if e > 0 else m
    return math.ldexp(float(significand), max(e, 1) - dt.bias - dt.mantissa_bits)


def _validate(dt: DataType) -> None:
    if dt.kind not in KINDS:
        raise ValueError(f"DataType kind {dt.kind!r} is not one of {', '.join(KINDS)}")
    if dt.kind != "float" and (dt.exponent_bits or dt.mantissa_bits or dt.convention):
        raise ValueError(
            f"a {dt.kind} DataType has no exponent/mantissa/convention (got exponent_bits="
            f"{dt.exponent_bits}, mantissa_bits={dt.mantissa_bits}, convention={dt.convention!r}); "
            "leave them at their defaults"
        )
    if dt.kind == "bool" and dt.bits != 8:
        raise ValueError(f"boolean is stored in a byte (bits=8), got bits={dt.bits}; use uint1 for packed bits")
    if dt.kind == "int" and dt.bits not in INT_BITS:
        raise ValueError(f"int{dt.bits} is not supported; signed widths are 1..8, 16, 32, 64")
    if dt.kind == "uint" and dt.bits not in UINT_BITS:
        raise ValueError(f"uint{dt.bits} is not supported; unsigned widths are 1..8, 16, 32")
    if dt.kind == "float":
        _validate_float(dt)


def _validate_float(dt: DataType) -> None:
    x, y = dt.exponent_bits, dt.mantissa_bits
    if not (1 <= x <= MAX_EXPONENT_BITS and 0 <= y <= MAX_MANTISSA_BITS):
        raise ValueError(
            f"float with e{x}m{y} is not supported; need 1 <= exponent_bits <= {MAX_EXPONENT_BITS} "
            f"and 0 <= mantissa_bits <= {MAX_MANTISSA_BITS}"
        )
    if dt.bits != 1 + x + y:
        raise ValueError(
            f"float e{x}m{y} has 1 sign + {x} exponent + {y} mantissa = {1 + x + y} bits, not bits="
            f"{dt.bits}; pass bits={1 + x + y} or change the split"
        )
    if dt.convention not in CONVENTIONS:
        raise ValueError(f"float convention {dt.convention!r} is not one of {', '.join(CONVENTIONS)}")
    if dt.convention == "ieee" and (x < 2 or y < 1):
        raise ValueError(
            f"an ieee e{x}m{y} float has no room for inf and NaN (needs exponent_bits >= 2 and "
            "mantissa_bits >= 1); use convention='fn'"
        )


# --- constructors ------------------------------------------------------------------------------------
def int_type(bits: int) -> DataType:
    """Signed two's-complement integer of `bits` bits (1..8, 16, 32, 64)."""
    return DataType("int", bits)


def uint_type(bits: int) -> DataType:
    """Unsigned integer of `bits` bits (1..8, 16, 32)."""
    return DataType("uint", bits)


def float_type(exponent_bits: int, mantissa_bits: int, convention: str | None = None) -> DataType:
    """Float e{X}m{Y} with a sign bit: 1 + X + Y bits. `convention` defaults to
    `default_convention(X, Y)` ("ieee" for e5m2 and wider than 8 bits, else "fn")."""
    if convention is None:
        convention = default_convention(exponent_bits, mantissa_bits)
    return DataType("float", 1 + exponent_bits + mantissa_bits, exponent_bits, mantissa_bits, convention)


def bool_type() -> DataType:
    """Boolean stored in one byte (0 or 1), like numpy.bool_."""
    return DataType("bool", 8)

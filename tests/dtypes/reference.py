"""Slow, independent reference numerics for the dtype tests.

Written from the formulas, not from lowbit's code: only a type's stored fields (kind, bits,
exponent_bits, mantissa_bits, convention) are read; bias, specials and bounds are re-derived here.
The encoder is brute force: nearest value in the enumerated table, ties to the even code.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from lowbit.dtypes import DataType


def ref_bias(dt: DataType) -> int:
    return 2 ** (dt.exponent_bits - 1) - 1


def ref_decode(dt: DataType, code: int) -> float | int:
    """One code -> its value (float for floats, int for integers), from the textbook formula."""
    if dt.kind == "uint":
        return code
    if dt.kind == "int":
        return code - 2**dt.bits if code >= 2 ** (dt.bits - 1) else code
    x, y = dt.exponent_bits, dt.mantissa_bits
    s, e, m = code >> (x + y), (code >> y) % 2**x, code % 2**y
    sign = -1.0 if s else 1.0
    all_ones_exp = e == 2**x - 1
    if dt.convention == "ieee" and all_ones_exp:
        return sign * math.inf if m == 0 else math.nan
    if dt.convention == "fn" and dt.bits >= 8 and all_ones_exp and m == 2**y - 1:
        return math.nan
    if e == 0:  # subnormal: sign · 2^(1−bias) · (m / 2^Y)
        return sign * 2.0 ** (1 - ref_bias(dt)) * (m / 2**y)
    return sign * 2.0 ** (e - ref_bias(dt)) * (1 + m / 2**y)  # normal: sign · 2^(e−bias) · (1 + m/2^Y)


def ref_table(dt: DataType) -> list[tuple[int, float | int]]:
    """(code, value) for every code of a type of at most 16 bits."""
    return [(c, ref_decode(dt, c)) for c in range(2**dt.bits)]


def ref_nan_code(dt: DataType, negative: bool) -> int:
    """What encode is documented to write for NaN."""
    x, y = dt.exponent_bits, dt.mantissa_bits
    sign = (1 << (x + y)) if negative else 0
    if dt.convention == "ieee":
        return sign | ((2**x - 1) << y) | (1 << (y - 1))
    if dt.bits >= 8:
        return sign | (2 ** (x + y) - 1)
    return 0  # no NaN: +0


@functools.cache
def brute_force_encoder(dt: DataType) -> BruteForceEncoder:
    return BruteForceEncoder(dt)


class BruteForceEncoder:
    """Nearest representable by brute force over the enumerated magnitudes; ties to the even code.

    Overflow falls out of the search: "fn" types have no candidate beyond max (saturation); "ieee"
    types get +inf as one more candidate at 2^(emax+1), where IEEE round-to-nearest puts it."""

    def __init__(self, dt: DataType) -> None:
        self.dt = dt
        half = 2 ** (dt.bits - 1)
        codes, values = [], []
        for code in range(half):  # non-negative magnitudes
            v = ref_decode(dt, code)
            if math.isfinite(v):
                codes.append(code)
                values.append(float(v))
            elif v == math.inf:  # ieee: inf sits one binade above the largest finite exponent
                emax = 2**dt.exponent_bits - 2 - ref_bias(dt)
                codes.append(code)
                values.append(2.0 ** (emax + 1))
        self.codes = np.array(codes, dtype=np.int64)  # [K] increasing with value
        self.exact_values = np.array([_scaled(v) for v in values], dtype=object)  # [K] value · 2^150

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):  # signalling NaN patterns
            x = np.asarray(x, dtype=np.float32).astype(np.float64).reshape(-1)  # [N]
        a = np.abs(x)
        finite = np.isfinite(a)
        # exact distances: every float32 and table value times 2^150 is an integer (Python ints)
        a_exact = np.array([_scaled(v) if f else 0 for v, f in zip(a, finite)], dtype=object)  # [N]
        dist = np.abs(a_exact[:, None] - self.exact_values[None, :])  # [N, K] Python ints
        dist[~finite] = 1
        dist[~finite, -1] = 0  # ±inf -> the largest candidate (max, or inf for ieee); NaN is set below
        nearest = (dist == dist.min(axis=1, keepdims=True)).astype(bool)  # [N, K] one, or two at a tie
        even = (self.codes % 2 == 0)[None, :]
        pick = np.where((nearest & even).any(axis=1), np.argmax(nearest & even, axis=1), np.argmax(nearest, axis=1))
        out = self.codes[pick] | (np.signbit(x).astype(np.int64) << (self.dt.bits - 1))
        nan = np.isnan(x)
        out[nan] = [ref_nan_code(self.dt, bool(neg)) for neg in np.signbit(x[nan])]
        return out


def _scaled(v: float) -> int:
    # v · 2^150 exactly: float32 values and every table value here are multiples of 2^-149
    n, d = float(v).as_integer_ratio()
    assert (1 << 150) % d == 0, f"{v} is finer than 2^-150"
    return n * ((1 << 150) // d)

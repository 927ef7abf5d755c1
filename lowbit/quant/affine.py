"""Affine quantize/dequantize on an integer grid, with the two zero conventions.

Both conventions share the code grid [qmin, qmax] of `IntGrid(bits, signed)` and round half to even
(`np.rint`). They differ in where the zero sits relative to the scale:

* `ZeroConvention.POST_SCALE` — the zero is added *after* dividing by the scale, so it lives in code
  space and is an integer (AWQ / GPTQ; ANCHORS, AWQ/GPTQ/Marlin):
      q = clip(rint(x / s) + z, qmin, qmax)        x̂ = (q − z) · s
* `ZeroConvention.PRE_SCALE` — the zero is removed *before* dividing by the scale, so it lives in value
  space and is a float ("scale and min": MLC, QServe's per-channel `s_zeros` = z·s; ANCHORS, QoQ):
      q = clip(rint((x + z') / s), qmin, qmax)     x̂ = q · s − z'
  For min-max parameters z' = qmin·s − min, i.e. x̂ = (q − qmin)·s + min (on an unsigned grid: q·s + min).

A missing zero (`zero=None`) is the symmetric case x̂ = q·s in either convention. Arithmetic is float32
(the kernels' epilogue precision) whatever the storage dtype of the scales.

Scales and zeros broadcast against `x` by NumPy rules, or — with `group_size=G` — hold one value per
group of G consecutive elements along `axis` and are expanded here.
"""

from __future__ import annotations

import math
from enum import Enum

import numpy as np

from lowbit.quant.grid import IntGrid


class ZeroConvention(str, Enum):
    """Where the zero point enters the affine map (see the module docstring for the formulas)."""

    POST_SCALE = "post_scale"  # integer zero in code space:  x̂ = (q − z)·s
    PRE_SCALE = "pre_scale"  # float zero in value space:     x̂ = q·s − z'


def resolve_group_size(group_size: int, k: int, *, axis_name: str = "K") -> int:
    """Return the group length along an axis of length `k`; -1 (or k) means one group (per channel).

    Raises ValueError naming the group size, K and the nearest usable group sizes when G does not divide K.
    """
    if group_size == -1 or group_size == k:
        return k
    if not isinstance(group_size, (int, np.integer)) or group_size <= 0:
        raise ValueError(f"group_size {group_size!r} is not a positive integer; use a divisor of {axis_name}={k} or -1")
    if k % group_size:
        raise ValueError(
            f"group_size {group_size} does not divide {axis_name}={k}; "
            f"use one of {', '.join(map(str, _nearest_divisors(group_size, k)))}, or -1 for per-channel"
        )
    return int(group_size)


def _nearest_divisors(g: int, k: int, count: int = 3) -> list[int]:
    # Prefer kernel-friendly divisors (multiples of 16), nearest to g on a log scale.
    divisors = [d for d in range(1, k + 1) if k % d == 0 and d != k]
    friendly = [d for d in divisors if d % 16 == 0] or divisors or [k]
    return sorted(sorted(friendly, key=lambda d: abs(math.log(d / g)))[:count])


def expand_groups(p: np.ndarray | float, group_size: int, axis: int = -1) -> np.ndarray:
    """Repeat per-group parameters `group_size` times along `axis`: [..., K // G] -> [..., K]."""
    return np.repeat(np.asarray(p), group_size, axis=axis)


def _scale(scale: np.ndarray | float, group_size: int | None, axis: int) -> np.ndarray:
    s = np.asarray(scale) if group_size is None else expand_groups(scale, group_size, axis)
    if np.any(~(s > 0)):
        raise ValueError(
            f"scale has non-positive or NaN entries (min {np.nanmin(s)}); build scales with storage_scale()"
        )
    return s.astype(np.float32)


def _zero(zero: np.ndarray | float | None, group_size: int | None, axis: int) -> np.ndarray | None:
    if zero is None:
        return None
    z = np.asarray(zero) if group_size is None else expand_groups(zero, group_size, axis)
    return z.astype(np.float32)


def _integral_zero(zero: np.ndarray) -> np.ndarray:
    if not np.array_equal(zero, np.rint(zero)):
        frac = zero[zero != np.rint(zero)].ravel()[0]
        raise ValueError(
            f"zero {frac} is not an integer, but the post-scale convention keeps zeros in code space; "
            f"round it, or use ZeroConvention.PRE_SCALE for a float zero"
        )
    return zero


def quantize(
    x: np.ndarray,
    scale: np.ndarray | float,
    zero: np.ndarray | float | None = None,
    *,
    bits: int,
    signed: bool,
    convention: ZeroConvention = ZeroConvention.POST_SCALE,
    group_size: int | None = None,
    axis: int = -1,
) -> np.ndarray:
    """Quantize `x` to codes on the `bits`-wide (un)signed grid.

    x: any shape; scale, zero: broadcastable to x, or one value per group along `axis` when `group_size`
    is given. zero=None is symmetric. Returns codes as int8 (signed) or uint8 (unsigned), same shape as x.
    POST_SCALE: q = clip(rint(x/s) + z, qmin, qmax) with integer z; PRE_SCALE: q = clip(rint((x + z')/s), ...).
    """
    grid = IntGrid.of(bits, signed)
    x = np.asarray(x, dtype=np.float32)
    s = _scale(scale, group_size, axis)
    z = _zero(zero, group_size, axis)
    with np.errstate(over="ignore"):  # |x|/s beyond float32 saturates through the clip below
        if convention == ZeroConvention.POST_SCALE:
            q = np.rint(x / s) if z is None else np.rint(x / s) + _integral_zero(z)
        elif convention == ZeroConvention.PRE_SCALE:
            q = np.rint(x / s) if z is None else np.rint((x + z) / s)
        else:
            raise ValueError(f"convention {convention!r} is not a ZeroConvention; use POST_SCALE or PRE_SCALE")
    return np.clip(q, grid.qmin, grid.qmax).astype(grid.code_dtype)


def dequantize(
    codes: np.ndarray,
    scale: np.ndarray | float,
    zero: np.ndarray | float | None = None,
    *,
    convention: ZeroConvention = ZeroConvention.POST_SCALE,
    group_size: int | None = None,
    axis: int = -1,
) -> np.ndarray:
    """Map codes back to float32 values: POST_SCALE x̂ = (q − z)·s, PRE_SCALE x̂ = q·s − z'.

    codes: any shape; scale, zero: as for `quantize`. Returns float32 with the shape of `codes`.
    """
    q = np.asarray(codes).astype(np.float32)
    s = _scale(scale, group_size, axis)
    z = _zero(zero, group_size, axis)
    if z is None:
        return q * s
    if convention == ZeroConvention.POST_SCALE:
        return (q - z) * s
    if convention == ZeroConvention.PRE_SCALE:
        return q * s - z
    raise ValueError(f"convention {convention!r} is not a ZeroConvention; use POST_SCALE or PRE_SCALE")

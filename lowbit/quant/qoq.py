"""QoQ progressive weight quantization (W4A8 of QServe; ANCHORS, QoQ / QServe), plus its per-channel variant.

W[N, K] is quantized in two levels:
  1. per output channel, symmetric INT8 with a protective range P:
         s1[n] = fp16(max_k |W[n, k]| / P)      q8 = rint(clip(W / s1, −P, P)) ∈ [−P, P]
  2. per group of G along K, asymmetric uint{b} on the int8 codes, with an *integer* scale and zero:
         s2 = max(rint((vmax − vmin) / (2^b − 1)), 1)    z = rint(−vmin / s2)
         q = clip(rint(q8 / s2) + z, 0, 2^b − 1)         w8 = (q − z)·s2
     Ŵ = s1[n]·w8. z is not clipped to the grid (the kernel only ever adds (−z·s2) mod 256 per byte).
Guarantees, checked on every call: w8 = (q − z)·s2 ∈ [−128, 127] (an int8) and q·s2 ≤ (2^b − 1)·s2max ≤ 255
(so four products share one 32-bit multiply without carrying across bytes); for b = 4: q·s2 ≤ 240.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.quant.affine import ZeroConvention, resolve_group_size
from lowbit.quant.grid import IntGrid, check_finite, storage_scale
from lowbit.quant.groupwise import GroupQuant, quantize_groupwise

INT8_MIN, INT8_MAX = -128, 127
BYTE_MAX = 255


def _max_inner_scale(p: int, steps: int) -> int:
    # The largest level-2 scale over codes in [−P, P]: the widest range 2P, and rint is monotone.
    return max(int(np.rint(2 * p / steps)), 1)


def protective_range(inner_bits: int) -> int:
    """The level-1 clip P for a `inner_bits`-wide level 2: the largest P that keeps both QoQ guarantees.

    Derivation (codes are integers in [−P, P], L = 2^b − 1, s2max = max(rint(2P / L), 1)):
      * level 2 reconstructs v as rint(v/s2)·s2, an integer within ⌊s2/2⌋ of v; the clip at q = L only
        pulls values down to ≥ the reconstruction of the group's own vmin, and the clip at q = 0 never
        fires (rint(v/s2) ≥ rint(vmin/s2) = −z). So w8 ∈ [−P − ⌊s2/2⌋, P + ⌊s2/2⌋], and int8 needs
        P + ⌊s2max/2⌋ ≤ 127 (the positive side binds: int8 reaches −128 but only +127);
      * the byte lane needs q·s2 ≤ L·s2max ≤ 255.
    This gives 8b 127, 7b 126, 6b 125, 5b 123, 4b 119, 3b 111, 2b 95, 1b 63. It matches the ANCHORS table
    except 2-bit, where the table says "96 (or 95 by the current search)": at P = 96 the group
    [vmin, vmax] = [−95, 96] has s2 = rint(191/3) = 64, z = rint(95/64) = 1 and q(96) = rint(1.5) + 1 = 3,
    so w8 = (3 − 1)·64 = 128 overflows int8. tests/quant/test_qoq.py checks this value is also the
    largest safe P by enumerating every (vmin, vmax) pair for b = 2..8; for b = 1 (not in the table) the
    bound is one conservative (exhaustively, 64 is still safe).
    """
    grid = IntGrid(inner_bits, signed=False)  # validates 1..8
    for p in range(INT8_MAX, 0, -1):
        s2max = _max_inner_scale(p, grid.steps)
        if p + s2max // 2 <= INT8_MAX and grid.steps * s2max <= BYTE_MAX:
            return p
    raise AssertionError(f"no protective range exists for inner_bits={inner_bits}")  # unreachable for 1..8


@dataclass(frozen=True, eq=False)
class QoQWeight:
    """A QoQ progressive W4 (or W{b}) weight.

    codes: [N, K] uint8 level-2 codes in [0, 2^b − 1]; s1: [N] float16 level-1 scales;
    s2: [N, K // G] int32 integer level-2 scales ≥ 1; zeros: [N, K // G] int32 integer level-2 zeros.
    """

    codes: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    zeros: np.ndarray
    group_size: int
    bits: int
    protective_range: int

    def w8(self) -> np.ndarray:
        """The level-1 int8 weight the kernel rebuilds: (q − z)·s2, [N, K] int8."""
        q = self.codes.astype(np.int32)
        w8 = (q - _expand(self.zeros, self.group_size)) * _expand(self.s2, self.group_size)
        return w8.astype(np.int8)

    def dequantize(self) -> np.ndarray:
        """Ŵ[N, K] = s1[n]·w8[n, k] in float32."""
        return self.s1.astype(np.float32)[:, None] * self.w8().astype(np.float32)


def _expand(p: np.ndarray, g: int) -> np.ndarray:
    return np.repeat(p, g, axis=-1)


def qoq_level1(w: np.ndarray, *, inner_bits: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Level 1: per-output-channel symmetric INT8 in the protective range of `inner_bits`.

    w: [N, K] float. Returns (q8 [N, K] int8 in [−P, P], s1 [N] float16). An all-zero row gets s1 = 1.
    """
    p = protective_range(inner_bits)
    w = _as_weight(w)
    s1 = storage_scale(np.abs(w).max(axis=1).astype(np.float64) / p, np.float16)  # s1: [N]
    with np.errstate(over="ignore"):
        q8 = np.rint(np.clip(w / s1.astype(np.float32)[:, None], -p, p))  # q8: [N, K]
    return q8.astype(np.int8), s1


def qoq_level2(q8: np.ndarray, *, bits: int = 4, group_size: int = 128) -> tuple[np.ndarray, ...]:
    """Level 2: per-group asymmetric uint{bits} on int8 codes with integer scale and zero.

    q8: [N, K] int8. Returns (codes [N, K] uint8, s2 [N, K // G] int32, zeros [N, K // G] int32).
    """
    grid = IntGrid(bits, signed=False)
    n, k = q8.shape
    g = resolve_group_size(group_size, k)
    v = q8.astype(np.float64).reshape(n, k // g, g)  # v: [N, K // G, G]
    vmin, vmax = v.min(axis=-1), v.max(axis=-1)  # vmin, vmax: [N, K // G]
    s2 = np.maximum(np.rint((vmax - vmin) / grid.steps), 1)
    z = np.rint(-vmin / s2)
    q = np.clip(np.rint(v / s2[..., None]) + z[..., None], 0, grid.qmax)  # q: [N, K // G, G]
    return q.reshape(n, k).astype(np.uint8), s2.astype(np.int32), z.astype(np.int32)


def quantize_qoq(w: np.ndarray, *, bits: int = 4, group_size: int = 128) -> QoQWeight:
    """QoQ progressive quantization of W[N, K]: per-channel INT8 (protective range), then per-group uint{bits}.

    group_size: G along K (−1 or K: one group per row). Raises ValueError for a G not dividing K,
    non-finite weights or bits outside 1..8; RuntimeError if a QoQ guarantee fails (a bug, never data).
    """
    q8, s1 = qoq_level1(w, inner_bits=bits)
    codes, s2, zeros = qoq_level2(q8, bits=bits, group_size=group_size)
    qw = QoQWeight(codes, s1, s2, zeros, resolve_group_size(group_size, q8.shape[1]), bits, protective_range(bits))
    _check_guarantees(qw)
    return qw


def _check_guarantees(qw: QoQWeight) -> None:
    steps = IntGrid(qw.bits, signed=False).steps
    q = qw.codes.astype(np.int32)
    s2 = _expand(qw.s2, qw.group_size)
    w8 = (q - _expand(qw.zeros, qw.group_size)) * s2
    lane_max = steps * _max_inner_scale(qw.protective_range, steps)
    if w8.min() < INT8_MIN or w8.max() > INT8_MAX or (q * s2).max() > lane_max:
        raise RuntimeError(
            f"QoQ guarantee violated for bits={qw.bits}, P={qw.protective_range}: (q−z)·s2 in "
            f"[{w8.min()}, {w8.max()}] (needs [−128, 127]), max q·s2 = {(q * s2).max()} (needs ≤ {lane_max}); "
            f"this is a bug in lowbit.quant.qoq"
        )


def quantize_w4a8_per_channel(w: np.ndarray, *, bits: int = 4) -> GroupQuant:
    """QServe's per-channel W4A8 weight: uint{bits} per output channel, fp16 scale, integer zero.

    w: [N, K]. The AWQ min-max rule with one group per row (see `quantize_groupwise`);
    Ŵ[n, k] = (q[n, k] − z[n])·s_w[n]. Returns a GroupQuant with scales/zeros of shape [N, 1].
    """
    w = _as_weight(w)
    return quantize_groupwise(
        w, bits=bits, group_size=-1, signed=False, zero_convention=ZeroConvention.POST_SCALE, scale_dtype=np.float16
    )


def _as_weight(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"w has shape {w.shape}; QoQ quantizes a linear weight of shape [N, K]")
    check_finite(w, "w")
    return w

"""QoQ progressive quantization: the protective range and the two guarantees, checked exhaustively and on
random weights with outliers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbit.quant.affine import ZeroConvention
from lowbit.quant.qoq import (
    QoQWeight,
    _check_guarantees,
    protective_range,
    qoq_level1,
    qoq_level2,
    quantize_qoq,
    quantize_w4a8_per_channel,
)

from .numerics import EPS32, KINDS, sample

ANCHORS_TABLE = {8: 127, 7: 126, 6: 125, 5: 123, 4: 119, 3: 111, 2: 95}  # 2-bit: "96 (or 95 ...)"


def _all_pairs(limit: int) -> np.ndarray:
    # every (vmin, vmax) with −limit ≤ vmin ≤ vmax ≤ limit, as a group of two: [pairs, 2]
    v = np.arange(-limit, limit + 1)
    lo, hi = np.meshgrid(v, v, indexing="ij")
    keep = lo <= hi
    return np.stack([lo[keep], hi[keep]], axis=1)


def _safe(q8: np.ndarray, bits: int) -> np.ndarray:
    # per group: do the guarantees hold? (w8 is monotone in v, so a group's extremes are its vmin, vmax)
    codes, s2, z = qoq_level2(q8.astype(np.int8), bits=bits, group_size=2)
    q = codes.astype(np.int32)
    w8 = (q - z) * s2  # w8: [pairs, 2]
    return (w8.min(1) >= -128) & (w8.max(1) <= 127) & ((q * s2).max(1) <= 255)


def test_protective_range_matches_the_anchor_table() -> None:
    assert {b: protective_range(b) for b in ANCHORS_TABLE} == ANCHORS_TABLE
    assert protective_range(4) == 119
    assert 15 * round(2 * 119 / 15) == 240  # the 4-bit lane bound q·s2 ≤ 240


@pytest.mark.parametrize("bits", range(1, 9))
def test_protective_range_is_the_largest_safe_range_exhaustively(bits: int) -> None:
    p = protective_range(bits)
    pairs = _all_pairs(min(p + 1, 127))
    ok = _safe(pairs, bits)
    inside = np.abs(pairs).max(1) <= p
    assert ok[inside].all()  # sound: every group inside [−P, P] keeps both guarantees
    if bits >= 2 and p < 127:
        assert not ok.all()  # tight: some group touching ±(P + 1) breaks one
    if bits == 1:  # the closed-form bound is one conservative here (documented in protective_range)
        assert _safe(_all_pairs(64), 1).all() and not _safe(_all_pairs(65), 1).all()


def test_anchor_2bit_96_overflows() -> None:
    # the documented counterexample: [−95, 96] gives s2 = 64, z = 1, q(96) = 3 -> (3 − 1)·64 = 128
    codes, s2, z = qoq_level2(np.array([[-95, 96]], dtype=np.int8), bits=2, group_size=2)
    assert (s2[0, 0], z[0, 0], codes[0, 1]) == (64, 1, 3)
    assert (codes[0, 1] - z[0, 0]) * s2[0, 0] == 128


@given(
    bits=st.integers(1, 8),
    n=st.integers(1, 4),
    groups=st.integers(1, 3),
    g=st.sampled_from([32, 128]),
    per_row=st.booleans(),
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**32 - 1),
)
def test_qoq_guarantees_on_random_weights(
    bits: int, n: int, groups: int, g: int, per_row: bool, kind: str, seed: int
) -> None:
    w = sample(np.random.default_rng(seed), (n, groups * g), kind)  # w: [N, K]
    qw = quantize_qoq(w, bits=bits, group_size=-1 if per_row else g)
    p, steps = protective_range(bits), 2**bits - 1
    q = qw.codes.astype(np.int32)
    s2 = np.repeat(qw.s2, qw.group_size, axis=1)
    z = np.repeat(qw.zeros, qw.group_size, axis=1)
    # guarantees
    assert q.min() >= 0 and q.max() <= steps
    assert qw.s2.min() >= 1 and qw.s2.max() <= max(round(2 * p / steps), 1)
    assert ((q - z) * s2).min() >= -128 and ((q - z) * s2).max() <= 127
    assert (q * s2).max() <= steps * max(round(2 * p / steps), 1) <= 255
    if bits == 4:
        assert (q * s2).max() <= 240
    # level 2 keeps every w8 within ⌊s2/2⌋ of its group's [vmin, vmax] (the protective-range derivation),
    # and moves an unclipped level-1 code by at most ⌊s2/2⌋ (an integer s2 may leave vmax past the top code)
    q8, s1 = qoq_level1(w, inner_bits=bits)
    assert np.array_equal(s1, qw.s1) and np.abs(q8).max() <= p
    w8 = qw.w8().astype(np.int32)
    q8g = q8.astype(np.int32).reshape(n, -1, qw.group_size)
    vmin = np.repeat(q8g.min(-1), qw.group_size, axis=1)
    vmax = np.repeat(q8g.max(-1), qw.group_size, axis=1)
    assert np.all(w8 >= vmin - s2 // 2) and np.all(w8 <= vmax + s2 // 2)
    unclipped = np.rint(q8 / s2) + z <= steps
    assert np.all(np.abs(w8 - q8)[unclipped] <= (s2 // 2)[unclipped])
    # end to end: |Ŵ − W| ≤ s1·(|w8 − q8| + 1/2 + P·2^-11) (the last term: fp16 rounding of s1 before the clip)
    what = qw.dequantize()
    s1f = qw.s1.astype(np.float32)[:, None]
    assert np.all(np.isfinite(what))
    bound = s1f * (np.abs(w8 - q8) + 0.5 + p * 2.0**-11) + 4 * EPS32 * np.abs(w)
    assert np.all(np.abs(what - w) <= bound)
    if kind == "normal" and bits == 4:
        assert np.linalg.norm(what - w) / np.linalg.norm(w) < 0.15


@pytest.mark.parametrize("kind", ["zeros", "constant"])
def test_qoq_constant_and_zero_rows(kind: str) -> None:
    w = sample(np.random.default_rng(0), (3, 128), kind)
    what = quantize_qoq(w, group_size=64).dequantize()
    assert np.all(np.isfinite(what))
    assert np.allclose(what, w, rtol=2e-3, atol=0)  # ±amax maps to ±P exactly, up to fp16 s1


def test_guarantee_checker_fires() -> None:
    bad = QoQWeight(
        codes=np.full((1, 2), 15, np.uint8),
        s1=np.ones(1, np.float16),
        s2=np.full((1, 1), 17, np.int32),
        zeros=np.zeros((1, 1), np.int32),
        group_size=2,
        bits=4,
        protective_range=119,
    )
    with pytest.raises(RuntimeError, match="QoQ guarantee violated"):
        _check_guarantees(bad)


def test_qoq_errors() -> None:
    with pytest.raises(ValueError, match=r"w has shape \(8,\); QoQ quantizes a linear weight"):
        quantize_qoq(np.zeros(8))
    with pytest.raises(ValueError, match="group_size 128 does not divide K=200"):
        quantize_qoq(np.zeros((2, 200)))


def test_per_channel_w4a8_weight() -> None:
    w = sample(np.random.default_rng(3), (6, 96), "outliers")
    gq = quantize_w4a8_per_channel(w)
    assert gq.group_size == 96 and gq.zero_convention == ZeroConvention.POST_SCALE
    assert gq.scales.shape == gq.zeros.shape == (6, 1) and gq.scales.dtype == np.float16
    assert gq.codes.max() <= 15 and gq.zeros.min() >= 0 and gq.zeros.max() <= 15
    s = gq.scales.astype(np.float32)
    assert np.all(np.abs(gq.dequantize() - w) <= s / 2 * (1 + 2.0**-8))

"""Integer and boolean encode/decode/round_to/wrap: every code of every <= 8-bit integer type, ml_dtypes
for int1/int2/int4/uint1/uint2/uint4, Python's own round-half-even and modulo as the reference."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import lowbit.dtypes as D
from lowbit.dtypes import DataType, decode, encode, round_to, wrap

from .reference import ref_decode

SMALL_INTS = [t for t in D.INTEGER_TYPES if t.bits <= 8]
ML_INTS = ("int1", "int2", "int4", "uint1", "uint2", "uint4")


def _ref_round(dt: DataType, v: float) -> int:
    # Python's round() is round-half-even on the exact float; then saturate; NaN -> 0
    if v != v:
        return 0
    if abs(v) == float("inf"):
        return int(dt.max) if v > 0 else int(dt.min)
    return min(max(round(v), int(dt.min)), int(dt.max))


@pytest.mark.parametrize("dt", SMALL_INTS, ids=str)
def test_every_code_decodes_and_round_trips(dt: DataType):
    codes = np.arange(dt.num_codes, dtype=np.uint8)
    values = decode(dt, codes)
    assert values.dtype == np.int64
    assert values.tolist() == [ref_decode(dt, int(c)) for c in codes]
    np.testing.assert_array_equal(encode(dt, values), codes)
    np.testing.assert_array_equal(encode(dt, values.astype(np.float32)), codes)


@pytest.mark.parametrize("name", ML_INTS)
def test_decode_every_code_matches_ml_dtypes(name: str):
    dt = D.dtype(name)
    codes = np.arange(dt.num_codes, dtype=np.uint8)
    np.testing.assert_array_equal(decode(dt, codes), codes.view(getattr(ml_dtypes, name)).astype(np.int64))


@given(x=arrays(np.float32, st.integers(1, 32), elements=st.floats(width=32, allow_nan=False)))
def test_encode_codes_match_ml_dtypes(x: np.ndarray):
    # ml_dtypes truncates toward zero and wraps out-of-range values (a C cast); lowbit rounds half to
    # even and saturates, which is ml_dtypes on np.rint(x) clipped to [min, max]
    for name in ML_INTS:
        dt, ml = D.dtype(name), getattr(ml_dtypes, name)
        want = np.clip(np.rint(x), dt.min, dt.max).astype(ml).view(np.uint8) & dt.code_mask
        np.testing.assert_array_equal(encode(dt, x), want, err_msg=name)


halves = st.integers(-(2**10), 2**10).map(lambda k: k / 2)  # ties: every k + 0.5
floats = arrays(np.float64, st.integers(1, 24), elements=st.floats(width=64) | halves)


@given(x=floats)
def test_round_to_is_saturating_round_half_even(x: np.ndarray):
    for dt in D.INTEGER_TYPES:  # every type per example: hypothesis draws are the slow part
        got = round_to(dt, x)
        assert got.dtype == np.int64
        assert got.tolist() == [_ref_round(dt, float(v)) for v in x], dt


@given(v=arrays(np.int64, st.integers(1, 24)))
def test_integer_inputs_saturate_and_wrap(v: np.ndarray):
    for dt in D.INTEGER_TYPES:
        assert round_to(dt, v).tolist() == [min(max(int(i), int(dt.min)), int(dt.max)) for i in v], dt
        half = 2 ** (dt.bits - 1) if dt.kind == "int" else 0
        assert wrap(dt, v).tolist() == [(int(i) + half) % 2**dt.bits - half for i in v], dt


def test_examples():
    assert round_to(D.int3, [3.5, 4.5, -4.6, np.nan, 2.5, -0.5]).tolist() == [3, 3, -4, 0, 2, 0]
    assert encode(D.int3, [-1, -4, 3]).tolist() == [7, 4, 3]  # two's complement codes
    assert round_to(D.uint4, [-3, 15.5, 14.5]).tolist() == [0, 15, 14]
    assert wrap(D.int5, [17, -17]).tolist() == [-15, 15] and wrap(D.uint4, [-1, 16]).tolist() == [15, 0]
    assert encode(D.int64, [1e30, -1e30, 2.0**63]).tolist() == [2**63 - 1, 2**63, 2**63 - 1]
    assert decode(D.int64, encode(D.int64, [-(2**63), -1])).tolist() == [-(2**63), -1]
    assert encode(D.int32, np.array([2**64 - 1], dtype=np.uint64)).tolist() == [2**31 - 1]
    assert [encode(t, [1]).dtype for t in (D.int4, D.int16, D.uint32, D.int64)] == [
        np.uint8, np.uint16, np.uint32, np.uint64,
    ]  # fmt: skip


def test_boolean():
    assert encode(D.boolean, [0.0, -0.0, 2.5, np.nan, -1]).tolist() == [0, 0, 1, 1, 1]  # nonzero (and NaN) -> 1
    assert decode(D.boolean, [0, 1]).tolist() == [False, True]
    assert round_to("bool", [0, 3]).dtype == np.bool_
    assert wrap(D.boolean, [2, 3]).tolist() == [0, 1]


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"fp4_e2m1 is a float type: use round_to"):
        wrap(D.fp4_e2m1, [1])
    with pytest.raises(ValueError, match=r"takes integers, got a float64 array; round first"):
        wrap(D.int4, [1.5])
    with pytest.raises(ValueError, match=r"code 8 is not a 3-bit int3 code \(valid: 0..7\)"):
        decode(D.int3, [8])

"""Float encode/decode: every code of every <= 8-bit float against the formula and ml_dtypes, encode at
every tie against a brute-force encoder and ml_dtypes, random float32 values with hypothesis."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import lowbit.dtypes as D
from lowbit.dtypes import DataType, decode, encode, float_type, holds_exactly, round_to

from .reference import brute_force_encoder, ref_decode, ref_nan_code

SMALL_FLOATS = [*D.SMALL_FLOAT_TYPES, float_type(4, 3, "ieee"), float_type(3, 4, "ieee"), float_type(5, 2, "fn")]
# lowbit name -> the ml_dtypes type with the same codes (fn in ml_dtypes means "no inf")
ML_ORACLE = {
    "fp4_e2m1": ml_dtypes.float4_e2m1fn,
    "fp6_e2m3": ml_dtypes.float6_e2m3fn,
    "fp6_e3m2": ml_dtypes.float6_e3m2fn,
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "fp8_e4m3_ieee": ml_dtypes.float8_e4m3,
    "fp8_e3m4_ieee": ml_dtypes.float8_e3m4,
}
WIDE_ORACLE = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}

# hypothesis's float32s (boundaries, huge, tiny, subnormal, inf, NaN) plus a seed for bulk values
float32_arrays = arrays(np.float32, st.integers(1, 12), elements=st.floats(width=32))
seeds = st.integers(0, 2**32 - 1)


def _with_bulk(x: np.ndarray, seed: int, scale: float) -> np.ndarray:
    # x, then 24 random float32 bit patterns (every binade) and 24 values on the type's own scale
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 2**32, size=24, dtype=np.uint32).view(np.float32)
    return np.concatenate([x, patterns, (rng.standard_normal(24) * scale).astype(np.float32)])


def _same_floats(got: np.ndarray, want: np.ndarray) -> bool:
    # bit-exact up to NaN payload and sign: equal values and signs (-0.0 != +0.0), NaN where NaN
    with np.errstate(invalid="ignore"):
        got, want = got.astype(np.float64), want.astype(np.float64)
    nan = np.isnan(want)
    return bool(
        (np.isnan(got) == nan).all()
        and (got[~nan] == want[~nan]).all()
        and (np.signbit(got[~nan]) == np.signbit(want[~nan])).all()
    )


def _ml_encode(dt: DataType, x: np.ndarray) -> np.ndarray:
    # ml_dtypes turns overflow into NaN for e4m3fn (and maps NaN oddly for fp4/fp6); lowbit saturates
    # "fn" types, which is ml_dtypes applied to x clipped to ±max
    if dt.convention == "fn":
        x = np.clip(x, np.float32(dt.min), np.float32(dt.max))
    with np.errstate(invalid="ignore"):  # signalling NaN patterns
        return x.astype(ML_ORACLE[dt.name]).view(np.uint8) & dt.code_mask


def probe_values(dt: DataType) -> np.ndarray:
    """Every value, every midpoint (a tie) and its float32 neighbours, quarter points, overflow and
    underflow probes, both signs: float32 [N]."""
    v = np.array(sorted({abs(v) for c in range(dt.num_codes) if math.isfinite(v := ref_decode(dt, c))}))
    mids = (v[:-1] + v[1:]) / 2
    assert (mids.astype(np.float32) == mids).all(), "midpoints must be exact float32 ties"
    m32 = mids.astype(np.float32)
    ulp, tiny = 2.0 ** (dt.max_exponent - dt.mantissa_bits), dt.smallest_subnormal
    above = [dt.max + ulp / 4, dt.max + ulp / 2, dt.max + ulp, dt.max * 4, 3e38, np.inf]
    below = [tiny / 2, tiny / 4, tiny * 0.75, 1e-45]
    pos = np.concatenate([
        v, m32, np.nextafter(m32, np.float32(np.inf)), np.nextafter(m32, np.float32(0)),
        (v[:-1] * 3 + v[1:]) / 4, np.array(above + below),
    ]).astype(np.float32)  # fmt: skip
    return np.concatenate([pos, -pos])


@pytest.mark.parametrize("dt", SMALL_FLOATS, ids=str)
def test_decode_every_code_matches_formula(dt: DataType):
    codes = np.arange(dt.num_codes)
    got = decode(dt, codes)
    assert got.dtype == np.float32 and got.shape == codes.shape
    assert _same_floats(got, np.array([ref_decode(dt, int(c)) for c in codes]))


@pytest.mark.parametrize("dt", SMALL_FLOATS, ids=str)
def test_every_code_round_trips(dt: DataType):
    codes = np.arange(dt.num_codes, dtype=np.uint8)
    values = decode(dt, codes)
    back = encode(dt, values)
    assert back.dtype == np.uint8
    nan = np.isnan(values)
    assert (back[~nan] == codes[~nan]).all()  # -0.0 included: it keeps its own code
    # NaN codes come back as the canonical NaN of their sign (ieee has several NaN codes per sign)
    assert [int(c) for c in back[nan]] == [ref_nan_code(dt, bool(s)) for s in np.signbit(values[nan])]


@pytest.mark.parametrize("name", ML_ORACLE)
def test_decode_every_code_matches_ml_dtypes(name: str):
    dt = D.dtype(name)
    codes = np.arange(dt.num_codes, dtype=np.uint8)
    assert _same_floats(decode(dt, codes), codes.view(ML_ORACLE[name]).astype(np.float32))


@pytest.mark.parametrize("name", WIDE_ORACLE)
def test_16bit_every_code_matches_numpy_and_round_trips(name: str):
    dt = D.dtype(name)
    codes = np.arange(2**16, dtype=np.uint16)
    values = decode(dt, codes)
    assert _same_floats(values, codes.view(WIDE_ORACLE[name]).astype(np.float32))
    nan = np.isnan(values)
    assert (encode(dt, values)[~nan] == codes[~nan]).all()


@pytest.mark.parametrize("dt", SMALL_FLOATS, ids=str)
def test_encode_matches_brute_force_at_every_tie(dt: DataType):
    x = probe_values(dt)
    np.testing.assert_array_equal(encode(dt, x), brute_force_encoder(dt)(x))


@pytest.mark.parametrize("name", ML_ORACLE)
def test_encode_matches_ml_dtypes_at_every_tie(name: str):
    dt = D.dtype(name)
    x = probe_values(dt)
    np.testing.assert_array_equal(encode(dt, x), _ml_encode(dt, x))


# The random tests check every type on each example: hypothesis's draws cost more than the checks.
@given(x=float32_arrays, seed=seeds)
def test_encode_random_floats_matches_brute_force(x: np.ndarray, seed: int):
    for dt in SMALL_FLOATS:
        xs = _with_bulk(x, seed, dt.max / 2)
        np.testing.assert_array_equal(encode(dt, xs), brute_force_encoder(dt)(xs), err_msg=dt.name)


@given(x=float32_arrays, seed=seeds)
def test_encode_random_floats_matches_ml_dtypes(x: np.ndarray, seed: int):
    for name in ML_ORACLE:
        dt = D.dtype(name)
        xs = _with_bulk(x, seed, dt.max / 2)
        xs = xs if dt.has_nan else xs[~np.isnan(xs)]  # ml_dtypes' NaN -> ∓0 is not ours: see test_nan_codes
        np.testing.assert_array_equal(encode(dt, xs), _ml_encode(dt, xs), err_msg=name)


@given(x=float32_arrays, seed=seeds)
def test_encode_16bit_matches_numpy(x: np.ndarray, seed: int):
    xs = _with_bulk(x, seed, 1000.0)
    nan = np.isnan(xs)
    for name, oracle in WIDE_ORACLE.items():
        dt = D.dtype(name)
        with np.errstate(over="ignore", invalid="ignore"):
            want = xs.astype(oracle)
        got = encode(dt, xs)
        assert got.dtype == np.uint16
        assert _same_floats(decode(dt, got), want.astype(np.float32)), name
        assert (got[~nan] == want.view(np.uint16)[~nan]).all(), name


@given(x=arrays(np.float64, st.integers(1, 48), elements=st.floats(allow_nan=False)))
def test_float64_inputs_are_rounded_once(x: np.ndarray):
    # numpy's float64 -> float16 rounds once; going through float32 first could round twice
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(encode(D.float16, x), want)


@given(codes=arrays(np.uint32, st.integers(1, 48)))
def test_float32_encode_decode_is_the_identity_on_bits(codes: np.ndarray):
    values = codes.view(np.float32)
    assert _same_floats(decode(D.float32, codes), values)
    nan = np.isnan(values)
    assert (encode(D.float32, values)[~nan] == codes[~nan]).all()


def test_double_rounding_example():
    x = 1 + 2.0**-4 + 2.0**-40  # just above the tie 1.0625 between 1.0 and 1.125 in fp8_e4m3
    assert decode(D.fp8_e4m3, encode(D.fp8_e4m3, x)) == 1.125
    assert decode(D.fp8_e4m3, encode(D.fp8_e4m3, np.float32(x))) == 1.0  # float32(x) is the tie itself


def test_nan_codes():
    nan = np.array([np.nan, -np.nan], np.float32)
    assert encode(D.fp4_e2m1, nan).tolist() == [0, 0]  # no NaN code: +0
    assert encode(D.fp6_e3m2, nan).tolist() == [0, 0]
    assert encode(D.fp8_e4m3, nan).tolist() == [0x7F, 0xFF]  # S.1111.111
    assert encode(D.fp8_e5m2, nan).tolist() == [0x7E, 0xFE]  # quiet NaN, sign kept
    assert encode(D.float16, nan).tolist() == [0x7E00, 0xFE00]
    assert np.isnan(round_to(D.bfloat16, nan)).all()


def test_overflow_saturates_fn_and_goes_to_inf_for_ieee():
    big = np.array([7.0, 1e30, np.inf, -np.inf], np.float32)
    assert round_to(D.fp4_e2m1, big).tolist() == [6.0, 6.0, 6.0, -6.0]
    assert round_to(D.fp8_e4m3, [464.0, 465.0, 1e9]).tolist() == [448.0, 448.0, 448.0]
    # e5m2: 61440 is the tie between max 57344 (odd mantissa) and 2^16 (inf, even): IEEE picks inf
    assert round_to(D.fp8_e5m2, [61439.0, 61440.0, -1e9]).tolist() == [57344.0, np.inf, -np.inf]
    assert round_to(D.float16, [65519.0, 65520.0]).tolist() == [65504.0, np.inf]


def test_signed_zero_and_subnormals():
    assert encode(D.fp8_e4m3, [-0.0, -1e-30, 2.0**-9, 2.0**-10, 3 * 2.0**-10]).tolist() == [
        0x80, 0x80, 0x01, 0x00, 0x02,
    ]  # fmt: skip
    assert np.signbit(round_to(D.fp4_e2m1, -0.2))


def test_shapes_and_scalars():
    x = np.linspace(-8, 8, 24, dtype=np.float32).reshape(2, 3, 4)
    assert encode(D.fp4_e2m1, x).shape == (2, 3, 4)
    assert decode(D.fp4_e2m1, encode(D.fp4_e2m1, x)).shape == (2, 3, 4)
    assert encode("fp4_e2m1", 1.25).shape == () and float(round_to("e2m1", 1.25)) == 1.0
    assert encode(D.fp4_e2m1, x[:, ::2, 1:]).shape == (2, 2, 3)  # non-contiguous input


def test_decode_rejects_bad_codes():
    with pytest.raises(ValueError, match=r"code 16 is not a 4-bit fp4_e2m1 code \(valid: 0..15\)"):
        decode(D.fp4_e2m1, [1, 16])
    with pytest.raises(ValueError, match="code -1"):
        decode(D.fp4_e2m1, [-1])
    with pytest.raises(ValueError, match="integer codes"):
        decode(D.fp4_e2m1, [1.0])


@pytest.mark.parametrize("dt", SMALL_FLOATS + [D.dtype(f"{s}int{b}") for s in ("", "u") for b in (1, 4, 8)], ids=str)
def test_holds_exactly_matches_numpy_and_ml_dtypes_casts(dt: DataType):
    """Oracle: NumPy's float16 cast and ml_dtypes' bfloat16 cast of every finite value of dt."""
    v = decode(dt, np.arange(1 << dt.bits)).astype(np.float64)
    v = v[np.isfinite(v)]
    with np.errstate(over="ignore"):  # values past fp16's range become inf, which is the point
        assert holds_exactly("float16", dt) == bool(np.all(v.astype(np.float16).astype(np.float64) == v))
        assert holds_exactly("bfloat16", dt) == bool(np.all(v.astype(ml_dtypes.bfloat16).astype(np.float64) == v))
    assert holds_exactly("float32", dt)


def test_holds_exactly_known_cases():
    assert [t.name for t in D.SMALL_FLOAT_TYPES if not holds_exactly("float16", t)] == [
        "fp6_e5m0", "fp7_e5m1", "fp7_e6m0", "fp8_e6m1", "fp8_e7m0"
    ]  # fmt: skip
    assert holds_exactly("int8", "int4") and not holds_exactly("int4", "uint4") and holds_exactly("int8", "uint7")
    assert not holds_exactly("int8", "fp4_e2m1")  # 0.5 is not an integer
    with pytest.raises(ValueError, match="16 bits"):
        holds_exactly("float32", "float32")

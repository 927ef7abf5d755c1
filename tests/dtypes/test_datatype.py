"""DataType: derived properties against their formulas, the enumerated value table and ml_dtypes."""

from __future__ import annotations

import dataclasses
import math

import ml_dtypes
import numpy as np
import pytest

import lowbit
import lowbit.dtypes as D
from lowbit.dtypes import DataType, float_type, int_type, uint_type

from .reference import ref_bias, ref_table

SMALL_FLOATS = [*D.SMALL_FLOAT_TYPES, float_type(4, 3, "ieee"), float_type(3, 4, "ieee"), float_type(5, 2, "fn")]


def _expected_max(dt: DataType) -> float:
    x, y, bias = dt.exponent_bits, dt.mantissa_bits, 2 ** (dt.exponent_bits - 1) - 1
    if dt.convention == "ieee":  # all-ones exponent reserved
        return 2.0 ** (2**x - 2 - bias) * (2 - 2.0**-y)
    if dt.bits < 8:  # ANCHORS: max = 2^(2^X-1-bias)·(2-2^-Y) for the finite-only types
        return 2.0 ** (2**x - 1 - bias) * (2 - 2.0**-y)
    if y == 0:  # 8-bit fn with no mantissa: the all-ones exponent is NaN
        return 2.0 ** (2**x - 2 - bias)
    return 2.0 ** (2**x - 1 - bias) * (2 - 2.0 ** (1 - y))  # 8-bit fn: S.1111.111 is NaN


def test_instances_cover_every_width_and_split():
    splits = {(t.exponent_bits, t.mantissa_bits) for t in D.SMALL_FLOAT_TYPES}
    assert splits == {(x, y) for x in range(1, 8) for y in range(8) if 1 + x + y <= 8}
    assert len(D.SMALL_FLOAT_TYPES) == 28
    assert {t.bits for t in D.INTEGER_TYPES if t.kind == "int"} == {*range(1, 9), 16, 32, 64}
    assert {t.bits for t in D.INTEGER_TYPES if t.kind == "uint"} == {*range(1, 9), 16, 32}
    assert len(set(D.INSTANCE_NAMES)) == len(D.ALL_TYPES)


def test_instances_are_exported_by_name():
    assert [n for n in D.__all__ if n in D.INSTANCE_NAMES] == list(D.INSTANCE_NAMES)
    for t in D.ALL_TYPES:
        assert getattr(D, t.name) == t
        assert getattr(lowbit, t.name) == t
    for name in ("dtype", "DataType", "encode", "decode", "round_to", "wrap"):
        assert getattr(lowbit, name) is getattr(D, name)


def test_canonical_names():
    assert [D.int3.name, D.uint4.name, D.fp6_e3m2.name, D.boolean.name] == ["int3", "uint4", "fp6_e3m2", "boolean"]
    assert [D.float16.name, D.bfloat16.name, D.float32.name] == ["float16", "bfloat16", "float32"]
    assert float_type(4, 3, "ieee").name == "fp8_e4m3_ieee"
    assert float_type(5, 2, "fn").name == "fp8_e5m2fn"
    assert repr(D.fp4_e2m1) == str(D.fp4_e2m1) == "fp4_e2m1"


def test_frozen_structural_equality_and_hash():
    assert float_type(2, 1) == D.fp4_e2m1 and hash(float_type(2, 1)) == hash(D.fp4_e2m1)
    assert {D.int4: "a"}[int_type(4)] == "a"
    assert D.int4 != D.uint4 and D.fp8_e4m3 != float_type(4, 3, "ieee")
    with pytest.raises(dataclasses.FrozenInstanceError):
        D.int4.bits = 5  # type: ignore[misc]


@pytest.mark.parametrize("dt", SMALL_FLOATS, ids=str)
def test_float_properties_match_formula_and_table(dt: DataType):
    values = [v for _, v in ref_table(dt)]
    finite = [v for v in values if math.isfinite(v)]
    assert dt.bias == ref_bias(dt)
    assert dt.max == _expected_max(dt) == max(finite)
    assert dt.min == -dt.max == min(finite)
    assert dt.smallest_subnormal == min(v for v in finite if v > 0)
    assert dt.smallest_normal == 2.0 ** (1 - dt.bias)
    assert dt.eps == 2.0**-dt.mantissa_bits
    assert dt.has_nan == any(math.isnan(v) for v in values)
    assert dt.has_inf == any(math.isinf(v) for v in values)
    assert values[dt.max_code] == dt.max
    if dt.has_nan:
        assert math.isnan(values[dt.nan_code])
    if dt.has_inf:
        assert values[dt.inf_code] == math.inf
    assert dt.sign_mask | dt.exponent_mask | dt.mantissa_mask == dt.code_mask
    assert dt.sign_mask & dt.exponent_mask == dt.exponent_mask & dt.mantissa_mask == 0
    assert dt.is_float and dt.is_signed and not dt.is_integer and dt.is_subbyte == (dt.bits < 8)


def test_known_maxima_and_e1m0():
    assert D.fp4_e2m1.max == 6.0 and D.fp6_e2m3.max == 7.5 and D.fp6_e3m2.max == 28.0
    assert D.fp8_e4m3.max == 448.0 and D.fp8_e5m2.max == 57344.0
    assert D.float16.max == 65504.0 and D.bfloat16.max == float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    assert D.float32.max == float(np.finfo(np.float32).max)
    # e1mY has bias 0 and is a sign-magnitude fixed-point grid with step 2^(1-Y): e1m0 holds {±0, ±2}
    assert D.fp2_e1m0.bias == 0 and sorted({abs(v) for _, v in ref_table(D.fp2_e1m0)}) == [0.0, 2.0]
    assert sorted({abs(v) for _, v in ref_table(D.fp3_e1m1)}) == [0.0, 1.0, 2.0, 3.0]
    assert D.fp8_e7m0.max == 2.0**63 and D.fp8_e7m0.nan_code == 0x7F


ML_FLOATS = {
    "fp4_e2m1": ml_dtypes.float4_e2m1fn,
    "fp6_e2m3": ml_dtypes.float6_e2m3fn,
    "fp6_e3m2": ml_dtypes.float6_e3m2fn,
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "fp8_e4m3_ieee": ml_dtypes.float8_e4m3,
    "fp8_e3m4_ieee": ml_dtypes.float8_e3m4,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float32": np.float32,
}


@pytest.mark.parametrize("name", ML_FLOATS)
def test_float_properties_match_ml_dtypes_finfo(name: str):
    dt, info = D.dtype(name), ml_dtypes.finfo(ML_FLOATS[name])
    assert dt.bits == info.bits
    assert dt.max == float(info.max) and dt.min == float(info.min)
    assert dt.smallest_normal == float(info.smallest_normal)
    assert dt.smallest_subnormal == float(info.smallest_subnormal)
    assert dt.eps == float(info.eps)


@pytest.mark.parametrize("dt", D.INTEGER_TYPES, ids=str)
def test_integer_bounds(dt: DataType):
    b = dt.bits
    lo, hi = (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if dt.kind == "int" else (0, 2**b - 1)
    assert (dt.min, dt.max) == (lo, hi)
    assert type(dt.min) is int and type(dt.max) is int
    assert dt.is_integer and dt.is_signed == (dt.kind == "int") and not dt.is_float
    assert dt.bias == 0 and not dt.has_nan and not dt.has_inf
    if b >= 8:
        assert (dt.min, dt.max) == (int(np.iinfo(dt.host_dtype).min), int(np.iinfo(dt.host_dtype).max))
    if dt.name in ("int1", "int2", "int4", "uint1", "uint2", "uint4"):
        info = ml_dtypes.iinfo(getattr(ml_dtypes, dt.name))
        assert (dt.min, dt.max) == (int(info.min), int(info.max))


def test_host_and_code_dtypes():
    assert all(t.host_dtype is None for t in D.ALL_TYPES if t.is_subbyte)
    assert D.int8.host_dtype == np.int8 and D.uint32.host_dtype == np.uint32 and D.int64.host_dtype == np.int64
    assert D.boolean.host_dtype == np.bool_ and not D.boolean.is_subbyte and D.boolean.max == 1
    assert D.float16.host_dtype == np.float16 and D.bfloat16.host_dtype == ml_dtypes.bfloat16
    assert D.fp8_e4m3.host_dtype == ml_dtypes.float8_e4m3fn and D.fp8_e5m2.host_dtype == ml_dtypes.float8_e5m2
    assert D.fp8_e3m4.host_dtype is None  # ml_dtypes.float8_e3m4 is the IEEE variant, not this fn one
    assert [t.code_dtype for t in (D.int3, D.fp8_e4m3, D.bfloat16, D.float32, D.int64)] == [
        np.uint8, np.uint8, np.uint16, np.uint32, np.uint64,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DataType("float", 8, 4, 4, "fn"), "9 bits, not bits=8"),
        (lambda: float_type(0, 3), "exponent_bits"),
        (lambda: float_type(9, 3), "exponent_bits"),
        (lambda: float_type(2, 1, "ieee" + "x"), "convention"),
        (lambda: float_type(1, 2, "ieee"), "no room for inf and NaN"),
        (lambda: float_type(4, 0, "ieee"), "no room for inf and NaN"),
        (lambda: int_type(9), "int9 is not supported"),
        (lambda: uint_type(64), "uint64 is not supported"),
        (lambda: DataType("int", 4, 2, 1), "no exponent/mantissa"),
        (lambda: DataType("complex", 8), "kind 'complex'"),
        (lambda: DataType("bool", 1), "use uint1"),
    ],
)
def test_invalid_types_name_the_problem(make, message: str):
    with pytest.raises(ValueError, match=message):
        make()

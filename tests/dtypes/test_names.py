"""dtype(): canonical names round-trip, aliases, NumPy dtypes, and errors that name the value and the fix."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import lowbit.dtypes as D
from lowbit.dtypes import dtype, float_type


@pytest.mark.parametrize("dt", [*D.ALL_TYPES, float_type(4, 3, "ieee"), float_type(5, 2, "fn")], ids=str)
def test_canonical_names_round_trip(dt):
    assert dtype(dt.name) == dt
    assert dtype(dt) is dt


ALIASES = {
    "i4": D.int4, "s4": D.int4, "INT4": D.int4, " int3 ": D.int3, "u4": D.uint4, "uint8": D.uint8,
    "fp4_e2m1": D.fp4_e2m1, "f4e2m1": D.fp4_e2m1, "e2m1": D.fp4_e2m1, "float4_e2m1fn": D.fp4_e2m1,
    "fp4_e2m1fn": D.fp4_e2m1, "float6_e3m2fn": D.fp6_e3m2, "float6_e2m3fn": D.fp6_e2m3,
    "float8_e4m3fn": D.fp8_e4m3, "fp8_e4m3fn": D.fp8_e4m3, "FP8_E4M3": D.fp8_e4m3, "fp8e4m3": D.fp8_e4m3,
    "float8_e5m2": D.fp8_e5m2, "e5m2": D.fp8_e5m2, "fp2_e1m0": D.fp2_e1m0,
    "fp16": D.float16, "f16": D.float16, "half": D.float16, "fp16_e5m10": D.float16,
    "bf16": D.bfloat16, "fp16_e8m7": D.bfloat16,
    "fp32": D.float32, "f32": D.float32, "float": D.float32,
    "bool": D.boolean, "boolean": D.boolean,
    "fp8_e4m3_ieee": float_type(4, 3, "ieee"), "fp8_e5m2fn": float_type(5, 2, "fn"),
}  # fmt: skip


@pytest.mark.parametrize("alias", ALIASES)
def test_aliases(alias: str):
    assert dtype(alias) == ALIASES[alias]


def test_fn_suffix_conventions():
    assert dtype("fp8_e5m2fn").max == 98304.0 and not dtype("fp8_e5m2fn").has_inf  # the finite variant
    assert dtype("fp8_e4m3_ieee").max == 240.0  # ml_dtypes.float8_e4m3
    assert dtype("float8_e4m3").max == 448.0  # no suffix: lowbit's default (fn), unlike ml_dtypes


def test_numpy_dtypes():
    assert dtype(np.float16) == D.float16 and dtype(np.dtype("float32")) == D.float32
    assert dtype(ml_dtypes.bfloat16) == D.bfloat16 and dtype(ml_dtypes.float8_e4m3fn) == D.fp8_e4m3
    assert dtype(np.int8) == D.int8 and dtype(np.uint32) == D.uint32 and dtype(np.bool_) == D.boolean
    with pytest.raises(ValueError, match="NumPy dtype float64 has no lowbit equivalent"):
        dtype(np.float64)
    with pytest.raises(TypeError, match="got None"):
        dtype(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"got float 3\.5"):
        dtype(3.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("flaot16", r"unknown data type 'flaot16' \(did you mean 'float16'"),
        ("fp6_e3m3", r"'fp6_e3m3': 1 sign \+ 3 exponent \+ 3 mantissa bits = 7 bits, not 6"),
        ("int9", r"'int9': int9 is not supported; signed widths are 1..8, 16, 32, 64"),
        ("uint64", "uint64 is not supported"),
        ("fp8_e0m7", r"'fp8_e0m7': .*1 <= exponent_bits"),
        ("e1m0_ieee", "no room for inf and NaN"),
        ("int", r"unknown data type 'int'"),
        ("", "unknown data type ''"),
        ("float8", r"unknown data type 'float8'.*fp\{B\}_e\{X\}m\{Y\}"),
    ],
)
def test_bad_names_explain(name: str, message: str):
    with pytest.raises(ValueError, match=message):
        dtype(name)


def test_unknown_name_lists_the_grammar():
    with pytest.raises(ValueError) as err:
        dtype("quux")
    assert "accepted: int{N}/i{N}/s{N}" in str(err.value) and "bfloat16/bf16" in str(err.value)

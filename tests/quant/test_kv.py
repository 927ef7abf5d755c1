"""KV cache formats: KV8/KV4 (fp16 scale and zero, zero bound, zero-range guard), fp8_e4m3, fp16/bf16."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.dtypes import decode
from lowbit.quant.kv import (
    FP8_E4M3_MAX,
    KV_DTYPES,
    ZERO_BOUND,
    dequantize_kv,
    dequantize_kv_cache,
    fp8_kv_scale,
    quantize_kv,
    quantize_kv_cache,
    quantize_kv_fp8,
)

from .numerics import KINDS, sample

FP16_MAX = float(np.finfo(np.float16).max)
KV_KINDS = (*KINDS, "near_constant", "far_offset")


def kv_sample(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """`numerics.sample` plus rows that stress the fp16 zero: near-constant and tiny ranges far from 0."""
    if kind == "near_constant":  # range ~1e-6 around a value in ±5
        c = rng.uniform(-5, 5, (*shape[:-1], 1))
        return (c + rng.standard_normal(shape) * 1e-6).astype(np.float32)
    if kind == "far_offset":  # values in [c, c + 0.01] with |c| up to 1e4: zero would be ~1e6
        c = rng.uniform(-1e4, 1e4, (*shape[:-1], 1))
        return (c + rng.uniform(0, 0.01, shape)).astype(np.float32)
    return sample(rng, shape, kind)


def in_contract(x: np.ndarray, steps: int) -> np.ndarray:
    """Rows [...] whose scale cannot saturate: range <= steps·65504·(1 − 2^-10), |min| <= 2^11·65504 / 2."""
    lo, hi = x.min(-1).astype(np.float64), x.max(-1).astype(np.float64)
    return ((hi - lo) <= steps * FP16_MAX * (1 - 2.0**-10)) & (np.abs(lo) <= ZERO_BOUND * FP16_MAX / 2)


@settings(max_examples=60)
@given(
    bits=st.integers(1, 8),
    t=st.integers(1, 4),
    h=st.integers(1, 3),
    d=st.sampled_from([1, 8, 64]),
    kind=st.sampled_from(KV_KINDS),
    seed=st.integers(0, 2**32 - 1),
)
def test_kv_bounds(bits: int, t: int, h: int, d: int, kind: str, seed: int) -> None:
    x = kv_sample(np.random.default_rng(seed), (t, h, d), kind)  # x: [T, H, D]
    kv = quantize_kv(x, bits=bits)
    steps = 2**bits - 1
    assert kv.codes.dtype == np.uint8 and kv.codes.shape == x.shape and kv.codes.max() <= steps
    assert kv.scales.dtype == np.float16 and kv.scales.shape == (t, h)
    assert kv.zeros.dtype == np.float16 and kv.zeros.shape == (t, h)
    assert np.all(np.isfinite(kv.scales)) and np.all(kv.scales > 0) and np.all(np.isfinite(kv.zeros))
    xhat = kv.dequantize()
    assert xhat.dtype == np.float64 and np.all(np.isfinite(xhat))

    ok = in_contract(x, steps)  # ok: [T, H]
    s = kv.scales.astype(np.float64)
    lo, hi = x.min(-1).astype(np.float64), x.max(-1).astype(np.float64)
    # the scale fits the range, keeps |zero| <= 2^11, and is no larger than the documented bound
    assert np.all((s >= (hi - lo) / steps)[ok])
    assert np.all((np.abs(kv.zeros.astype(np.float64)) <= ZERO_BOUND)[ok])
    bound = np.maximum((hi - lo) / steps * (1 + 2.0**-10) + 2.0**-24, np.abs(lo) * 2.0**-10)
    all_zero = (lo == 0) & (hi == 0)  # the guard: scale 1, zero 0, codes 0
    assert np.all((s <= bound)[ok & ~all_zero]) and np.all(s[all_zero] == 1) and np.all(kv.zeros[all_zero] == 0)
    # every element within half a step (float64 evaluation of x/s + zero adds < 2^-40 of a step)
    err = np.abs(xhat - x)
    assert np.all((err <= s[..., None] * (0.5 + 1e-9))[ok])
    # oracle: no other code reconstructs x better with the stored scale and zero (exhaustive over codes)
    grid = np.arange(steps + 1, dtype=np.float64)  # [2^b]
    z = kv.zeros.astype(np.float64)[..., None, None]
    best = np.abs((grid - z) * s[..., None, None] - x[..., None]).min(-1)  # best: [T, H, D]
    assert np.all((err <= best + s[..., None] * 1e-9)[ok])
    # x̂ is exact, so the codes come back from x̂ with the stored parameters
    again = np.rint(xhat / s[..., None] + kv.zeros.astype(np.float64)[..., None])
    assert np.array_equal(again, kv.codes)


@pytest.mark.parametrize("bits", [4, 8])
def test_every_fp16_constant_row_is_exact(bits: int) -> None:
    """Zero-range guard, exhaustively: all 63,487 finite fp16 values as constant rows reconstruct exactly."""
    values = np.arange(2**16, dtype=np.uint16).view(np.float16)
    values = values[np.isfinite(values)].astype(np.float32)  # [N]
    x = np.repeat(values[:, None, None], 4, axis=2)  # x: [N, 1, 4]
    kv = quantize_kv(x, bits=bits)
    assert np.array_equal(kv.dequantize(), x)
    assert not kv.codes.any()
    assert np.all(np.abs(kv.zeros.astype(np.float64)) <= ZERO_BOUND)
    assert kv.scales[values == 0, 0].tolist() == [1.0, 1.0] and kv.zeros[values == 0, 0].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("value", [3.7, -1e-3, 1234.56, 0.01, -7e-8, 1e6])
def test_constant_row_off_fp16_is_within_fp16_precision(value: float) -> None:
    x = np.full((1, 1, 16), value, dtype=np.float64)
    kv = quantize_kv(x, bits=4)
    assert np.all(np.abs(kv.dequantize() - x) <= abs(value) * 2.0**-11)


def test_tiny_range_far_from_zero_raises_the_scale() -> None:
    """[1000, 1000.01]: range/15 would need zero ≈ −1.5e6 (beyond fp16); the zero bound gives scale 0.5."""
    x = np.linspace(1000, 1000.01, 16).reshape(1, 1, 16)
    kv = quantize_kv(x, bits=4)
    assert kv.scales[0, 0] == 0.5 and kv.zeros[0, 0] == -2000
    assert np.abs(kv.dequantize() - x).max() <= 1000 * 2.0**-11  # fp16 itself rounds 1000.01 to 1000


def test_kv8_is_finer_than_kv4() -> None:
    x = np.random.default_rng(0).standard_normal((8, 4, 128)).astype(np.float32)
    e4 = np.abs(quantize_kv(x, bits=4).dequantize() - x).max()
    e8 = np.abs(quantize_kv(x, bits=8).dequantize() - x).max()
    assert e8 < e4 / 10


def test_dequantize_kv_formula() -> None:
    codes = np.array([[0, 5, 15]], np.uint8)
    out = dequantize_kv(codes, np.array([0.5], np.float16), np.array([2.5], np.float16))
    assert out.tolist() == [[-1.25, 1.25, 6.25]]
    assert (
        dequantize_kv(codes, np.array([0.5], np.float16), np.array([2.5], np.float16), np.float32).dtype == np.float32
    )


def test_kv_errors() -> None:
    with pytest.raises(ValueError, match="bits 9"):
        quantize_kv(np.zeros((1, 4)), bits=9)
    with pytest.raises(ValueError, match="x has 1 non-finite value"):
        quantize_kv(np.array([[0.0, np.nan]]))


# --- fp8_e4m3 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 0.0625, 3.0, 0.017])
def test_fp8_every_code_round_trips(scale: float) -> None:
    codes = np.arange(256, dtype=np.uint8)
    values = decode("fp8_e4m3", codes).astype(np.float64)  # [256], NaN at 0x7f and 0xff
    real = ~np.isnan(values)
    layer_scale = float(np.float32(scale))
    xhat = values * layer_scale  # exact: 4-bit significand times a float32 scale
    assert np.array_equal(quantize_kv_fp8(xhat[real], scale), codes[real])
    assert np.array_equal(quantize_kv_cache(xhat[real], "fp8_e4m3", fp8_scale=scale).dequantize(), xhat[real])


@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), spread=st.sampled_from([1e-4, 1.0, 100.0, 1e4]))
def test_fp8_matches_ml_dtypes_and_saturates(seed: int, spread: float) -> None:
    x = (np.random.default_rng(seed).standard_normal(512) * spread).astype(np.float32)  # x: [512]
    codes = quantize_kv_fp8(x)  # scale 1: x / 1 is exact, so both round once from float32
    theirs = x.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)  # ml_dtypes: NaN on overflow
    fits = np.abs(x) < FP8_E4M3_MAX + 16  # below the first value that rounds past 448
    assert np.array_equal(codes[fits], theirs[fits])
    xhat = decode("fp8_e4m3", codes).astype(np.float64)
    assert np.all(xhat[~fits] == np.sign(x[~fits]) * FP8_E4M3_MAX)
    # error bounds: relative 2^-4 in the normal range, absolute 2^-10 below it
    normal = (np.abs(x) >= 2.0**-6) & fits
    assert np.all(np.abs(xhat - x)[normal] <= np.abs(x[normal]) * 2.0**-4)
    assert np.all(np.abs(xhat - x)[np.abs(x) < 2.0**-6] <= 2.0**-10)


def test_fp8_kv_scale_maps_amax_to_448() -> None:
    x = np.random.default_rng(1).standard_normal((4, 2, 16)) * 900
    scale = fp8_kv_scale(x)
    xhat = quantize_kv_cache(x, "fp8_e4m3", fp8_scale=scale).dequantize()
    assert abs(np.abs(xhat).max() - np.abs(x).max()) <= np.abs(x).max() * 2.0**-4
    assert np.all(np.abs(xhat - x) <= np.maximum(np.abs(x) * 2.0**-4, scale * 2.0**-10))
    assert fp8_kv_scale(np.zeros(3)) == 1.0


# --- one entry point for every format ---------------------------------------------------------------
@pytest.mark.parametrize("kv_dtype", KV_DTYPES)
def test_quantize_kv_cache_round_trip(kv_dtype: str) -> None:
    x = np.random.default_rng(2).standard_normal((5, 2, 32))  # x: [T, H, D]
    kv = quantize_kv_cache(x, kv_dtype)
    xhat = kv.dequantize()
    assert xhat.shape == x.shape and xhat.dtype == np.float64
    assert np.array_equal(xhat, dequantize_kv_cache(kv.codes, kv_dtype, kv.scales, kv.zeros, kv.layer_scale))
    has_params = kv_dtype in ("int8", "int4")
    assert (kv.scales is not None) == has_params and (kv.zeros is not None) == has_params
    if kv_dtype == "float16":
        assert kv.codes.dtype == np.float16 and np.array_equal(xhat, x.astype(np.float16))
    elif kv_dtype == "bfloat16":
        assert kv.codes.dtype == ml_dtypes.bfloat16
        x32 = x.astype(np.float32)
        assert np.array_equal(quantize_kv_cache(x32, kv_dtype).codes, x32.astype(ml_dtypes.bfloat16))
        assert np.all(np.abs(xhat - x) <= np.abs(x) * 2.0**-8)
    elif kv_dtype == "float32":
        assert kv.codes.dtype == np.float32 and np.array_equal(xhat, x.astype(np.float32))
    elif kv_dtype == "fp8_e4m3":
        assert kv.codes.dtype == np.uint8 and np.array_equal(kv.codes, quantize_kv_fp8(x))
    else:
        assert kv.codes.dtype == np.uint8 and kv.scales is not None
        assert np.all(np.abs(xhat - x) <= kv.scales.astype(np.float64)[..., None] / 2 * (1 + 1e-9))


def test_kv_cache_errors() -> None:
    with pytest.raises(ValueError, match="kv_dtype 'fp8' is not a KV cache format; use one of float16"):
        quantize_kv_cache(np.zeros((1, 4)), "fp8")
    with pytest.raises(ValueError, match="beyond float16's largest finite value; use kv_dtype 'bfloat16'"):
        quantize_kv_cache(np.full((1, 4), 1e5), "float16")
    with pytest.raises(ValueError, match="needs scales and zeros"):
        dequantize_kv_cache(np.zeros((1, 4), np.uint8), "int4")
    with pytest.raises(ValueError, match=r"fp8 layer scale 0\.0 must be a finite positive float"):
        quantize_kv_fp8(np.zeros(4), 0.0)

"""Quantize-on-append into the paged KV cache on triton and tvm vs the reference interpreter and vs
`lowbit.reference.paged.append_kv_reference` (i.e. `lowbit.quant.kv.quantize_kv_cache`).

What is asserted, for every kv_dtype:
* backend == reference interpreter, bit for bit (every output array);
* vs NumPy: every slot that is not appended (padding slots included) keeps its old bits; fp16/bf16/fp8
  codes equal; KV8/KV4 scales and zeros equal, codes equal except at a rounding tie, where
  y = x/scale + zero (float64) lies within 2^-21·(|x/scale| + |zero| + 1) of a half-integer (the kernel
  rounds y in fp32): there they may differ by one. Dequantized values are within half a step of x
  (|x̂ − x| <= scale/2, `lowbit.quant.kv`'s bound).
Rows mix the cases the quantizer guards: plain, far from zero with a tiny range (the zero bound), constant,
all zero, tiny, and wide (fp8: saturating at 448·layer_scale).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.dtypes import dtype
from lowbit.kernels.kv_append import append_kv, cache_dtype, key_dtype, kv_append
from lowbit.quant.kv import KV_BITS, dequantize_kv
from lowbit.reference.paged import (
    append_kv_reference,
    build_paged_cache,
    pack_int4,
    pack_int4_keys,
    pack_int8_keys,
    unpack_int4,
    unpack_int4_keys,
    unpack_int8_keys,
)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "codegen"))
from backend_harness import assert_same, run_both

BACKENDS = pytest.mark.parametrize("backend", ["triton", "tvm"])
HOST = {"float16": np.float16, "bfloat16": dtype("bfloat16").host_dtype, "float32": np.float32}
PS, NUM_PAGES = 4, 6
LAYER_SCALES = (0.37, 1.3)  # fp8: k's, v's


def rows(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """[T, H, D] float64, each [t, h] row one of the quantizer's cases."""
    nt, h, _ = shape
    kinds = rng.integers(0, 6, (nt, h, 1))
    noise = rng.standard_normal(shape)
    return np.select(
        [kinds == 0, kinds == 1, kinds == 2, kinds == 3, kinds == 4],
        [
            noise * 3,
            1000 + noise * 0.01,
            np.broadcast_to(rng.uniform(-9, 9, (nt, h, 1)), shape),
            0 * noise,
            noise * 1e-6,
        ],
        rng.uniform(-3e4, 3e4, shape),
    )


def problem(nt, h, d, kv_dtype, adtype, seed):
    """A cache holding two sequences in random pages, new k/v rows, and slots: free ones, one padding."""
    rng = np.random.default_rng(seed)
    seqs = [rng.standard_normal((n, h, d)) for n in (3, 2)]
    cache = build_paged_cache(seqs, seqs, PS, kv_dtype, num_pages=NUM_PAGES, rng=rng,
                              k_layer_scale=LAYER_SCALES[0], v_layer_scale=LAYER_SCALES[1])  # fmt: skip
    free = np.setdiff1d(np.arange(NUM_PAGES * PS), cache.slot_mapping)
    slots = rng.choice(free, nt, replace=False).astype(np.int32)
    slots[rng.integers(0, nt)] = -1  # padding
    k, v = (rows(rng, (nt, h, d)).astype(HOST[adtype]) for _ in range(2))
    return cache, k, v, slots


def storage(a: np.ndarray | None, kv_dtype: str, field: str, which: str = "v"):
    """A reference cache array as the kernel stores it (int4 keys: `pack_int4_keys`'s layout)."""
    if a is None or field != "cache":
        return a
    if kv_dtype in ("int4", "int8") and which == "k":  # keys: page-transposed int32 words
        return (pack_int4_keys if kv_dtype == "int4" else pack_int8_keys)(a).view(np.int32)
    if kv_dtype == "int4":
        return pack_int4(a).view(np.int32)
    return a.view(np.dtype(dtype(cache_dtype(kv_dtype)).host_dtype))


def codes_of(a: np.ndarray, kv_dtype: str, which: str = "v") -> np.ndarray:
    """The kernel's cache array as the reference holds it (int4 unpacked; others as integer bits)."""
    if kv_dtype in ("int4", "int8") and which == "k":
        unpack = unpack_int4_keys if kv_dtype == "int4" else unpack_int8_keys
        return unpack(a.view(np.uint32)).astype(np.int64)
    if kv_dtype == "int4":
        return unpack_int4(a.view(np.uint32)).astype(np.int64)
    return a.view(np.dtype(f"uint{a.dtype.itemsize * 8}")).astype(np.int64)


def tie_mask(x, slots, expected, which, shape):
    """[num_slots, H, D] True where the appended y = x/scale + zero is within rounding of a half-integer."""
    flat = NUM_PAGES * PS
    scale = getattr(expected, f"{which}_scales").reshape(flat, shape[1])[slots].astype(np.float64)[..., None]
    zero = getattr(expected, f"{which}_zeros").reshape(flat, shape[1])[slots].astype(np.float64)[..., None]
    y = x.astype(np.float64) / scale + zero
    near = np.abs(np.abs(y - np.floor(y)) - 0.5) <= 2.0**-21 * (np.abs(y - zero) + np.abs(zero) + 1)
    mask = np.zeros(shape, bool)
    mask[slots] = near
    return mask


def check_append(backend, nt, h, d, kv_dtype, adtype, seed, bh=2, rows_k=None):
    cache, k, v, slots = problem(nt, h, d, kv_dtype, adtype, seed)
    if rows_k is not None:  # hand-made rows for k
        k = rows_k.astype(k.dtype)
    expected = append_kv_reference(cache, k, v, slots)
    fields = ("cache", "scales", "zeros") if kv_dtype in KV_BITS else ("cache",)
    args = {"k": k, "v": v, "slot_mapping": slots, "layer_scales": np.asarray(LAYER_SCALES, np.float32)}
    for which in "kv":
        for field in fields:
            args[f"{which}_{field}"] = storage(getattr(cache, f"{which}_{field}"), kv_dtype, field, which).copy()
    consts = dict(D=d, kv_dtype=kv_dtype, cdtype=cache_dtype(kv_dtype), kdtype=key_dtype(kv_dtype), dtype=adtype, BH=bh)
    ref, out = run_both(kv_append, consts, args, backend=backend)
    what = f"{backend} {kv_dtype} {adtype} T={nt} H={h} D={d}"
    real = slots >= 0
    for which, x in (("k", k[real]), ("v", v[real])):
        for field in fields:
            name = f"{which}_{field}"
            assert_same(out[name], ref[name], f"{what}: {name} vs interpreter")
        want = getattr(expected, f"{which}_cache").reshape(NUM_PAGES * PS, h, d)
        want = want.astype(np.int64) if kv_dtype in KV_BITS else codes_of(want, kv_dtype)  # codes, bits
        if kv_dtype not in KV_BITS:  # float formats: the same bits
            assert_same(codes_of(out[f"{which}_cache"], kv_dtype, which).reshape(want.shape), want, f"{what}: {which}")
            continue
        for field in ("scales", "zeros"):
            assert_same(out[f"{which}_{field}"], getattr(expected, f"{which}_{field}"), f"{what}: {which} {field}")
        got = codes_of(out[f"{which}_cache"], kv_dtype, which).reshape(want.shape)
        ties = tie_mask(x, slots[real], expected, which, want.shape)
        assert (np.abs(got - want) <= ties).all(), (
            f"{what}: {which} codes differ off ties at {np.argwhere(got != want)[:3]}"
        )
        flat = NUM_PAGES * PS
        s = out[f"{which}_scales"].reshape(flat, h)[slots[real]]
        x_hat = dequantize_kv(got[slots[real]], s, out[f"{which}_zeros"].reshape(flat, h)[slots[real]])
        err = np.abs(x_hat - x.astype(np.float64))
        # a tie rounded the other way is off by step/2 up to the rounding of y = x/scale + zero (tie_mask's slack)
        slack = np.where(ties[slots[real]], 2.0**-20, 0.0)
        half = s.astype(np.float64)[..., None] / 2
        assert (err <= half * (1 + slack)).all(), f"{what}: {which} dequantized off by > step/2"


# one compiled kernel per case (compiling dominates the time); hypothesis varies T, H, slots and values
CASES = [
    ("int4", "float16", 64),
    ("int4", "float32", 64),
    ("int8", "float16", 64),
    ("int8", "bfloat16", 128),
    ("fp8_e4m3", "float16", 64),
    ("float16", "float32", 64),
    ("bfloat16", "float16", 64),
]


@BACKENDS
@pytest.mark.parametrize("kv_dtype,adtype,d", CASES)
@settings(max_examples=2)
@given(nt=st.integers(2, 5), h=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_append_matches_references(backend, kv_dtype, adtype, d, nt, h, seed):
    check_append(backend, nt, h, d, kv_dtype, adtype, seed)


@BACKENDS
def test_scale_is_exact_where_fp32_range_rounds(backend):
    # hi − lo = 7.5 + 2^-30 rounds to 7.5 in fp32, and 7.5/15 = 0.5 is an fp16 value: the fp32 candidate
    # scale 0.5 is too small; float64 (and the kernel's TwoSum correction) give the next fp16, 0.5 + 2^-11
    x = np.zeros((2, 1, 64))
    x[:, 0, 0], x[:, 0, 1] = 7.5, -(2.0**-30)
    x[1, 0, 2:] = np.linspace(-(2.0**-30), 7.5, 62)
    check_append(backend, 2, 1, 64, "int4", "float32", seed=1, rows_k=x)


@BACKENDS
@pytest.mark.parametrize("kv_dtype", ["int4", "fp8_e4m3"])
def test_append_kv_launcher(backend, kv_dtype):
    cache, k, v, slots = problem(4, 2, 64, kv_dtype, "float16", seed=11)
    expected = append_kv_reference(cache, k, v, slots)
    if kv_dtype == "int4":  # the attention kernels' layout: uint32 words, the keys page-transposed
        k_cache, v_cache = pack_int4_keys(cache.k_cache), pack_int4(cache.v_cache)
        extra = dict(k_scales=cache.k_scales.copy(), k_zeros=cache.k_zeros.copy(), v_scales=cache.v_scales.copy(),
                     v_zeros=cache.v_zeros.copy())  # fmt: skip
    else:  # uint8 bit patterns
        k_cache, v_cache = cache.k_cache.copy(), cache.v_cache.copy()
        extra = dict(k_layer_scale=cache.k_layer_scale, v_layer_scale=cache.v_layer_scale)
    append_kv(k, v, slots, k_cache, v_cache, kv_dtype, backend=backend, heads_per_block=2, **extra)
    if kv_dtype == "int4":
        assert k_cache.dtype == np.uint32
        assert (np.abs(unpack_int4_keys(k_cache).astype(int) - expected.k_cache) <= 1).all()
        assert (np.abs(unpack_int4(v_cache).astype(int) - expected.v_cache) <= 1).all()
        assert_same(extra["k_scales"], expected.k_scales)
        assert_same(extra["v_zeros"], expected.v_zeros)
    else:
        assert_same(k_cache, expected.k_cache)
        assert_same(v_cache, expected.v_cache)


def test_append_kv_errors():
    cache, k, v, slots = problem(2, 1, 64, "int8", "float16", seed=0)
    keys = pack_int8_keys(cache.k_cache)  # int8 keys: page-transposed words
    with pytest.raises(ValueError, match="kv_dtype"):
        append_kv(k, v, slots, keys, cache.v_cache, "int3", backend="reference")
    with pytest.raises(ValueError, match="k_scales"):
        append_kv(k, v, slots, keys, cache.v_cache, "int8", backend="reference")
    with pytest.raises(ValueError, match="k_cache"):
        append_kv(k, v, slots, keys[:, :, :4], cache.v_cache, "int8", backend="reference")
    with pytest.raises(ValueError, match="pack_int8_keys"):  # token-major keys
        append_kv(k, v, slots, cache.k_cache, cache.v_cache, "int8", backend="reference")
    with pytest.raises(ValueError, match="slot_mapping"):
        append_kv(k, v, slots[:1], keys, cache.v_cache, "int8", backend="reference")
    side = dict(k_scales=cache.k_scales, k_zeros=cache.k_zeros, v_scales=cache.v_scales, v_zeros=cache.v_zeros)
    with pytest.raises(ValueError, match="cache holds"):
        append_kv(k, v, slots, keys, cache.v_cache.astype(np.float32), "int8", backend="reference", **side)


def test_append_kv_refuses_token_major_int4_keys():
    # int4 keys are [NP, Hkv, D // 8, PS] words; the values' token-major layout for the keys is named as the fix
    cache, k, v, slots = problem(2, 2, 64, "int4", "float16", seed=0)
    side = dict(k_scales=cache.k_scales, k_zeros=cache.k_zeros, v_scales=cache.v_scales, v_zeros=cache.v_zeros)
    with pytest.raises(ValueError, match="pack_int4_keys"):
        append_kv(k, v, slots, pack_int4(cache.k_cache), pack_int4(cache.v_cache), "int4", backend="reference", **side)

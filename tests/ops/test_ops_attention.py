"""Attention ops on every compiled backend against the float64 references of lowbit.reference.

Bounds: fp32 softmax and accumulation over a dequantized (exactly representable) cache give ‖out − ref‖/‖ref‖
of a few 1e-7; the KV8/KV4 kernels fold the dequantization into the dots (q·c − z·Σq), which adds fp32
cancellation of about |z|·2⁻²⁴ per score: bounded here by 2e-5. Outputs rounded to fp16 add 2⁻¹¹.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.kernels.kv_append import append_kv
from lowbit.ops.attention import paged_decode_attention, prefill_attention
from lowbit.quant.smooth_attention import smooth_attention_scales
from lowbit.reference.attention import decode_attention
from lowbit.reference.attention import prefill_attention as prefill_reference
from lowbit.reference.paged import (
    PagedKVCache,
    append_kv_reference,
    build_paged_cache,
    pack_int4,
    pack_int4_keys,
    pack_int8_keys,
    token_slots,
)

KV = ["float16", "bfloat16", "fp8_e4m3", "int8", "int4"]
FP32_BOUND = 2e-5


SIDE = ("k_scales", "k_zeros", "v_scales", "v_zeros")


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    assert np.isfinite(err), "NaN/inf in the output"
    return err


def decode(cache: PagedKVCache, q: np.ndarray, backend: str, **kw) -> np.ndarray:
    kc, vc = cache.k_cache, cache.v_cache
    if cache.kv_dtype == "int4":  # keys page-transposed (the kernels' layout), values token-major
        kc, vc = pack_int4_keys(kc), pack_int4(vc)
    elif cache.kv_dtype == "int8":
        kc = pack_int8_keys(kc)
    return np.asarray(
        paged_decode_attention(
            q,
            kc,
            vc,
            cache.block_table,
            cache.context_lens,
            kv_dtype=cache.kv_dtype,
            k_scales=cache.k_scales,
            k_zeros=cache.k_zeros,
            v_scales=cache.v_scales,
            v_zeros=cache.v_zeros,
            k_layer_scale=cache.k_layer_scale,
            v_layer_scale=cache.v_layer_scale,
            backend=backend,
            **kw,
        )
    )


def random_cache(rng, lens, hkv, d, page, kv, outliers=False):
    def draw(n):
        x = rng.standard_normal((n, hkv, d)).astype(np.float32)
        if outliers:  # a few channels 20x larger, like post-RoPE keys of real models
            x[..., rng.choice(d, 4, replace=False)] *= 20
        return x

    ks = [draw(n) for n in lens]
    vs = [draw(n) for n in lens]
    return ks, vs, build_paged_cache(ks, vs, page, kv, rng=rng, k_layer_scale=1.5, v_layer_scale=0.75)


@pytest.mark.parametrize("backend", ["tvm", "triton"])
@settings(max_examples=5, deadline=None)
@given(
    kv=st.sampled_from(KV),
    lens=st.lists(st.integers(1, 90), min_size=1, max_size=3),
    hkv=st.sampled_from([1, 2]),
    gq=st.sampled_from([1, 3, 4]),
    d=st.sampled_from([64, 128]),
    page=st.sampled_from([16, 32]),
    splits=st.sampled_from([None, 1, 3]),
    seed=st.integers(0, 2**31),
)
def test_decode_equals_the_float64_reference(backend, kv, lens, hkv, gq, d, page, splits, seed):
    rng = np.random.default_rng(seed)
    _, _, cache = random_cache(rng, lens, hkv, d, page, kv)
    q = rng.standard_normal((len(lens), hkv * gq, d)).astype(np.float32)
    out = decode(cache, q, backend, num_splits=splits)
    assert out.shape == q.shape and out.dtype == np.float32
    assert rel(out, decode_attention(q, cache)) < FP32_BOUND


@pytest.mark.parametrize("kv", ["int4", "int8", "float16"])
def test_decode_long_contexts_and_small_pages_tvm(kv):
    """Thousands of tokens (not a multiple of the tile), pages of 8, split-KV chosen automatically."""
    rng = np.random.default_rng(7)
    _, _, cache = random_cache(rng, [2999, 1, 1200], 2, 64, 8, kv)
    q = rng.standard_normal((3, 8, 64)).astype(np.float32)
    assert rel(decode(cache, q, "tvm"), decode_attention(q, cache)) < FP32_BOUND


def test_paged_and_contiguous_layouts_and_splits_agree():
    """The same K/V through a permuted 16-token paging, one contiguous page per sequence, and 1 vs 5 splits."""
    rng = np.random.default_rng(3)
    ks, vs, paged = random_cache(rng, [100, 37], 2, 64, 16, "int4")
    contiguous = build_paged_cache(ks, vs, 128, "int4", rng=np.random.default_rng(1))
    q = rng.standard_normal((2, 4, 64)).astype(np.float32)
    a = decode(paged, q, "tvm", num_splits=1)
    b = decode(contiguous, q, "tvm", num_splits=1)
    c = decode(paged, q, "tvm", num_splits=5)
    assert rel(a, b) < 4e-6 and rel(a, c) < 4e-6  # tiles of 16 vs 32 tokens: fp32 sums reassociate


def test_int8_scores_was_removed_and_is_refused():
    # the q8 kernel read token-major keys; int8 / int4 caches now keep their keys page-transposed and run
    # paged_decode_attention_words (faster on both CPUs measured), so the option is gone: a TypeError, not a
    # silently different kernel
    rng = np.random.default_rng(5)
    _, _, cache = random_cache(rng, [50, 9], 2, 64, 16, "int8")
    q = rng.standard_normal((2, 8, 64)).astype(np.float32)
    with pytest.raises(TypeError, match="int8_scores"):
        decode(cache, q, "reference", int8_scores=True)


@pytest.mark.parametrize("outliers", [False, True])
def test_kv4_error_against_fp32_attention_is_bounded(outliers):
    """KV4 decode (tvm) vs attention over the unquantized K/V in float64, ‖Δout‖/‖out‖ (random V, so the output
    is a small average and the ratio is pessimistic). Measured with seeds 0-2: random keys 0.137-0.139;
    keys with four 20x outlier channels 0.58-0.79 as is, 0.32-0.34 after SmoothAttention (keys / λ, queries
    · λ, exact in float64). Bounds: 0.2 random, 0.45 smoothed outliers, and smoothing must gain >= 1.5x."""
    rng = np.random.default_rng(11)
    ks, vs, cache = random_cache(rng, [300, 77], 2, 128, 16, "int4", outliers=outliers)
    q = rng.standard_normal((2, 8, 128)).astype(np.float32)
    ref = decode_attention(q, build_paged_cache(ks, vs, 16, "float16", rng=np.random.default_rng(0)))
    err = rel(decode(cache, q, "tvm"), ref)
    if not outliers:
        assert err < 0.2, err
        return
    lam = smooth_attention_scales(np.concatenate(ks), 0.5, "neox")  # lam: [Hkv, D]
    smoothed = build_paged_cache([k / lam[None] for k in ks], vs, 16, "int4", rng=np.random.default_rng(0))
    q_smooth = (q * np.repeat(lam, 4, axis=0)[None]).astype(np.float32)  # query head h uses KV head h // 4
    err_smooth = rel(decode(smoothed, q_smooth, "tvm"), ref)
    assert err_smooth < 0.45 and err_smooth * 1.5 < err, (err, err_smooth)


def test_torch_inputs_give_torch_outputs_in_q_dtype():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    _, _, cache = random_cache(rng, [40, 9], 1, 64, 16, "int8")
    q = rng.standard_normal((2, 2, 64)).astype(np.float32)
    ref = decode_attention(q, cache)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    for dt in (torch.float16, torch.bfloat16):
        out = paged_decode_attention(
            t(q).to(dt),
            t(pack_int8_keys(cache.k_cache).view(np.int32)),
            t(cache.v_cache),
            t(cache.block_table),
            t(cache.context_lens),
            kv_dtype="int8",
            k_scales=t(cache.k_scales),
            k_zeros=t(cache.k_zeros),
            v_scales=t(cache.v_scales),
            v_zeros=t(cache.v_zeros),
            backend="tvm",
        )
        assert isinstance(out, torch.Tensor) and out.dtype == dt
        assert rel(out.float().numpy(), ref) < 1e-2  # q and out rounded to 16 bits


@pytest.mark.parametrize("backend", ["tvm", "triton"])
@settings(max_examples=4, deadline=None)
@given(
    lens=st.lists(st.integers(0, 70), min_size=1, max_size=3).filter(lambda x: sum(x) > 0),
    hkv=st.sampled_from([1, 2]),
    gq=st.sampled_from([1, 2]),
    d=st.sampled_from([64, 128]),
    causal=st.booleans(),
    dt=st.sampled_from(["float32", "float16"]),
    seed=st.integers(0, 2**31),
)
def test_prefill_equals_the_float64_reference(backend, lens, hkv, gq, d, causal, dt, seed):
    rng = np.random.default_rng(seed)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    t = int(cu[-1])
    q, k, v = (rng.standard_normal((t, h, d)).astype(dt) for h in (hkv * gq, hkv, hkv))
    out = prefill_attention(q, k, v, cu, causal=causal, backend=backend)
    assert out.dtype == np.dtype(dt)
    ref = prefill_reference(q, k, v, cu, causal=causal)
    assert rel(out, ref) < (FP32_BOUND if dt == "float32" else 2e-3)


@pytest.mark.parametrize("kv", ["int8", "int4"])
def test_triton_under_a_plan_share_runs_persistent_with_the_same_result(kv):
    """Inside `resource_share` (what the nano executor sets per nano-op) the Triton launches run the kernels'
    persistent forms (grid = min(share x units, blocks): one program walks every block here); decode and prefill
    equal the grid launches bit for bit."""
    from lowbit.kernels.launch import resource_share
    from lowbit.ops import attention as ops_attention

    rng = np.random.default_rng(5)
    _, _, cache = random_cache(rng, [37, 5], 2, 64, 16, kv)
    q = rng.standard_normal((2, 4, 64)).astype(np.float32)
    cu = np.array([0, 9, 20], np.int32)
    pq, pk, pv = (rng.standard_normal((20, h, 64)).astype(np.float32) for h in (4, 2, 2))
    want = decode(cache, q, "triton", num_splits=2), prefill_attention(pq, pk, pv, cu, causal=True, backend="triton")
    ops_attention._persistent_cached.cache_clear()
    with resource_share(0.5):
        got = decode(cache, q, "triton", num_splits=2), prefill_attention(pq, pk, pv, cu, causal=True, backend="triton")
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    assert ops_attention._persistent_cached.cache_info().currsize == 3  # decode, split combine, prefill launchers
    assert rel(got[0], decode_attention(q, cache)) < FP32_BOUND


def test_bad_inputs_name_the_field_and_the_fix():
    rng = np.random.default_rng(0)
    _, _, cache = random_cache(rng, [20], 2, 64, 16, "int8")
    q = np.zeros((1, 4, 64), np.float32)
    args = (pack_int8_keys(cache.k_cache), cache.v_cache, cache.block_table, cache.context_lens)
    side = dict(k_scales=cache.k_scales, k_zeros=cache.k_zeros, v_scales=cache.v_scales, v_zeros=cache.v_zeros)
    cases = [
        (dict(kv_dtype="int3", **side), ["kv_dtype 'int3'", "int4"]),
        (dict(kv_dtype="int8"), ["needs k_scales"]),
        (dict(kv_dtype="int4", **side), ["D // 8"]),
    ]
    with pytest.raises(ValueError, match="pack_int8_keys"):  # token-major int8 keys: the layout and its packer
        paged_decode_attention(q, cache.k_cache, *args[1:], kv_dtype="int8", backend="reference", **side)
    for kw, words in cases:
        with pytest.raises(ValueError) as e:
            paged_decode_attention(q, *args, backend="reference", **kw)
        for w in words:
            assert w in str(e.value), (w, str(e.value))
    with pytest.raises(ValueError, match="not a multiple of HKV"):
        paged_decode_attention(np.zeros((1, 3, 64), np.float32), *args, kv_dtype="int8", backend="reference", **side)
    short = cache.context_lens + 1000
    with pytest.raises(ValueError, match="enough pages"):
        paged_decode_attention(q, *args[:3], short.astype(np.int32), kv_dtype="int8", backend="reference", **side)
    with pytest.raises(ValueError, match="nondecreasing offsets"):
        x = np.zeros((5, 2, 64), np.float32)
        prefill_attention(x, x, x, np.array([0, 3], np.int32), backend="reference")


@pytest.mark.parametrize("kv", ["int4", "int8", "fp8_e4m3", "float16"])
def test_appended_tokens_are_what_decode_reads(kv):
    """The serving step on tvm: append each sequence's new K/V with the kernel (quantize on the way in), then
    decode over the grown contexts; equals the float64 reference over the reference append."""
    rng = np.random.default_rng(9)
    lens = [37, 16, 5]
    ks, vs, cache = random_cache(rng, lens, 2, 64, 16, kv)
    cache = build_paged_cache(ks, vs, 16, kv, rng=rng, reserve_tokens=1, k_layer_scale=1.5, v_layer_scale=0.75)
    k_new, v_new = (rng.standard_normal((3, 2, 64)).astype(np.float32) for _ in range(2))
    slots = np.array([token_slots(cache, b, [n])[0] for b, n in enumerate(lens)], np.int32)
    grown = dataclasses.replace(cache, context_lens=cache.context_lens + 1)
    expected = dataclasses.replace(append_kv_reference(cache, k_new, v_new, slots), context_lens=grown.context_lens)
    pack = pack_int4 if kv == "int4" else np.copy
    pack_k = {"int4": pack_int4_keys, "int8": pack_int8_keys}.get(kv, np.copy)
    kc, vc = pack_k(cache.k_cache), pack(cache.v_cache)
    side = {n: None if getattr(cache, n) is None else getattr(cache, n).copy() for n in SIDE}
    append_kv(k_new, v_new, slots, kc, vc, kv, k_layer_scale=1.5, v_layer_scale=0.75, backend="tvm", **side)
    for name in ("k_cache", "v_cache", *SIDE):  # the kernel wrote what the reference quantizer writes
        got = {"k_cache": kc, "v_cache": vc, **side}[name]
        want = getattr(expected, name)
        if want is not None:
            packed = (pack_k if name == "k_cache" else pack)(want) if name.endswith("cache") else want
            assert np.array_equal(got, packed), name
    q = rng.standard_normal((3, 4, 64)).astype(np.float32)
    out = paged_decode_attention(
        q, kc, vc, grown.block_table, grown.context_lens, kv_dtype=kv, **side,
        k_layer_scale=1.5, v_layer_scale=0.75, backend="tvm",
    )  # fmt: skip
    assert rel(out, decode_attention(q, expected)) < FP32_BOUND


@pytest.mark.gpu
@pytest.mark.parametrize("kv", ["float16", "int8", "int4"])
def test_decode_on_cuda_equals_the_reference(kv):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    _, _, cache = random_cache(rng, [500, 33, 1000], 2, 128, 16, kv)
    q = rng.standard_normal((3, 8, 128)).astype(np.float16)
    dev = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a)).cuda()  # noqa: E731
    kc, vc = cache.k_cache, cache.v_cache
    if kv in ("int4", "int8"):  # keys as page-transposed int32 words; int4 values as words
        kc = (pack_int4_keys if kv == "int4" else pack_int8_keys)(kc).view(np.int32)
        vc = pack_int4(vc).view(np.int32) if kv == "int4" else vc
    out = paged_decode_attention(
        dev(q),
        dev(kc),
        dev(vc),
        dev(cache.block_table),
        dev(cache.context_lens),
        kv_dtype=kv,
        k_scales=dev(cache.k_scales),
        k_zeros=dev(cache.k_zeros),
        v_scales=dev(cache.v_scales),
        v_zeros=dev(cache.v_zeros),
        backend="triton",
    )
    assert rel(out.float().cpu().numpy(), decode_attention(q, cache)) < 5e-3  # fp16 dots and output


def test_tvm_decode_kernels_compile_with_their_options():
    # the decode kernels are built with the dots' k loops not unrolled on TVM (smaller code, see
    # kernels.attention_decode.compile_options); the ops path and the executor's launcher both pass it
    from lowbit.kernels import attention_decode as kd
    from lowbit.ops import attention as ops_attention

    assert kd.compile_options(kd.paged_decode_attention, "tvm") == {"unroll": 1}
    assert kd.compile_options(kd.paged_decode_attention, "triton") == {}
    assert kd.compile_options(kd.attention_combine, "tvm") == {}
    consts = dict(qdtype="float32", kvdtype="uint4", odtype="float32", D=64, PS=16, GQ=2, GP=2, BN=16, DC=16)
    kernel = ops_attention._compiled(kd.paged_decode_attention, "tvm", consts)
    assert kernel.options["unroll"] == 1

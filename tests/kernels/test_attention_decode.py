"""The KV4 decode kernel (`paged_decode_attention_kv4`: keys page-transposed, scores an fp32 dot over the key
planes, values per plane) on every backend, against float64 oracles.

The kernel computes what `paged_decode_attention` computes on a KV4 cache, with q·k and p·v summed in plane
order (d = 8w + j); fp32 over an exactly representable dequantized cache: ‖out − ref‖/‖ref‖ of a few 1e-7,
bounded by the ops tests' FP32_BOUND (2e-5).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.ops.attention as ops_attention
from lowbit.kernels import attention_decode as kd
from lowbit.reference.attention import decode_attention
from lowbit.reference.paged import build_paged_cache, pack_int4, pack_int4_keys

FP32_BOUND = 2e-5


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    assert np.isfinite(err), "NaN/inf in the output"
    return err


def kv4_cache(rng, lens, hkv, d, page):
    ks = [rng.standard_normal((n, hkv, d)).astype(np.float32) for n in lens]
    vs = [rng.standard_normal((n, hkv, d)).astype(np.float32) for n in lens]
    return build_paged_cache(ks, vs, page, "int4", rng=rng)


def decode(cache, q, backend, **kw):
    return np.asarray(
        ops_attention.paged_decode_attention(
            q, pack_int4_keys(cache.k_cache), pack_int4(cache.v_cache), cache.block_table, cache.context_lens,
            kv_dtype="int4", k_scales=cache.k_scales, k_zeros=cache.k_zeros, v_scales=cache.v_scales,
            v_zeros=cache.v_zeros, backend=backend, **kw,
        )
    )  # fmt: skip


@settings(max_examples=6, deadline=None)
@given(
    lens=st.lists(st.integers(1, 90), min_size=1, max_size=3),
    hkv=st.sampled_from([1, 2]),
    gq=st.sampled_from([1, 3, 4, 8]),
    d=st.sampled_from([32, 64, 128]),
    page=st.sampled_from([8, 16, 32]),
    splits=st.sampled_from([None, 1, 3]),
    seed=st.integers(0, 2**31),
)
def test_kv4_equals_the_float64_reference_on_tvm(lens, hkv, gq, d, page, splits, seed):
    rng = np.random.default_rng(seed)
    cache = kv4_cache(rng, lens, hkv, d, page)
    q = rng.standard_normal((len(lens), hkv * gq, d)).astype(np.float32)
    assert rel(decode(cache, q, "tvm", num_splits=splits), decode_attention(q, cache)) < FP32_BOUND


def test_kv4_on_the_interpreters_and_long_contexts():
    """The reference interpreter (the lowering's oracle) and Triton's interpreter on a short case; TVM on
    thousands of tokens, pages of 8, automatic splits."""
    rng = np.random.default_rng(2)
    cache = kv4_cache(rng, [40, 7], 2, 32, 16)
    q = rng.standard_normal((2, 8, 32)).astype(np.float32)
    for backend in ("reference", "triton"):
        assert rel(decode(cache, q, backend), decode_attention(q, cache)) < FP32_BOUND, backend
    cache = kv4_cache(rng, [2999, 1, 1200], 2, 64, 8)
    q = rng.standard_normal((3, 8, 64)).astype(np.float32)
    assert rel(decode(cache, q, "tvm"), decode_attention(q, cache)) < FP32_BOUND


def test_kv4_is_the_int4_kernel_and_compiles_with_its_options(monkeypatch):
    """Every int4 decode runs the KV4 kernel (the token-major nibble-plane kernel it replaced measured 1.3-1.5x
    slower, kernels README); TVM compiles it with split FMA chains and tree lane sums."""
    seen = []
    real = ops_attention._compiled
    monkeypatch.setattr(ops_attention, "_compiled", lambda k, b, c: seen.append(k) or real(k, b, c))
    rng = np.random.default_rng(3)
    cache = kv4_cache(rng, [20], 1, 32, 16)
    q = rng.standard_normal((1, 2, 32)).astype(np.float32)
    decode(cache, q, "reference", num_splits=1)
    assert seen == [kd.paged_decode_attention_kv4]
    assert kd.compile_options(kd.paged_decode_attention_kv4, "tvm") == {
        "unroll": 1,
        "fma_chains": 8,
        "reduce_vectors": 1,
    }
    assert kd.compile_options(kd.paged_decode_attention_kv4, "triton") == {}


def test_kv4_refuses_token_major_keys():
    rng = np.random.default_rng(4)
    cache = kv4_cache(rng, [20], 2, 32, 16)
    q = rng.standard_normal((1, 4, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="pack_int4_keys"):
        ops_attention.paged_decode_attention(
            q, pack_int4(cache.k_cache), pack_int4(cache.v_cache), cache.block_table, cache.context_lens,
            kv_dtype="int4", k_scales=cache.k_scales, k_zeros=cache.k_zeros, v_scales=cache.v_scales,
            v_zeros=cache.v_zeros, backend="reference",
        )  # fmt: skip
    with pytest.raises(ValueError, match="int8_scores"):
        decode(cache, q, "reference", int8_scores=True)


def test_decode_launcher_reads_kv4_like_the_ops_call():
    """The executor's bound launcher (`decode_launcher`) on KV4 int32 words, one split and three: the float64
    reference's result."""
    rng = np.random.default_rng(5)
    cache = kv4_cache(rng, [70, 33], 2, 64, 16)
    q = rng.standard_normal((2, 8, 64)).astype(np.float32)
    ref = decode_attention(q, cache)
    words = [
        torch.from_numpy(f(c).view(np.int32)) for f, c in ((pack_int4_keys, cache.k_cache), (pack_int4, cache.v_cache))
    ]
    side = {n: torch.from_numpy(getattr(cache, n)) for n in ("k_scales", "k_zeros", "v_scales", "v_zeros")}
    consts = {"qdtype": "float32", "kvdtype": "uint4", "D": 64, "PS": 16, "GQ": 4, "GP": 4, "BN": 16,
              "CD": "float32", "sm_scale": 0.125, "k_layer_scale": 1.0, "v_layer_scale": 1.0}  # fmt: skip
    launch = kd.decode_launcher(words[0], words[1], side, consts, "tvm")
    tables, lens = torch.from_numpy(cache.block_table), torch.from_numpy(cache.context_lens)
    for splits, tps in ((1, 80), (3, 32)):
        out = launch(torch.from_numpy(q), tables, lens, splits, tps)
        assert rel(out.numpy(), ref) < FP32_BOUND

"""The KV4 / KV8 decode kernel (`paged_decode_attention_words`: keys page-transposed int32 words, scores an fp32
dot over the key planes, values in plane groups) on every backend, against float64 oracles.

The kernel computes what `paged_decode_attention` computes on a KV4 / KV8 cache, with q·k and p·v summed in
plane order (d = C·w + j); fp32 over an exactly representable dequantized cache: ‖out − ref‖/‖ref‖ of a few
1e-7, bounded by the ops tests' FP32_BOUND (2e-5).
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
from lowbit.reference.paged import build_paged_cache, pack_int4, pack_int4_keys, pack_int8_keys

FP32_BOUND = 2e-5


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    assert np.isfinite(err), "NaN/inf in the output"
    return err


def kv4_cache(rng, lens, hkv, d, page, kv="int4"):
    ks = [rng.standard_normal((n, hkv, d)).astype(np.float32) for n in lens]
    vs = [rng.standard_normal((n, hkv, d)).astype(np.float32) for n in lens]
    return build_paged_cache(ks, vs, page, kv, rng=rng)


def stored(cache):
    """(k_cache, v_cache) as the kernels hold them: page-transposed key words; int4 values as words."""
    if cache.kv_dtype == "int4":
        return pack_int4_keys(cache.k_cache), pack_int4(cache.v_cache)
    return pack_int8_keys(cache.k_cache), cache.v_cache


def decode(cache, q, backend, **kw):
    kc, vc = stored(cache)
    return np.asarray(
        ops_attention.paged_decode_attention(
            q, kc, vc, cache.block_table, cache.context_lens,
            kv_dtype=cache.kv_dtype, k_scales=cache.k_scales, k_zeros=cache.k_zeros, v_scales=cache.v_scales,
            v_zeros=cache.v_zeros, backend=backend, **kw,
        )
    )  # fmt: skip


@settings(max_examples=8, deadline=None)
@given(
    kv=st.sampled_from(["int4", "int8"]),
    lens=st.lists(st.integers(1, 90), min_size=1, max_size=3),
    hkv=st.sampled_from([1, 2]),
    gq=st.sampled_from([1, 3, 4, 8]),
    d=st.sampled_from([32, 64, 128]),
    page=st.sampled_from([8, 16, 32]),
    splits=st.sampled_from([None, 1, 3]),
    seed=st.integers(0, 2**31),
)
def test_words_kernel_equals_the_float64_reference_on_tvm(kv, lens, hkv, gq, d, page, splits, seed):
    rng = np.random.default_rng(seed)
    cache = kv4_cache(rng, lens, hkv, d, page, kv)
    q = rng.standard_normal((len(lens), hkv * gq, d)).astype(np.float32)
    assert rel(decode(cache, q, "tvm", num_splits=splits), decode_attention(q, cache)) < FP32_BOUND


@pytest.mark.parametrize("kv", ["int4", "int8"])
def test_words_kernel_on_the_interpreters_and_long_contexts(kv):
    """The reference interpreter (the lowering's oracle) and Triton's interpreter on a short case; TVM on
    thousands of tokens, pages of 8, automatic splits."""
    rng = np.random.default_rng(2)
    cache = kv4_cache(rng, [40, 7], 2, 32, 16, kv)
    q = rng.standard_normal((2, 8, 32)).astype(np.float32)
    for backend in ("reference", "triton"):
        assert rel(decode(cache, q, backend), decode_attention(q, cache)) < FP32_BOUND, backend
    cache = kv4_cache(rng, [2999, 1, 1200], 2, 64, 8, kv)
    q = rng.standard_normal((3, 8, 64)).astype(np.float32)
    assert rel(decode(cache, q, "tvm"), decode_attention(q, cache)) < FP32_BOUND


@pytest.mark.parametrize("kv", ["int4", "int8"])
def test_words_kernel_runs_int4_and_int8_with_its_options(monkeypatch, kv):
    """Every int4 / int8 decode runs the words kernel (the token-major kernels it replaced measured 1.3-1.6x
    slower, kernels README); TVM compiles it with split FMA chains and tree lane sums."""
    seen = []
    real = ops_attention._compiled
    monkeypatch.setattr(ops_attention, "_compiled", lambda k, b, c: seen.append(k) or real(k, b, c))
    rng = np.random.default_rng(3)
    cache = kv4_cache(rng, [20], 1, 32, 16, kv)
    q = rng.standard_normal((1, 2, 32)).astype(np.float32)
    decode(cache, q, "reference", num_splits=1)
    assert seen == [kd.paged_decode_attention_words]
    want = {"unroll": 1, "fma_chains": 8, "reduce_vectors": 1}
    assert kd.compile_options(kd.paged_decode_attention_words, "tvm") == want
    assert kd.compile_options(kd.paged_decode_attention_words, "triton") == {}


@pytest.mark.parametrize("kv", ["int4", "int8"])
def test_token_major_keys_are_refused_with_the_packer_named(kv):
    rng = np.random.default_rng(4)
    cache = kv4_cache(rng, [20], 2, 32, 16, kv)
    q = rng.standard_normal((1, 4, 32)).astype(np.float32)
    _, vc = stored(cache)
    kc = pack_int4(cache.k_cache) if kv == "int4" else cache.k_cache
    with pytest.raises(ValueError, match=f"pack_{kv}_keys"):
        ops_attention.paged_decode_attention(
            q, kc, vc, cache.block_table, cache.context_lens,
            kv_dtype=kv, k_scales=cache.k_scales, k_zeros=cache.k_zeros, v_scales=cache.v_scales,
            v_zeros=cache.v_zeros, backend="reference",
        )  # fmt: skip


@pytest.mark.parametrize("kv", ["int4", "int8"])
def test_decode_launcher_reads_like_the_ops_call(kv):
    """The executor's bound launcher (`decode_launcher`) on the runtime's storage (key words int32; int4 values
    int32 words, int8 values uint8), one split and three: the float64 reference's result."""
    rng = np.random.default_rng(5)
    cache = kv4_cache(rng, [70, 33], 2, 64, 16, kv)
    q = rng.standard_normal((2, 8, 64)).astype(np.float32)
    ref = decode_attention(q, cache)
    kc, vc = stored(cache)
    words = [torch.from_numpy(kc.view(np.int32)), torch.from_numpy(vc.view(np.int32) if kv == "int4" else vc)]
    side = {n: torch.from_numpy(getattr(cache, n)) for n in ("k_scales", "k_zeros", "v_scales", "v_zeros")}
    consts = {"qdtype": "float32", "kvdtype": "uint4" if kv == "int4" else "uint8", "D": 64, "PS": 16,
              "GQ": 4, "GP": 4, "BN": 16, "CD": "float32", "sm_scale": 0.125, "k_layer_scale": 1.0,
              "v_layer_scale": 1.0}  # fmt: skip
    launch = kd.decode_launcher(words[0], words[1], side, consts, "tvm")
    tables, lens = torch.from_numpy(cache.block_table), torch.from_numpy(cache.context_lens)
    for splits, tps in ((1, 80), (3, 32)):
        out = launch(torch.from_numpy(q), tables, lens, splits, tps)
        assert rel(out.numpy(), ref) < FP32_BOUND


@pytest.mark.parametrize("bits", [4, 8])
def test_words_kernel_compiles_for_sm90(bits):
    """The GPU compiler rejects what the Triton interpreter accepts (dot shapes, reshapes): the kernel as the ops
    layer builds it for a GPU (16 query rows, fp16 q, 16-token tiles) AOT-compiles to an sm_90 cubin."""
    import lowbit.codegen.triton as triton_backend
    from lowbit.codegen.backend import compile_program

    consts = dict(qdtype="float16", odtype="float32", D=128, PS=16, GQ=4, GP=16, BN=16, sm_scale=0.088, BITS=bits)
    compiled = compile_program(kd.paged_decode_attention_words.trace(**consts), "triton")
    assert triton_backend.compile_sm90(compiled)["cubin"]

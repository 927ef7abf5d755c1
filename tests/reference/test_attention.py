"""Attention references against a brute-force loop, and the laws paging, GQA and causal masking obey."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.quant.kv import KV_DTYPES, quantize_kv_cache
from lowbit.reference.attention import decode_attention, paged_attention, prefill_attention, sequence_attention
from lowbit.reference.paged import build_paged_cache

REL = 1e-12  # float64 throughout: only summation order differs from the oracle


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out − ref| / max |ref|; NaN or inf anywhere never passes."""
    if not (np.all(np.isfinite(out)) and np.all(np.isfinite(ref))):
        return math.inf
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-300)) if out.size else 0.0


def brute_force(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool, sm_scale: float | None = None, window: int | None = None
):
    """One sequence, one (head, query) at a time: q [Lq, Hq, D], k/v [Lk, Hkv, D]; queries are the last Lq
    positions (with a sliding window w, the query at position p sees keys p − w < j <= p). Returns out
    [Lq, Hq, Dv], lse [Lq, Hq]."""
    lq, hq, d = q.shape
    lk, hkv, _ = k.shape
    scale = 1 / math.sqrt(d) if sm_scale is None else sm_scale
    out = np.zeros((lq, hq, v.shape[2]))
    lse = np.zeros((lq, hq))
    for h in range(hq):
        kvh = h // (hq // hkv)
        for i in range(lq):
            last = lk - lq + i if causal else lk - 1
            first = 0 if window is None else max(0, last - window + 1)
            scores = [scale * float(np.dot(q[i, h], k[j, kvh])) for j in range(first, last + 1)]
            m = max(scores)
            weights = [math.exp(s - m) for s in scores]
            total = math.fsum(weights)
            out[i, h] = sum(w * v[first + j, kvh] for j, w in enumerate(weights)) / total
            lse[i, h] = m + math.log(total)
    return out, lse


def ragged(rng: np.random.Generator, lens: list[int], h: int, d: int) -> np.ndarray:
    return rng.standard_normal((sum(lens), h, d))  # [T, H, D]


@settings(max_examples=20)
@given(
    lens=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    hkv=st.integers(1, 2),
    group=st.sampled_from([1, 2, 4]),
    d=st.sampled_from([4, 16]),
    causal=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    window=st.one_of(st.none(), st.integers(1, 4)),
)
def test_prefill_matches_brute_force(
    lens: list[int], hkv: int, group: int, d: int, causal: bool, seed: int, window: int | None
) -> None:
    rng = np.random.default_rng(seed)
    q, k, v = ragged(rng, lens, hkv * group, d), ragged(rng, lens, hkv, d), ragged(rng, lens, hkv, d)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)  # cu: [B+1]
    window = window if causal else None  # a sliding window is causal
    out, lse = prefill_attention(q, k, v, cu, causal=causal, return_lse=True, window=window)
    assert out.shape == q.shape and out.dtype == np.float64 and lse.shape == q.shape[:2]
    for s, e in itertools.pairwise(cu):
        ref_out, ref_lse = brute_force(q[s:e], k[s:e], v[s:e], causal, window=window)
        assert rel_err(out[s:e], ref_out) <= REL and rel_err(lse[s:e], ref_lse) <= REL


@settings(max_examples=15)
@given(
    kv_dtype=st.sampled_from(KV_DTYPES),
    ctx=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    page_size=st.sampled_from([1, 4, 16]),
    causal=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_paged_chunked_prefill_matches_brute_force(
    kv_dtype: str, ctx: list[int], page_size: int, causal: bool, seed: int
) -> None:
    """Each sequence: q_len in 1..context new queries at the end of its context, over the quantized cache."""
    rng = np.random.default_rng(seed)
    hkv, group, d = 2, 2, 8
    ks = [rng.standard_normal((n, hkv, d)) for n in ctx]
    vs = [rng.standard_normal((n, hkv, d)) for n in ctx]
    cache = build_paged_cache(ks, vs, page_size, kv_dtype, rng=rng)
    q_lens = [int(rng.integers(1, n + 1)) for n in ctx]
    cu_q = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    q = rng.standard_normal((cu_q[-1], hkv * group, d))  # q: [Tq, Hq, D]
    out = paged_attention(q, cu_q, cache, causal=causal)
    for b in range(len(ctx)):
        # oracle input: the contiguous sequence quantized on its own, no pages involved
        k = quantize_kv_cache(ks[b], kv_dtype).dequantize()
        v = quantize_kv_cache(vs[b], kv_dtype).dequantize()
        ref, _ = brute_force(q[cu_q[b] : cu_q[b + 1]], k, v, causal)
        assert rel_err(out[cu_q[b] : cu_q[b + 1]], ref) <= REL


@pytest.mark.parametrize("kv_dtype", ["int4", "fp8_e4m3", "bfloat16"])
def test_paged_output_does_not_depend_on_page_size_or_permutation(kv_dtype: str) -> None:
    rng = np.random.default_rng(10)
    ctx = [13, 1, 32]
    ks = [rng.standard_normal((n, 2, 16)) for n in ctx]
    vs = [rng.standard_normal((n, 2, 16)) for n in ctx]
    q = rng.standard_normal((3, 8, 16))  # q: [B, Hq, D]
    outs = [
        decode_attention(q, build_paged_cache(ks, vs, page_size, kv_dtype, num_pages=60, rng=np.random.default_rng(s)))
        for page_size, s in [(1, 0), (4, 1), (4, 2), (16, 3), (32, 4)]
    ]
    for out in outs[1:]:
        assert np.array_equal(out, outs[0])
    # and equal to contiguous attention over the same (quantized) K/V
    for b in range(3):
        k = quantize_kv_cache(ks[b], kv_dtype).dequantize()
        v = quantize_kv_cache(vs[b], kv_dtype).dequantize()
        assert np.array_equal(outs[0][b : b + 1], sequence_attention(q[b : b + 1], k, v))


def test_gqa_equals_mha_with_repeated_kv_heads() -> None:
    rng = np.random.default_rng(11)
    lens, hkv, group, d = [5, 7], 2, 3, 8
    q, k, v = ragged(rng, lens, hkv * group, d), ragged(rng, lens, hkv, d), ragged(rng, lens, hkv, d)
    cu = np.array([0, 5, 12])
    gqa = prefill_attention(q, k, v, cu)
    mha = prefill_attention(q, np.repeat(k, group, axis=1), np.repeat(v, group, axis=1), cu)
    assert rel_err(gqa, mha) <= 1e-14


def test_causal_masking_semantics() -> None:
    rng = np.random.default_rng(12)
    n, d = 8, 8
    q, k, v = (rng.standard_normal((n, 2, d)) for _ in range(3))
    cu = np.array([0, n])
    out = prefill_attention(q, k, v, cu)
    assert np.array_equal(out[0], v[0])  # the first query sees only the first key
    for i in range(n):  # changing keys/values after position i does not change query i
        k2, v2 = k.copy(), v.copy()
        k2[i + 1 :] = rng.standard_normal(k2[i + 1 :].shape) * 100
        v2[i + 1 :] = rng.standard_normal(v2[i + 1 :].shape) * 100
        assert np.array_equal(prefill_attention(q, k2, v2, cu)[: i + 1], out[: i + 1])
    # without the mask every query sees every key: permuting keys and values together changes nothing
    full = prefill_attention(q, k, v, cu, causal=False)
    perm = rng.permutation(n)
    assert rel_err(prefill_attention(q, k[perm], v[perm], cu, causal=False), full) <= REL
    assert np.array_equal(full[-1], out[-1])  # the last query sees everything either way


def test_chunked_prefill_and_decode_are_the_tail_of_prefill() -> None:
    """Query i of a q_len-chunk at the end of a context of n is prefill query n − q_len + i."""
    rng = np.random.default_rng(13)
    n, hkv, hq, d = 11, 1, 4, 16
    k, v = rng.standard_normal((n, hkv, d)), rng.standard_normal((n, hkv, d))
    q = rng.standard_normal((n, hq, d))
    cache = build_paged_cache([k], [v], 4, "float16", rng=rng)
    kf, vf = quantize_kv_cache(k, "float16").dequantize(), quantize_kv_cache(v, "float16").dequantize()
    full = prefill_attention(q, kf, vf, np.array([0, n]))
    for q_len in (1, 3, n):
        chunk = paged_attention(q[n - q_len :], np.array([0, q_len]), cache)
        assert rel_err(chunk, full[n - q_len :]) <= REL
    assert rel_err(decode_attention(q[n - 1 :], cache), full[n - 1 :]) <= REL


def test_softmax_is_stable_for_huge_scores() -> None:
    """Shifting every key by w adds q·w to all of a query's scores: the output must not move (no overflow)."""
    rng = np.random.default_rng(14)
    q, k, v = (rng.standard_normal((6, 2, 8)) for _ in range(3))
    w = rng.standard_normal(8) * 1e6  # scores ~1e6: exp would overflow without the max shift
    out = sequence_attention(q, k, v, causal=False)
    shifted = sequence_attention(q, k + w, v, causal=False)
    assert np.all(np.isfinite(shifted)) and rel_err(shifted, out) <= 1e-8


def test_sm_scale_default_is_inverse_sqrt_d() -> None:
    rng = np.random.default_rng(15)
    q, k, v = (rng.standard_normal((4, 2, 16)) for _ in range(3))
    assert np.array_equal(sequence_attention(q, k, v), sequence_attention(q, k, v, sm_scale=0.25))
    ref, _ = brute_force(q, k, v, True, sm_scale=0.9)
    assert rel_err(sequence_attention(q, k, v, sm_scale=0.9), ref) <= REL


def test_attention_errors() -> None:
    x = np.zeros((4, 3, 8))
    with pytest.raises(ValueError, match="3 query heads are not a multiple of 2 KV heads"):
        sequence_attention(x, np.zeros((4, 2, 8)), np.zeros((4, 2, 8)))
    with pytest.raises(ValueError, match="cu_seqlens \\[0, 3\\] must rise from 0 to the 4 query tokens"):
        prefill_attention(x, x, x, np.array([0, 3]))
    with pytest.raises(ValueError, match="causal attention with 4 queries over 2 keys"):
        sequence_attention(x, np.zeros((2, 3, 8)), np.zeros((2, 3, 8)))
    cache = build_paged_cache([np.zeros((2, 3, 8))], [np.zeros((2, 3, 8))], 4, "int8")
    with pytest.raises(ValueError, match="sequence 0 has 3 queries but only 2 cached tokens"):
        paged_attention(np.zeros((3, 3, 8)), np.array([0, 3]), cache)
    with pytest.raises(ValueError, match="expected \\[B=1, Hq, D\\]"):
        decode_attention(np.zeros((2, 3, 8)), cache)
    with pytest.raises(ValueError, match="window 2 with causal=False"):
        sequence_attention(x, x, x, causal=False, window=2)
    with pytest.raises(ValueError, match="window 0 with causal=True: a sliding window is >= 1"):
        sequence_attention(x, x, x, window=0)

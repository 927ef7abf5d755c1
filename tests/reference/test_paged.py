"""Paged KV cache: int4 packing, page scatter/gather, quantize-on-append."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.dtypes.packing import pack_words
from lowbit.quant.kv import KV_DTYPES, quantize_kv_cache
from lowbit.reference.paged import (
    append_kv_reference,
    build_paged_cache,
    gather_kv,
    pack_int4,
    pack_int4_keys,
    token_slots,
    unpack_int4,
    unpack_int4_keys,
)


def random_seqs(rng: np.random.Generator, lens: list[int], h: int, d: int) -> tuple[list, list]:
    ks = [rng.standard_normal((n, h, d)) for n in lens]  # each: [L_b, H_kv, D]
    vs = [rng.standard_normal((n, h, d)) for n in lens]
    return ks, vs


# --- int4 packing -----------------------------------------------------------------------------------
@settings(max_examples=20)
@given(shape=st.lists(st.integers(1, 3), max_size=3), words=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_pack_int4_round_trip_and_matches_pack_words(shape: list[int], words: int, seed: int) -> None:
    codes = np.random.default_rng(seed).integers(0, 16, (*shape, 8 * words)).astype(np.uint8)  # [..., D]
    packed = pack_int4(codes)
    assert packed.dtype == np.uint32 and packed.shape == (*shape, words)
    assert np.array_equal(unpack_int4(packed), codes)
    # oracle: lowbit.dtypes' word packing (slot s in word s // 8 at bit 4·(s % 8)) over the flat codes
    assert np.array_equal(packed.reshape(-1), pack_words(codes.reshape(-1), 4, word_bits=32, per_word=8))


@settings(max_examples=10)
@given(p=st.integers(1, 3), s=st.sampled_from([1, 16]), h=st.integers(1, 3), words=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_pack_int4_keys_puts_a_pages_tokens_side_by_side(p: int, s: int, h: int, words: int, seed: int) -> None:
    codes = np.random.default_rng(seed).integers(0, 16, (p, s, h, 8 * words)).astype(np.uint8)  # [P, S, H, D]
    keys = pack_int4_keys(codes)
    assert keys.dtype == np.uint32 and keys.shape == (p, h, words, s) and keys.flags.c_contiguous
    assert np.array_equal(unpack_int4_keys(keys), codes)
    # oracle: element by element, word w of token t of page i, head j is pack_int4's word of that row
    rows = pack_int4(codes)  # [P, S, H, W]
    for i, t, j, w in np.ndindex(p, s, h, words):
        assert keys[i, j, w, t] == rows[i, t, j, w]


def test_pack_int4_bit_positions() -> None:
    """Code j of a word sits at bits 4j..4j+3: one nonzero code at a time, every position and value."""
    for j in range(8):
        for value in range(16):
            codes = np.zeros(8, np.uint8)
            codes[j] = value
            assert int(pack_int4(codes)[0]) == value << (4 * j)
    assert int(pack_int4(np.arange(8))[0]) == 0x76543210


def test_pack_int4_errors() -> None:
    with pytest.raises(ValueError, match="head dim 12 is not a multiple of 8"):
        pack_int4(np.zeros(12, np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 15\]; got 0..16"):
        pack_int4(np.array([0, 16, 0, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="must be uint32"):
        unpack_int4(np.zeros(2, np.int64))


# --- building, gathering ----------------------------------------------------------------------------
@settings(max_examples=15)
@given(
    kv_dtype=st.sampled_from(KV_DTYPES),
    lens=st.lists(st.integers(0, 40), min_size=1, max_size=4),
    page_size=st.sampled_from([1, 4, 16]),
    seed=st.integers(0, 2**32 - 1),
)
def test_gather_returns_each_sequence_quantized_per_token(
    kv_dtype: str, lens: list[int], page_size: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    ks, vs = random_seqs(rng, lens, 2, 16)
    cache = build_paged_cache(ks, vs, page_size, kv_dtype, rng=rng)
    assert cache.k_cache.shape == (cache.num_pages, page_size, 2, 16)
    assert cache.block_table.dtype == np.int32 and cache.context_lens.dtype == np.int32
    assert cache.context_lens.tolist() == lens and cache.slot_mapping.dtype == np.int32
    if kv_dtype in ("int8", "int4"):
        assert cache.k_scales is not None and cache.k_scales.shape == (cache.num_pages, page_size, 2)
        assert cache.k_scales.dtype == np.float16 and cache.k_zeros is not None and cache.k_zeros.dtype == np.float16
    else:
        assert cache.k_scales is None and cache.v_zeros is None
    # the pages sequences own are disjoint and in range
    owned = [cache.block_table[b, : -(-n // page_size)] for b, n in enumerate(lens)]
    flat = np.concatenate(owned)
    assert np.unique(flat).size == flat.size and (flat.size == 0 or flat.max() < cache.num_pages)
    for b, n in enumerate(lens):
        k, v = gather_kv(cache, b)
        assert k.shape == (n, 2, 16) and k.dtype == np.float64
        # oracle: quantizing the contiguous sequence on its own gives the same values (per-token format)
        assert np.array_equal(k, quantize_kv_cache(ks[b], kv_dtype).dequantize())
        assert np.array_equal(v, quantize_kv_cache(vs[b], kv_dtype).dequantize())


def test_slots_follow_the_block_table() -> None:
    rng = np.random.default_rng(3)
    ks, vs = random_seqs(rng, [5, 9], 1, 8)
    cache = build_paged_cache(ks, vs, 4, "float16", num_pages=10, rng=rng)
    for b, n in enumerate([5, 9]):
        for i in range(n):  # brute force: slot = page · page_size + offset
            slot = cache.block_table[b, i // 4] * 4 + i % 4
            assert token_slots(cache, b, np.array([i]))[0] == slot
            assert np.array_equal(cache.k_cache[slot // 4, slot % 4], ks[b][i].astype(np.float16))
    assert (
        cache.slot_mapping.tolist()
        == np.concatenate([token_slots(cache, b, np.arange(n)) for b, n in [(0, 5), (1, 9)]]).tolist()
    )


def test_pages_are_permuted_and_unused_slots_hold_junk() -> None:
    rng = np.random.default_rng(4)
    ks, vs = random_seqs(rng, [16, 16], 1, 8)
    cache = build_paged_cache(ks, vs, 4, "float16", num_pages=12, rng=rng)
    assert cache.block_table.tolist() != [[0, 1, 2, 3], [4, 5, 6, 7]]
    unused = np.setdiff1d(np.arange(12), cache.block_table)
    assert unused.size == 4 and np.all(np.isfinite(cache.k_cache[unused].astype(np.float64)))
    assert np.abs(cache.k_cache[unused]).max() > 0


def test_page_size_and_permutation_do_not_change_gathered_values() -> None:
    rng = np.random.default_rng(5)
    ks, vs = random_seqs(rng, [7, 1, 30], 2, 16)
    ref = build_paged_cache(ks, vs, 1, "int4", rng=np.random.default_rng(0))
    for page_size, seed in [(2, 1), (8, 2), (16, 3), (64, 4)]:
        other = build_paged_cache(ks, vs, page_size, "int4", num_pages=40, rng=np.random.default_rng(seed))
        for b in range(3):
            for a, c in zip(gather_kv(ref, b), gather_kv(other, b)):
                assert np.array_equal(a, c)


# --- quantize-on-append -----------------------------------------------------------------------------
@pytest.mark.parametrize("kv_dtype", KV_DTYPES)
def test_append_then_extend_equals_building_longer_sequences(kv_dtype: str) -> None:
    """Law: cache(prefix) + append(new tokens) + raise context_lens == cache(prefix + new tokens)."""
    rng = np.random.default_rng(6)
    lens, extra = [3, 8], [2, 1]
    ks, vs = random_seqs(rng, [n + e for n, e in zip(lens, extra)], 2, 8)
    prefix = build_paged_cache(
        [k[:n] for k, n in zip(ks, lens)], [v[:n] for v, n in zip(vs, lens)], 4, kv_dtype, reserve_tokens=2
    )
    # one padding token (slot −1) in the middle of the batch of new tokens
    slots = [token_slots(prefix, b, np.arange(n, n + e)) for b, (n, e) in enumerate(zip(lens, extra))]
    slot_mapping = np.concatenate([slots[0], [-1], slots[1]]).astype(np.int32)  # [T]
    k_new = np.concatenate([ks[0][3:], np.full((1, 2, 8), 99.0), ks[1][8:]])  # [T, H, D]
    v_new = np.concatenate([vs[0][3:], np.full((1, 2, 8), 99.0), vs[1][8:]])
    grown = append_kv_reference(prefix, k_new, v_new, slot_mapping)
    assert grown.k_cache is not prefix.k_cache  # functional: the input cache is untouched
    assert np.array_equal(gather_kv(prefix, 0)[0], quantize_kv_cache(ks[0][:3], kv_dtype).dequantize())
    grown = replace(grown, context_lens=np.array([5, 9], np.int32))
    for b in range(2):
        k, v = gather_kv(grown, b)
        assert np.array_equal(k, quantize_kv_cache(ks[b], kv_dtype).dequantize())
        assert np.array_equal(v, quantize_kv_cache(vs[b], kv_dtype).dequantize())


def test_paged_errors() -> None:
    rng = np.random.default_rng(7)
    ks, vs = random_seqs(rng, [5], 1, 8)
    with pytest.raises(ValueError, match="num_pages 1 < 2 pages needed for 5 tokens"):
        build_paged_cache(ks, vs, 4, "int4", num_pages=1)
    with pytest.raises(ValueError, match="page_size 0 must be a positive integer"):
        build_paged_cache(ks, vs, 0, "int4")
    with pytest.raises(ValueError, match="kv_dtype 'int2' is not a KV cache format"):
        build_paged_cache(ks, vs, 4, "int2")
    with pytest.raises(ValueError, match=r"sequence 1: k \(2, 2, 8\)"):
        build_paged_cache([ks[0], np.zeros((2, 2, 8))], [vs[0], np.zeros((2, 2, 8))], 4, "int4")
    cache = build_paged_cache(ks, vs, 4, "int4")
    with pytest.raises(ValueError, match="writes one slot twice"):
        append_kv_reference(cache, np.zeros((2, 1, 8)), np.zeros((2, 1, 8)), np.array([3, 3]))
    with pytest.raises(ValueError, match="holds slot 99 but the cache has 16 slots"):
        append_kv_reference(cache, np.zeros((1, 1, 8)), np.zeros((1, 1, 8)), np.array([99]))
    with pytest.raises(ValueError, match=r"k_new has shape \(1, 2, 8\)"):
        append_kv_reference(cache, np.zeros((1, 2, 8)), np.zeros((1, 1, 8)), np.array([0]))
    with pytest.raises(ValueError, match="fall outside its block table"):
        token_slots(cache, 0, np.array([8]))
    with pytest.raises(ValueError, match="sequence 1 is not in the cache"):
        gather_kv(cache, 1)

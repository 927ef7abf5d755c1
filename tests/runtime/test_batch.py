"""Batch index tensors against a direct per-token construction; KV page pool accounting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.graph.stats import kv_bytes_per_token
from lowbit.models import ArchConfig
from lowbit.runtime.batch import Batch, SeqChunk
from lowbit.runtime.kv_cache import OutOfPages, PagedKVCache


@settings(max_examples=30)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 20)), min_size=1, max_size=5), st.sampled_from([16, 32]))
def test_batch_indices(seqs, ps):
    cache = PagedKVCache("float16", 1, 1, 8, 64, ps)
    chunks = []
    for i, (cached, new) in enumerate(seqs):
        table: list[int] = []
        cache.grow(table, cached + new)
        chunks.append(SeqChunk(i, tuple(range(100 * i, 100 * i + new)), cached, tuple(table)))
    b = Batch(chunks, ps)
    t = 0
    for c in chunks:
        for j in range(c.num_new):
            p = c.num_cached + j
            assert int(b.positions[t]) == p
            assert int(b.slot_mapping[t]) == c.block_table[p // ps] * ps + p % ps
            assert int(b.input_ids[t]) == c.token_ids[j]
            if c.is_prefill:
                assert t in b.prefill_index.tolist()
            else:
                r = b.paged_index.tolist().index(t)
                assert int(b.context_lens[r]) == p + 1
                assert b.block_tables[r, : len(c.block_table)].tolist() == list(c.block_table)
            t += 1
        assert int(b.last_index[chunks.index(c)]) == t - 1
    sizes = [c.num_new for c in chunks if c.is_prefill]
    assert b.cu_seqlens.tolist() == [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    # every slot is distinct (no two tokens write the same cache entry)
    assert len(set(b.slot_mapping.tolist())) == b.num_tokens


def test_short_block_table_is_refused():
    with pytest.raises(ValueError, match="grow it first"):
        Batch([SeqChunk(0, (1, 2, 3), 15, (1,))], 16)


def test_page_pool():
    cache = PagedKVCache("int4", 2, 2, 16, 5, 16)
    # int4: keys [NP, HKV, D // 8, PS] (pack_int4_keys), values [NP, PS, HKV, D // 8]
    assert cache.layers[0].k.shape == (5, 2, 2, 16) and cache.layers[0].v.shape == (5, 16, 2, 2)
    assert cache.layers[0].k_scales is not None
    a = cache.allocate(3)
    assert 0 not in a and cache.num_free_pages == 1
    with pytest.raises(OutOfPages):
        cache.allocate(2)
    cache.free(a)
    assert cache.num_free_pages == 4 and cache.usage == 0.0

    def arch(layers: int, kv_heads: int, d: int) -> ArchConfig:
        return ArchConfig("llama", 64, kv_heads * d, 32, layers, kv_heads, kv_heads, d)

    assert kv_bytes_per_token(arch(2, 2, 16), "int4") == 2 * 2 * 2 * (8 + 4)
    assert kv_bytes_per_token(arch(1, 1, 64), "float16") == 2 * 128
    with pytest.raises(ValueError, match="page_size"):
        PagedKVCache("float16", 1, 1, 8, 4, 24)

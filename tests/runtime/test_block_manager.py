"""BlockManager against a model of the pool: page 0 never handed out, every page owned once, errors on misuse."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.runtime.block_manager import BlockManager, OutOfPages
from lowbit.runtime.kv_cache import OutOfPages as KVOutOfPages
from lowbit.runtime.kv_cache import PagedKVCache


def test_basics():
    bm = BlockManager(5, 4)
    assert (bm.num_usable, bm.num_free, bm.usage) == (4, 4, 0.0)
    assert [bm.pages_for(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    t: list[int] = []
    bm.grow(t, 6)
    assert t == [1, 2] and bm.num_free == 2 and bm.usage == 0.5
    assert bm.can_grow(t, 16) and not bm.can_grow(t, 17) and bm.max_fill(t) == 16
    bm.grow(t, 5)  # already holds 8 tokens: nothing taken
    assert t == [1, 2]
    with pytest.raises(OutOfPages, match="need 3 KV pages, 2 free of 4"):
        bm.grow(t, 20)
    assert t == [1, 2]  # a failed grow takes nothing
    assert bm.free(t) == [1, 2] and t == [] and bm.num_free == 4
    assert bm.allocate(2) == [1, 2]  # freed pages are reused first, in order


def test_misuse_is_refused():
    bm = BlockManager(4, 16)
    a = bm.allocate(2)
    bm.release(a)
    with pytest.raises(ValueError, match="already free"):
        bm.release(a)
    with pytest.raises(ValueError, match="not a usable page"):
        bm.release([0])
    with pytest.raises(ValueError, match="not a usable page"):
        bm.release([4])
    b = bm.allocate(1)
    with pytest.raises(ValueError, match="twice"):
        bm.release(b + b)
    with pytest.raises(ValueError, match="num_pages 1"):
        BlockManager(1, 16)
    with pytest.raises(ValueError, match="page_size 0"):
        BlockManager(4, 0)


@settings(max_examples=40)
@given(st.integers(2, 12), st.integers(1, 4), st.lists(st.tuples(st.integers(0, 4), st.integers(0, 30)), max_size=40))
def test_random_grow_free_keeps_the_pool_whole(num_pages, ps, ops):
    bm = BlockManager(num_pages, ps)
    tables: list[list[int]] = [[] for _ in range(5)]
    for i, n in ops:
        t = tables[i]
        if n == 0:
            bm.free(t)
            continue
        before = list(t)
        if bm.can_grow(t, n):
            bm.grow(t, n)
            assert len(t) >= bm.pages_for(n) and t[: len(before)] == before
        else:
            with pytest.raises(OutOfPages):
                bm.grow(t, n)
            assert t == before
        owned = [p for tb in tables for p in tb]
        assert len(owned) == len(set(owned)) and 0 not in owned  # no page owned twice; scratch never handed out
        assert len(owned) + bm.num_free == bm.num_usable
        assert sorted(owned + bm.free_pages) == list(range(1, num_pages))


def test_kv_cache_delegates_to_its_block_manager():
    cache = PagedKVCache("float16", 1, 1, 8, 6, 16)
    assert isinstance(cache.blocks, BlockManager) and KVOutOfPages is OutOfPages
    t: list[int] = []
    cache.grow(t, 33)
    assert t == [1, 2, 3] and cache.blocks.num_free == cache.num_free_pages == 2
    assert cache.blocks.pages_for(33) == 3 and cache.usage == pytest.approx(0.6)
    cache.free(t)  # the old contract: pages go back, the list is left alone
    assert t == [1, 2, 3] and cache.num_free_pages == 5 and cache.blocks.free_pages == [5, 4, 3, 2, 1]

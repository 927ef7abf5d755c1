"""`BlockManager`: the KV cache's page allocator (no tensors; `PagedKVCache` owns one as `cache.blocks`).

Pages are numbered 0 .. num_pages − 1. Page 0 is never handed out: padded block-table entries point at it, so
it is a scratch page that may be written freely. A sequence's block table is a list of page ids; token at
position p lives in page table[p // page_size] at offset p % page_size.
"""

from __future__ import annotations

from collections.abc import Iterable


class OutOfPages(RuntimeError):
    """The cache has no free page left (the scheduler should preempt or wait)."""


class BlockManager:
    def __init__(self, num_pages: int, page_size: int) -> None:
        if num_pages < 2:
            raise ValueError(f"num_pages {num_pages}: need at least 2 (page 0 is a reserved scratch page)")
        if page_size < 1:
            raise ValueError(f"page_size {page_size}: must be a positive number of tokens")
        self.num_pages = num_pages
        self.page_size = page_size
        self._free = list(range(num_pages - 1, 0, -1))  # a stack: the lowest page id is handed out first
        self._is_free = [False] + [True] * (num_pages - 1)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_usable(self) -> int:
        return self.num_pages - 1

    @property
    def usage(self) -> float:
        """Fraction of usable pages in use (0..1)."""
        return 1.0 - self.num_free / self.num_usable

    @property
    def free_pages(self) -> list[int]:
        """A copy of the free list (the next page handed out is the last one)."""
        return list(self._free)

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def can_grow(self, table: list[int], num_tokens: int) -> bool:
        """Whether `table` can be grown to hold `num_tokens` tokens with the pages free now."""
        return self.pages_for(num_tokens) - len(table) <= self.num_free

    def max_fill(self, table: list[int]) -> int:
        """The most tokens `table` could hold if it took every free page."""
        return (len(table) + self.num_free) * self.page_size

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise OutOfPages(f"need {n} KV pages, {len(self._free)} free of {self.num_usable}")
        pages = [self._free.pop() for _ in range(n)]
        for p in pages:
            self._is_free[p] = False
        return pages

    def release(self, pages: Iterable[int]) -> None:
        """Return pages to the free list (they are handed out again first, in the given order)."""
        pages = list(pages)
        for p in pages:
            if not 0 < p < self.num_pages:
                raise ValueError(f"page {p} is not a usable page (1 .. {self.num_pages - 1}); a corrupt block table")
            if self._is_free[p]:
                raise ValueError(f"page {p} is already free: released twice (a block table shared or freed twice)")
        if len(set(pages)) != len(pages):
            raise ValueError(f"pages {pages} list a page twice; a corrupt block table")
        for p in pages:
            self._is_free[p] = True
        self._free.extend(reversed(pages))

    def grow(self, table: list[int], num_tokens: int) -> None:
        """Append pages to `table` (in place) until it holds `num_tokens` tokens; raises OutOfPages."""
        need = self.pages_for(num_tokens) - len(table)
        if need > 0:
            table.extend(self.allocate(need))

    def free(self, table: list[int]) -> list[int]:
        """Release every page of `table` and clear it (in place); returns the pages."""
        pages = list(table)
        self.release(pages)
        table.clear()
        return pages


__all__ = ["BlockManager", "OutOfPages"]

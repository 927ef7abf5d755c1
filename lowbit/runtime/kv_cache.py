"""The runtime's paged KV cache: per-layer page pools in the kernels' layout, and a page allocator.

Layout (one layer; `lowbit.ops.attention`'s, vLLM's): k/v [num_pages, page_size, num_kv_heads, D] in the
storage dtype of `kv_dtype` (float16 / bfloat16 / float32; fp8_e4m3 as torch.float8_e4m3fn with a per-layer
scale; int8 as uint8 codes; int4 as int32 words [.., D // 8]; the keys of int4 / int8 as int32 words
[num_pages, num_kv_heads, D // C, page_size], C = 8 / 4 codes per word: `lowbit.reference.paged.pack_int4_keys` /
`pack_int8_keys`); int8/int4 add k/v scales and zeros
[num_pages, page_size, num_kv_heads] float16. A token of a sequence lives at slot = page·page_size + offset,
its page taken from the sequence's block table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lowbit.runtime.block_manager import BlockManager, OutOfPages

KV_STORAGE = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "fp8_e4m3": torch.float8_e4m3fn,
    "int8": torch.uint8,
    "int4": torch.int32,
}


@dataclass
class LayerCache:
    k: torch.Tensor
    v: torch.Tensor
    k_scales: torch.Tensor | None = None
    k_zeros: torch.Tensor | None = None
    v_scales: torch.Tensor | None = None
    v_zeros: torch.Tensor | None = None
    k_layer_scale: float = 1.0
    v_layer_scale: float = 1.0

    def side(self) -> dict[str, torch.Tensor]:
        """The scale/zero tensors the attention ops take as keyword arguments (int8/int4 only)."""
        if self.k_scales is None:
            return {}
        assert self.k_zeros is not None and self.v_scales is not None and self.v_zeros is not None
        return {"k_scales": self.k_scales, "k_zeros": self.k_zeros, "v_scales": self.v_scales, "v_zeros": self.v_zeros}


@dataclass
class PagedKVCache:
    """Page pools for every layer plus their page allocator `blocks` (a `BlockManager`; page 0 is scratch)."""

    kv_dtype: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_pages: int
    page_size: int = 16
    layer_scales: Sequence[tuple[float, float]] | None = None  # fp8: (k, v) scale per layer
    layers: list[LayerCache] = field(init=False)
    blocks: BlockManager = field(init=False)

    def __post_init__(self) -> None:
        if self.kv_dtype not in KV_STORAGE:
            raise ValueError(f"kv_dtype {self.kv_dtype!r} is not supported; use one of {list(KV_STORAGE)}")
        if self.page_size < 16 or self.page_size & (self.page_size - 1):
            raise ValueError(f"page_size {self.page_size}: the attention kernels need a power of two >= 16")
        if self.kv_dtype == "int8" and self.head_dim % 4:
            raise ValueError(
                f"kv_dtype int8 keys pack 4 codes per word: head_dim {self.head_dim} must be a multiple of 4"
            )
        if self.kv_dtype == "int4" and self.head_dim % 8:
            raise ValueError(f"kv_dtype int4 packs 8 codes per word: head_dim {self.head_dim} must be a multiple of 8")
        if self.num_pages < 2:
            raise ValueError(f"num_pages {self.num_pages}: need at least 2 (page 0 is scratch)")
        d = self.head_dim // 8 if self.kv_dtype == "int4" else self.head_dim
        shape = (self.num_pages, self.page_size, self.num_kv_heads, d)
        # int4 / int8 keys: int32 words, per page and head word w of its tokens side by side
        # (lowbit.reference.paged.pack_int4_keys / pack_int8_keys)
        words = {"int4": self.head_dim // 8, "int8": self.head_dim // 4}.get(self.kv_dtype)
        k_shape = (self.num_pages, self.num_kv_heads, words, self.page_size) if words else shape
        side = (self.num_pages, self.page_size, self.num_kv_heads)
        quantized = self.kv_dtype in ("int8", "int4")
        scales = self.layer_scales or [(1.0, 1.0)] * self.num_layers
        self.layers = []
        for i in range(self.num_layers):
            kw = {}
            if quantized:
                kw = {n: torch.ones(side, dtype=torch.float16) for n in ("k_scales", "k_zeros", "v_scales", "v_zeros")}
            ks, vs = scales[i]
            self.layers.append(
                LayerCache(
                    torch.zeros(k_shape, dtype=torch.int32 if words else KV_STORAGE[self.kv_dtype]),
                    torch.zeros(shape, dtype=KV_STORAGE[self.kv_dtype]),
                    k_layer_scale=float(ks),
                    v_layer_scale=float(vs),
                    **kw,
                )
            )
        self.blocks = BlockManager(self.num_pages, self.page_size)

    # the page accounting lives in `blocks`; these are thin delegates (the serving contract's cache surface)
    @property
    def num_free_pages(self) -> int:
        return self.blocks.num_free

    @property
    def usage(self) -> float:
        """Fraction of allocatable pages in use (0..1)."""
        return self.blocks.usage

    def allocate(self, n: int) -> list[int]:
        return self.blocks.allocate(n)

    def free(self, pages: Sequence[int]) -> None:
        """Return `pages` to the free list (the list itself is left as it is; `blocks.free` clears it)."""
        self.blocks.release(pages)

    def grow(self, block_table: list[int], num_tokens: int) -> None:
        """Append pages to `block_table` (in place) until it holds `num_tokens` tokens; raises OutOfPages."""
        self.blocks.grow(block_table, num_tokens)


__all__ = ["KV_STORAGE", "LayerCache", "OutOfPages", "PagedKVCache"]

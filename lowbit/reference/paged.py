"""The paged KV cache the attention kernels read, as a NumPy value (vLLM's layout and conventions).

Layout (one layer; B sequences, H_kv KV heads, head dim D):
    k_cache, v_cache   [num_pages, page_size, H_kv, D]   float16 | ml_dtypes.bfloat16 | uint8 codes
                       (int8/int4: KV8/KV4 codes, int4 *unpacked* one per byte; fp8_e4m3: bit patterns)
    k_scales, k_zeros,
    v_scales, v_zeros  [num_pages, page_size, H_kv]      float16 (int8/int4 only, else None)
    k/v_layer_scale    float (fp8_e4m3's per-layer scale, vLLM k_scale/v_scale; 1.0 otherwise)
    block_table        [B, max_pages] int32: page of the sequence's p-th block; unused entries are 0
                       (a valid page, so a kernel may load it unmasked) — context_lens says what is real
    context_lens       [B] int32: tokens cached per sequence
    slot_mapping       [T] int32: slot = page·page_size + offset of token t (vLLM); < 0 = padding, skipped
Token at position i of sequence b lives in page block_table[b, i // page_size], offset i % page_size.

Packed KV4 (`pack_int4`): 8 codes per little-endian uint32 word along D, code j of a word at bits
4j..4j+3, so v_cache [P, S, H, D] uint8 -> [P, S, H, D // 8] uint32; the keys as the kernels hold them
(`pack_int4_keys`) are those words with each page's tokens side by side: k_cache -> [P, H, D // 8, S].
KV8 keys likewise as words of 4 codes (`pack_int8_keys`): k_cache [P, S, H, D] -> [P, H, D // 4, S] uint32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from lowbit.quant.kv import check_kv_dtype, dequantize_kv_cache, quantize_kv_cache

INT4_PER_WORD = 8


@dataclass(frozen=True, eq=False)
class PagedKVCache:
    """One layer's paged KV cache; see the module docstring for every field's shape and dtype."""

    kv_dtype: str
    page_size: int
    k_cache: np.ndarray
    v_cache: np.ndarray
    k_scales: np.ndarray | None
    k_zeros: np.ndarray | None
    v_scales: np.ndarray | None
    v_zeros: np.ndarray | None
    block_table: np.ndarray
    context_lens: np.ndarray
    slot_mapping: np.ndarray
    k_layer_scale: float = 1.0
    v_layer_scale: float = 1.0

    @property
    def num_pages(self) -> int:
        return int(self.k_cache.shape[0])

    @property
    def num_kv_heads(self) -> int:
        return int(self.k_cache.shape[2])

    @property
    def head_dim(self) -> int:
        return int(self.k_cache.shape[3])

    @property
    def num_seqs(self) -> int:
        return int(self.context_lens.shape[0])


def token_slots(cache: PagedKVCache, b: int, positions: np.ndarray) -> np.ndarray:
    """Slots [n] int64 of tokens at `positions` [n] of sequence `b`, through the block table."""
    positions = np.asarray(positions, dtype=np.int64)
    capacity = cache.block_table.shape[1] * cache.page_size
    if positions.size and (positions.min() < 0 or positions.max() >= capacity):
        raise ValueError(
            f"positions {positions.min()}..{positions.max()} of sequence {b} fall outside its block table "
            f"({cache.block_table.shape[1]} pages of {cache.page_size} = {capacity} tokens); add pages"
        )
    pages = cache.block_table[b, positions // cache.page_size].astype(np.int64)  # pages: [n]
    return pages * cache.page_size + positions % cache.page_size


def gather_kv(cache: PagedKVCache, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequence b's cached K, V as contiguous float64 [context_lens[b], H_kv, D], dequantized (exact)."""
    if not 0 <= b < cache.num_seqs:
        raise ValueError(f"sequence {b} is not in the cache; it holds {cache.num_seqs} sequences")
    slots = token_slots(cache, b, np.arange(int(cache.context_lens[b])))  # slots: [L]
    return _read(cache, "k", slots), _read(cache, "v", slots)


def append_kv_reference(
    cache: PagedKVCache, k_new: np.ndarray, v_new: np.ndarray, slot_mapping: np.ndarray
) -> PagedKVCache:
    """Quantize-on-append: store k_new, v_new [T, H_kv, D] (after RoPE) at `slot_mapping` [T].

    Each token and head is quantized on its own (KV8/KV4: its own fp16 scale and zero), exactly as
    `quantize_kv_cache` does, and written to slot = page·page_size + offset; slots < 0 are padding and
    skipped. Returns a new cache (the input is not modified) with block_table and context_lens as they
    were: update those with `dataclasses.replace` when the appended tokens extend sequences.
    """
    k_new = np.asarray(k_new)
    v_new = np.asarray(v_new)
    slots = np.asarray(slot_mapping, dtype=np.int64)  # slots: [T]
    num_slots = cache.num_pages * cache.page_size
    for name, x, store in (("k_new", k_new, cache.k_cache), ("v_new", v_new, cache.v_cache)):
        if x.ndim != 3 or x.shape[0] != slots.shape[0] or x.shape[1:] != store.shape[2:]:
            raise ValueError(
                f"{name} has shape {x.shape}; expected [T={slots.shape[0]}, H_kv, D] = "
                f"[{slots.shape[0]}, {store.shape[2]}, {store.shape[3]}] to match slot_mapping and the cache"
            )
    real = slots >= 0  # real: [T]
    if np.any(slots >= num_slots):
        raise ValueError(f"slot_mapping holds slot {slots.max()} but the cache has {num_slots} slots")
    if np.unique(slots[real]).size != int(real.sum()):
        raise ValueError("slot_mapping writes one slot twice; every real token needs its own slot")
    if not real.any():
        return cache
    fields = {}
    for which, x, layer_scale in (("k", k_new, cache.k_layer_scale), ("v", v_new, cache.v_layer_scale)):
        kv = quantize_kv_cache(x[real], cache.kv_dtype, fp8_scale=layer_scale)
        for name, new in (("cache", kv.codes), ("scales", kv.scales), ("zeros", kv.zeros)):
            old = getattr(cache, f"{which}_{name}")
            if old is None:
                continue
            flat = old.reshape(num_slots, *old.shape[2:]).copy()  # flat: [num_slots, H_kv(, D)]
            flat[slots[real]] = new
            fields[f"{which}_{name}"] = flat.reshape(old.shape)
    return replace(cache, **fields)


def build_paged_cache(
    seqs_k: Sequence[np.ndarray],
    seqs_v: Sequence[np.ndarray],
    page_size: int,
    kv_dtype: str,
    num_pages: int | None = None,
    rng: np.random.Generator | None = None,
    *,
    reserve_tokens: int = 0,
    k_layer_scale: float = 1.0,
    v_layer_scale: float = 1.0,
) -> PagedKVCache:
    """Scatter per-sequence K/V (lists of [L_b, H_kv, D]) into randomly permuted pages of a new cache.

    Pages are handed out in a random order (`rng`, default seed 0) and every slot no sequence owns holds
    finite junk, so a kernel that ignores the block table or reads past context_lens gets a wrong
    answer. Each block table row covers L_b + reserve_tokens tokens, so that many can be appended
    (`append_kv_reference`) without new pages. num_pages defaults to the pages needed plus 2 spare. The
    fp8 layer scales are used only for kv_dtype fp8_e4m3.
    """
    kv_dtype = check_kv_dtype(kv_dtype)
    rng = np.random.default_rng(0) if rng is None else rng
    if not (isinstance(page_size, (int, np.integer)) and page_size >= 1):
        raise ValueError(f"page_size {page_size!r} must be a positive integer (16 is vLLM's default)")
    if len(seqs_k) != len(seqs_v) or not seqs_k:
        raise ValueError(f"seqs_k has {len(seqs_k)} sequences and seqs_v {len(seqs_v)}; pass >= 1, as many")
    seqs_k = [np.asarray(k) for k in seqs_k]
    seqs_v = [np.asarray(v) for v in seqs_v]
    h, d = seqs_k[0].shape[1:]
    for b, (k, v) in enumerate(zip(seqs_k, seqs_v)):
        if k.ndim != 3 or k.shape[1:] != (h, d) or v.shape != k.shape:
            raise ValueError(
                f"sequence {b}: k {k.shape} and v {v.shape} must both be [L_b, H_kv={h}, D={d}] like sequence 0"
            )
    if reserve_tokens < 0:
        raise ValueError(f"reserve_tokens {reserve_tokens} must be >= 0 (room for tokens appended later)")
    lens = [k.shape[0] for k in seqs_k]
    pages_per_seq = [math.ceil((n + reserve_tokens) / page_size) for n in lens]
    needed = sum(pages_per_seq)
    num_pages = needed + 2 if num_pages is None else num_pages
    if num_pages < needed:
        raise ValueError(
            f"num_pages {num_pages} < {needed} pages needed for {sum(lens)} tokens "
            f"(+ {reserve_tokens} reserved per sequence); pass >= {needed}"
        )

    order = rng.permutation(num_pages)  # order: [num_pages], the pages in hand-out order
    block_table = np.zeros((len(lens), max(1, *pages_per_seq)), dtype=np.int32)
    start = 0
    for b, n in enumerate(pages_per_seq):
        block_table[b, :n] = order[start : start + n]
        start += n

    def junk() -> np.ndarray:  # x: [num_pages·page_size, H_kv, D]
        return rng.standard_normal((num_pages * page_size, h, d)) * 4.0

    k0 = quantize_kv_cache(junk(), kv_dtype, fp8_scale=k_layer_scale)
    v0 = quantize_kv_cache(junk(), kv_dtype, fp8_scale=v_layer_scale)
    paged = (num_pages, page_size)
    cache = PagedKVCache(
        kv_dtype=kv_dtype,
        page_size=int(page_size),
        k_cache=k0.codes.reshape(*paged, h, d),
        v_cache=v0.codes.reshape(*paged, h, d),
        k_scales=None if k0.scales is None else k0.scales.reshape(*paged, h),
        k_zeros=None if k0.zeros is None else k0.zeros.reshape(*paged, h),
        v_scales=None if v0.scales is None else v0.scales.reshape(*paged, h),
        v_zeros=None if v0.zeros is None else v0.zeros.reshape(*paged, h),
        block_table=block_table,
        context_lens=np.asarray(lens, dtype=np.int32),
        slot_mapping=np.zeros(0, dtype=np.int32),
        k_layer_scale=k0.layer_scale,
        v_layer_scale=v0.layer_scale,
    )
    slot_mapping = np.concatenate([token_slots(cache, b, np.arange(n)) for b, n in enumerate(lens)])  # [T]
    cache = append_kv_reference(cache, np.concatenate(seqs_k), np.concatenate(seqs_v), slot_mapping)
    return replace(cache, slot_mapping=slot_mapping.astype(np.int32))


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """Pack KV4 codes [..., D] (integers in [0, 16)) into uint32 words [..., D // 8]: code 8w + j at bits
    4j..4j+3 of word w (little-endian nibbles). D must be a multiple of 8."""
    codes = np.asarray(codes)
    d = codes.shape[-1]
    if d % INT4_PER_WORD:
        raise ValueError(f"head dim {d} is not a multiple of {INT4_PER_WORD}; int4 KV packs 8 codes per uint32")
    if codes.size and (codes.min() < 0 or codes.max() > 15):
        raise ValueError(f"int4 codes must lie in [0, 15]; got {codes.min()}..{codes.max()}")
    nibbles = codes.astype(np.uint32).reshape(*codes.shape[:-1], d // INT4_PER_WORD, INT4_PER_WORD)
    shifts = np.arange(INT4_PER_WORD, dtype=np.uint32) * np.uint32(4)  # [8]
    return np.bitwise_or.reduce(nibbles << shifts, axis=-1).astype(np.uint32)


def unpack_int4(words: np.ndarray) -> np.ndarray:
    """Inverse of `pack_int4`: uint32 words [..., W] -> KV4 codes [..., 8·W] uint8."""
    words = np.asarray(words)
    if words.dtype != np.uint32:
        raise ValueError(f"packed int4 words must be uint32, got {words.dtype}")
    shifts = np.arange(INT4_PER_WORD, dtype=np.uint32) * np.uint32(4)  # [8]
    nibbles = (words[..., None] >> shifts) & np.uint32(0xF)  # [..., W, 8]
    return nibbles.reshape(*words.shape[:-1], -1).astype(np.uint8)


def pack_int4_keys(codes: np.ndarray) -> np.ndarray:
    """The keys of a KV4 cache as the kernels store them: codes [P, S, H, D] -> uint32 words [P, H, D // 8, S]
    (`pack_int4`'s words, each page's tokens side by side per head and word: vLLM's key_cache
    [.., D / x, page_size, x] with x = 8 codes per word). Decode reads one word row of a page's tokens as one
    vector (lowbit.kernels.attention_decode.paged_decode_attention_kv4); values stay token-major."""
    codes = np.asarray(codes)
    if codes.ndim != 4:
        raise ValueError(f"KV4 key codes must be [num_pages, page_size, H_kv, D]; got shape {list(codes.shape)}")
    return np.ascontiguousarray(pack_int4(codes).transpose(0, 2, 3, 1))


def unpack_int4_keys(words: np.ndarray) -> np.ndarray:
    """Inverse of `pack_int4_keys`: uint32 words [P, H, W, S] -> KV4 key codes [P, S, H, 8·W] uint8."""
    words = np.asarray(words)
    if words.ndim != 4:
        raise ValueError(f"KV4 key words must be [num_pages, H_kv, D // 8, page_size]; got shape {list(words.shape)}")
    return unpack_int4(np.ascontiguousarray(words.transpose(0, 3, 1, 2)))


def pack_int8_keys(codes: np.ndarray) -> np.ndarray:
    """The keys of a KV8 cache as the kernels store them: codes [P, S, H, D] (integers in [0, 256)) -> uint32
    words [P, H, D // 4, S], code 4w + j of a token at bits 8j..8j+7 of its word w (the bytes of D codes read
    little-endian), each page's tokens side by side per head and word (as `pack_int4_keys`)."""
    codes = np.asarray(codes)
    if codes.ndim != 4 or codes.shape[-1] % 4:
        raise ValueError(
            f"KV8 key codes must be [num_pages, page_size, H_kv, D] with D % 4 == 0; got {list(codes.shape)}"
        )
    if codes.size and (codes.min() < 0 or codes.max() > 255):
        raise ValueError(f"int8 KV codes must lie in [0, 255]; got {codes.min()}..{codes.max()}")
    b = codes.astype(np.uint32).reshape(*codes.shape[:-1], codes.shape[-1] // 4, 4)
    words = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24)  # [P, S, H, D // 4]
    return np.ascontiguousarray(words.astype(np.uint32).transpose(0, 2, 3, 1))


def unpack_int8_keys(words: np.ndarray) -> np.ndarray:
    """Inverse of `pack_int8_keys`: uint32 words [P, H, W, S] -> KV8 key codes [P, S, H, 4·W] uint8."""
    words = np.asarray(words)
    if words.ndim != 4 or words.dtype != np.uint32:
        raise ValueError(
            f"KV8 key words must be uint32 [num_pages, H_kv, D // 4, page_size]; got {words.dtype}{list(words.shape)}"
        )
    w = np.ascontiguousarray(words.transpose(0, 3, 1, 2))  # [P, S, H, W]
    shifts = np.arange(4, dtype=np.uint32) * np.uint32(8)
    return ((w[..., None] >> shifts) & np.uint32(0xFF)).reshape(*w.shape[:-1], -1).astype(np.uint8)


def _read(cache: PagedKVCache, which: str, slots: np.ndarray) -> np.ndarray:
    """Dequantized [n, H_kv, D] float64 of K or V (`which`) at flat `slots` [n]."""
    codes = getattr(cache, f"{which}_cache")
    flat = cache.num_pages * cache.page_size

    def at(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a.reshape(flat, *a.shape[2:])[slots]

    return dequantize_kv_cache(
        codes.reshape(flat, *codes.shape[2:])[slots],
        cache.kv_dtype,
        at(getattr(cache, f"{which}_scales")),
        at(getattr(cache, f"{which}_zeros")),
        getattr(cache, f"{which}_layer_scale"),
    )

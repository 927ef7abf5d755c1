"""NumPy ground truth for the attention path (see README.md in this folder): float64 attention over the
paged, quantized KV cache, RoPE and RMSNorm."""

from lowbit.reference.attention import decode_attention, paged_attention, prefill_attention, sequence_attention
from lowbit.reference.norm import add_rms_norm, rms_norm
from lowbit.reference.paged import (
    PagedKVCache,
    append_kv_reference,
    build_paged_cache,
    gather_kv,
    pack_int4,
    pack_int4_keys,
    pack_int8_keys,
    token_slots,
    unpack_int4,
    unpack_int4_keys,
    unpack_int8_keys,
)
from lowbit.reference.rope import ROPE_STYLES, apply_rope, rope_cos_sin, rope_inv_freq, rope_pairs

__all__ = [
    "ROPE_STYLES",
    "PagedKVCache",
    "add_rms_norm",
    "append_kv_reference",
    "apply_rope",
    "build_paged_cache",
    "decode_attention",
    "gather_kv",
    "pack_int4",
    "pack_int4_keys",
    "pack_int8_keys",
    "paged_attention",
    "prefill_attention",
    "rms_norm",
    "rope_cos_sin",
    "rope_inv_freq",
    "rope_pairs",
    "sequence_attention",
    "token_slots",
    "unpack_int4",
    "unpack_int4_keys",
    "unpack_int8_keys",
]

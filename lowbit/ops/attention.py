"""Attention ops: decode over a paged, quantized KV cache and ragged causal prefill, through the kernel library.

    paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, kv_dtype=...) -> out [B, HQ, D]
    prefill_attention(q, k, v, cu_seqlens, causal=True) -> out [T, HQ, D]

Cache layout (one layer, `lowbit.reference.paged`): k_cache / v_cache [NP, PS, HKV, D] in the cache dtype —
float16 / bfloat16 / float32, fp8_e4m3 (torch.float8_e4m3fn, ml_dtypes.float8_e4m3fn, or uint8 codes), int8
(KV8: uint8 codes), int4 (KV4: int32/uint32 words [NP, PS, HKV, D // 8], code j of a word at bits 4j..4j+3);
KV8/KV4 carry k/v scales and zeros [NP, PS, HKV] float16 with x̂ = (code − zero)·scale (lowbit.quant.kv).
block_tables [B, MAXP] int32 (page of each block of PS tokens), context_lens [B] int32.

Backend "auto" as for quantized_linear (Triton on CUDA, else TVM, else the reference interpreter). Inputs may be
NumPy arrays or torch tensors; the output has q's type and dtype. Tiles (`_decode_tiles`, `_prefill_tiles`):
the query heads of one KV head form one tile of GP rows (>= 16 for Triton's dot), KV tiles of BN tokens divide
the page; split-KV (`num_splits`, default: enough blocks to fill the machine) adds a combine kernel.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import numpy as np

from lowbit.codegen.backend import compile_program
from lowbit.dtypes import dtype as as_dtype
from lowbit.kernels import attention_decode as decode_kernels
from lowbit.kernels.attention_prefill import prefill_attention as prefill_kernel
from lowbit.kernels.launch import PersistentLauncher, activation_dtype, runs_persistent
from lowbit.lang import Kernel
from lowbit.ops.linear import _cuda, _is_torch, select_backend
from lowbit.quant.kv import KV_DTYPES

_KERNEL_KV = {"int8": "uint8", "int4": "uint4"}  # cache dtype -> the kernel's code dtype
CODES_PER_WORD = {"int4": 8, "int8": 4}  # KV dtypes whose keys are int32 words, page-transposed
FLOAT_CACHES = ("float16", "bfloat16", "float32")


def paged_decode_attention(
    q: Any,
    k_cache: Any,
    v_cache: Any,
    block_tables: Any,
    context_lens: Any,
    *,
    kv_dtype: str,
    k_scales: Any = None,
    k_zeros: Any = None,
    v_scales: Any = None,
    v_zeros: Any = None,
    k_layer_scale: float = 1.0,
    v_layer_scale: float = 1.0,
    sm_scale: float | None = None,
    num_splits: int | None = None,
    backend: str = "auto",
) -> Any:
    """Decode attention: q [B, HQ, D] (one new token per sequence, its K/V already in the cache) attends to the
    context_lens[b] cached tokens of sequence b. Returns out [B, HQ, D] in q's dtype (softmax in fp32).
    Caches (`lowbit.reference.paged`): [num_pages, page_size, HKV, D] of the KV dtype's storage, except the
    keys of int4 / int8 caches: int32 words `[num_pages, HKV, D // C, page_size]` with C = 8 / 4 codes per word
    (per page and head, word w of every token side by side: `pack_int4_keys` / `pack_int8_keys`); int4 values
    are words too, `[num_pages, page_size, HKV, D // 8]` (`pack_int4`). Both run
    `paged_decode_attention_words` (the scores an fp32 dot over the key planes)."""
    backend = select_backend(backend)
    qdtype = activation_dtype(q, "q")
    if len(q.shape) != 3:
        raise ValueError(f"q has shape {list(q.shape)}; decode takes q [B, HQ, D] (one token per sequence)")
    B, HQ, D = (int(s) for s in q.shape)
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_dtype {kv_dtype!r} is not supported; use one of {list(KV_DTYPES)}")
    words = kv_dtype == "int4"
    per_word = CODES_PER_WORD.get(kv_dtype)  # int4 / int8: keys in words, page-transposed
    if len(v_cache.shape) != 4:
        raise ValueError(f"v_cache has shape {list(v_cache.shape)}; expected [num_pages, page_size, HKV, D]")
    NP, PS, HKV, DC = (int(s) for s in v_cache.shape)
    if DC * (8 if words else 1) != D:
        want = f"D // 8 = {D // 8} int32 words" if words else f"D = {D}"
        raise ValueError(f"v_cache's last dimension is {DC} but q's head dim {D} needs {want} (kv_dtype {kv_dtype})")
    if per_word and D % per_word:
        raise ValueError(f"kv_dtype {kv_dtype} packs {per_word} codes per key word: head dim {D} must divide by it")
    k_want = (NP, HKV, D // per_word, PS) if per_word else (NP, PS, HKV, DC)
    if tuple(k_cache.shape) != k_want:
        layout = (
            f"{kv_dtype} keys are [num_pages, HKV, D // {per_word}, page_size] int32 words "
            f"(lowbit.reference.paged.pack_{kv_dtype}_keys)"
            if per_word
            else "k_cache and v_cache must have the same shape"
        )
        raise ValueError(f"k_cache has shape {list(k_cache.shape)}, expected {list(k_want)}: {layout}")
    if HQ % HKV:
        raise ValueError(f"HQ = {HQ} query heads is not a multiple of HKV = {HKV} KV heads (GQA needs HQ % HKV == 0)")
    quantized = kv_dtype in ("int8", "int4")
    side = [k_scales, k_zeros, v_scales, v_zeros]
    if quantized and any(a is None for a in side):
        raise ValueError(f"kv_dtype {kv_dtype} needs k_scales, k_zeros, v_scales and v_zeros [{NP}, {PS}, {HKV}]")
    for name, a in zip(("k_scales", "k_zeros", "v_scales", "v_zeros"), side):
        if quantized and tuple(a.shape) != (NP, PS, HKV):
            raise ValueError(
                f"{name} has shape {list(a.shape)}; expected [num_pages, page_size, HKV] = {[NP, PS, HKV]}"
            )
    _check_table(block_tables, context_lens, B, PS)
    lens = _host_ints(context_lens)
    maxlen = int(lens.max()) if lens.size else 0
    if maxlen > block_tables.shape[1] * PS:
        raise ValueError(
            f"context_lens reaches {maxlen} tokens but block_tables holds {block_tables.shape[1]} pages of {PS}; "
            f"give every sequence enough pages"
        )
    GQ = HQ // HKV
    GP, BN, CD = _decode_tiles(backend, GQ, PS, D, qdtype)
    splits, tps = decode_splits(backend, B * HKV, maxlen, BN, num_splits)
    odtype = qdtype if splits == 1 else "float32"
    consts: dict[str, Any] = {
        "qdtype": qdtype,
        "kvdtype": _KERNEL_KV.get(kv_dtype, kv_dtype),
        "odtype": odtype,
        "D": D,
        "PS": PS,
        "GQ": GQ,
        "GP": GP,
        "BN": BN,
        "CD": CD,
        "sm_scale": float(sm_scale if sm_scale is not None else 1.0 / math.sqrt(D)),
        "k_layer_scale": float(k_layer_scale) if kv_dtype == "fp8_e4m3" else 1.0,
        "v_layer_scale": float(v_layer_scale) if kv_dtype == "fp8_e4m3" else 1.0,
        "DC": decode_chunk(backend, D),
    }
    io = _IO(backend, q)
    part = io.empty((splits, B, HQ, D), odtype)
    lse = io.empty((splits, B, HQ), "float32")
    kernel = decode_kernels.paged_decode_attention
    if per_word:
        kernel = decode_kernels.paged_decode_attention_words
        consts = words_consts(consts)
    args = {
        "q": io.put(q),
        "k_cache": io.put_cache(k_cache, kv_dtype),
        "v_cache": io.put_cache(v_cache, kv_dtype),
        "block_tables": io.put(block_tables),
        "context_lens": io.put(context_lens),
        "out": part,
        "lse": lse,
        "B": B,
        "HQ": HQ,
        "HKV": HKV,
        "NP": NP,
        "MAXP": int(block_tables.shape[1]),
        "SPLITS": splits,
        "TPS": tps,
    }
    if quantized:
        args.update(
            k_scales=io.put(k_scales), k_zeros=io.put(k_zeros), v_scales=io.put(v_scales), v_zeros=io.put(v_zeros)
        )
    if per_word:
        args["k_words"], args["v_words"] = io.words(args.pop("k_cache")), io.words(args.pop("v_cache"))
    _compiled(kernel, backend, consts)(args)
    if splits == 1:
        return io.result(part[0])
    out = io.empty((B, HQ, D), qdtype)
    sp = 1 << (splits - 1).bit_length()
    combine = {"part": part, "lse": lse, "out": out, "B": B, "HQ": HQ, "SPLITS": splits}
    _compiled(decode_kernels.attention_combine, backend, {"odtype": qdtype, "D": D, "SP": sp})(combine)
    return io.result(out)


def prefill_attention(
    q: Any,
    k: Any,
    v: Any,
    cu_seqlens: Any,
    *,
    causal: bool = True,
    sm_scale: float | None = None,
    backend: str = "auto",
) -> Any:
    """Ragged prefill: q [T, HQ, D], k / v [T, HKV, D] of B sequences concatenated, sequence b being tokens
    cu_seqlens[b] .. cu_seqlens[b + 1] − 1 (cu_seqlens [B + 1] int32). Causal by default (query i sees keys
    <= i of its own sequence). Returns out [T, HQ, D] in q's dtype (softmax and accumulation in fp32)."""
    backend = select_backend(backend)
    dt = activation_dtype(q, "q")
    for name, a in (("k", k), ("v", v)):
        if _dtype_name(a) != dt:
            raise ValueError(f"{name} has dtype {_dtype_name(a)} but q has {dt}; pass q, k, v in one dtype")
    if len(q.shape) != 3 or len(k.shape) != 3 or tuple(k.shape) != tuple(v.shape):
        raise ValueError(
            f"q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}: expected [T, HQ, D], [T, HKV, D] x2"
        )
    TT, HQ, D = (int(s) for s in q.shape)
    HKV = int(k.shape[1])
    if int(k.shape[0]) != TT or int(k.shape[2]) != D:
        raise ValueError(f"k has shape {list(k.shape)}; expected [T={TT}, HKV, D={D}] (the same tokens as q)")
    if HQ % HKV:
        raise ValueError(f"HQ = {HQ} query heads is not a multiple of HKV = {HKV} KV heads (GQA needs HQ % HKV == 0)")
    cu = _host_ints(cu_seqlens)
    if cu.ndim != 1 or cu.size < 2 or cu[0] != 0 or cu[-1] != TT or np.any(np.diff(cu) < 0):
        raise ValueError(
            f"cu_seqlens {cu.tolist()[:8]}... must be [B + 1] nondecreasing offsets from 0 to T = {TT} "
            f"(sequence b = tokens cu_seqlens[b] .. cu_seqlens[b + 1] − 1)"
        )
    maxlen = max(int(np.diff(cu).max()), 1)
    BM, BN, CD = _prefill_tiles(backend, D, dt, maxlen)
    consts = {
        "dtype": dt,
        "D": D,
        "GQ": HQ // HKV,
        "BM": BM,
        "BN": BN,
        "CAUSAL": bool(causal),
        "CD": CD,
        "sm_scale": float(sm_scale if sm_scale is not None else 1.0 / math.sqrt(D)),
        "DC": 16 if backend == "tvm" and D % 16 == 0 else 0,
    }
    io = _IO(backend, q)
    out = io.empty((TT, HQ, D), dt)
    args = {
        "q": io.put(q),
        "k": io.put(k),
        "v": io.put(v),
        "cu_seqlens": io.put(cu_seqlens),
        "out": out,
        "TT": TT,
        "HQ": HQ,
        "HKV": HKV,
        "B1": int(cu.size),
        "MAXLEN": maxlen,
    }
    _compiled(prefill_kernel, backend, consts)(args)
    return io.result(out)


# ---- tiles -------------------------------------------------------------------------------------------------


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _decode_tiles(backend: str, GQ: int, PS: int, D: int, qdtype: str) -> tuple[int, int, str]:
    """(GP query rows, BN tokens per KV tile, dot compute dtype) for this backend."""
    if PS & (PS - 1):
        raise ValueError(f"page_size {PS} is not a power of two; use 16 (vLLM's default), 32 or 64")
    if backend == "triton":
        if PS < 16 or D < 16 or D & (D - 1):
            raise ValueError(
                f"the triton backend needs page_size >= 16 and a power-of-two head dim >= 16 (tl.dot tiles); "
                f"got page_size {PS}, D {D}"
            )
        cd = qdtype if _cuda() and qdtype != "float32" else "float32"
        return max(16, _pow2(GQ)), min(PS, 64), cd
    if backend == "tvm":
        return _pow2(GQ), min(PS, 32), "float32"
    return _pow2(GQ), PS, "float32"


def _prefill_tiles(backend: str, D: int, dt: str, maxlen: int = 128) -> tuple[int, int, str]:
    """(BM query rows, BN keys per tile, dot compute dtype). TVM: BM up to 128 rows (one transposed K tile of
    BN = 16 keys serves them all; 1x512 causal on the 2-core VM: BM 32 / BN 32 152 ms, BM 128 / BN 16 with
    the V dot in 16-column chunks 59 ms vs torch SDPA 74 ms), fewer for short sequences."""
    if backend == "triton":
        if D < 16 or D & (D - 1):
            raise ValueError(f"the triton backend needs a power-of-two head dim >= 16; got D {D}")
        big = _cuda()
        return (64, 64, dt if dt != "float32" else "float32") if big else (16, 16, "float32")
    if backend == "tvm":
        return min(128, max(16, _pow2(maxlen))), 16, "float32"
    return 16, 16, "float32"


def decode_chunk(backend: str, D: int) -> int:
    """`paged_decode_attention`'s DC: V column chunks of 16 on TVM (register accumulators; B=8 ctx 4096:
    fp16 / int8 ~55 -> see lowbit/kernels/README.md), 0 (one accumulator) elsewhere."""
    return 16 if backend == "tvm" and D % 16 == 0 else 0


def words_consts(consts: dict[str, Any]) -> dict[str, Any]:
    """`paged_decode_attention_words`' constants from `paged_decode_attention`'s (kvdtype uint4 / uint8 ->
    BITS 4 / 8; odtype if given)."""
    keep = ("qdtype", "odtype", "D", "PS", "GQ", "GP", "BN", "sm_scale")
    return {**{k: consts[k] for k in keep if k in consts}, "BITS": 4 if consts["kvdtype"] == "uint4" else 8}


def decode_splits(backend: str, blocks: int, maxlen: int, BN: int, num_splits: int | None = None) -> tuple[int, int]:
    """(KV splits, tokens per split) of a decode over `blocks` (sequence, KV head) pairs whose longest
    context is `maxlen`: `num_splits` (default `_auto_splits`) rounded so each split is whole KV tiles of BN
    and none is empty. The CUDA-graph buckets of the nano executor key on the same pair."""
    splits = num_splits or _auto_splits(backend, blocks, maxlen, BN)
    tps = max(BN, math.ceil(math.ceil(max(maxlen, 1) / splits) / BN) * BN)  # tokens per split, whole tiles
    return max(1, math.ceil(max(maxlen, 1) / tps)), tps


def _auto_splits(backend: str, blocks: int, maxlen: int, BN: int) -> int:
    """Split the context so B·HKV·splits blocks fill the machine, keeping >= 256 tokens per split."""
    if backend == "reference":
        return 1
    target = 2 * 132 if backend == "triton" and _cuda() else 4 * (os.cpu_count() or 1)
    return max(1, min(math.ceil(target / max(blocks, 1)), math.ceil(maxlen / max(256, BN))))


@functools.lru_cache(maxsize=256)
def _compiled_cached(kernel: Kernel, backend: str, consts: tuple[tuple[str, Any], ...]) -> Any:
    return compile_program(kernel.trace(**dict(consts)), backend, decode_kernels.compile_options(kernel, backend))


@functools.lru_cache(maxsize=64)
def _persistent_cached(kernel: Kernel, backend: str, consts: tuple[tuple[str, Any], ...]) -> Any:
    return PersistentLauncher(kernel, dict(consts), backend, decode_kernels.compile_options(kernel, backend))


def _compiled(kernel: Kernel, backend: str, consts: dict[str, Any]) -> Any:
    # under a nano-batch plan's share the kernel's persistent form (`runs_persistent`), as ops.linear does
    key = tuple(sorted(consts.items()))
    if runs_persistent(backend):
        return _persistent_cached(kernel, backend, key)
    return _compiled_cached(kernel, backend, key)


# ---- validation and numpy / torch plumbing --------------------------------------------------------------


def _dtype_name(x: Any) -> str:
    name = str(getattr(x, "dtype", type(x).__name__)).removeprefix("torch.")
    return {"float8_e4m3fn": "fp8_e4m3"}.get(name, name)


def _host_ints(x: Any) -> np.ndarray:
    return (x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)).astype(np.int64)


def _check_table(block_tables: Any, context_lens: Any, B: int, PS: int) -> None:
    if len(block_tables.shape) != 2 or int(block_tables.shape[0]) != B:
        raise ValueError(f"block_tables has shape {list(block_tables.shape)}; expected [B={B}, max_pages]")
    if tuple(context_lens.shape) != (B,):
        raise ValueError(f"context_lens has shape {list(context_lens.shape)}; expected [B={B}]")
    for name, a in (("block_tables", block_tables), ("context_lens", context_lens)):
        if _dtype_name(a) != "int32":
            raise ValueError(f"{name} has dtype {_dtype_name(a)}; pass int32 (.astype(np.int32) / .to(torch.int32))")


class _IO:
    """Arguments in the form a backend takes: NumPy (bf16 / fp8 as ml_dtypes) for the interpreter, torch tensors
    for compiled backends; results converted back to the caller's kind."""

    def __init__(self, backend: str, like: Any):
        self.numpy = backend == "reference"
        self.torch_in = _is_torch(like)
        self.device = like.device if self.torch_in else None

    def put(self, x: Any) -> Any:
        if self.numpy:
            return _to_numpy(x)
        return _to_torch(x, self.device)

    def put_cache(self, x: Any, kv_dtype: str) -> Any:
        if kv_dtype == "fp8_e4m3" and _dtype_name(x) == "uint8":  # fp8 given as its codes
            x = x.view(np.dtype(as_dtype("fp8_e4m3").host_dtype)) if not _is_torch(x) else _fp8_view(x)
        return self.put(x)

    def words(self, x: Any) -> Any:
        """A cache already in this backend's form (int32 words or uint8 codes) viewed as int32 words."""
        if self.numpy:
            return np.ascontiguousarray(x).view(np.int32)
        return x.contiguous().view(_torch().int32)

    def empty(self, shape: tuple[int, ...], dt: str) -> Any:
        if self.numpy:
            return np.zeros(shape, as_dtype(dt).host_dtype)
        torch = _torch()
        return torch.zeros(shape, dtype=getattr(torch, dt), device=self.device)

    def result(self, y: Any) -> Any:
        if self.torch_in:
            return _to_torch(y, self.device).contiguous()
        return _to_numpy(y)


def _torch() -> Any:
    import torch

    return torch


def _fp8_view(x: Any) -> Any:
    return x.view(_torch().float8_e4m3fn)


def _to_numpy(x: Any) -> np.ndarray:
    if not _is_torch(x):
        return np.asarray(x)
    t = x.detach().cpu()
    name = _dtype_name(t)
    if name in ("bfloat16", "fp8_e4m3"):
        bits = t.view(_torch().int16 if name == "bfloat16" else _torch().uint8).numpy()
        return bits.view(np.dtype(as_dtype(name).host_dtype))
    return t.numpy()


def _to_torch(x: Any, device: Any) -> Any:
    torch = _torch()
    if _is_torch(x):
        return x.to(device) if device is not None else x
    a = np.ascontiguousarray(x)
    name = a.dtype.name
    if name == "bfloat16":
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    elif name.startswith("float8_e4m3"):
        t = torch.from_numpy(a.view(np.uint8)).view(torch.float8_e4m3fn)
    elif name == "uint32":
        t = torch.from_numpy(a.view(np.int32))
    else:
        t = torch.from_numpy(a)
    return t.to(device) if device is not None else t


__all__ = [
    "KV_DTYPES",
    "decode_splits",
    "paged_decode_attention",
    "prefill_attention",
    "words_consts",
]

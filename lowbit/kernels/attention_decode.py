"""Decode attention over a paged, quantized KV cache (flash-decoding), in the tile DSL.

One new query token per sequence attends to the `context_lens[b]` tokens of its sequence, found through
the block table (the cache layout of `lowbit.reference.paged`: `k_cache, v_cache [NP, PS, HKV, D]`, one
page of PS tokens per block-table entry). A block handles one (sequence, KV head, split): the GQ = HQ/HKV
query heads sharing that KV head are the rows of one tile, so every KV byte is read once per sequence, not
once per query head (GQA is what makes decode memory-bound on KV, not on queries).

KV dtypes (`kvdtype`): float16 / bfloat16 / float32 (read as is), fp8_e4m3 (times a per-layer scale),
uint8 / uint4 (KV8 / KV4: per-token, per-head asymmetric codes, x̂ = (c − z)·s with fp16 s and z). The
dequantization is folded into the two dots instead of being applied per element (exact algebra):

    q·k̂_t      = s_t·(q·c_t − z_t·Σ_d q_d)                      scores: one dot on the raw codes
    Σ_t p_t·v̂_t = Σ_t (p_t·s_t)·c_t − Σ_t p_t·s_t·z_t            values: one dot, one row sum

so the inner loops only unpack and convert codes. The online softmax (running max m, sum l, rescaled
accumulator) runs over tiles of BN tokens (BN divides the page size, so a tile never crosses a page).

Split-KV: the grid's third axis cuts each context into SPLITS ranges of `TPS` tokens (a multiple of BN).
Each split writes its unnormalised-free partial output `acc / l` and its log-sum-exp `m + log l` (−inf for
an empty range); `attention_combine` merges the splits. With SPLITS = 1 the partial output is the result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy

import lowbit.lang as T

NEG_INF = float("-inf")
M_INIT = -1.0e30  # finite start for the running max: exp(M_INIT − m) is 0 without computing inf − inf


def kv_tile(cache, scales, zeros, page, off, h, BN: int, D: int, kvdtype: str, layer_scale: float, CD: str):
    """The [BN, D] tile of a KV cache (codes cast to the compute dtype CD) and its per-token (scale, zero)
    [1, BN] fp32 tiles (None for unquantized caches; fp8's layer scale is folded into the codes)."""
    c = T.reshape(T.load(cache, (page, off, h, 0), (1, BN, 1, D)), (BN, D))
    if kvdtype in ("uint8", "uint4"):
        s = T.reshape(T.cast(T.load(scales, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
        z = T.reshape(T.cast(T.load(zeros, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
        return T.cast(c, CD), s, z
    if kvdtype == "fp8_e4m3" and layer_scale != 1.0:
        return T.cast(T.cast(c, T.float32) * layer_scale, CD), None, None
    return T.cast(c, CD), None, None


@T.kernel
def paged_decode_attention(
    q: T.Tensor("qdtype", ("B", "HQ", "D")),
    k_cache: T.Tensor("kvdtype", ("NP", "PS", "HKV", "D")),
    v_cache: T.Tensor("kvdtype", ("NP", "PS", "HKV", "D")),
    k_scales: T.Tensor("float16", ("NP", "PS", "HKV")),
    k_zeros: T.Tensor("float16", ("NP", "PS", "HKV")),
    v_scales: T.Tensor("float16", ("NP", "PS", "HKV")),
    v_zeros: T.Tensor("float16", ("NP", "PS", "HKV")),
    block_tables: T.Tensor("int32", ("B", "MAXP")),
    context_lens: T.Tensor("int32", ("B",)),
    out: T.Tensor("odtype", ("SPLITS", "B", "HQ", "D")),
    lse: T.Tensor("float32", ("SPLITS", "B", "HQ")),
    B: T.int32,
    HQ: T.int32,
    HKV: T.int32,
    NP: T.int32,
    MAXP: T.int32,
    SPLITS: T.int32,
    TPS: T.int32,
    qdtype: T.constexpr = "float16",
    kvdtype: T.constexpr = "float16",
    odtype: T.constexpr = "float32",
    D: T.constexpr = 128,
    PS: T.constexpr = 16,
    GQ: T.constexpr = 1,
    GP: T.constexpr = 16,
    BN: T.constexpr = 16,
    CD: T.constexpr = "float32",
    sm_scale: T.constexpr = 0.08838834764831845,
    k_layer_scale: T.constexpr = 1.0,
    v_layer_scale: T.constexpr = 1.0,
):
    # q: [B, HQ, D]; caches: [NP, PS, HKV, D]; out: [SPLITS, B, HQ, D]; lse: [SPLITS, B, HQ]
    b, h, sp = T.grid(B, HKV, SPLITS)
    n = T.load_scalar(context_lens, (b,), name="n")
    rows = T.arange(0, GP)[:, None] < GQ  # [GP, 1]: the query heads of this KV head
    qt = T.reshape(T.load(q, (b, h * GQ, 0), (1, GP, D), mask=T.reshape(rows, (1, GP, 1))), (GP, D))
    qs = T.cast(qt, T.float32) * sm_scale  # [GP, D] fp32
    qd = T.cast(qs, CD)
    quantized = kvdtype in ("uint8", "uint4")
    if quantized:
        qsum = T.sum(T.cast(qd, T.float32), axis=1, keepdims=True)  # [GP, 1]
    m = T.full((GP, 1), M_INIT, T.float32, name="m")
    l = T.zeros((GP, 1), T.float32, name="l")
    acc = T.zeros((GP, D), T.float32, name="acc")
    for t0 in T.range(sp * TPS, sympy.Min(n, sp * TPS + TPS), BN, name="t0"):
        page = T.load_scalar(block_tables, (b, t0 // PS), name="page")
        off = t0 % PS
        valid = (t0 + T.arange(0, BN))[None, :] < n  # [1, BN]
        kc, ks, kz = kv_tile(k_cache, k_scales, k_zeros, page, off, h, BN, D, kvdtype, k_layer_scale, CD)
        s = T.dot(qd, T.transpose(kc))  # [GP, BN] fp32
        if quantized:
            s = (s - qsum * kz) * ks
        s = T.where(valid, s, NEG_INF)
        m_new = T.maximum(m, T.max(s, axis=1, keepdims=True))  # [GP, 1]
        p = T.exp(s - m_new)  # [GP, BN]
        alpha = T.exp(m - m_new)
        T.assign(l, l * alpha + T.sum(p, axis=1, keepdims=True))
        vc, vs, vz = kv_tile(v_cache, v_scales, v_zeros, page, off, h, BN, D, kvdtype, v_layer_scale, CD)
        if quantized:
            ps = p * vs  # [GP, BN]: p_t·s_t
            pv = T.dot(T.cast(ps, CD), vc) - T.sum(ps * vz, axis=1, keepdims=True)
        else:
            pv = T.dot(T.cast(p, CD), vc)
        T.assign(acc, acc * alpha + pv)
        T.assign(m, m_new)
    nonempty = l > 0.0  # [GP, 1]
    o = T.where(nonempty, acc / T.where(nonempty, l, 1.0), 0.0)
    T.store(out, (sp, b, h * GQ, 0), T.reshape(T.cast(o, odtype), (1, 1, GP, D)), mask=T.reshape(rows, (1, 1, GP, 1)))
    lse_t = T.where(nonempty, m + T.log(T.where(nonempty, l, 1.0)), NEG_INF)  # [GP, 1]
    T.store(lse, (sp, b, h * GQ), T.reshape(lse_t, (1, 1, GP)), mask=T.reshape(rows, (1, 1, GP)))


# the persistent form: the same arguments plus BUDGET; a program walks (sequence, KV head, split) blocks
paged_decode_attention_persistent = T.persistent(paged_decode_attention)


@T.kernel
def attention_combine(
    part: T.Tensor("float32", ("SPLITS", "B", "HQ", "D")),
    lse: T.Tensor("float32", ("SPLITS", "B", "HQ")),
    out: T.Tensor("odtype", ("B", "HQ", "D")),
    B: T.int32,
    HQ: T.int32,
    SPLITS: T.int32,
    odtype: T.constexpr = "float16",
    D: T.constexpr = 128,
    SP: T.constexpr = 4,
):
    # out[b, h] = Σ_s w_s·part[s, b, h] with w_s = exp(lse_s − max lse) / Σ exp(...): the splits' softmax
    # denominators l_s = exp(lse_s − m_s) re-weighted to the common maximum
    b, h = T.grid(B, HQ)
    ls = T.reshape(T.load(lse, (0, b, h), (SP, 1, 1), other=NEG_INF), (SP, 1))  # [SP, 1]
    mx = T.max(ls, axis=0, keepdims=True)  # [1, 1]
    finite = mx > NEG_INF
    w = T.where(ls > NEG_INF, T.exp(ls - T.where(finite, mx, 0.0)), 0.0)  # [SP, 1]
    total = T.sum(w, axis=0, keepdims=True)
    parts = T.reshape(T.load(part, (0, b, h, 0), (SP, 1, 1, D)), (SP, D))
    o = T.sum(parts * w, axis=0, keepdims=True) / T.where(total > 0.0, total, 1.0)  # [1, D]
    T.store(out, (b, h, 0), T.reshape(T.cast(o, odtype), (1, 1, D)))


def decode_launcher(
    k_cache: Any,
    v_cache: Any,
    side: dict[str, Any],
    consts: dict[str, Any],
    backend: str,
) -> Callable[[Any, Any, Any, int, int], Any]:
    """`launch(q, block_tables, context_lens, splits, tps) -> out [B, HQ, D]` over this layer's caches (and
    `side`: KV8/KV4 scales and zeros, absent for float caches), bound once: the executor's decode hot path.
    `consts`: `paged_decode_attention`'s constants except odtype (what `lowbit.ops.attention` chooses for the
    backend: qdtype, kvdtype, D, PS, GQ, GP, BN, CD, sm_scale, layer scales). q [B, HQ, D] contiguous torch;
    splits / tps as `lowbit.ops.attention` sets them (one split: no combine kernel, the output in q's dtype)."""
    import torch

    from lowbit.codegen.backend import compile_program
    from lowbit.kernels.launch import bind

    np_, _, hkv = (int(s) for s in k_cache.shape[:3])
    fixed = {"k_cache": k_cache, "v_cache": v_cache, **side, "HKV": hkv, "NP": np_}
    dyn = ("q", "block_tables", "context_lens", "out", "lse", "B", "HQ", "MAXP", "SPLITS", "TPS")
    qdtype, d = consts["qdtype"], consts["D"]
    one = bind(compile_program(paged_decode_attention.trace(**consts, odtype=qdtype), backend), fixed, dyn)
    many = bind(compile_program(paged_decode_attention.trace(**consts, odtype="float32"), backend), fixed, dyn)
    combines: dict[int, Any] = {}
    tq = getattr(torch, qdtype)

    def launch(q: Any, block_tables: Any, context_lens: Any, splits: int, tps: int) -> Any:
        b, hq = int(q.shape[0]), int(q.shape[1])
        part = torch.empty((splits, b, hq, d), dtype=tq if splits == 1 else torch.float32)
        lse = torch.empty((splits, b, hq), dtype=torch.float32)
        call = one if splits == 1 else many
        call(q, block_tables, context_lens, part, lse, b, hq, int(block_tables.shape[1]), splits, tps)
        if splits == 1:
            return part[0]
        sp = 1 << (splits - 1).bit_length()
        if sp not in combines:
            kernel = compile_program(attention_combine.trace(odtype=qdtype, D=d, SP=sp), backend)
            combines[sp] = bind(kernel, {}, ("part", "lse", "out", "B", "HQ", "SPLITS"))
        out = torch.empty((b, hq, d), dtype=tq)
        combines[sp](part, lse, out, b, hq, splits)
        return out

    return launch


__all__ = ["attention_combine", "decode_launcher", "paged_decode_attention", "paged_decode_attention_persistent"]

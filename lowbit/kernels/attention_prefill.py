"""Prefill attention (flash-attention style) over a ragged batch, in the tile DSL.

Sequences are concatenated along the token axis and delimited by `cu_seqlens [B + 1]` (sequence b owns
tokens cu_seqlens[b] .. cu_seqlens[b + 1] − 1). A block handles BM query tokens of one query head of one
sequence and walks that sequence's keys in tiles of BN with an online softmax; with CAUSAL the walk stops at
the block's last query (query i sees keys j <= i of its own sequence). Grouped-query attention: query head h
reads KV head h // GQ. Blocks past a sequence's end return at once (the grid is sized by the longest one).
"""

from __future__ import annotations

import sympy

import lowbit.lang as T
from lowbit.kernels.attention_decode import M_INIT, NEG_INF


@T.kernel
def prefill_attention(
    q: T.Tensor("dtype", ("TT", "HQ", "D")),
    k: T.Tensor("dtype", ("TT", "HKV", "D")),
    v: T.Tensor("dtype", ("TT", "HKV", "D")),
    cu_seqlens: T.Tensor("int32", ("B1",)),
    out: T.Tensor("dtype", ("TT", "HQ", "D")),
    TT: T.int32,
    HQ: T.int32,
    HKV: T.int32,
    B1: T.int32,
    MAXLEN: T.int32,
    dtype: T.constexpr = "float16",
    D: T.constexpr = 128,
    GQ: T.constexpr = 1,
    BM: T.constexpr = 16,
    BN: T.constexpr = 16,
    CAUSAL: T.constexpr = True,
    CD: T.constexpr = "float32",
    sm_scale: T.constexpr = 0.08838834764831845,
    DC: T.constexpr = 0,
):
    # q, out: [TT, HQ, D]; k, v: [TT, HKV, D]; cu_seqlens: [B + 1]
    mb, h, b = T.grid(T.cdiv(MAXLEN, BM), HQ, B1 - 1)
    start = T.load_scalar(cu_seqlens, (b,), name="start")
    end = T.load_scalar(cu_seqlens, (b + 1,), name="end")
    m0 = mb * BM
    with T.if_(m0 + start < end):
        rows = (m0 + T.arange(0, BM))[:, None]  # [BM, 1]: query positions in the sequence
        qmask = T.reshape(rows < end - start, (BM, 1, 1))
        qt = T.reshape(T.load(q, (start + m0, h, 0), (BM, 1, D), mask=qmask), (BM, D))
        qs = T.cast(T.cast(qt, T.float32) * sm_scale, CD)
        m = T.full((BM, 1), M_INIT, T.float32, name="m")
        l = T.zeros((BM, 1), T.float32, name="l")
        # DC > 0: the values dot and accumulator in D / DC column chunks (each chunk's tm x DC accumulators stay in
        # registers on the CPU); 0: one [BM, D] accumulator
        chunks = D // DC if DC else 1
        width = DC if DC else D
        accs = [T.zeros((BM, width), T.float32, name=f"acc{c}") for c in T.static_range(chunks)]
        stop = sympy.Min(end - start, m0 + BM) if CAUSAL else end - start
        for n0 in T.range(0, stop, BN, name="n0"):
            cols = (n0 + T.arange(0, BN))[None, :]  # [1, BN]: key positions
            kvmask = T.reshape(cols < end - start, (BN, 1, 1))
            kt = T.reshape(T.load(k, (start + n0, h // GQ, 0), (BN, 1, D), mask=kvmask), (BN, D))
            s = T.dot(qs, T.transpose(T.cast(kt, CD)))  # [BM, BN] fp32
            valid = cols < end - start
            if CAUSAL:
                valid = valid & (cols <= rows)
            s = T.where(valid, s, NEG_INF)
            m_new = T.maximum(m, T.max(s, axis=1, keepdims=True))
            p = T.exp(s - m_new)
            alpha = T.exp(m - m_new)
            T.assign(l, l * alpha + T.sum(p, axis=1, keepdims=True))
            pc = T.cast(p, CD)
            for c in T.static_range(chunks):
                vt = T.reshape(T.load(v, (start + n0, h // GQ, c * width), (BN, 1, width), mask=kvmask), (BN, width))
                T.assign(accs[c], accs[c] * alpha + T.dot(pc, T.cast(vt, CD)))
            T.assign(m, m_new)
        inv_l = 1.0 / T.where(l > 0.0, l, 1.0)
        for c in T.static_range(chunks):
            o = T.reshape(T.cast(accs[c] * inv_l, dtype), (BM, 1, width))
            T.store(out, (start + m0, h, c * width), o, mask=qmask)


# the persistent form: the same arguments plus BUDGET; a program walks (query block, head, sequence) blocks
prefill_attention_persistent = T.persistent(prefill_attention)

__all__ = ["prefill_attention", "prefill_attention_persistent"]

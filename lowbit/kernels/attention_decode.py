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


def kv_tile(
    cache, scales, zeros, page, off, h, BN: int, D: int, kvdtype: str, layer_scale: float, CD: str, d0: int = 0
):
    """The [BN, D] tile of a KV cache (columns d0 .. d0 + D − 1; codes cast to the compute dtype CD) and its
    per-token (scale, zero) [1, BN] fp32 tiles (None for unquantized caches; fp8's layer scale is folded into
    the codes)."""
    c = T.reshape(T.load(cache, (page, off, h, d0), (1, BN, 1, D)), (BN, D))
    if kvdtype in ("uint8", "uint4"):
        s = T.reshape(T.cast(T.load(scales, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
        z = T.reshape(T.cast(T.load(zeros, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
        return T.cast(c, CD), s, z
    if kvdtype == "fp8_e4m3" and layer_scale != 1.0:
        return T.cast(T.cast(c, T.float32) * layer_scale, CD), None, None
    return T.cast(c, CD), None, None


def softmax_step(s, m, l):
    """One online-softmax step over the scores s [GP, BN] (masked tokens -inf) with running max m and sum l
    [GP, 1]: l rescaled and grown (assigned here); returns (p [GP, BN], alpha [GP, 1], m_new [GP, 1])."""
    m_new = T.maximum(m, T.max(s, axis=1, keepdims=True))  # [GP, 1]
    p = T.exp(s - m_new)  # [GP, BN]
    alpha = T.exp(m - m_new)
    T.assign(l, l * alpha + T.sum(p, axis=1, keepdims=True))
    return p, alpha, m_new


def store_split(out, lse, accs, l, m, rows, sp, b, h, GQ: int, GP: int, width: int, odtype: str) -> None:
    """The block's result: out[sp, b, h·GQ ..] = acc / l (column chunks of `width`; 0 where no token) and
    lse = m + log l (-inf where no token), for the rows of real query heads."""
    nonempty = l > 0.0  # [GP, 1]
    inv_l = T.where(nonempty, 1.0 / T.where(nonempty, l, 1.0), 0.0)  # [GP, 1]
    for c in T.static_range(len(accs)):
        o = T.reshape(T.cast(accs[c] * inv_l, odtype), (1, 1, GP, width))
        T.store(out, (sp, b, h * GQ, c * width), o, mask=T.reshape(rows, (1, 1, GP, 1)))
    lse_t = T.where(nonempty, m + T.log(T.where(nonempty, l, 1.0)), NEG_INF)  # [GP, 1]
    T.store(lse, (sp, b, h * GQ), T.reshape(lse_t, (1, 1, GP)), mask=T.reshape(rows, (1, 1, GP)))


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
    DC: T.constexpr = 0,
):
    # q: [B, HQ, D]; caches: [NP, PS, HKV, D]; out: [SPLITS, B, HQ, D]; lse: [SPLITS, B, HQ]
    # DC > 0: the values dot and accumulator in D / DC column chunks (a chunk's GP x DC accumulators stay in
    # registers on the CPU; one [GP, D] accumulator spilled on every FMA); 0: one accumulator
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
    chunks = D // DC if DC else 1
    width = DC if DC else D
    accs = [T.zeros((GP, width), T.float32, name=f"acc{c}") for c in T.static_range(chunks)]
    for t0 in T.range(sp * TPS, sympy.Min(n, sp * TPS + TPS), BN, name="t0"):
        page = T.load_scalar(block_tables, (b, t0 // PS), name="page")
        off = t0 % PS
        valid = (t0 + T.arange(0, BN))[None, :] < n  # [1, BN]
        kc, ks, kz = kv_tile(k_cache, k_scales, k_zeros, page, off, h, BN, D, kvdtype, k_layer_scale, CD)
        s = T.dot(qd, T.transpose(kc))  # [GP, BN] fp32
        if quantized:
            s = (s - qsum * kz) * ks
        p, alpha, m_new = softmax_step(T.where(valid, s, NEG_INF), m, l)
        pw = T.cast(p, CD)
        if quantized:
            vs = T.reshape(T.cast(T.load(v_scales, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
            vz = T.reshape(T.cast(T.load(v_zeros, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
            ps = p * vs  # [GP, BN]: p_t·s_t
            pw = T.cast(ps, CD)
            psz = T.sum(ps * vz, axis=1, keepdims=True)  # [GP, 1]
        for c in T.static_range(chunks):
            vc = kv_tile(v_cache, v_scales, v_zeros, page, off, h, BN, width, kvdtype, v_layer_scale, CD, c * width)[0]
            pv = T.dot(pw, vc)
            T.assign(accs[c], accs[c] * alpha + (pv - psz if quantized else pv))
        T.assign(m, m_new)
    store_split(out, lse, accs, l, m, rows, sp, b, h, GQ, GP, width, odtype)


# the persistent form: the same arguments plus BUDGET; a program walks (sequence, KV head, split) blocks
paged_decode_attention_persistent = T.persistent(paged_decode_attention)


@T.kernel
def paged_decode_attention_kv4(
    q: T.Tensor("qdtype", ("B", "HQ", "D")),
    k_words: T.Tensor("int32", ("NP", "HKV", "D // 8", "PS")),
    v_words: T.Tensor("int32", ("NP", "PS", "HKV", "D // 8")),
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
    odtype: T.constexpr = "float32",
    D: T.constexpr = 128,
    PS: T.constexpr = 16,
    GQ: T.constexpr = 1,
    GP: T.constexpr = 16,
    BN: T.constexpr = 16,
    sm_scale: T.constexpr = 0.08838834764831845,
):
    """`paged_decode_attention` for KV4 (every backend), over the KV4 cache layout of `lowbit.reference.paged`:
    keys `k_words [NP, HKV, D / 8, PS]` (per page and KV head, word w of its PS tokens side by side: vLLM's
    key_cache [.., D / x, PS, x] with x = 8 codes per int32 word), values `v_words [NP, PS, HKV, D / 8]`,
    code d of a token at bits 4·(d mod 8) of its word d // 8.

    Scores: plane j of a key word row, `(words[w, t] >> 4j) & 15`, is code d = 8w + j of PS tokens at once, so
    q·Kᵀ is an ordinary [GP, D] x [D, BN] dot over the planes (q permuted once per block into plane order,
    column j·W + w = q_{8w+j}): on a CPU each k step is one vector of BN tokens' codes (shift, mask, convert)
    multiplied into GP accumulators, where token-major keys needed a horizontal sum per (row, token).
    Values: per plane j, `(v_words[t, w] >> 4j) & 15` is code d = 8w + j of one token: one [GP, BN] x [BN, W]
    dot per plane into its accumulator, put back in d order once per block. The softmax sum and the values'
    zero-point term `Σ_t p_t·s_t·z_t` are carried as [GP, BN] vectors (rescaled by alpha like the
    accumulators) and summed over the tokens once per block, not on every tile. Same algebra as
    `paged_decode_attention` (dequantization folded into the dots), fp32 throughout."""
    W = D // 8
    b, h, sp = T.grid(B, HKV, SPLITS)
    n = T.load_scalar(context_lens, (b,), name="n")
    rows = T.arange(0, GP)[:, None] < GQ  # [GP, 1]
    qt = T.reshape(T.load(q, (b, h * GQ, 0), (1, GP, D), mask=T.reshape(rows, (1, GP, 1))), (GP, D))
    qs = T.cast(qt, T.float32) * sm_scale  # [GP, D]
    qsum = T.sum(qs, axis=1, keepdims=True)  # [GP, 1]
    qp = T.reshape(T.transpose(T.reshape(qs, (GP, W, 8)), (0, 2, 1)), (GP, D))  # [GP, 8·W], plane order
    shifts = T.reshape(T.arange(0, 8) * 4, (8, 1, 1))
    m = T.full((GP, 1), M_INIT, T.float32, name="m")
    lvec = T.zeros((GP, BN), T.float32, name="lvec")  # Σ p per token lane (rescaled like the accumulators)
    zvec = T.zeros((GP, BN), T.float32, name="zvec")  # Σ p·s·z per token lane
    accs = [T.zeros((GP, W), T.float32, name=f"acc{j}") for j in T.static_range(8)]  # plane j: d = 8w + j
    for t0 in T.range(sp * TPS, sympy.Min(n, sp * TPS + TPS), BN, name="t0"):
        page = T.load_scalar(block_tables, (b, t0 // PS), name="page")
        off = t0 % PS
        valid = (t0 + T.arange(0, BN))[None, :] < n  # [1, BN]
        kw = T.reshape(T.load(k_words, (page, h, 0, off), (1, 1, W, BN)), (1, W, BN))
        ks = T.reshape(T.cast(T.load(k_scales, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
        kz = T.reshape(T.cast(T.load(k_zeros, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
        kc = T.cast(T.reshape((kw >> shifts) & 15, (D, BN)), T.float32)  # [8·W, BN], plane order
        s = T.where(valid, (T.dot(qp, kc) - qsum * kz) * ks, NEG_INF)  # [GP, BN]
        m_new = T.maximum(m, T.max(s, axis=1, keepdims=True))
        p = T.exp(s - m_new)  # [GP, BN]
        alpha = T.exp(m - m_new)  # [GP, 1]
        vs = T.reshape(T.cast(T.load(v_scales, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
        vz = T.reshape(T.cast(T.load(v_zeros, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
        ps = p * vs  # [GP, BN]: p_t·s_t
        T.assign(lvec, lvec * alpha + p)
        T.assign(zvec, zvec * alpha + ps * vz)
        vw = T.reshape(T.load(v_words, (page, off, h, 0), (1, BN, 1, W)), (BN, W))
        for j in T.static_range(8):
            vc = T.cast((vw >> 4 * j) & 15, T.float32)  # [BN, W]: plane j, codes d = 8w + j
            T.assign(accs[j], accs[j] * alpha + T.dot(ps, vc))
        T.assign(m, m_new)
    l = T.sum(lvec, axis=1, keepdims=True)  # [GP, 1]
    psz = T.sum(zvec, axis=1, keepdims=True)
    # back to d order: o[i, w, j] = acc_j[i, w] − Σ p·s·z
    plane = T.reshape(T.arange(0, 8), (1, 1, 8))
    o = T.where(plane == 0, T.reshape(accs[0] - psz, (GP, W, 1)), 0.0)
    for j in T.static_range(1, 8):
        o = o + T.where(plane == j, T.reshape(accs[j] - psz, (GP, W, 1)), 0.0)  # [GP, W, 8]
    store_split(out, lse, [T.reshape(o, (GP, D))], l, m, rows, sp, b, h, GQ, GP, D, odtype)


LOW_NIBBLES = 0x0F0F0F0F
RESIDUAL = 254.0  # q = (q1 + q2 / RESIDUAL)·amax / 127 with q1, q2 int8: |error| <= amax / (127·2·254)


@T.kernel
def paged_decode_attention_q8(
    q: T.Tensor("qdtype", ("B", "HQ", "D")),
    k_words: T.Tensor("int32", ("NP", "PS", "HKV", "D // KPW")),
    v_cache: T.Tensor("vdtype", ("NP", "PS", "HKV", "D * 4 // (KPW * VW)")),
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
    vdtype: T.constexpr = "int32",
    VW: T.constexpr = 4,
    odtype: T.constexpr = "float32",
    D: T.constexpr = 128,
    PS: T.constexpr = 16,
    GQ: T.constexpr = 1,
    GP: T.constexpr = 4,
    BN: T.constexpr = 16,
    KPW: T.constexpr = 8,
    DC: T.constexpr = 16,
    sm_scale: T.constexpr = 0.08838834764831845,
):
    """`paged_decode_attention` for KV8 / KV4 with the scores on 8-bit integer dots (the CPU fast path).

    Query: the scaled row x = q·sm_scale·127 / amax (amax = max_d |q_d·sm_scale|, one scale per query head) is
    rounded twice, q1 = round(x), q2 = round((x − q1)·254), both int8, so q = (q1 + q2 / 254)·amax / 127 to
    within amax / 64516 per element. The 2·GP rows (q1 and q2 of the GP heads) are packed once per block into
    int32 words [D / 4 or D / 8, 2·GP], 4 codes per word, as the columns of the integer dot.
    Keys: `k_words` is the cache viewed as int32 (KPW = 8 codes per word for uint4, 4 for uint8); per token,
    `w & 0x0F0F0F0F` and `(w >> 4) & 0x0F0F0F0F` viewed as bytes are 0..15: for uint4 the codes of the even
    and of the odd d (q split into even / odd halves to match), for uint8 the low and high nibble of every
    code (c = lo + 16·hi). Each is one u8·i8 dot [BN tokens, D'] x [D', 2·GP] (x86: vpmaddubsw, a token's
    code bytes broadcast from its words in place, the query words one vector per 4 d), exact in int32; then

        s_t = (Σ_d q_d·c_td − z_t·Σ_d q_d)·s_t·amax / 127

    Values: the fp32 dot of `paged_decode_attention` on the V codes (`v_cache`: KV4 as int32 words, vdtype
    "int32", VW = 4 bytes per element; KV8 as uint8 codes, VW = 1), cut into D / DC column chunks so each
    chunk's accumulators stay in registers. Both caches are plain (not packed) tensors, so the TVM lowering
    prefetches their pages ahead through the block table. Error vs fp32 attention over the same dequantized
    cache: only the rounding of q, |δq_d| <= amax / 64516 (random data: ~5e-5 relative on the output)."""
    b, h, sp = T.grid(B, HKV, SPLITS)
    n = T.load_scalar(context_lens, (b,), name="n")
    rows = T.arange(0, GP)[:, None] < GQ  # [GP, 1]
    qt = T.reshape(T.load(q, (b, h * GQ, 0), (1, GP, D), mask=T.reshape(rows, (1, GP, 1))), (GP, D))
    qs = T.cast(qt, T.float32) * sm_scale  # [GP, D]
    amax = T.max(T.abs(qs), axis=1, keepdims=True)  # [GP, 1]
    x = qs * T.where(amax > 0.0, 127.0 / amax, 0.0)  # in [-127, 127]
    q1 = T.floor(x + 0.5)  # integers in [-127, 127], fp32
    q2 = T.floor((x - q1) * RESIDUAL + 0.5)  # the rounding residual (in [-1/2, 1/2]) on 127 levels
    qscale = amax / 127.0
    qsum = T.sum(q1 + q2 * (1.0 / RESIDUAL), axis=1, keepdims=True)  # [GP, 1]: Σ_d q_d in units of qscale
    level = T.reshape(T.arange(0, 2), (2, 1, 1)) == 0  # columns 0..GP-1: q1, GP..2GP-1: q2
    qq = T.reshape(T.where(level, T.reshape(q1, (1, GP, D)), T.reshape(q2, (1, GP, D))), (2 * GP, D))
    weight = T.where(level, 1.0, 1.0 / RESIDUAL)  # [2, 1, 1]
    KD = 4 * D // KPW  # bytes per token in each nibble plane: the dots' reduction length
    if KPW == 8:  # even / odd d, matching the low / high nibbles of each byte
        pairs = T.reshape(qq, (2 * GP, D // 2, 2))
        first = T.reshape(T.arange(0, 2), (1, 1, 2)) == 0
        qa = T.sum(T.where(first, pairs, 0.0), axis=2)  # [2·GP, D/2]
        qb = T.sum(T.where(first, 0.0, pairs), axis=2)
    else:
        qa = qq  # [2·GP, D]
        qb = qq
    shifts = T.reshape(T.arange(0, 4) * 8, (1, 1, 4))
    wa = T.zeros((KD // 4, 2 * GP), T.int32, name="wa")  # 4 int8 codes per word, word t of column j
    wb = T.zeros((KD // 4, 2 * GP), T.int32, name="wb")
    for w, v in ((wa, qa), (wb, qb)):
        codes = T.reshape(T.transpose(v), (KD // 4, 4, 2 * GP))  # [t, r, j]: code of d' = 4t + r, column j
        quads = T.transpose(codes, (0, 2, 1))  # [t, j, r]
        T.assign(w, T.sum((T.cast(quads, T.int32) & 255) << shifts, axis=2))
    # the dots' query columns [KD, 2·GP], built once per block (inside the token loop they were rebuilt, through
    # the byte view and transposes, with element inserts, on every tile: B=8 ctx=4096 int4, one thread, side by
    # side: 46 / 40 ms of CPU time per call against 52 / 45 before)
    cols_ab = [
        T.reshape(T.transpose(T.reshape(T.view(w, T.int8), (KD // 4, 2 * GP, 4)), (0, 2, 1)), (KD, 2 * GP))
        for w in (wa, wb)
    ]
    m = T.full((GP, 1), M_INIT, T.float32, name="m")
    l = T.zeros((GP, 1), T.float32, name="l")
    accs = [T.zeros((GP, DC), T.float32, name=f"acc{c}") for c in T.static_range(D // DC)]
    for t0 in T.range(sp * TPS, sympy.Min(n, sp * TPS + TPS), BN, name="t0"):
        page = T.load_scalar(block_tables, (b, t0 // PS), name="page")
        off = t0 % PS
        valid = (t0 + T.arange(0, BN))[None, :] < n  # [1, BN]
        words = T.reshape(T.load(k_words, (page, off, h, 0), (1, BN, 1, D // KPW)), (BN, D // KPW))
        lo = T.cast(T.view(words & LOW_NIBBLES, T.uint8), T.int8)  # [BN, KD], values 0..15
        hi = T.cast(T.view((words >> 4) & LOW_NIBBLES, T.uint8), T.int8)
        both = None
        for cols, codes in ((cols_ab[0], lo), (cols_ab[1], hi)):
            part = T.dot(codes, cols, acc_dtype=T.int32)  # [BN, 2·GP]
            if both is None:
                both = part
            else:
                both = both + (part if KPW == 8 else part * 16)
        sq = T.sum(T.reshape(T.cast(T.transpose(both), T.float32), (2, GP, BN)) * weight, axis=0)  # [GP, BN]
        ks = T.reshape(T.cast(T.load(k_scales, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
        kz = T.reshape(T.cast(T.load(k_zeros, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
        s = (sq - qsum * kz) * (ks * qscale)  # [GP, BN]
        p, alpha, m_new = softmax_step(T.where(valid, s, NEG_INF), m, l)
        vs = T.reshape(T.cast(T.load(v_scales, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
        vz = T.reshape(T.cast(T.load(v_zeros, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
        ps = p * vs  # [GP, BN]
        psz = T.sum(ps * vz, axis=1, keepdims=True)  # [GP, 1]
        for c in T.static_range(D // DC):
            if KPW == 8:  # int32 words, code j of a word at bits 4j
                vw = T.reshape(T.load(v_cache, (page, off, h, c * DC // 8), (1, BN, 1, DC // 8)), (BN, DC // 8, 1))
                vcodes = T.reshape((vw >> T.reshape(T.arange(0, 8) * 4, (1, 1, 8))) & 15, (BN, DC))
            else:  # uint8 codes
                vcodes = T.reshape(T.load(v_cache, (page, off, h, c * DC), (1, BN, 1, DC)), (BN, DC))
            vc = T.cast(vcodes, T.float32)
            T.assign(accs[c], accs[c] * alpha + (T.dot(ps, vc) - psz))
        T.assign(m, m_new)
    store_split(out, lse, accs, l, m, rows, sp, b, h, GQ, GP, DC, odtype)


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


def compile_options(kernel: Any, backend: str) -> dict[str, Any]:
    """Backend options for compiling `kernel`: on TVM the decode kernels' dot k loops are not unrolled
    (`unroll` 1). The tile loop body (8 unrolled value chunks, each with its fast and checked paths) is past
    the 32 KiB L1 instruction cache of the 2-core Zen 3 VM, so smaller code runs faster: B=8 ctx=4096, one
    thread, min of 4-5 alternating rounds of 10 calls: KV4 26.3 -> 23.0 ms, KV8 32.3 -> 29.8 ms of CPU
    time (library 100 -> 88 KB). The KV4 kernel's dots are [4 heads, 16] blocks, 4 FMA chains: `fma_chains` 8
    splits their k loops into two partial sums, and its [4, 16] lane sums fold as trees (`reduce_vectors` 1):
    B=8 ctx=4096, one thread, CPU time, alternating rounds on the 2-core Zen 5 (session 23): 7.5-7.9 ms
    against 10.1-11.6 ms for the token-major nibble-plane kernel it replaced (torch fp32 SDPA: 25.1-25.6).
    Other kernels and backends: the defaults."""
    if backend == "tvm" and kernel is paged_decode_attention_kv4:
        return {"unroll": 1, "fma_chains": 8, "reduce_vectors": 1}
    if backend == "tvm" and kernel in (paged_decode_attention, paged_decode_attention_q8):
        return {"unroll": 1}
    return {}


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
    from lowbit.ops.attention import decode_chunk, kv4_consts

    qdtype, d = consts["qdtype"], consts["D"]
    np_, _, hkv = (int(s) for s in v_cache.shape[:3])  # v: [NP, PS, HKV, ..] for every KV dtype
    kernel = paged_decode_attention  # the kernels lowbit.ops.attention chooses by default
    if consts["kvdtype"] == "uint4":
        kernel, consts = paged_decode_attention_kv4, kv4_consts(consts)
        fixed = {"k_words": k_cache, "v_words": v_cache, **side, "HKV": hkv, "NP": np_}
    else:
        consts = {"DC": decode_chunk(backend, d), **consts}  # V column chunks, as the ops layer sets them
        fixed = {"k_cache": k_cache, "v_cache": v_cache, **side, "HKV": hkv, "NP": np_}
    dyn = ("q", "block_tables", "context_lens", "out", "lse", "B", "HQ", "MAXP", "SPLITS", "TPS")
    opts = compile_options(kernel, backend)

    def compiled(odtype: str) -> Any:
        return bind(compile_program(kernel.trace(**consts, odtype=odtype), backend, opts), fixed, dyn)

    one, many = compiled(qdtype), compiled("float32")
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


__all__ = [
    "attention_combine",
    "compile_options",
    "decode_launcher",
    "paged_decode_attention",
    "paged_decode_attention_kv4",
    "paged_decode_attention_persistent",
    "paged_decode_attention_q8",
]

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
def paged_decode_attention_words(
    q: T.Tensor("qdtype", ("B", "HQ", "D")),
    k_words: T.Tensor("int32", ("NP", "HKV", "D * BITS // 32", "PS")),
    v_words: T.Tensor("int32", ("NP", "PS", "HKV", "D * BITS // 32")),
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
    BITS: T.constexpr = 4,
    VP: T.constexpr = 4,
):
    """`paged_decode_attention` for KV4 (BITS 4) and KV8 (BITS 8) on every backend, over the cache layout of
    `lowbit.reference.paged`: codes packed C = 32 / BITS per int32 word, code d of a token at bits
    BITS·(d mod C) of its word d // C; keys `k_words [NP, HKV, D / C, PS]` (per page and KV head, word w of its
    PS tokens side by side: vLLM's key_cache [.., D / x, PS, x] with x = C codes per word), values
    `v_words [NP, PS, HKV, D / C]` (token-major: KV8's uint8 codes viewed as words).

    Scores: plane j of a key word row, `(words[w, t] >> BITS·j) & mask`, is code d = C·w + j of PS tokens at
    once, so q·Kᵀ is an ordinary [GP, D] x [D, BN] dot over the planes (q permuted once per block into plane
    order, column j·W + w = q_{Cw+j}): on a CPU each k step is one vector of BN tokens' codes (shift, mask,
    convert) multiplied into GP accumulators, where token-major keys needed a horizontal sum per (row, token).
    Values: plane j of a value word row is code d = C·w + j of one token; VP planes side by side are one
    [GP, BN] x [BN, VP·W] dot into their group's accumulator, put back in d order once per block. The softmax
    sum is carried as a [GP, BN] vector (rescaled by alpha like the accumulators) and summed over the tokens
    once per block. Same algebra as `paged_decode_attention` (dequantization folded into the dots), fp32."""
    C = 32 // BITS  # codes per word
    W = D // C  # words per token
    MASK = (1 << BITS) - 1
    P = max(1, min(VP, C, 64 // W))  # planes per values dot: at most 64 columns (GP x 4 register accumulators)
    b, h, sp = T.grid(B, HKV, SPLITS)
    n = T.load_scalar(context_lens, (b,), name="n")
    rows = T.arange(0, GP)[:, None] < GQ  # [GP, 1]
    qt = T.reshape(T.load(q, (b, h * GQ, 0), (1, GP, D), mask=T.reshape(rows, (1, GP, 1))), (GP, D))
    qs = T.cast(qt, T.float32) * sm_scale  # [GP, D]
    qsum = T.sum(qs, axis=1, keepdims=True)  # [GP, 1]
    qp = T.reshape(T.transpose(T.reshape(qs, (GP, W, C)), (0, 2, 1)), (GP, D))  # [GP, C·W], plane order
    shifts = T.reshape(T.arange(0, C) * BITS, (C, 1, 1))
    m = T.full((GP, 1), M_INIT, T.float32, name="m")
    lvec = T.zeros((GP, BN), T.float32, name="lvec")  # Σ p per token lane (rescaled like the accumulators)
    # plane group g: P planes j = g·P + i side by side, column i·W + w holds d = C·w + j
    accs = [T.zeros((GP, P * W), T.float32, name=f"acc{g}") for g in T.static_range(C // P)]
    for t0 in T.range(sp * TPS, sympy.Min(n, sp * TPS + TPS), BN, name="t0"):
        page = T.load_scalar(block_tables, (b, t0 // PS), name="page")
        off = t0 % PS
        valid = (t0 + T.arange(0, BN))[None, :] < n  # [1, BN]
        kw = T.reshape(T.load(k_words, (page, h, 0, off), (1, 1, W, BN)), (1, W, BN))
        ks = T.reshape(T.cast(T.load(k_scales, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
        kz = T.reshape(T.cast(T.load(k_zeros, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
        kc = T.cast(T.reshape((kw >> shifts) & MASK, (D, BN)), T.float32)  # [C·W, BN], plane order
        s = T.where(valid, (T.dot(qp, kc) - qsum * kz) * ks, NEG_INF)  # [GP, BN]
        m_new = T.maximum(m, T.max(s, axis=1, keepdims=True))
        p = T.exp(s - m_new)  # [GP, BN]
        alpha = T.exp(m - m_new)  # [GP, 1]
        vs = T.reshape(T.cast(T.load(v_scales, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
        vz = T.reshape(T.cast(T.load(v_zeros, (page, off, h), (1, BN, 1)), T.float32), (1, BN))
        ps = p * vs  # [GP, BN]: p_t·s_t
        T.assign(lvec, lvec * alpha + p)
        # the zero term per tile: Σ p·s·c and Σ p·s·z nearly cancel (z mid-range), so they meet at tile size
        # (subtracted once per block, the cancellation over 4096 tokens cost ~8x the error: 8.5e-6 vs 1.1e-6)
        psz = T.sum(ps * vz, axis=1, keepdims=True)  # [GP, 1]
        vw = T.reshape(T.load(v_words, (page, off, h, 0), (1, BN, 1, W)), (BN, 1, W))
        for g in T.static_range(C // P):
            vshift = T.reshape((T.arange(0, P) + g * P) * BITS, (1, P, 1))
            vc = T.cast(T.reshape((vw >> vshift) & MASK, (BN, P * W)), T.float32)  # planes g·P .. g·P + P − 1
            T.assign(accs[g], accs[g] * alpha + (T.dot(ps, vc) - psz))
        T.assign(m, m_new)
    l = T.sum(lvec, axis=1, keepdims=True)  # [GP, 1]
    # back to d order: o[i, w, g, v] = column v·W + w of group g (plane j = g·P + v)
    group = T.reshape(T.arange(0, C // P), (1, 1, C // P, 1))
    o = None
    for g in T.static_range(C // P):
        cols = T.reshape(T.transpose(T.reshape(accs[g], (GP, P, W)), (0, 2, 1)), (GP, W, 1, P))
        term = T.where(group == g, cols, 0.0)
        o = term if o is None else o + term  # [GP, W, C / P, P]
    store_split(out, lse, [T.reshape(o, (GP, D))], l, m, rows, sp, b, h, GQ, GP, D, odtype)


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
    time (library 100 -> 88 KB). The words kernel's dots are [4 heads, 16 tokens] blocks, 4 FMA chains:
    `fma_chains` 8 splits their k loops into two partial sums, and its [4, 16] lane sums fold as trees
    (`reduce_vectors` 1). B=8 ctx=4096, one thread, CPU time, alternating rounds on the 2-core Zen 5 (session
    23): KV4 6.9-7.5 ms against 10.1-11.6 ms for the token-major nibble-plane kernel it replaced (torch fp32
    SDPA 25.1-25.6 ms); KV8 10.5 ms against 12.1-12.8 ms for the fp32 kernel.
    Other kernels and backends: the defaults."""
    if backend == "tvm" and kernel is paged_decode_attention_words:
        return {"unroll": 1, "fma_chains": 8, "reduce_vectors": 1}
    if backend == "tvm" and kernel is paged_decode_attention:
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
    from lowbit.ops.attention import decode_chunk, words_consts

    qdtype, d = consts["qdtype"], consts["D"]
    np_, _, hkv = (int(s) for s in v_cache.shape[:3])  # v: [NP, PS, HKV, ..] for every KV dtype
    kernel = paged_decode_attention  # the kernels lowbit.ops.attention chooses by default
    if consts["kvdtype"] in ("uint4", "uint8"):  # keys as page-transposed int32 words, values viewed as words
        kernel, consts = paged_decode_attention_words, words_consts(consts)
        fixed = {"k_words": k_cache, "v_words": v_cache.view(torch.int32), **side, "HKV": hkv, "NP": np_}
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
    "paged_decode_attention_persistent",
    "paged_decode_attention_words",
]

"""Attention references in float64: ragged prefill, decode and chunked prefill over the paged KV cache.

Every function reduces to `sequence_attention` on one sequence:
    out[i, h] = Σ_j softmax_j(sm_scale · q[i, h]·k[j, h // G]) · v[j, h // G]      G = Hq // Hkv (GQA)
over the keys query i may see. Causal masking is bottom-right aligned: the Lq queries are the *last* Lq
positions of the Lk keys, so query i sees keys j <= Lk − Lq + i (prefill: Lq == Lk, the usual lower
triangle; decode: Lq == 1, every key; chunked prefill: in between); a sliding `window` w (HF Mistral/Qwen2)
also hides keys j <= p − w of the query at position p = Lk − Lq + i. sm_scale defaults to 1/sqrt(D).
The softmax subtracts each row's max before exp; `return_lse` also gives log Σ_j exp(sm_scale·q·k)
(natural log, per query and head), what split-KV kernels merge partial results with.
The paged functions read K/V through `gather_kv`, i.e. attention over the *dequantized* cache.
"""

from __future__ import annotations

import itertools

import numpy as np

from lowbit.reference.paged import PagedKVCache, gather_kv


def sequence_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    causal: bool = True,
    sm_scale: float | None = None,
    return_lse: bool = False,
    *,
    window: int | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Attention of one sequence: q [Lq, Hq, D], k [Lk, Hkv, D], v [Lk, Hkv, Dv] -> out [Lq, Hq, Dv]
    float64 (and lse [Lq, Hq] with return_lse). Causal needs Lq <= Lk (queries are the last Lq
    positions); window (causal only) a sliding window. Raises ValueError on mismatched shapes or Hq not a
    multiple of Hkv."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    _check_heads(q, k, v)
    out, lse = _attend(q, k, v, causal, sm_scale, window)
    return (out, lse) if return_lse else out


def _attend(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool, sm_scale: float | None, window: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`sequence_attention` on checked float64 arrays, returning (out, lse)."""
    lq, hq, d = q.shape
    lk, hkv, _ = k.shape
    if lk == 0 and lq > 0:
        raise ValueError(f"{lq} queries attend to no keys; every query needs at least one key")
    if causal and lq > lk:
        raise ValueError(f"causal attention with {lq} queries over {lk} keys: queries must be the last Lq <= Lk")
    if window is not None and (not causal or window < 1):
        raise ValueError(f"window {window} with causal={causal}: a sliding window is >= 1 and needs causal=True")
    scale = 1.0 / np.sqrt(d) if sm_scale is None else float(sm_scale)
    g = hq // hkv
    qg = q.reshape(lq, hkv, g, d)  # qg: [Lq, Hkv, G, D]; query head h = kv head h // G, member h % G
    scores = np.einsum("ihgd,jhd->hgij", qg, k) * scale  # scores: [Hkv, G, Lq, Lk]
    if causal:
        pos, j = (lk - lq) + np.arange(lq)[:, None], np.arange(lk)[None, :]  # query positions [Lq, 1], keys
        visible = (j <= pos) if window is None else (j <= pos) & (j > pos - window)  # visible: [Lq, Lk]
        scores = np.where(visible, scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True) if lk else np.zeros((hkv, g, lq, 1))  # [Hkv, G, Lq, 1]
    p = np.exp(scores - row_max)  # p: [Hkv, G, Lq, Lk]
    denom = p.sum(axis=-1, keepdims=True)  # denom: [Hkv, G, Lq, 1]
    out = np.einsum("hgij,jhe->ihge", p / denom, v).reshape(lq, hq, v.shape[2])  # out: [Lq, Hq, Dv]
    lse = (row_max + np.log(denom))[..., 0].transpose(2, 0, 1).reshape(lq, hq)  # lse: [Lq, Hq]
    return out, lse


def prefill_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    cu_seqlens: np.ndarray,
    causal: bool = True,
    sm_scale: float | None = None,
    return_lse: bool = False,
    *,
    window: int | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Ragged (varlen) prefill: q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, Dv]; sequence b is tokens
    cu_seqlens[b]:cu_seqlens[b+1] (cu_seqlens [B+1], 0 = cu_seqlens[0] <= ... <= cu_seqlens[B] = T);
    window (causal only) a sliding window. Returns out [T, Hq, Dv] float64 (and lse [T, Hq])."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    _check_heads(q, k, v)
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"prefill q has {q.shape[0]} tokens and k/v {k.shape[0]}; they must be the same tokens")
    cu = _check_offsets(cu_seqlens, q.shape[0], "cu_seqlens")
    out = np.zeros((q.shape[0], q.shape[1], v.shape[2]))  # out: [T, Hq, Dv]
    lse = np.zeros(q.shape[:2])  # lse: [T, Hq]
    for s, e in itertools.pairwise(cu):
        out[s:e], lse[s:e] = _attend(q[s:e], k[s:e], v[s:e], causal, sm_scale, window)
    return (out, lse) if return_lse else out


def paged_attention(
    q: np.ndarray,
    cu_q: np.ndarray,
    cache: PagedKVCache,
    causal: bool = True,
    sm_scale: float | None = None,
    return_lse: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Chunked prefill / decode over the paged cache: q [Tq, Hq, D], sequence b's queries are rows
    cu_q[b]:cu_q[b+1] (cu_q [B+1]) and are the last q_len_b tokens of its context, already in the cache
    (q_len_b <= context_lens[b]): with causal, query i of sequence b sees positions
    <= context_lens[b] − q_len_b + i. Returns out [Tq, Hq, D] float64 (and lse [Tq, Hq])."""
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 3:
        raise ValueError(f"q has shape {q.shape}; expected [Tq, Hq, D]")
    cu = _check_offsets(cu_q, q.shape[0], "cu_q")
    if cu.shape[0] != cache.num_seqs + 1:
        raise ValueError(f"cu_q describes {cu.shape[0] - 1} sequences but the cache holds {cache.num_seqs}")
    out = np.zeros((q.shape[0], q.shape[1], cache.v_cache.shape[3]))  # out: [Tq, Hq, Dv]
    lse = np.zeros(q.shape[:2])  # lse: [Tq, Hq]
    for b, (s, e) in enumerate(itertools.pairwise(cu)):
        if e == s:
            continue
        if e - s > cache.context_lens[b]:
            raise ValueError(
                f"sequence {b} has {e - s} queries but only {cache.context_lens[b]} cached tokens; append the "
                f"new tokens' K/V to the cache (append_kv_reference) and raise context_lens first"
            )
        k, v = gather_kv(cache, b)  # k, v: [context_len, Hkv, D]
        _check_heads(q[s:e], k, v)
        out[s:e], lse[s:e] = _attend(q[s:e], k, v, causal, sm_scale)
    return (out, lse) if return_lse else out


def decode_attention(
    q: np.ndarray, cache: PagedKVCache, sm_scale: float | None = None, return_lse: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Decode: q [B, Hq, D], one new token per sequence (its K/V already cached), attending to all
    context_lens[b] cached tokens. Returns out [B, Hq, D] float64 (and lse [B, Hq])."""
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 3 or q.shape[0] != cache.num_seqs:
        raise ValueError(f"decode q has shape {q.shape}; expected [B={cache.num_seqs}, Hq, D], one token per sequence")
    return paged_attention(q, np.arange(q.shape[0] + 1), cache, True, sm_scale, return_lse)


def _check_heads(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape} must be [tokens, heads, head_dim]")
    if k.shape[:2] != v.shape[:2] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape}: k and v need the same [tokens, heads], q and k D")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(
            f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} KV heads; GQA needs Hq % Hkv == 0"
        )


def _check_offsets(cu: np.ndarray, total: int, name: str) -> np.ndarray:
    cu = np.asarray(cu)
    if cu.ndim != 1 or cu.shape[0] < 2 or cu.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1-D integer array [B+1] of offsets, got {cu.dtype} {cu.shape}")
    cu = cu.astype(np.int64)
    if cu[0] != 0 or cu[-1] != total or np.any(np.diff(cu) < 0):
        raise ValueError(f"{name} {cu.tolist()} must rise from 0 to the {total} query tokens without decreasing")
    return cu

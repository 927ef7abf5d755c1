"""SmoothAttention (ANCHORS, QoQ / QServe): move key outlier channels into the (unquantized) queries.

Per KV head h and channel c, from calibration keys *after RoPE* k [T, Hkv, D]:
    λ[h, c] = max_t |k[t, h, c]|^α                    α = 0.5
    λ[h, a] = λ[h, b] = max(λ[h, a], λ[h, b])          for every RoPE channel pair (a, b) of the style
    λ = 0  ->  1                                        (a channel that is always 0 is left alone)
Folding: W_q rows of query head h (HF layout [Hq·D, hidden]) times λ[h // G] (G = Hq // Hkv, the GQA
group), W_k rows of KV head h divided by λ[h] (biases likewise). Then q' = λ ⊙ q and k' = k / λ before
RoPE, and because λ is equal on the two channels that RoPE rotates together, R(λ ⊙ q) = λ ⊙ R(q), so
⟨R q', R k'⟩ = ⟨R q, R k⟩: attention scores are unchanged and the cached keys R k' are flatter (their
outlier channels divided by sqrt of their magnitude), which KV4 quantizes with less error.
"""

from __future__ import annotations

import numpy as np

from lowbit.reference.rope import rope_pairs


def smooth_attention_scales(
    k_calib: np.ndarray, alpha: float = 0.5, style: str = "neox", rotary_dim: int | None = None
) -> np.ndarray:
    """λ [Hkv, D] float64 from calibration keys k_calib [T, Hkv, D] after RoPE of `style` ("neox" or
    "interleaved"), tied across the RoPE pairs of the first rotary_dim (default D) channels."""
    k = np.asarray(k_calib, dtype=np.float64)
    if k.ndim != 3 or k.shape[0] == 0:
        raise ValueError(f"k_calib has shape {k.shape}; expected [T >= 1, Hkv, D] keys after RoPE")
    if not (np.isfinite(alpha) and 0 <= alpha <= 1):
        raise ValueError(f"alpha {alpha!r} must be in [0, 1] (QServe uses 0.5)")
    if not np.all(np.isfinite(k)):
        raise ValueError("k_calib has NaN or inf; calibrate on finite keys")
    lam = np.abs(k).max(axis=0) ** alpha  # lam: [Hkv, D]
    first, second = rope_pairs(k.shape[2] if rotary_dim is None else rotary_dim, style)
    tied = np.maximum(lam[:, first], lam[:, second])  # tied: [Hkv, R/2]
    lam[:, first] = tied
    lam[:, second] = tied
    return np.where(lam == 0, 1.0, lam)


def fold_smooth_attention(
    w_q: np.ndarray,
    w_k: np.ndarray,
    lam: np.ndarray,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    style: str = "neox",
    b_q: np.ndarray | None = None,
    b_k: np.ndarray | None = None,
    rotary_dim: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Fold λ [Hkv, D] into w_q [Hq·D, hidden] (rows ·λ, repeated per GQA group) and w_k [Hkv·D, hidden]
    (rows /λ), and into biases b_q [Hq·D], b_k [Hkv·D] when given. Returns (w_q, w_k, b_q, b_k) float64.

    Raises ValueError when shapes disagree with the head counts, λ is not finite and positive, or λ is
    not tied across the RoPE pairs of `style` (folding it would change Q·Kᵀ after RoPE).
    """
    lam = np.asarray(lam, dtype=np.float64)
    if num_kv_heads <= 0 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} must be a positive multiple of num_kv_heads {num_kv_heads}")
    if lam.shape != (num_kv_heads, head_dim):
        raise ValueError(f"lam has shape {lam.shape}; expected [num_kv_heads, head_dim] = [{num_kv_heads}, {head_dim}]")
    if not (np.all(np.isfinite(lam)) and np.all(lam > 0)):
        raise ValueError("lam must be finite and positive; smooth_attention_scales maps λ = 0 to 1")
    first, second = rope_pairs(head_dim if rotary_dim is None else rotary_dim, style)
    untied = np.argwhere(lam[:, first] != lam[:, second])
    if untied.size:
        h, i = untied[0]
        raise ValueError(
            f"lam is not tied across {style} RoPE pairs: kv head {h} channels {first[i]} and {second[i]} differ "
            f"({lam[h, first[i]]:g} vs {lam[h, second[i]]:g}); folding it would change Q·Kᵀ after RoPE. "
            f"Compute lam with smooth_attention_scales(k, style={style!r})"
        )
    lam_q = np.repeat(lam, num_heads // num_kv_heads, axis=0).reshape(-1)  # lam_q: [Hq·D], head h -> λ[h // G]
    lam_k = lam.reshape(-1)  # lam_k: [Hkv·D]
    w_q = _rows(w_q, num_heads * head_dim, "w_q") * lam_q[:, None]
    w_k = _rows(w_k, num_kv_heads * head_dim, "w_k") / lam_k[:, None]
    b_q = None if b_q is None else _rows(b_q, num_heads * head_dim, "b_q") * lam_q
    b_k = None if b_k is None else _rows(b_k, num_kv_heads * head_dim, "b_k") / lam_k
    return w_q, w_k, b_q, b_k


def _rows(a: np.ndarray, rows: int, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0 or a.shape[0] != rows:
        raise ValueError(f"{name} has shape {a.shape}; expected {rows} rows (heads · head_dim, HF [out, in] layout)")
    return a

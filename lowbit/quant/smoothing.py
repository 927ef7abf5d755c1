"""Per-channel smoothing: move a factor s[K] between a linear's input and its weight columns.

For y = x Wᵀ and any s > 0:  y = (x / s) (W · diag(s))ᵀ   (exact; equivalence-preserving)
so an activation outlier channel k can be divided by s[k] and its weight column multiplied by s[k]. The
1/s is folded into the op that produces x, so nothing runs at inference time:
    RMSNorm          x = norm(h) · g            →  g / s                     (`fold_scales_into_norm`)
    a linear         x = z W_prevᵀ + b           →  rows of W_prev and b / s  (`fold_scales_into_linear_rows`)
                     (Llama: v_proj → o_proj input per head, with GQA ties, see `tie_gqa_scales`;
                      up_proj → down_proj input, since silu(gate)·up is linear in up)
Scale rules:
    SmoothQuant / QoQ: s = max|X|^α / max|W|^(1−α), clamped ≥ 1e-5 (`smooth_scales`; α = 0.5 default,
                       max|W| over the rows of every linear that reads x; a channel that is 0 in x or W → 1)
    AWQ:               s = mean|X|^α normalised (lowbit.quant.awq), folded with the same helpers.
Shapes: x [T, K], weights W[N, K] (HF layout), s [K] float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_SCALE = 1e-5  # SmoothQuant's clamp


def _vec(s: Any, name: str = "s") -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"{name} has shape {s.shape}; pass one factor per input channel, shape [K]")
    if not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError(f"{name} has non-positive, NaN or inf entries (min {s.min()}); smoothing factors are > 0")
    return s


def _weight(w: Any, k: int, name: str) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != k:
        raise ValueError(f"{name} has shape {w.shape}; expected [N, K] with K = {k} (the smoothed channels)")
    return w


def weight_absmax(weights: Sequence[Any]) -> np.ndarray:
    """max over rows (and over the linears sharing the input) of |W[n, k]|: [K] float64."""
    if not weights:
        raise ValueError("weights is empty; pass the linears that read the smoothed input")
    k = np.asarray(weights[0]).shape[-1]
    return np.max([np.abs(_weight(w, k, f"weights[{i}]")).max(axis=0) for i, w in enumerate(weights)], axis=0)


def smooth_scales(x_absmax: Any, w_absmax: Any, alpha: float = 0.5) -> np.ndarray:
    """SmoothQuant / QoQ factors s[K] = max|X|^α / max|W|^(1−α), clamped ≥ 1e-5; s = 1 where x or w is 0."""
    xa = np.asarray(x_absmax, dtype=np.float64)
    wa = np.asarray(w_absmax, dtype=np.float64)
    if xa.ndim != 1 or xa.shape != wa.shape:
        raise ValueError(f"x_absmax {xa.shape} and w_absmax {wa.shape} must both be [K]")
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(wa))) or xa.min() < 0 or wa.min() < 0:
        raise ValueError("x_absmax / w_absmax must be finite and non-negative (maxima of |x| and |W|)")
    if not (np.isfinite(alpha) and 0 <= alpha <= 1):
        raise ValueError(f"alpha {alpha!r} must be in [0, 1] (SmoothQuant uses 0.5)")
    live = (xa > 0) & (wa > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(live, xa**alpha / np.where(live, wa, 1.0) ** (1 - alpha), 1.0)
    return np.maximum(s, MIN_SCALE)


def scale_input_columns(w: Any, s: Any) -> np.ndarray:
    """W · diag(s): w[N, K] with column k multiplied by s[k]."""
    s = _vec(s)
    return _weight(w, s.shape[0], "w") * s[None, :]


def fold_scales_into_norm(norm_w: Any, s: Any) -> np.ndarray:
    """RMSNorm weight g[K] / s: the norm now emits x / s."""
    s = _vec(s)
    g = np.asarray(norm_w, dtype=np.float64)
    if g.shape != s.shape:
        raise ValueError(f"norm_w has shape {g.shape}, s has {s.shape}; both are [hidden_size]")
    return g / s


def fold_scales_into_linear_rows(w_prev: Any, s: Any, bias: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows of the producing linear w_prev[K, K'] (and its bias[K]) divided by s[K]: it now emits x / s."""
    s = _vec(s)
    w = np.asarray(w_prev, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != s.shape[0]:
        raise ValueError(f"w_prev has shape {w.shape}; its out_features (rows) must be K = {s.shape[0]}")
    b = None
    if bias is not None:
        b = np.asarray(bias, dtype=np.float64)
        if b.shape != s.shape:
            raise ValueError(f"bias has shape {b.shape}; expected [{s.shape[0]}]")
        b = b / s
    return w / s[:, None], b


@dataclass(frozen=True, eq=False)
class Smoothed:
    """The result of `apply_smoothing`: consumers W_i·diag(s), and the producer with 1/s folded in
    (norm_w for an RMSNorm producer, prev_w/prev_bias for a linear producer; the other is None)."""

    scales: np.ndarray
    consumers: list[np.ndarray]
    norm_w: np.ndarray | None = None
    prev_w: np.ndarray | None = None
    prev_bias: np.ndarray | None = None


def apply_smoothing(
    s: Any,
    consumers: Sequence[Any],
    *,
    norm_w: Any = None,
    prev_w: Any = None,
    prev_bias: Any = None,
) -> Smoothed:
    """Fold s[K] into the linears reading x (columns ·s) and into exactly one producer of x (÷s): an
    RMSNorm weight `norm_w` [K] or a linear `prev_w` [K, K'] (+ `prev_bias` [K]). Outputs are unchanged."""
    s = _vec(s)
    if (norm_w is None) == (prev_w is None):
        raise ValueError("pass exactly one producer of the smoothed input: norm_w=... or prev_w=...")
    if prev_bias is not None and prev_w is None:
        raise ValueError("prev_bias given without prev_w; the bias belongs to the producing linear")
    if not consumers:
        raise ValueError("consumers is empty; pass the linears that read the smoothed input")
    scaled = [scale_input_columns(w, s) for w in consumers]
    if norm_w is not None:
        return Smoothed(s, scaled, norm_w=fold_scales_into_norm(norm_w, s))
    w, b = fold_scales_into_linear_rows(prev_w, s, prev_bias)
    return Smoothed(s, scaled, prev_w=w, prev_bias=b)


def tie_gqa_scales(s: Any, num_heads: int, num_kv_heads: int) -> tuple[np.ndarray, np.ndarray]:
    """Smoothing factors for o_proj's input [Hq·D], tied so they can fold into v_proj rows [Hkv·D].

    Query head h reads value head h // (Hq / Hkv), so channel c of every head in a GQA group must share one
    factor: the group's maximum. Returns (s_o [Hq·D] for o_proj columns, s_v [Hkv·D] for v_proj rows).
    """
    s = _vec(s)
    if num_kv_heads <= 0 or num_heads % num_kv_heads or s.shape[0] % num_heads:
        raise ValueError(
            f"s has {s.shape[0]} channels, num_heads {num_heads}, num_kv_heads {num_kv_heads}: need "
            f"num_heads % num_kv_heads == 0 and channels = num_heads · head_dim"
        )
    d = s.shape[0] // num_heads
    per_group = s.reshape(num_kv_heads, num_heads // num_kv_heads, d).max(axis=1)  # [Hkv, D]
    return np.repeat(per_group, num_heads // num_kv_heads, axis=0).reshape(-1), per_group.reshape(-1)


__all__ = [
    "Smoothed",
    "apply_smoothing",
    "fold_scales_into_linear_rows",
    "fold_scales_into_norm",
    "scale_input_columns",
    "smooth_scales",
    "tie_gqa_scales",
    "weight_absmax",
]

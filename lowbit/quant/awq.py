"""AWQ (Lin et al., 2023): activation-aware per-channel scales and a clip search, then round-to-nearest.

Scale search (ANCHORS, AWQ / GPTQ / Marlin), for the linears W_i[N_i, K] that read the same input x[T, K]:
    μ[k] = mean_t |x[t, k]|
    for α in {0, 1/grid, …, (grid−1)/grid}:
        s = max(μ, 1e-4)^α;  s ← s / √(max(s)·min(s))
        err(α) = Σ_i ‖x W_iᵀ − (x / s) Q(W_i · diag(s))ᵀ‖²          Q = round to nearest under the spec
    keep the α of least error (α = 0 is s = 1, plain RTN: on the calibration set AWQ never loses to RTN)
AutoAWQ measures the error at the output of the whole block (attention or MLP); here it is the outputs of
the linears sharing the input, summed (what the search can see without running the block).
The caller folds 1/s into the op producing x: `fold_scales_into_norm` (RMSNorm weight) or
`fold_scales_into_linear_rows` (previous linear's rows and bias; both from lowbit.quant.smoothing).

Clip search, per output channel n and group j of the (scaled) weight, on ≤ n_sample_tokens tokens:
    for shrink r in 1.0, 1 − 1/grid, …, > 1 − max_shrink   (1.0 … 0.55 for grid 20, max_shrink 0.5)
        m = r · max_{k∈j} |W[n, k]|;  err = mean_t (Σ_{k∈j} x[t,k] (Q(clip(W, −m, m)) − W)[n, k])²
    max_val[n, j] = the m of least error;  `apply_clip(w, max_val)` clamps W to [−max_val, max_val].
AutoAWQ skips the clip search for q_proj/k_proj (their errors are amplified by softmax); that choice
is the caller's (`awq_quantize(..., clip=False)`). For QoQ's w4a8_group the level-1 channel scale
depends on the whole row, so per-group clip choices interact; the search treats them as independent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lowbit.config.spec import LinearSpec
from lowbit.ir.layout import PackedLayout
from lowbit.ops.weight import QuantizedWeight
from lowbit.quant.rtn import SpecQuantizer, rtn_quantize
from lowbit.quant.smoothing import fold_scales_into_linear_rows, fold_scales_into_norm

MIN_ACT_SCALE = 1e-4  # AutoAWQ clamps mean|x|^α from below before normalising
CLIP_CHUNK_ELEMENTS = 1 << 22  # floats per clip-search output chunk (rows · tokens · groups)


@dataclass(frozen=True, eq=False)
class AwqScale:
    """Result of the scale search: scales [K] float64 (multiply W columns, divide x), the chosen alpha,
    errors [grid] (the summed squared output error at each α = i / grid)."""

    scales: np.ndarray
    alpha: float
    errors: np.ndarray


def _inputs(x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x has shape {x.shape}; pass calibration inputs [T >= 1, K] (or [B, S, K])")
    x = x.reshape(-1, x.shape[-1])
    if not np.all(np.isfinite(x)):
        raise ValueError("x has NaN or inf; calibrate on finite activations")
    return x


def _weights(weights: Sequence[Any], k: int) -> list[np.ndarray]:
    if isinstance(weights, np.ndarray):
        raise ValueError("weights must be a sequence of [N_i, K] arrays (the linears sharing x), not one array")
    if len(weights) == 0:
        raise ValueError("weights is empty; pass the linears that read x")
    out = []
    for i, w in enumerate(weights):
        w = np.asarray(w, dtype=np.float64)
        if w.ndim != 2 or w.shape[1] != k:
            raise ValueError(f"weights[{i}] has shape {w.shape}; expected [N, K] with K = {k} (x's features)")
        if not np.all(np.isfinite(w)):
            raise ValueError(f"weights[{i}] has NaN or inf entries")
        out.append(w)
    return out


def _grid(grid: int) -> int:
    if not (isinstance(grid, int) and grid >= 1):
        raise ValueError(f"grid {grid!r} must be a positive int (AWQ uses 20)")
    return grid


def awq_scales_for(x_mean_abs: np.ndarray, alpha: float) -> np.ndarray:
    """s = max(mean|x|, 1e-4)^α normalised by √(max(s)·min(s)) (AutoAWQ), [K] float64."""
    s = np.maximum(x_mean_abs, MIN_ACT_SCALE) ** alpha
    s = np.maximum(s, MIN_ACT_SCALE)
    return s / np.sqrt(s.max() * s.min())


def awq_search_scales(x: Any, weights: Sequence[Any], spec: LinearSpec, grid: int = 20) -> AwqScale:
    """Search the AWQ scales [K] for the linears `weights` (each [N_i, K]) that read x[T, K]."""
    x = _inputs(x)
    ws = _weights(weights, x.shape[1])
    grid = _grid(grid)
    quant = SpecQuantizer.of(spec, x.shape[1])
    mu = np.abs(x).mean(axis=0)  # [K]
    refs = [x @ w.T for w in ws]  # [T, N_i]
    errors = np.zeros(grid)
    for i in range(grid):
        s = awq_scales_for(mu, i / grid)
        xs = x / s
        errors[i] = sum(
            float(np.sum((ref - xs @ quant.fake_quantize(w * s).T) ** 2)) for w, ref in zip(ws, refs, strict=True)
        )
    best = int(np.argmin(errors))  # first minimum: the smallest α on ties (α = 0 is plain RTN)
    return AwqScale(awq_scales_for(mu, best / grid), best / grid, errors)


def awq_search_clip(
    x: Any,
    w: Any,
    spec: LinearSpec,
    grid: int = 20,
    max_shrink: float = 0.5,
    n_sample_tokens: int = 512,
) -> np.ndarray:
    """The per-(output channel, group) clip values max_val [N, groups] of w[N, K] given inputs x[T, K]."""
    x = _inputs(x)
    (w,) = _weights([w], x.shape[1])
    grid = _grid(grid)
    if not (0 <= max_shrink < 1):
        raise ValueError(f"max_shrink {max_shrink!r} must be in [0, 1) (AWQ uses 0.5: ratios 1.0 … 0.55)")
    if not (isinstance(n_sample_tokens, int) and n_sample_tokens >= 1):
        raise ValueError(f"n_sample_tokens {n_sample_tokens!r} must be a positive int (AWQ uses 512)")
    quant = SpecQuantizer.of(spec, x.shape[1])
    n, k = w.shape
    g = quant.group_size
    ng = k // g
    x = x[:: max(1, x.shape[0] // n_sample_tokens)][:n_sample_tokens]  # every step-th token, like AutoAWQ
    t = x.shape[0]
    xg = x.reshape(t, ng, g).transpose(1, 0, 2)  # [groups, T', G]
    wg = w.reshape(n, ng, g)  # [N, groups, G]
    org_max = np.abs(wg).max(axis=-1)  # [N, groups]
    ratios = [1 - i / grid for i in range(max(1, int(max_shrink * grid)))]
    chunk = max(1, CLIP_CHUNK_ELEMENTS // max(1, t * ng))
    best = org_max.copy()
    for r0 in range(0, n, chunk):
        rows = slice(r0, min(n, r0 + chunk))
        w_c = wg[rows]  # [Nc, groups, G]
        org_out = xg @ w_c.transpose(1, 2, 0)  # [groups, T', Nc]
        best_err = np.full(org_max[rows].shape, np.inf)
        for r in ratios:
            mv = org_max[rows] * r
            clipped = np.clip(w_c, -mv[..., None], mv[..., None])
            q = quant.fake_quantize(clipped.reshape(-1, k)).reshape(w_c.shape)
            err = ((xg @ q.transpose(1, 2, 0) - org_out) ** 2).mean(axis=1).T  # [Nc, groups]
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best[rows] = np.where(better, mv, best[rows])
    return best


def apply_clip(w: Any, max_val: Any) -> np.ndarray:
    """w[N, K] clamped per (row, group) to [−max_val, max_val]; max_val [N, groups] fixes the group size."""
    w = np.asarray(w, dtype=np.float64)
    mv = np.asarray(max_val, dtype=np.float64)
    if w.ndim != 2 or mv.ndim != 2 or mv.shape[0] != w.shape[0] or w.shape[1] % mv.shape[1]:
        raise ValueError(f"max_val {mv.shape} does not fit w {w.shape}; expected [N, groups] with groups dividing K")
    n, k = w.shape
    ng = mv.shape[1]
    return np.clip(w.reshape(n, ng, k // ng), -mv[..., None], mv[..., None]).reshape(n, k)


def awq_quantize(
    x: Any,
    weights: Sequence[Any],
    spec: LinearSpec,
    grid: int = 20,
    clip: bool = True,
    max_shrink: float = 0.5,
    n_sample_tokens: int = 512,
    layout: str | PackedLayout = "row",
) -> tuple[np.ndarray, list[QuantizedWeight]]:
    """AWQ for the linears `weights` ([N_i, K]) that read x[T, K]: scales s [K] and the QuantizedWeights of
    W_i · diag(s) (clip-searched on x / s when `clip`). The caller must fold 1/s into the op producing x
    (`fold_scales_into_norm` / `fold_scales_into_linear_rows`), else outputs are wrong by diag(s)."""
    x = _inputs(x)
    ws = _weights(weights, x.shape[1])
    s = awq_search_scales(x, ws, spec, grid).scales
    xs = x / s
    out = []
    for w in ws:
        w_s = w * s
        if clip:
            w_s = apply_clip(w_s, awq_search_clip(xs, w_s, spec, grid, max_shrink, n_sample_tokens))
        out.append(rtn_quantize(w_s, spec, layout))
    return s, out


__all__ = [
    "AwqScale",
    "apply_clip",
    "awq_quantize",
    "awq_scales_for",
    "awq_search_clip",
    "awq_search_scales",
    "fold_scales_into_linear_rows",
    "fold_scales_into_norm",
]

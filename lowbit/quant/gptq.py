"""GPTQ (Frantar et al., 2022): quantize W[N, K] column by column, pushing each column's rounding error onto
the columns not yet quantized through the inverse Hessian of the layer's squared output error.

    H = 2 xᵀx / T                                    x: [T, K] calibration inputs of the linear, H: [K, K]
    dead inputs (H[k, k] = 0): H[k, k] = 1, W[:, k] = 0  (never seen in calibration)
    H += damp · mean(diag H) · I                      damping (GPTQ's percdamp, 0.01)
    U = chol(H⁻¹)ᵀ  (upper, H⁻¹ = UᵀU)
    for each column k (in blocks of `block_size`, lazy batch updates):
        ŵ_k = Q(w_k)                                   round to nearest on the spec's grid
        e = (w_k − ŵ_k) / U[k, k]
        W[:, k+1:] −= e · U[k, k+1:]                   inside the block now, beyond it once per block

Quantization grid and group parameters come from `lowbit.quant.rtn.SpecQuantizer`, i.e. exactly the
numerics of `lowbit.ops.weight.quantize` for the spec (int/uint 1..8 bits symmetric, post or pre zero,
fpN_eXmY, QoQ w4a8_group / w4a8_channel). Group parameters are computed when a group starts, from the
*current* (error-updated) weights of the group's columns — GPTQ's reference computes them from columns
that miss the pending updates of the current block; here the pending updates are applied first. With
`act_order` (columns in order of decreasing H[k, k]) the groups are *static*: all group parameters are
computed up front from the original weight (AutoGPTQ's `static_groups`), so each group stays a contiguous
run of K and the result is an ordinary `QuantizedWeight` (no g_idx). For QoQ the level-1 channel scale
s1 is computed once from the original weight.

`gptq_decide` returns the decisions (code values, parameters and the float64 weights Ŵ they stand for);
`gptq_quantize` packs them with `pack_quantized`, and `QuantizedWeight.dequantize()` equals Ŵ exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lowbit.config.spec import LinearSpec
from lowbit.ir.layout import PackedLayout
from lowbit.ops.weight import QuantizedWeight, pack_quantized
from lowbit.quant.rtn import SpecQuantizer


@dataclass(frozen=True, eq=False)
class Hessian:
    """The GPTQ proxy Hessian H = 2 xᵀx / T [K, K] float64 of a linear's inputs, accumulated over batches."""

    matrix: np.ndarray
    num_tokens: int

    @classmethod
    def of(cls, x: Any) -> Hessian:
        """H of calibration inputs x[..., K] (leading axes are tokens)."""
        return cls(np.zeros((0, 0)), 0).add(x)

    def add(self, x: Any) -> Hessian:
        """H over the tokens so far plus x[..., K]: H ← (n·H + 2 xᵀx) / (n + t)."""
        x = _tokens(x)
        t, k = x.shape
        h = self.matrix if self.num_tokens else np.zeros((k, k))
        if h.shape != (k, k):
            raise ValueError(f"x has {k} features but the Hessian is {h.shape}; add inputs of the same linear")
        n = self.num_tokens + t
        return Hessian((h * self.num_tokens + 2.0 * (x.T @ x)) / n, n)


def _tokens(x: Any) -> np.ndarray:
    from lowbit.quant.awq import _inputs  # one check of calibration inputs for both algorithms

    return _inputs(x)


def as_hessian(x_or_hessian: Any, k: int) -> np.ndarray:
    """H [K, K] from a `Hessian`, from activations x[..., K], or from a precomputed Hessian array.

    A 2-D array of shape [K, K] that is symmetric with a non-negative diagonal is taken as a Hessian;
    anything else [..., K] as activations (a [K, K] activation matrix that happens to be symmetric would be
    misread: wrap activations as `Hessian.of(x)` to be explicit).
    """
    if isinstance(x_or_hessian, Hessian):
        h = x_or_hessian.matrix
    else:
        a = np.asarray(x_or_hessian, dtype=np.float64)
        square = a.ndim == 2 and a.shape == (k, k) and np.allclose(a, a.T) and np.all(np.diag(a) >= 0)
        h = a if square else Hessian.of(a).matrix
    if h.shape != (k, k):
        raise ValueError(f"the Hessian is {h.shape} but the weight has in_features K = {k}; pass inputs [T, {k}]")
    if not np.all(np.isfinite(h)):
        raise ValueError("the Hessian has NaN or inf entries; calibrate on finite activations")
    return h


@dataclass(frozen=True, eq=False)
class GptqResult:
    """GPTQ's decisions for W[N, K]: code values [N, K], scales/zeros [N, groups] (stored values),
    channel_scales [N] (QoQ s1) or None, and weights Ŵ[N, K] float64 that they dequantize to."""

    values: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray | None
    channel_scales: np.ndarray | None
    weights: np.ndarray
    quantizer: SpecQuantizer
    perm: np.ndarray | None

    def pack(self, layout: str | PackedLayout = "row") -> QuantizedWeight:
        q = self.quantizer
        return pack_quantized(
            self.values,
            self.scales,
            self.zeros,
            dtype=q.dtype,
            group_size=q.group_size,
            zero_mode=q.zero_mode,
            scheme=q.scheme,
            channel_scales=self.channel_scales,
            scale_dtype=str(q.scale_dtype) if q.scheme == "w_a16" else "float16",
            layout=layout,
        )


def _inverse_hessian_factor(h: np.ndarray, damp: float) -> np.ndarray:
    # U upper with H⁻¹ = UᵀU, after damping
    k = h.shape[0]
    h = h + damp * float(np.mean(np.diag(h))) * np.eye(k)
    try:
        lower = np.linalg.cholesky(h)
        lower_inv = np.linalg.solve(lower, np.eye(k))
        return np.linalg.cholesky(lower_inv.T @ lower_inv).T
    except np.linalg.LinAlgError:
        raise ValueError(
            f"the damped Hessian is not positive definite (damp={damp}); raise damp (e.g. 0.1) or calibrate "
            f"on more tokens"
        ) from None


def gptq_decide(
    w: Any,
    x_or_hessian: Any,
    spec: LinearSpec,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
) -> GptqResult:
    """Run GPTQ on w[N, K] with calibration inputs x[T, K] (or a Hessian [K, K]); see the module docstring."""
    w64 = np.asarray(w.detach().float().cpu().numpy() if hasattr(w, "detach") else w, dtype=np.float64)
    if w64.ndim != 2:
        raise ValueError(f"w has shape {w64.shape}; pass a weight [out_features N, in_features K]")
    if not np.all(np.isfinite(w64)):
        raise ValueError("w has NaN or inf entries; quantize finite weights")
    if not (isinstance(block_size, int) and block_size > 0):
        raise ValueError(f"block_size {block_size!r} must be a positive int (GPTQ uses 128)")
    if not (np.isfinite(damp) and damp > 0):
        raise ValueError(f"damp {damp!r} must be > 0 (fraction of mean(diag H); GPTQ uses 0.01)")
    n, k = w64.shape
    quant = SpecQuantizer.of(spec, k)
    g = quant.group_size
    h = as_hessian(x_or_hessian, k).copy()
    W = w64.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    W[:, dead] = 0.0
    s1 = quant.channel_scales(W)

    groups = k // g
    scales = np.zeros((n, groups))
    zeros = None if quant.zero_mode == "none" else np.zeros((n, groups))
    perm = None
    if act_order:
        for j in range(groups):  # static groups from the original weight
            s, z = quant.params(W[:, j * g : (j + 1) * g], s1)
            scales[:, j] = s[:, 0]
            if zeros is not None and z is not None:
                zeros[:, j] = z[:, 0]
        perm = np.argsort(-np.diag(h), kind="stable")
        W, h = W[:, perm], h[perm][:, perm]
    col_group = (perm if perm is not None else np.arange(k)) // g  # group of each (permuted) column

    u = _inverse_hessian_factor(h, damp)
    values = np.zeros((n, k))
    decided = np.zeros((n, k))
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = W[:, i1:i2].copy()  # the block, kept current
        err1 = np.zeros((n, i2 - i1))
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            j = int(col_group[col])
            if not act_order and col % g == 0:  # a group starts: parameters from its current weights
                end = col + g
                block = w1[:, i : i + g]
                if end > i2:  # the rest of the group lies beyond this block: apply the pending updates
                    rest = W[:, i2:end] - err1[:, :i] @ u[i1:col, i2:end]
                    block = np.concatenate([block, rest], axis=1)
                s, z = quant.params(block, s1)
                scales[:, j] = s[:, 0]
                if zeros is not None and z is not None:
                    zeros[:, j] = z[:, 0]
            s = scales[:, j : j + 1]
            z = None if zeros is None else zeros[:, j : j + 1]
            q = quant.values(w1[:, i : i + 1], s, z, s1)
            wq = quant.dequant(q, s, z, s1)
            values[:, col], decided[:, col] = q[:, 0], wq[:, 0]
            e = (w1[:, i] - wq[:, 0]) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err1[:, i] = e
        W[:, i2:] -= err1 @ u[i1:i2, i2:]

    if perm is not None:
        inv = np.argsort(perm)
        values, decided = values[:, inv], decided[:, inv]
    stored = quant.stored_zeros(zeros)
    return GptqResult(values, scales, stored, s1, decided, quant, perm)


def gptq_quantize(
    w: Any,
    x_or_hessian: Any,
    spec: LinearSpec,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    layout: str | PackedLayout = "row",
) -> QuantizedWeight:
    """GPTQ-quantize w[N, K] (HF layout) given calibration inputs x[T, K] or a Hessian; returns the packed
    `QuantizedWeight` of the spec (same object `quantize()` builds), whose dequantize() is GPTQ's Ŵ."""
    return gptq_decide(w, x_or_hessian, spec, block_size=block_size, damp=damp, act_order=act_order).pack(layout)


__all__ = ["GptqResult", "Hessian", "as_hessian", "gptq_decide", "gptq_quantize"]

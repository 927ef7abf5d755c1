"""Reference W4A8 GEMMs (ANCHORS, QoQ / QServe): integer main loop, float32 epilogue.

Activations come per-token INT8 (qa [M, K] int8, sa [M] fp16: `quantize_per_token_int8`).

Per group (QoQ):   psum[m, n] = Σ_k qa[m, k]·w8[n, k]   (int8 × int8 → int32)
                   y[m, n]    = psum·s1[n]·sa[m]
Per channel:       psum[m, n] = Σ_k qa[m, k]·q[n, k]    (int8 × uint4 → int32)
                   y[m, n]    = psum·s_w[n]·sa[m] − (z·s_w)[n]·Σx[m]

Which Σx: QServe sums the *unquantized* activations (Σ_k x[m, k], computed before quantization). Our
default sums the *quantized* ones, Σx[m] = sa[m]·Σ_k qa[m, k], which makes the per-channel GEMM equal to
dequantize-then-matmul up to float32 rounding. Pass `act_sum=x.sum(-1)` for QServe's convention; it then
differs from dequantize-then-matmul by (z·s_w)[n]·Σ_k (x − x̂)[m, k], at most (z·s_w)[n]·K·sa[m]/2.
Error bounds of the float epilogue against exact dequantize-then-matmul (ε = 2^-24), elementwise:
  per group:   |y − ref| ≤ 3ε·|ref|;   per channel: |y − ref| ≤ 5ε·(|psum·s_w·sa| + |z·s_w·Σx|).
"""

from __future__ import annotations

import numpy as np

from lowbit.quant.affine import ZeroConvention
from lowbit.quant.groupwise import GroupQuant
from lowbit.quant.qoq import QoQWeight

INT32_MAX = 2**31 - 1


def _int32_psum(qa: np.ndarray, wq: np.ndarray) -> np.ndarray:
    # qa: [M, K] int8, wq: [N, K] small integers -> psum: [M, N], accumulated exactly, checked to fit int32
    if qa.ndim != 2 or wq.ndim != 2 or qa.shape[1] != wq.shape[1]:
        raise ValueError(f"qa has shape {qa.shape} and the weight {wq.shape}; need qa [M, K] and weight [N, K]")
    psum = qa.astype(np.int64) @ wq.astype(np.int64).T
    if psum.size and np.abs(psum).max() > INT32_MAX:
        raise ValueError(f"K={qa.shape[1]} overflows the int32 accumulator; split K and add partial outputs")
    return psum.astype(np.int32)


def w4a8_gemm_per_group(qa: np.ndarray, sa: np.ndarray, w: QoQWeight) -> np.ndarray:
    """y[M, N] = (Σ_k qa[m, k]·w8[n, k])·s1[n]·sa[m] for a QoQ weight; float32."""
    psum = _int32_psum(np.asarray(qa), w.w8())  # psum: [M, N] int32
    s1 = w.s1.astype(np.float32)[None, :]
    return psum.astype(np.float32) * s1 * np.asarray(sa).astype(np.float32)[:, None]


def w4a8_gemm_per_channel(
    qa: np.ndarray, sa: np.ndarray, w: GroupQuant, *, act_sum: np.ndarray | None = None
) -> np.ndarray:
    """y[M, N] = psum·s_w[n]·sa[m] − (z·s_w)[n]·Σx[m] for a per-channel (one group per row) weight; float32.

    act_sum: [M], the Σx term; None (default) uses the quantized activations sa[m]·Σ_k qa[m, k].
    Raises ValueError when `w` is not per-channel with an integer (post-scale) zero.
    """
    k = w.codes.shape[-1]
    if w.codes.ndim != 2 or w.group_size != k or w.zeros is None or w.zero_convention != ZeroConvention.POST_SCALE:
        raise ValueError(
            f"w has group_size {w.group_size} (K={k}) and zero_convention {w.zero_convention}; the per-channel "
            f"W4A8 GEMM needs one group per row with an integer zero (quantize_w4a8_per_channel)"
        )
    qa = np.asarray(qa)
    sa = np.asarray(sa).astype(np.float32)  # sa: [M]
    psum = _int32_psum(qa, w.codes)  # psum: [M, N] int32
    s_w = w.scales.astype(np.float32)[:, 0]  # s_w: [N]
    zs = w.zeros[:, 0].astype(np.float32) * s_w  # (z·s_w): [N], exact (small integer × fp16 fits float32)
    if act_sum is None:
        act_sum = sa * qa.astype(np.int64).sum(axis=1).astype(np.float32)  # Σx̂: [M]
    act_sum = np.asarray(act_sum, dtype=np.float32)
    return psum.astype(np.float32) * s_w[None, :] * sa[:, None] - zs[None, :] * act_sum[:, None]

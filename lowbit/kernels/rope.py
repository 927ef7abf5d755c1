"""Rotary position embedding (RoPE) of queries and keys, one launch for both, in place or out of place.

    q [T, Hq, D], k [T, Hkv, D]       float16 | bfloat16 | float32 (q_out, k_out alike)
    positions [T] int32               position of token t
    cos_sin [max_pos, D] float32      row p: cos(p·inv_freq[i]) in columns i < D/2, sin in D/2 + i (vLLM's
                                      cos_sin_cache; `rope_cache` builds it, llama3/linear scaling included)

A pair (a, b) of channels turns by angle i of its token: a' = a·cos − b·sin, b' = b·cos + a·sin. Which
channels pair up is the `style`: "neox" (i, i + D/2) or "interleaved" (2i, 2i + 1), as in
`lowbit.reference.rope`. Math is fp32 from the stored values, one rounding to the output dtype.

Grid: (T, ⌈Hq/BH⌉ + ⌈Hkv/BH⌉): block (t, j) rotates BH heads of q (j < ⌈Hq/BH⌉) or of k (the rest).
Neox loads the two halves as two [BH, D/2] tiles, interleaved loads [BH, D] as [BH, D/2, 2]; both split a
and b out of the lane axis with a `where` and a sum (exact, and a reduction, which keeps in-place safe on
every backend). A head dim whose half is not a power of two is padded to one with masks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

import lowbit.lang as T
from lowbit.codegen.backend import compile_program
from lowbit.kernels.launch import activation_dtype, bind, empty_like, serial_options
from lowbit.reference.rope import ROPE_STYLES, rope_inv_freq


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@T.kernel
def rope(
    q: T.Tensor("dtype", ("NT", "HQ", "D")),
    k: T.Tensor("dtype", ("NT", "HK", "D")),
    q_out: T.Tensor("dtype", ("NT", "HQ", "D")),
    k_out: T.Tensor("dtype", ("NT", "HK", "D")),
    positions: T.Tensor("int32", ("NT",)),
    cos_sin: T.Tensor("float32", ("P", "D")),
    NT: T.int32,
    HQ: T.int32,
    HK: T.int32,
    P: T.int32,
    D: T.constexpr = 128,
    style: T.constexpr = "neox",
    dtype: T.constexpr = "float16",
    inplace: T.constexpr = False,
    BH: T.constexpr = 4,
):
    half, bhalf = D // 2, _pow2(D // 2)  # channel pairs, and the tile extent that holds them
    t, j = T.grid(NT, T.cdiv(HQ, BH) + T.cdiv(HK, BH))
    pos = T.load_scalar(positions, (t,), name="pos")
    pairs = T.arange(0, bhalf) < half if bhalf != half else None  # [bhalf] padding mask
    cos = T.load(cos_sin, (pos, 0), (1, bhalf), mask=None if pairs is None else pairs[None, :])  # [1, bhalf]
    sin = T.load(cos_sin, (pos, half), (1, bhalf), mask=None if pairs is None else pairs[None, :])
    q_blocks = T.cdiv(HQ, BH)
    with T.if_(j < q_blocks):
        _rotate(q, q if inplace else q_out, t, j * BH, cos, sin, pairs, half, bhalf, style, BH)
    with T.else_():
        _rotate(k, k if inplace else k_out, t, (j - q_blocks) * BH, cos, sin, pairs, half, bhalf, style, BH)


def _rotate(x, out, t, h0, cos, sin, pairs, half, bhalf, style, BH):
    # x, out: [T, H, D]; rotate heads h0 .. h0 + BH of token t; cos, sin: [1, bhalf] fp32.
    # The pair values a, b are split out by a sum over the lane axis: a reduction is materialized by every
    # backend, so `out` may be `x` (the TVM backend inlines loads into the stores that use them; a plain
    # load of the first half would be re-read after the first half was overwritten).
    if style == "neox":  # lanes on axis 1: [BH, 2, bhalf] = (first half, second half)
        mask = None if pairs is None else T.broadcast_to(pairs[None, None, :], (1, BH, bhalf))
        first = T.reshape(T.load(x, (t, h0, 0), (1, BH, bhalf), mask=mask), (BH, 1, bhalf))
        second = T.reshape(T.load(x, (t, h0, half), (1, BH, bhalf), mask=mask), (BH, 1, bhalf))
        lane = T.reshape(T.arange(0, 2), (1, 2, 1))
        xv = T.cast(T.where(lane == 0, first, second), T.float32)  # [BH, 2, bhalf]
        c, s, axis = T.reshape(cos, (1, 1, bhalf)), T.reshape(sin, (1, 1, bhalf)), 1
    else:  # interleaved, lanes on axis 2: [BH, bhalf, 2] = channels (2i, 2i + 1)
        mask = (
            None
            if pairs is None
            else T.broadcast_to((T.arange(0, 2 * bhalf) < 2 * half)[None, None, :], (1, BH, 2 * bhalf))
        )
        xv = T.reshape(T.cast(T.load(x, (t, h0, 0), (1, BH, 2 * bhalf), mask=mask), T.float32), (BH, bhalf, 2))
        lane = T.reshape(T.arange(0, 2), (1, 1, 2))
        c, s, axis = T.reshape(cos, (1, bhalf, 1)), T.reshape(sin, (1, bhalf, 1)), 2
    a = T.sum(T.where(lane == 0, xv, 0.0), axis=axis, keepdims=True)  # exact: one value plus a zero
    b = T.sum(T.where(lane == 1, xv, 0.0), axis=axis, keepdims=True)
    a_new, b_new = a * c - b * s, b * c + a * s
    if style == "neox":
        T.store(out, (t, h0, 0), T.cast(T.reshape(a_new, (1, BH, bhalf)), out.dtype), mask=mask)
        T.store(out, (t, h0, half), T.cast(T.reshape(b_new, (1, BH, bhalf)), out.dtype), mask=mask)
    else:
        turned = T.reshape(T.where(lane == 0, a_new, b_new), (1, BH, 2 * bhalf))
        T.store(out, (t, h0, 0), T.cast(turned, out.dtype), mask=mask)


# ---- launcher -------------------------------------------------------------------------------------------

_COMPILED: dict[tuple[Any, ...], Any] = {}


def rope_cache(
    max_positions: int, D: int, theta: float = 10000.0, scaling: Mapping[str, Any] | None = None
) -> np.ndarray:
    """cos_sin [max_positions, D] float32: cos of position·inv_freq in columns < D/2, sin after (float64
    angles, one rounding); `scaling` as in `lowbit.reference.rope.rope_inv_freq` (llama3, linear)."""
    angles = np.arange(max_positions, dtype=np.float64)[:, None] * rope_inv_freq(D, theta, scaling)[None, :]
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


def apply_rope(
    q: Any,
    k: Any,
    positions: Any,
    cos_sin: Any,
    style: str = "neox",
    *,
    inplace: bool = False,
    backend: str = "auto",
    heads_per_block: int = 4,
) -> tuple[Any, Any]:
    """Rotate q [T, Hq, D] and k [T, Hkv, D] (NumPy arrays or torch tensors, float16/bfloat16/float32, one
    dtype) at `positions` [T] int32 with the table `cos_sin` [max_pos, D] float32 (`rope_cache`).

    Returns (q_rot, k_rot): q and k themselves when `inplace`, else new arrays of their dtype.
    Raises ValueError for a bad style, shapes, dtypes or an odd head dim."""
    if style not in ROPE_STYLES:
        raise ValueError(f"rope style {style!r} is not one of {ROPE_STYLES} (neox: rotate halves, interleaved: GPT-J)")
    if len(q.shape) != 3 or len(k.shape) != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must be [T, Hq, D] and [T, Hkv, D]")
    nt, _, d = (int(s) for s in q.shape)
    if d % 2:
        raise ValueError(f"head dim {d} is odd; RoPE rotates channel pairs")
    if tuple(cos_sin.shape[1:]) != (d,):
        raise ValueError(f"cos_sin has shape {tuple(cos_sin.shape)}; expected [max_pos, D={d}] (see rope_cache)")
    if tuple(positions.shape) != (nt,):
        raise ValueError(f"positions has shape {tuple(positions.shape)}; expected [T={nt}] int32")
    adtype = _dtype(q)
    if _dtype(k) != adtype:
        raise ValueError(f"q is {adtype} but k is {_dtype(k)}; pass both in one dtype")
    backend = _backend(backend)
    q_out, k_out = (q, k) if inplace else (empty_like(q), empty_like(k))
    consts = dict(D=d, style=style, dtype=adtype, inplace=inplace, BH=_pow2(heads_per_block))
    args = {"q": q, "k": k, "positions": positions, "cos_sin": cos_sin}
    if not inplace:
        args.update(q_out=q_out, k_out=k_out)
    if nt:
        _compiled(consts, backend)(_with_sizes(args, q, k, cos_sin))
    return q_out, k_out


def rope_launcher(
    d: int, style: str, dtype: str, hq: int, hk: int, cos_sin: Any, backend: str = "auto", heads_per_block: int = 4
) -> Callable[[Any, Any, Any, Any, Any], None]:
    """`launch(q, k, positions, q_out, k_out)` for q [T, hq, d], k [T, hk, d] of `dtype` and the table
    `cos_sin` (bound once): `apply_rope` (not in place) with no checks, the executor's hot path."""
    consts = dict(D=d, style=style, dtype=dtype, inplace=False, BH=_pow2(heads_per_block))
    fixed = {"cos_sin": cos_sin, "HQ": hq, "HK": hk, "P": int(cos_sin.shape[0])}
    call = bind(_compiled(consts, _backend(backend)), fixed, ("q", "k", "positions", "q_out", "k_out", "NT"))

    def launch(q: Any, k: Any, positions: Any, q_out: Any, k_out: Any) -> None:
        n = int(q.shape[0])
        if n:
            call(q, k, positions, q_out, k_out, n)

    return launch


def _compiled(consts: dict[str, Any], backend: str) -> Any:
    key = (backend, *sorted(consts.items()))
    if key not in _COMPILED:
        _COMPILED[key] = compile_program(rope.trace(**consts), backend, serial_options(backend))
    return _COMPILED[key]


def _with_sizes(args: dict[str, Any], q: Any, k: Any, cos_sin: Any) -> dict[str, Any]:
    return {**args, "NT": int(q.shape[0]), "HQ": int(q.shape[1]), "HK": int(k.shape[1]), "P": int(cos_sin.shape[0])}


def _backend(backend: str) -> str:
    from lowbit.ops.linear import select_backend  # the ops layer owns the "auto" rule

    return select_backend(backend)


__all__ = ["apply_rope", "rope", "rope_cache", "rope_launcher"]


def _dtype(x: Any) -> str:
    return activation_dtype(x, "q/k")

"""RMSNorm and fused residual-add + RMSNorm over the rows of x [T, Dm] (HF LlamaRMSNorm, vLLM rms_norm /
fused_add_rms_norm), float16 | bfloat16 | float32 activations, fp32 math.

    rms_norm:      out = x · rsqrt(mean(x²) + eps) · weight
    add_rms_norm:  residual ← round(x + residual)   (in the activation dtype, as vLLM does)
                   out = rms_norm(residual)

Everything between the load and the store is fp32 (x, x², the sum, rsqrt, both products), one rounding to
the output dtype. `eps` is a compile-time constant (the TVM backend has no float scalar parameters).

Grid: one block per row. A row of Dm <= BD is one tile: loaded once, held while it is normalized. Longer
rows loop over chunks of BD twice: the first pass sums squares (recomputing x + residual without storing
it), the second recomputes each chunk, stores the new residual and the output (each chunk is read before
it is overwritten, in the same tile order, so the in-place residual needs no barrier).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import lowbit.lang as T
from lowbit.codegen.backend import compile_program
from lowbit.kernels.launch import activation_dtype, bind, empty_like, serial_options

SINGLE_PASS_MAX = 4096  # rows up to this many elements stay in one tile; longer rows loop in chunks
CHUNK = 2048  # the chunk of the two-pass loop


@T.kernel
def rms_norm_kernel(
    x: T.Tensor("dtype", ("NT", "DM")),
    residual: T.Tensor("dtype", ("NT", "DM")),
    weight: T.Tensor("wdtype", ("DM",)),
    out: T.Tensor("dtype", ("NT", "DM")),
    residual_out: T.Tensor("dtype", ("NT", "DM")),
    NT: T.int32,
    DM: T.int32,
    eps: T.constexpr = 1e-6,
    add_residual: T.constexpr = False,
    inplace: T.constexpr = True,
    dtype: T.constexpr = "float16",
    wdtype: T.constexpr = "float16",
    BD: T.constexpr = 1024,
    single_pass: T.constexpr = True,
):
    (t,) = T.grid(NT)

    def row(d0):  # [1, BD] fp32 of the (new) residual's chunk at d0; outside the row reads 0
        v = T.cast(T.load(x, (t, d0), (1, BD)), T.float32)
        if add_residual:
            v = T.cast(T.cast(v + T.cast(T.load(residual, (t, d0), (1, BD)), T.float32), x.dtype), T.float32)
        return v

    def finish(v, d0, inv):  # store out, then the new residual (if fused), for the chunk at d0
        w = T.reshape(T.cast(T.load(weight, (d0,), (BD,)), T.float32), (1, BD))
        T.store(out, (t, d0), T.cast(v * inv * w, out.dtype))
        # last: the TVM backend inlines loads into the expressions that use them, so a store to residual
        # before out's would let out re-read the updated residual
        if add_residual:
            T.store(residual if inplace else residual_out, (t, d0), T.cast(v, x.dtype))

    if single_pass:
        v = row(0)
        inv = T.rsqrt(T.sum(v * v, axis=1, keepdims=True) / DM + eps)  # [1, 1]
        finish(v, 0, inv)
    else:
        squares = T.zeros((1, BD), T.float32, name="squares")
        for d0 in T.range(0, DM, BD, name="d0"):
            v = row(d0)
            squares += v * v
        inv = T.rsqrt(T.sum(squares, axis=1, keepdims=True) / DM + eps)  # [1, 1]
        for d0 in T.range(0, DM, BD, name="d1"):
            finish(row(d0), d0, inv)


# ---- launchers ------------------------------------------------------------------------------------------

_COMPILED: dict[tuple[Any, ...], Any] = {}


def rms_norm(x: Any, weight: Any, eps: float = 1e-6, *, out: Any = None, backend: str = "auto") -> Any:
    """out [T, Dm] = rms_norm(x [T, Dm]) · weight [Dm], in x's dtype (float16/bfloat16/float32; NumPy or
    torch). Returns `out` (allocated when None). Raises ValueError for bad shapes, dtypes or eps."""
    return _launch(x, None, weight, eps, out, backend)


def add_rms_norm(
    x: Any, residual: Any, weight: Any, eps: float = 1e-6, *, out: Any = None, backend: str = "auto"
) -> Any:
    """Fused `residual += x; out = rms_norm(residual)·weight`: `residual` [T, Dm] is updated in place
    (rounded to its dtype), `out` returned (allocated when None). Same dtypes and errors as `rms_norm`."""
    if tuple(residual.shape) != tuple(x.shape) or str(residual.dtype) != str(x.dtype):
        raise ValueError(f"residual {residual.dtype}{tuple(residual.shape)} must match x {x.dtype}{tuple(x.shape)}")
    return _launch(x, residual, weight, eps, out, backend)


def norm_constants(dm: int) -> dict[str, Any]:
    """Tile choice for rows of `dm` elements: one tile up to SINGLE_PASS_MAX, else CHUNK-wide chunks."""
    bd = 1 << max(0, (dm - 1).bit_length())
    return {"BD": bd, "single_pass": True} if bd <= SINGLE_PASS_MAX else {"BD": CHUNK, "single_pass": False}


def _launch(x: Any, residual: Any, weight: Any, eps: float, out: Any, backend: str) -> Any:
    if len(x.shape) != 2:
        raise ValueError(f"x has shape {tuple(x.shape)}; pass [T, Dm] (reshape leading dims into T)")
    nt, dm = (int(s) for s in x.shape)
    if tuple(weight.shape) != (dm,):
        raise ValueError(f"weight has shape {tuple(weight.shape)}; expected [Dm] = [{dm}]")
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps {eps!r} must be a finite float >= 0 (1e-5 or 1e-6 in most checkpoints)")
    dtype = _dtype(x)
    out = empty_like(x) if out is None else out
    if tuple(out.shape) != (nt, dm) or str(out.dtype) != str(x.dtype):
        raise ValueError(f"out is {out.dtype}{tuple(out.shape)}; it must be x's {x.dtype}{(nt, dm)}")
    from lowbit.ops.linear import select_backend  # the ops layer owns the "auto" rule

    kernel = _kernel(dtype, _dtype(weight), dm, eps, residual is not None, select_backend(backend))
    args = {"x": x, "weight": weight, "out": out, "NT": nt, "DM": dm}
    if residual is not None:
        args["residual"] = residual
    if nt and dm:
        kernel(args)
    return out


def norm_launcher(
    weight: Any, eps: float, dtype: str, add_residual: bool, backend: str = "auto"
) -> Callable[[Any, Any, Any, Any], None]:
    """`launch(x, out, residual, residual_out)` for rows of one dtype and this weight: `rms_norm` (residual
    None) or `add_rms_norm` with the new residual written to `residual_out` (the old one is left as it was),
    weight and constants bound, no checks: the executor's hot path (it validated the graph). x, out,
    residual, residual_out: contiguous [T, Dm] tensors."""
    from lowbit.ops.linear import select_backend

    dm = int(weight.shape[0])
    kernel = _kernel(dtype, _dtype(weight), dm, eps, add_residual, select_backend(backend), inplace=False)
    call = bind(kernel, {"weight": weight, "DM": dm}, ("x", "out", "residual", "residual_out", "NT"))

    def launch(x: Any, out: Any, residual: Any = None, residual_out: Any = None) -> None:
        n = int(x.shape[0])
        if n:
            call(x, out, residual, residual_out, n)

    return launch


def _kernel(
    dtype: str, wdtype: str, dm: int, eps: float, add_residual: bool, backend: str, inplace: bool = True
) -> Any:
    consts = dict(
        eps=float(eps), add_residual=add_residual, inplace=inplace or not add_residual, dtype=dtype, wdtype=wdtype,
        **norm_constants(dm),
    )  # fmt: skip
    key = (backend, *sorted(consts.items()))
    if key not in _COMPILED:
        _COMPILED[key] = compile_program(rms_norm_kernel.trace(**consts), backend, serial_options(backend))
    return _COMPILED[key]


__all__ = ["add_rms_norm", "norm_constants", "norm_launcher", "rms_norm", "rms_norm_kernel"]


def _dtype(x: Any) -> str:
    return activation_dtype(x, "x")

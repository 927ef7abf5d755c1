"""SwiGLU's elementwise part on the fused gate/up output: out[t, i] = silu(x[t, i]) · x[t, DI + i] for x [T, 2·DI]
(gate columns first, then up: what `fuse_gate_up` writes), in fp32 (silu(g) = g / (1 + exp(−g))), one rounding
to the activation dtype. One block per (row, chunk of BD columns); a chunk past DI is cut by the store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lowbit.lang as T
from lowbit.codegen.backend import compile_program
from lowbit.kernels.launch import bind, serial_options


@T.kernel
def silu_mul(
    x: T.Tensor("dtype", ("NT", "2 * DI")),
    out: T.Tensor("dtype", ("NT", "DI")),
    NT: T.int32,
    DI: T.int32,
    dtype: T.constexpr = "float32",
    BD: T.constexpr = 1024,
):
    t, c = T.grid(NT, T.cdiv(DI, BD))
    g = T.cast(T.load(x, (t, c * BD), (1, BD)), T.float32)
    u = T.cast(T.load(x, (t, DI + c * BD), (1, BD)), T.float32)
    T.store(out, (t, c * BD), T.cast(g / (1.0 + T.exp(0.0 - g)) * u, out.dtype))


_COMPILED: dict[tuple[Any, ...], Any] = {}


def silu_mul_launcher(dtype: str, backend: str = "auto") -> Callable[[Any, Any], None]:
    """`launch(x [T, 2·DI], out [T, DI])` (contiguous tensors of `dtype`), compiled once per dtype."""
    from lowbit.ops.linear import select_backend  # the ops layer owns the "auto" rule

    key = (select_backend(backend), dtype)
    if key not in _COMPILED:
        _COMPILED[key] = compile_program(silu_mul.trace(dtype=dtype), key[0], serial_options(key[0]))
    call = bind(_COMPILED[key], {}, ("x", "out", "NT", "DI"))

    def launch(x: Any, out: Any) -> None:
        n = int(x.shape[0])
        if n:
            call(x, out, n, int(out.shape[1]))

    return launch


__all__ = ["silu_mul", "silu_mul_launcher"]

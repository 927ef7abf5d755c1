"""Small helpers the launchers (kernels/rope.py, kernels/norm.py, ops/) share: dtype checks and output buffers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

ACTIVATIONS = ("float16", "bfloat16", "float32")


def serial_options(backend: str) -> dict[str, Any]:
    """Backend options of the small per-row kernels (norms, RoPE, KV append, SwiGLU, activation quantization):
    on TVM their blocks run serially on the calling thread. Each is a few microseconds of work; a parallel
    launch wakes the thread pool and then waits for its slowest worker, which on a shared 2-core machine can
    be descheduled for a whole time slice (milliseconds per launch, measured on the decode step)."""
    return {"parallel": "none"} if backend == "tvm" else {}


def activation_dtype(x: Any, what: str) -> str:
    """x's dtype name (NumPy or torch) if it is an activation dtype, else a ValueError naming argument `what`."""
    name = str(getattr(x, "dtype", type(x).__name__)).removeprefix("torch.")
    if not hasattr(x, "shape") or name not in ACTIVATIONS:
        raise ValueError(
            f"{what} has dtype {name}; activations must be one of {list(ACTIVATIONS)} (convert with .astype / .to)"
        )
    return name


def empty_like(x: Any) -> Any:
    """An uninitialised array of x's shape, dtype and kind (torch tensor or NumPy array)."""
    if hasattr(x, "detach"):
        import torch

        return torch.empty_like(x)
    return np.empty_like(x)


def bind(kernel: Any, fixed: Mapping[str, Any], dynamic: tuple[str, ...]) -> Callable[..., None]:
    """A positional caller `call(*values of dynamic)` of a compiled kernel with `fixed` arguments bound: a TVM
    kernel's `bind` (arguments converted once, no per-call checks: the decode hot path); for other backends
    a caller that builds the argument mapping (the same results, at the interpreter's pace)."""
    if hasattr(kernel, "bind"):
        return kernel.bind(fixed, dynamic)  # type: ignore[no-any-return]

    def call(*values: Any) -> None:
        kernel({**fixed, **dict(zip(dynamic, values))})

    return call

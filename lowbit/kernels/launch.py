"""Small helpers the launchers (kernels/rope.py, kernels/norm.py, ops/) share: dtype checks and output buffers;
and the resource share of persistent kernels (`PersistentLauncher`, `resource_share`, `budget`)."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
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


# ---- the resource share of persistent kernels --------------------------------------------------------------

_SHARE = threading.local()


def device_units(device: Any = None) -> int:
    """The execution units a share is a fraction of: the SMs of a CUDA device (`device` or, when None and
    CUDA is available, the current one), else the CPU cores this process may run on."""
    if device is None or str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(device or torch.cuda.current_device()).multi_processor_count)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def budget(share: float, units: int) -> int:
    """The program budget of a resource share: round(share · units), at least 1 (ValueError outside (0, 1])."""
    if isinstance(share, bool) or not (isinstance(share, (int, float)) and 0 < share <= 1):
        raise ValueError(f"resource share {share!r} must be a fraction in (0, 1] of the device's {units} units")
    if units < 1:
        raise ValueError(f"units {units} must be >= 1 (the SMs or cores the share is a fraction of)")
    return max(1, round(share * units))


@contextmanager
def resource_share(share: float | None) -> Iterator[None]:
    """Within the block, persistent launches on this thread use `share` of the device (None: the whole of it);
    the nano-batch executor wraps each nano-op in the share its plan gave it."""
    if share is not None:
        budget(share, 1)  # validates
    prev = getattr(_SHARE, "value", None)
    _SHARE.value = share
    try:
        yield
    finally:
        _SHARE.value = prev


def current_share() -> float | None:
    """The share set by the innermost `resource_share` block on this thread (None outside one)."""
    return getattr(_SHARE, "value", None)


def runs_persistent(backend: str) -> bool:
    """Whether a library launch on `backend` takes the kernel's persistent form now: Triton inside a
    `resource_share` block (grid = min(share x SMs, tiles), so overlapping nano-ops split the device as the
    plan says: NanoFlow's SM budgets). `lowbit.ops.linear` and `lowbit.ops.attention` ask this."""
    return backend == "triton" and current_share() is not None


def num_programs(program: Any, scalars: Mapping[str, Any]) -> int:
    """How many programs `program` launches for these scalar arguments (the product of its grid)."""
    from lowbit.codegen.scalar_eval import evaluate

    env = {p.name: int(scalars[p.name]) for p in program.scalar_params if p.dtype.is_integer and p.name in scalars}
    return math.prod(int(evaluate(g, env)) for g in program.grid)


class PersistentLauncher:
    """Kernel `kernel` (a library kernel: `quantized_gemm`, `w4a8_gemm_per_*`, `paged_decode_attention`,
    `prefill_attention`, ...) compiled once in its persistent form (`lowbit.lang.persistent`) for `backend`.
    `launcher(args, share=None)` runs it with BUDGET = budget(share, units), so the grid is
    min(BUDGET, tiles); `share` None takes `current_share()`, and outside a `resource_share` block the whole
    device (share 1). `units`: the SMs / cores a share is a fraction of (default `device_units()`)."""

    def __init__(
        self,
        kernel: Any,
        constants: Mapping[str, Any],
        backend: str,
        options: Mapping[str, Any] | None = None,
        units: int | None = None,
    ) -> None:
        import lowbit.lang as T
        from lowbit.codegen.backend import compile_program

        persistent = kernel if getattr(kernel, "persistent", False) else T.persistent(kernel)
        self.program = persistent.trace(**constants)
        self.compiled = compile_program(self.program, backend, options)
        self.units = units if units is not None else device_units()

    def budget(self, share: float | None = None) -> int:
        share = share if share is not None else current_share()
        return budget(1.0 if share is None else share, self.units)

    def grid(self, args: Mapping[str, Any], share: float | None = None) -> int:
        """The programs a launch with these arguments occupies: min(budget, tiles)."""
        from lowbit.lang.kernel import infer_scalars

        return num_programs(self.program, infer_scalars(self.program, {**args, "BUDGET": self.budget(share)}))

    def __call__(self, args: Mapping[str, Any], share: float | None = None) -> None:
        """Run on `args` (by parameter name; integer sizes a tensor's shape gives may be left out)."""
        from lowbit.lang.kernel import infer_scalars

        self.compiled(infer_scalars(self.program, {**args, "BUDGET": self.budget(share)}))

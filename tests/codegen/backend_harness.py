"""Run a DSL kernel on a backend (triton or tvm) and on the reference interpreter; triton kernels are also
compiled for sm_90."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

import lowbit.codegen.triton as triton_backend
from lowbit.codegen.backend import compile_program
from lowbit.lang.kernel import infer_scalars

_COMPILED: set[str] = set()


def run_both(
    kernel: Any,
    constants: dict[str, Any],
    args: dict[str, Any],
    options: dict[str, Any] | None = None,
    backend: str = "triton",
):
    """(reference outputs, triton outputs): copies of `args` after each backend ran. Every distinct generated
    kernel is also compiled for sm_90 once (dot shapes and ops the GPU compiler rejects fail here)."""
    program = kernel.trace(**constants)
    args = {k: v for k, v in args.items() if k in {p.name for p in program.params}}  # the DSL drops unused tensors
    ref, tri = copy.deepcopy(args), copy.deepcopy(args)
    compile_program(program, "reference")(infer_scalars(program, ref))
    compiled = compile_program(program, backend, options)
    compiled(infer_scalars(program, tri))
    if backend == "triton" and compiled.source not in _COMPILED:
        stages = triton_backend.compile_sm90(compiled)
        assert stages["cubin"], "sm_90 compile produced no cubin"
        _COMPILED.add(compiled.source)
    return ref, tri


def assert_same(a: np.ndarray, b: np.ndarray, what: str = "") -> None:
    """Bit-for-bit equal values (NaN equal to NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        x, y = a.astype(np.float64), b.astype(np.float64)
        ok = (x == y) | (np.isnan(x) & np.isnan(y))
    else:
        ok = a == b
    assert ok.all(), f"{what}: differ at {np.argwhere(~ok)[:5].tolist()}: {a[~ok][:5]} vs {b[~ok][:5]}"

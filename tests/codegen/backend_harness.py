"""Run a DSL kernel on a backend (triton, tvm, or tvm-cuda: TVM's CUDA lowering run through `simulate()`) and on
the reference interpreter; triton kernels are also compiled for sm_90."""

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
    if backend == "tvm-cuda":  # the TVM CUDA lowering, built for sm_90, its code run on the CPU (`simulate`)
        built = compile_program(program, "tvm", {"target": "cuda", **(options or {})})
        built.driver_launch()  # every device parameter a program argument: launchable without TVM's CUDA runtime
        compiled = built.simulate()
    else:
        compiled = compile_program(program, backend, options)
    compiled(infer_scalars(program, tri))
    if backend == "triton" and compiled.source not in _COMPILED:
        stages = triton_backend.compile_sm90(compiled)
        assert stages["cubin"], "sm_90 compile produced no cubin"
        _COMPILED.add(compiled.source)
    return ref, tri


def prefetch_localities(source: str, buffer: str = "w_1") -> set[int]:
    """The locality argument (llvm.prefetch's: 3 = L1, 2 = L2) of each prefetch hint on `buffer` in a TVMScript
    source."""
    hints = [line for line in source.splitlines() if "llvm.prefetch.p0" in line and f"{buffer}[" in line]
    return {int(line.rsplit(",", 2)[-2]) for line in hints}


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


INT_DTYPES = [f"{s}int{b}" for s in ("", "u") for b in range(1, 9)]
FLOAT_DTYPES = ["fp3_e1m1", "fp4_e2m1", "fp4_e3m0", "fp5_e2m2", "fp6_e2m3", "fp6_e3m2", "fp8_e4m3", "fp8_e5m2"]
# vs NumPy: fp16 weights and one rounding of y; vs the reference: the same products summed in another order
# (fp32), then rounded to the output dtype
GEMM_BOUND = {"float16": 2e-3, "float32": 2e-3, "bfloat16": 1e-2}
GEMM_BOUND_VS_REFERENCE = {"float16": 1e-3, "float32": 1e-5, "bfloat16": 8e-3}


def check_gemm(backend, M, N, K, wdtype, G, zero_mode, adtype="float16", seed=0, options=None, **tiles):
    """quantized_gemm on `backend` equals the reference interpreter and random_problem's x @ dequant(W)."""
    from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem, relative_error

    p = random_problem(M, N, K, wdtype, G=G, zero_mode=zero_mode, seed=seed, **tiles)
    args = dict(p.args)
    if adtype != "float16":
        import ml_dtypes

        host = np.float32 if adtype == "float32" else ml_dtypes.bfloat16
        args["x"], args["y"] = args["x"].astype(host), args["y"].astype(host)
    ref, out = run_both(quantized_gemm, {**p.constants, "adtype": adtype}, args, options, backend=backend)
    y, r = out["y"].astype(np.float64), ref["y"].astype(np.float64)
    assert not np.isnan(y).any(), f"{wdtype}: NaN in the output"
    assert relative_error(y, r) <= GEMM_BOUND_VS_REFERENCE[adtype], f"{wdtype} G={G} {zero_mode}: vs reference"
    if adtype != "bfloat16":  # random_problem's expected value assumes fp16 dequantized weights
        err = relative_error(y, p.expected)
        assert err <= GEMM_BOUND[adtype], f"{wdtype} G={G} {zero_mode} {M}x{N}x{K} {adtype}: relative error {err}"
